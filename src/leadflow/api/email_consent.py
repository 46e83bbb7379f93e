"""Management API: email consent: subscription topics, a person's subscriptions, pauses and the
suppression list (with CSV import). Mounted at /api/email/consent."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from ninja import File, Form, Query, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile
from pydantic import Field

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.consent import selectors, services
from leadflow.consent.models import SuppressionReason, Topic
from leadflow.contacts import selectors as contact_selectors
from leadflow.contacts.imports import ImportFileError

router = Router(tags=["email consent"])


# --- schemas ----------------------------------------------------------------------------------

class ProblemOut(Schema):
    detail: str


class TopicIn(Schema):
    name: str = Field(..., max_length=200)
    slug: str = Field("", max_length=100, description="from the name when blank; `marketing` is reserved")
    description: str = Field("", max_length=500)
    mode: Literal["opt_in", "opt_out"] = "opt_out"
    double_opt_in: bool = Field(False, description="for everyone; opt-in topics only (an opt-out topic may use "
                                                   "`double_opt_in_countries`)")
    double_opt_in_countries: list[str] = Field([], description="ISO codes, e.g. [\"DE\", \"AT\"]")
    position: int | None = Field(None, ge=0)


class TopicPatch(Schema):
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=500)
    mode: Literal["opt_in", "opt_out"] | None = None
    double_opt_in: bool | None = Field(None, description="for everyone; refused on an opt-out topic")
    double_opt_in_countries: list[str] | None = None
    position: int | None = Field(None, ge=0)
    archived: bool | None = Field(None, description="false restores an archived topic")


class TopicOut(Schema):
    id: int
    slug: str
    name: str
    description: str
    mode: str
    double_opt_in: bool
    double_opt_in_countries: list[str]
    position: int
    created_at: dt.datetime
    archived_at: dt.datetime | None


class TopicStateOut(Schema):
    slug: str
    name: str
    mode: str
    double_opt_in: bool = Field(..., description="a grant needs email confirmation for this person")
    subscribed: bool = Field(..., description="the topic's own state")
    receiving: bool = Field(..., description="subscribed and all marketing not withdrawn")
    status: Literal["granted", "withdrawn", "none"]
    at: dt.datetime | None
    pending_optin: bool


class SubscriptionsOut(Schema):
    contact_id: int
    marketing: bool = Field(..., description="all marketing not withdrawn")
    marketing_at: dt.datetime | None
    paused_until: dt.datetime | None
    topics: list[TopicStateOut]


class SubscriptionIn(Schema):
    topic: str = Field(..., max_length=100, description="a topic slug, or `marketing` for all marketing")
    granted: bool
    source: str = Field("api", max_length=200)
    wording: str = Field("", max_length=5000, description="the exact sentence the person agreed to")
    ip: str | None = Field(None, description="the person's IP address when they gave it")
    user_agent: str = Field("", max_length=500)


class RecordOut(Schema):
    id: int
    topic: str
    status: str
    source: str
    wording: str
    at: dt.datetime


class SubscriptionSetOut(Schema):
    result: Literal["recorded", "unchanged", "confirmation_sent"]
    record: RecordOut | None = None
    optin_request_id: int | None = None
    subscriptions: SubscriptionsOut


class PauseIn(Schema):
    weeks: int = Field(..., ge=1, le=services.MAX_PAUSE_WEEKS)


class SuppressionIn(Schema):
    email: str = Field(..., max_length=320)
    reason: Literal[tuple(SuppressionReason.values)] = "manual"  # type: ignore[valid-type]
    detail: str = Field("", max_length=500)


class LiftIn(Schema):
    email: str = Field(..., max_length=320)


class SuppressionOut(Schema):
    id: int
    email: str
    reason: str
    detail: str
    message_id: int | None
    created_by: str
    created_at: dt.datetime
    lifted_at: dt.datetime | None
    lifted_by: str


class SuppressionPage(Schema):
    items: list[SuppressionOut]
    next: str | None


class ImportOut(Schema):
    rows: int
    added: int
    already: int
    invalid: list[dict]


# --- helpers ----------------------------------------------------------------------------------

def _topic(request, topic_id: int) -> Topic:
    topic = selectors.topic_get(workspace_id=request.workspace.pk, topic_id=topic_id)
    if topic is None:
        raise HttpError(404, f"no topic {topic_id} in this workspace")
    return topic


def _contact(request, contact_id: int):
    contact = contact_selectors.contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    return contact


def _subscriptions_out(contact) -> dict:
    subs = selectors.subscriptions_get(contact=contact)
    return {"contact_id": contact.pk, "marketing": subs.marketing, "marketing_at": subs.marketing_at,
            "paused_until": subs.paused_until,
            "topics": [{"slug": t.slug, "name": t.name, "mode": t.mode, "double_opt_in": t.double_opt_in,
                        "subscribed": t.subscribed, "receiving": t.receiving, "status": t.status, "at": t.at,
                        "pending_optin": t.pending_optin} for t in subs.topics]}


def _ip_valid(ip: str | None) -> str | None:
    import ipaddress

    if not ip:
        return None
    try:
        return str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        raise HttpError(422, f"ip: {ip!r} is not an IP address") from None


# --- topics -----------------------------------------------------------------------------------

@router.get("/topics", response=list[TopicOut], summary="Subscription topics in display order")
def topics_list(request, archived: bool = Query(False, description="list archived topics instead")):
    return list(selectors.topic_list(workspace_id=request.workspace.pk, archived=archived))


@router.post("/topics", response={201: TopicOut, 400: ProblemOut},
             summary="Create a topic (opt-in or opt-out; double opt-in for everyone or some countries)")
def topics_create(request, payload: TopicIn):
    topic = services.topic_create(workspace_id=request.workspace.pk, actor=actor(request), **payload.dict())
    return Status(201, topic)


@router.get("/topics/{topic_id}", response=TopicOut, summary="One topic")
def topics_get(request, topic_id: int):
    return _topic(request, topic_id)


@router.patch("/topics/{topic_id}", response={200: TopicOut, 400: ProblemOut},
              summary="Change a topic (its slug never changes); `archived: false` restores it")
def topics_update(request, topic_id: int, payload: TopicPatch):
    topic = _topic(request, topic_id)
    fields = payload.dict(exclude_unset=True)
    archived = fields.pop("archived", None)
    topic = services.topic_update(topic=topic, actor=actor(request), **fields)
    if archived is True:
        topic = services.topic_archive(topic=topic, actor=actor(request))
    elif archived is False:
        topic = services.topic_restore(topic=topic, actor=actor(request))
    return topic


@router.delete("/topics/{topic_id}", response={204: None},
               summary="Archive: the topic leaves the preference centre and messages on it are blocked")
def topics_archive(request, topic_id: int):
    services.topic_archive(topic=_topic(request, topic_id), actor=actor(request))
    return Status(204, None)


# --- a person's subscriptions ---------------------------------------------------------------------

@router.get("/contacts/{contact_id}/subscriptions", response=SubscriptionsOut,
            summary="A person's subscriptions: all marketing, each topic, pending confirmations, pause")
def subscriptions_get(request, contact_id: int):
    return _subscriptions_out(_contact(request, contact_id))


@router.post("/contacts/{contact_id}/subscriptions", response={200: SubscriptionSetOut, 400: ProblemOut,
                                                                404: ProblemOut},
             summary="Subscribe a person to a topic or unsubscribe them (a consent record)")
def subscriptions_set(request, contact_id: int, payload: SubscriptionIn):
    """A grant on a topic that needs double opt-in for this person records nothing yet: it
    queues the confirmation email (`confirmation_sent`) and the grant is recorded when the
    person follows its link."""
    contact = _contact(request, contact_id)
    try:
        done = services.subscription_set(contact=contact, topic=payload.topic, granted=payload.granted,
                                          source=payload.source, wording=payload.wording, ip=_ip_valid(payload.ip),
                                          user_agent=payload.user_agent)
    except services.NotFound as exc:
        return Status(404, {"detail": str(exc)})
    result = "confirmation_sent" if done.pending else "recorded" if done.changed else "unchanged"
    record = done.record
    return {"result": result, "optin_request_id": done.optin.pk if done.optin else None,
            "record": None if record is None else {"id": record.pk, "topic": record.topic, "status": record.status,
                                                   "source": record.source, "wording": record.wording,
                                                   "at": record.at},
            "subscriptions": _subscriptions_out(contact)}


@router.post("/contacts/{contact_id}/pause", response={200: SubscriptionsOut, 400: ProblemOut},
             summary="Pause marketing email to a person for N weeks (replaces an earlier pause)")
def pause_set(request, contact_id: int, payload: PauseIn):
    contact = _contact(request, contact_id)
    services.marketing_pause(contact=contact, weeks=payload.weeks)
    return _subscriptions_out(contact)


@router.delete("/contacts/{contact_id}/pause", response=SubscriptionsOut, summary="End a person's pause now")
def pause_end(request, contact_id: int):
    contact = _contact(request, contact_id)
    services.marketing_resume(contact=contact)
    return _subscriptions_out(contact)


# --- suppressions -----------------------------------------------------------------------------------

@router.get("/suppressions", response=SuppressionPage,
            summary="Suppressed addresses, newest first (lifted ones with `lifted=true`)")
def suppressions_list(request, q: str = Query("", description="part of the address"),
                      reason: Literal[tuple([""] + SuppressionReason.values)] = "",  # type: ignore[valid-type]
                      lifted: bool = False, limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                      next: str | None = Query(None, description="the `next` cursor of the previous page")):
    qs = selectors.suppression_search(workspace_id=request.workspace.pk, q=q, reason=reason, lifted=lifted)
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("-pk",))
    return {"items": items, "next": following}


@router.post("/suppressions", response={200: SuppressionOut, 201: SuppressionOut, 400: ProblemOut},
             summary="Suppress an address (201; 200 when it already was)")
def suppressions_add(request, payload: SuppressionIn):
    row = services.suppression_add(workspace_id=request.workspace.pk, email=payload.email, reason=payload.reason,
                                   detail=payload.detail, actor=actor(request))
    return Status(201 if row.was_created else 200, row)


@router.post("/suppressions/lift", response={200: SuppressionOut, 404: ProblemOut},
             summary="Allow mail to an address again (the row stays, marked lifted)")
def suppressions_lift(request, payload: LiftIn):
    try:
        return services.suppression_lift(workspace_id=request.workspace.pk, email=payload.email,
                                         actor=actor(request))
    except services.NotFound as exc:
        return Status(404, {"detail": str(exc)})


@router.post("/suppressions/csv", response={200: ImportOut, 400: ProblemOut},
             summary="Suppress every address in a CSV file (an `email` column, or one address per line)")
def suppressions_csv(request, file: File[UploadedFile],
                     reason: Form[Literal[tuple(SuppressionReason.values)]] = "manual",  # type: ignore[valid-type]
                     detail: Form[str] = ""):
    try:
        report = services.suppressions_import(workspace_id=request.workspace.pk, file=file, actor=actor(request),
                                              reason=reason, detail=detail[:500])
    except ImportFileError as exc:
        return Status(400, {"detail": str(exc)})
    return report.as_dict()

