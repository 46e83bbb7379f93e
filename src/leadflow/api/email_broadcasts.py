"""Management API: email broadcasts and A/B tests — create, list, get (with recipient counts and
statistics), update, add a subject-line variant, schedule, send now, pause, resume, cancel, pick
the winner."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from ninja import Body, Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.core import clock
from leadflow.core.services import ServiceError
from leadflow.messaging import broadcasts as services
from leadflow.messaging.models import Broadcast, SendingServer, Template
from leadflow.segments.models import Segment

router = Router(tags=["email broadcasts"])

Metric = Literal["click_rate", "open_rate", "unsubscribe_rate"]
StatusName = Literal["draft", "scheduled", "sending", "testing", "paused", "cancelled", "done"]


# --- schemas ----------------------------------------------------------------------------------

class BroadcastIn(Schema):
    name: str
    template_id: int
    segment_id: int
    scheduled_at: dt.datetime | None = Field(None, description="the planned time; confirm with /schedule")
    server_id: int | None = Field(None, description="a sending server; none: the workspace default")
    variants: list[int] = Field([], description="A/B test: template ids of variants B, C and D "
                                                "(variant A is template_id); empty: no test")
    test_share: float = Field(0.2, description="share of the audience in the A/B test, split evenly")
    winner_metric: Metric = "click_rate"
    decide_after_hours: float = Field(4, description="hours after the start when the winner is chosen")


class BroadcastPatch(Schema):
    name: str | None = None
    template_id: int | None = None
    segment_id: int | None = None
    scheduled_at: dt.datetime | None = Field(None, description="null clears it (a scheduled broadcast "
                                                               "goes back to draft)")
    server_id: int | None = Field(None, description="null: the workspace default")
    variants: list[int] | None = Field(None, description="template ids of variants B, C and D; [] ends the test")
    test_share: float | None = None
    winner_metric: Metric | None = None
    decide_after_hours: float | None = None


class ScheduleIn(Schema):
    at: dt.datetime | None = Field(None, description="when to start (UTC if no offset); default: the "
                                                     "broadcast's planned scheduled_at")


class WinnerIn(Schema):
    label: Literal["A", "B", "C", "D"] | None = Field(None, description="force this variant; none: decide "
                                                                        "by the results so far")


class SubjectVariantIn(Schema):
    subject: str = Field(description="the subject line to test against variant A's")
    preheader: str | None = Field(None, description="a new preheader too; default: variant A's")
    name: str | None = Field(None, description="the new template's name; default: \"<A's name> — <broadcast>, "
                                               "variant <label>\"")


class VariantOut(Schema):
    label: str
    template_id: int
    template: str
    version_id: int
    version: int
    version_status: str


class BroadcastOut(Schema):
    id: int
    name: str
    slug: str
    status: str
    template_id: int
    template: str
    topic: str
    segment_id: int
    segment: str
    server_id: int | None
    version: int | None = Field(description="the pinned template version number (once sending started)")
    scheduled_at: dt.datetime | None
    started_at: dt.datetime | None
    decide_at: dt.datetime | None
    finished_at: dt.datetime | None
    test_share: float
    winner_metric: str
    decide_after_hours: float
    variants: list[VariantOut]
    winner: str | None
    result: dict[str, Any]
    audience_count: int | None
    error: str | None
    created_by: str
    created_at: dt.datetime


class CountsOut(Schema):
    recipients: int
    consent_filtered: int | None
    not_allowed: int | None
    audience: int | None
    topic: str


class BroadcastDetailOut(BroadcastOut):
    counts: CountsOut
    stats: dict[str, Any]


class BroadcastPage(Schema):
    items: list[BroadcastOut]
    next: str | None


# --- helpers ----------------------------------------------------------------------------------

def _get(request, broadcast_id: int) -> Broadcast:
    broadcast = services.broadcast_get(workspace=request.workspace, broadcast_id=broadcast_id)
    if broadcast is None:
        raise HttpError(404, f"no broadcast {broadcast_id} in this workspace")
    return broadcast


def _template(request, template_id: int, what: str = "template_id") -> Template:
    template = Template.objects.filter(workspace=request.workspace, pk=template_id).first()
    if template is None:
        raise ServiceError(f"{what}: no template {template_id} in this workspace")
    return template


def _segment(request, segment_id: int) -> Segment:
    segment = Segment.objects.filter(workspace=request.workspace, pk=segment_id).first()
    if segment is None:
        raise ServiceError(f"segment_id: no segment {segment_id} in this workspace")
    return segment


def _server(request, server_id: int | None) -> SendingServer | None:
    if server_id is None:
        return None
    server = SendingServer.objects.filter(workspace=request.workspace, pk=server_id).first()
    if server is None:
        raise ServiceError(f"server_id: no sending server {server_id} in this workspace")
    return server


def _variants(request, ids: list[int]) -> list[Template]:
    return [_template(request, pk, what=f"variants[{n}]") for n, pk in enumerate(ids)]


def broadcasts_out(items: list[Broadcast]) -> list[dict]:
    variants = services.broadcast_variants(broadcasts=items)
    return [{
        "id": b.pk, "name": b.name, "slug": b.slug, "status": b.status, "template_id": b.template_id,
        "template": b.template.slug, "topic": b.template.topic, "segment_id": b.segment_id, "segment": b.segment.slug,
        "server_id": b.server_id, "version": b.version.number if b.version_id else None,
        "scheduled_at": b.scheduled_at, "started_at": b.started_at, "decide_at": b.decide_at,
        "finished_at": b.finished_at, "test_share": b.test_share, "winner_metric": b.winner_metric,
        "decide_after_hours": (b.result or {}).get("decide_after_hours", 4),
        "variants": [{"label": v.label, "template_id": v.version.template_id, "template": v.version.template.slug,
                      "version_id": v.version_id, "version": v.version.number, "version_status": v.version.status}
                     for v in variants[b.pk]],
        "winner": b.winner.label if b.winner_id else None, "result": b.result or {},
        "audience_count": b.audience_count, "error": (b.result or {}).get("error"),
        "created_by": b.created_by, "created_at": b.created_at,
    } for b in items]


def _detail(broadcast: Broadcast) -> dict:
    broadcast = services.broadcast_get(workspace=broadcast.workspace, broadcast_id=broadcast.pk)
    return {**broadcasts_out([broadcast])[0],
            "counts": services.broadcast_counts(broadcast=broadcast, now=clock.now()),
            "stats": services.broadcast_stats(broadcast=broadcast)}


# --- routes -----------------------------------------------------------------------------------

@router.get("", response=BroadcastPage, summary="List broadcasts, newest first")
def broadcasts_list(request, status: StatusName | None = None,
                    limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                    next: str | None = Query(None, description="the `next` cursor of the previous page")):
    qs = services.broadcast_list(workspace=request.workspace, status=status or "")
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("-pk",))
    return {"items": broadcasts_out(items), "next": following}


@router.post("", response={201: BroadcastDetailOut}, summary="Create a draft broadcast (optionally an A/B test)")
def broadcasts_create(request, payload: BroadcastIn):
    """Nothing is sent until the broadcast is confirmed with `/schedule` or `/send`; the answer
    carries the recipient count and the consent-filtered count to confirm against."""
    broadcast = services.broadcast_create(
        workspace=request.workspace, name=payload.name, template=_template(request, payload.template_id),
        segment=_segment(request, payload.segment_id), scheduled_at=payload.scheduled_at,
        server=_server(request, payload.server_id), variants=_variants(request, payload.variants),
        test_share=payload.test_share, winner_metric=payload.winner_metric,
        decide_after_hours=payload.decide_after_hours, actor=actor(request))
    return Status(201, _detail(broadcast))


@router.get("/{broadcast_id}", response=BroadcastDetailOut,
            summary="One broadcast with its recipient counts (before sending) and statistics (after)")
def broadcasts_get(request, broadcast_id: int):
    return _detail(_get(request, broadcast_id))


@router.patch("/{broadcast_id}", response=BroadcastDetailOut,
              summary="Change a draft or scheduled broadcast; fields left out stay as they are")
def broadcasts_update(request, broadcast_id: int, payload: BroadcastPatch):
    broadcast = _get(request, broadcast_id)
    given = payload.model_fields_set
    changes: dict[str, Any] = {}
    for key in ("name", "test_share", "winner_metric", "decide_after_hours"):
        if key in given:
            value = getattr(payload, key)
            if value is None:
                raise ServiceError(f"{key}: cannot be null")
            changes[key] = value
    if "template_id" in given:
        if payload.template_id is None:
            raise ServiceError("template_id: cannot be null")
        changes["template"] = _template(request, payload.template_id)
    if "segment_id" in given:
        if payload.segment_id is None:
            raise ServiceError("segment_id: cannot be null")
        changes["segment"] = _segment(request, payload.segment_id)
    if "server_id" in given:
        changes["server"] = _server(request, payload.server_id)
    if "variants" in given:
        changes["variants"] = _variants(request, payload.variants or [])
    if "scheduled_at" in given:
        changes["scheduled_at"] = payload.scheduled_at
    broadcast = services.broadcast_update(broadcast=broadcast, actor=actor(request), **changes)
    return _detail(broadcast)


@router.post("/{broadcast_id}/subject-variants", response={201: BroadcastDetailOut},
             summary="A/B test a subject line: copy variant A's template with this subject, submit the copy for "
                     "approval and add it as the next variant (the broadcast starts once it is approved)")
def broadcasts_subject_variant(request, broadcast_id: int, payload: SubjectVariantIn):
    broadcast = _get(request, broadcast_id)
    services.broadcast_subject_variant_add(broadcast=broadcast, subject=payload.subject, preheader=payload.preheader,
                                           name=payload.name, actor=actor(request))
    return Status(201, _detail(broadcast))


@router.post("/{broadcast_id}/schedule", response=BroadcastDetailOut,
             summary="Confirm: start at `at` (or the planned time); the worker starts it then")
def broadcasts_schedule(request, broadcast_id: int, payload: ScheduleIn | None = Body(None)):
    broadcast = _get(request, broadcast_id)
    at = (payload.at if payload else None) or broadcast.scheduled_at
    if at is None:
        raise ServiceError("at: give the time to send (the broadcast has no planned time)")
    return _detail(services.broadcast_schedule(broadcast=broadcast, at=at, actor=actor(request)))


@router.post("/{broadcast_id}/send", response=BroadcastDetailOut,
             summary="Confirm: start now (pins the approved version and queues the audience)")
def broadcasts_send(request, broadcast_id: int):
    return _detail(services.broadcast_send_now(broadcast=_get(request, broadcast_id), actor=actor(request)))


@router.post("/{broadcast_id}/pause", response=BroadcastDetailOut,
             summary="Pause: nothing more is sent, queued or decided until resumed")
def broadcasts_pause(request, broadcast_id: int):
    return _detail(services.broadcast_pause(broadcast=_get(request, broadcast_id), actor=actor(request)))


@router.post("/{broadcast_id}/resume", response=BroadcastDetailOut, summary="Resume a paused broadcast")
def broadcasts_resume(request, broadcast_id: int):
    return _detail(services.broadcast_resume(broadcast=_get(request, broadcast_id), actor=actor(request)))


@router.post("/{broadcast_id}/cancel", response=BroadcastDetailOut,
             summary="Cancel: messages not sent yet are cancelled; sent ones stay")
def broadcasts_cancel(request, broadcast_id: int):
    return _detail(services.broadcast_cancel(broadcast=_get(request, broadcast_id), actor=actor(request)))


@router.post("/{broadcast_id}/winner", response=BroadcastDetailOut,
             summary="A/B test: choose the winner now (by the results so far, or the variant named) "
                     "and send it to the rest")
def broadcasts_winner(request, broadcast_id: int, payload: WinnerIn | None = Body(None)):
    return _detail(services.broadcast_pick_winner(broadcast=_get(request, broadcast_id), actor=actor(request),
                                                  label=payload.label if payload else None))
