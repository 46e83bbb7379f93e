"""Management API: email messages, what happened to each, and statistics per template, version,
broadcast and A/B variant. Opens and clicks by machines (privacy proxies, link scanners) are left
out of statistics unless `include_machine=true`. Messages in review (a send interrupted when it
may have gone out) are listed with `?status=review` and resent, marked as sent or dismissed with
`POST /review` (many) or `POST /{id}/review` (one)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from django.db.models import Prefetch
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.contacts import selectors as contact_selectors
from leadflow.messaging import review, stats
from leadflow.messaging.models import Broadcast, Message, MessageEvent, MessageStatus, Template

router = Router(tags=["email messages"])


# --- schemas ----------------------------------------------------------------------------------

class EventOut(Schema):
    kind: str
    at: dt.datetime
    machine: bool
    url: str
    detail: dict[str, Any]


class MessageOut(Schema):
    id: int
    contact_id: int | None
    to_email: str
    kind: str
    status: str
    topic: str
    template: str | None
    template_version: int | None
    broadcast_id: int | None
    variant_id: int | None
    campaign: str
    source: str
    subject: str
    error: str
    queued_at: dt.datetime
    not_before: dt.datetime
    sent_at: dt.datetime | None
    delivered_at: dt.datetime | None
    opened_at: dt.datetime | None
    clicked_at: dt.datetime | None
    bounced_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None
    complained_at: dt.datetime | None


class MessageDetailOut(MessageOut):
    header_message_id: str
    attempts: int
    events: list[EventOut]


class MessagePage(Schema):
    items: list[MessageOut]
    next: str | None


class MessageWithEventsPage(Schema):
    items: list[MessageDetailOut]
    next: str | None


class FiguresOut(Schema):
    queued: int
    sent: int
    delivered: int
    hard_bounced: int
    soft_bounced: int
    opened: int
    clicked: int
    unsubscribed: int
    complained: int
    bounce_rate: float | None
    open_rate: float | None
    click_rate: float | None
    click_to_open: float | None
    unsubscribe_rate: float | None
    complaint_rate: float | None


class VersionFiguresOut(FiguresOut):
    version_id: int | None
    version: int | None


class TemplateStatsOut(Schema):
    template_id: int
    slug: str
    name: str
    include_machine: bool
    total: FiguresOut
    versions: list[VersionFiguresOut]


class TemplateSummaryOut(FiguresOut):
    template_id: int
    slug: str
    name: str


class VariantFiguresOut(FiguresOut):
    variant_id: int
    label: str


ReviewAction = Literal["resend", "mark_sent", "dismiss"]


class ReviewIn(Schema):
    action: ReviewAction = Field(..., description="resend: queue it again now (same dedupe key, through the "
                                                  "consent gate); mark_sent: it did arrive; dismiss: it did not "
                                                  "go out and will not (failed, with `reason`)")
    ids: list[int] | None = Field(None, description="the messages; or instead one of broadcast_id, journey_id, all")
    broadcast_id: int | None = Field(None, description="every message of this broadcast that is in review")
    journey_id: int | None = Field(None, description="every message of this journey that is in review")
    all: bool = Field(False, description="every message of the workspace that is in review")
    reason: str = Field("", description="why (required to dismiss); recorded on each message's event")


class ReviewOneIn(Schema):
    action: ReviewAction
    reason: str = ""


class ReviewOut(Schema):
    action: str
    count: int
    ids: list[int]


class BroadcastStatsOut(Schema):
    broadcast_id: int
    slug: str
    name: str
    include_machine: bool
    total: FiguresOut
    variants: list[VariantFiguresOut]
    without_variant: FiguresOut | None


# --- helpers ----------------------------------------------------------------------------------

def message_out(message: Message) -> dict:
    return {"id": message.pk, "contact_id": message.contact_id, "to_email": message.to_email, "kind": message.kind,
            "status": message.status, "topic": message.topic,
            "template": message.template.slug if message.template_id else None,
            "template_version": message.version.number if message.version_id else None,
            "broadcast_id": message.broadcast_id, "variant_id": message.variant_id, "campaign": message.campaign,
            "source": message.source, "subject": message.subject, "error": message.error,
            "queued_at": message.queued_at, "not_before": message.not_before, "sent_at": message.sent_at,
            "delivered_at": message.delivered_at, "opened_at": message.opened_at, "clicked_at": message.clicked_at,
            "bounced_at": message.bounced_at, "unsubscribed_at": message.unsubscribed_at,
            "complained_at": message.complained_at}


def event_out(event: MessageEvent) -> dict:
    return {"kind": event.kind, "at": event.at, "machine": event.machine, "url": event.url,
            "detail": event.detail if isinstance(event.detail, dict) else {}}


def message_detail_out(message: Message) -> dict:
    return {**message_out(message), "header_message_id": message.header_message_id, "attempts": message.attempts,
            "events": [event_out(e) for e in message.events.all()]}


def _messages(request):
    return (Message.objects.filter(workspace=request.workspace).select_related("template", "version"))


def _with_events(queryset):
    return queryset.prefetch_related(Prefetch("events", queryset=MessageEvent.objects.order_by("at", "pk")))


def _review(request, **selection) -> review.ReviewDone:
    try:
        return review.review_act(workspace=request.workspace, actor=actor(request), **selection)
    except review.ReviewRefused as exc:
        raise HttpError(404 if exc.not_found and not exc.not_in_review else 409, str(exc)) from None


# --- routes -----------------------------------------------------------------------------------

@router.get("", response=MessagePage, summary="List messages (newest first), filtered")
def messages_list(request, contact_id: int | None = None, template_id: int | None = None,
                  broadcast_id: int | None = None, journey_id: int | None = None, status: str = "",
                  to_email: str = "",
                  limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                  next: str | None = Query(None, description="the `next` cursor of the previous page")):
    queryset = _messages(request)
    if status:
        if status not in MessageStatus.values:
            raise HttpError(400, f"status must be one of {', '.join(MessageStatus.values)}")
        queryset = queryset.filter(status=status)
    for name, value in (("contact_id", contact_id), ("template_id", template_id), ("broadcast_id", broadcast_id)):
        if value is not None:
            queryset = queryset.filter(**{name: value})
    if journey_id is not None:
        queryset = queryset.filter(source__startswith=f"journey:{journey_id}:")
    if to_email:
        queryset = queryset.filter(to_email__iexact=to_email.strip())
    items, following = cursor.page(queryset, cursor=next, limit=limit, order=("-pk",))
    return {"items": [message_out(m) for m in items], "next": following}


@router.get("/contacts/{contact_id}", response=MessageWithEventsPage,
            summary="A contact's messages (newest first), each with everything that happened to it")
def contact_messages(request, contact_id: int, limit: int = Query(20, ge=1, le=100),
                     next: str | None = Query(None, description="the `next` cursor of the previous page")):
    contact = contact_selectors.contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    items, following = cursor.page(_with_events(_messages(request).filter(contact=contact)), cursor=next,
                                   limit=limit, order=("-pk",))
    return {"items": [message_detail_out(m) for m in items], "next": following}


@router.get("/stats/templates", response=list[TemplateSummaryOut],
            summary="Statistics of every template that has sent mail")
def templates_stats(request, include_machine: bool = False):
    return stats.templates_stats(workspace_id=request.workspace.pk, include_machine=include_machine)


@router.get("/stats/templates/{template_id}", response=TemplateStatsOut,
            summary="A template's statistics, in total and per version")
def template_stats(request, template_id: int, include_machine: bool = False):
    template = Template.objects.filter(workspace=request.workspace, pk=template_id).first()
    if template is None:
        raise HttpError(404, f"no template {template_id} in this workspace")
    return {**stats.template_stats(template=template, include_machine=include_machine),
            "include_machine": include_machine}


@router.get("/stats/broadcasts/{broadcast_id}", response=BroadcastStatsOut,
            summary="A broadcast's statistics, in total and per A/B variant")
def broadcast_stats(request, broadcast_id: int, include_machine: bool = False):
    broadcast = Broadcast.objects.filter(workspace=request.workspace, pk=broadcast_id).first()
    if broadcast is None:
        raise HttpError(404, f"no broadcast {broadcast_id} in this workspace")
    return {**stats.broadcast_stats(broadcast=broadcast, include_machine=include_machine),
            "include_machine": include_machine}


@router.post("/review", response=ReviewOut,
             summary="Messages in review: resend, mark as sent or dismiss many at once (all or nothing)")
def messages_review(request, payload: ReviewIn):
    done = _review(request, action=payload.action, message_ids=payload.ids, broadcast_id=payload.broadcast_id,
                   journey_id=payload.journey_id, everything=payload.all, reason=payload.reason)
    return {"action": done.action, "count": done.count, "ids": done.ids}


@router.post("/{message_id}/review", response=MessageDetailOut,
             summary="A message in review: resend it, mark it as sent or dismiss it")
def message_review(request, message_id: int, payload: ReviewOneIn):
    _review(request, action=payload.action, message_ids=[message_id], reason=payload.reason)
    return message_detail_out(_with_events(_messages(request)).get(pk=message_id))


@router.get("/{message_id}", response=MessageDetailOut, summary="One message with everything that happened to it")
def message_detail(request, message_id: int):
    message = _with_events(_messages(request)).filter(pk=message_id).first()
    if message is None:
        raise HttpError(404, f"no message {message_id} in this workspace")
    return message_detail_out(message)
