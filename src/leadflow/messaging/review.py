"""The review queue: what a person does with a message whose send was interrupted.

The dispatcher never resends a message that may have gone out (DESIGN principle 4): one left in
`sending` past its lease, or whose connection broke after the whole message was sent, goes to
`review`. Someone then checks (the recipient's mailbox, the provider's log, an open recorded
meanwhile) and decides, for one message or many at once:

- **resend** (`review_resend`): back to `queued`, due now, keeping its dedupe key and its attempts
  count; the dispatcher sends it like any other, through the consent gate. A deliberate decision,
  so it is an event of its own (`requeued`) naming who made it.
- **mark as sent** (`review_mark_sent`): it did arrive. `sent`, with `sent_at` the time it was
  being sent (so frequency caps and statistics count it when it went out), and the `sent` event
  (the contact's timeline shows `Email Delivered`).
- **dismiss** (`review_dismiss`): it did not go out and will not be resent: `failed` with the
  reason given.

Only messages in `review` can be acted on. A request naming any other message (another status,
another workspace, an unknown id) is refused as a whole with the reason, and nothing is changed.
The rows are locked (`SELECT … FOR UPDATE` on PostgreSQL; SQLite transactions here take the
write lock at their start) and updated only `WHERE status = 'review'`, so two people deciding
at once cannot both act on the same message. Many messages cost a fixed number of statements per
batch of `BATCH`: one locking read, one UPDATE, one insert of the events (plus, when marked sent,
one append to the event log) and one audit entry.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import Count, DateTimeField, QuerySet, Value
from django.db.models.functions import Coalesce

from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError, audit_record
from leadflow.messaging.events import message_events_record_bulk
from leadflow.messaging.models import (Broadcast, BroadcastStatus, Message, MessageEvent, MessageEventKind,
                                       MessageStatus)

BATCH = 500
MAX_IDS = 10_000
RESEND, MARK_SENT, DISMISS = "resend", "mark_sent", "dismiss"
ACTIONS = (RESEND, MARK_SENT, DISMISS)
ACTION_LABELS = {RESEND: "resent", MARK_SENT: "marked as sent", DISMISS: "dismissed as not sent"}
DEFAULT_REASONS = {
    RESEND: "sent again by hand after review",
    MARK_SENT: "marked as sent after review: the recipient got it",
}


class ReviewRefused(ServiceError):
    """The request named messages that cannot be acted on; nothing was changed."""

    def __init__(self, text: str, *, not_found: list[int] | None = None,
                 not_in_review: dict[int, str] | None = None):
        super().__init__(text)
        self.not_found = not_found or []
        self.not_in_review = not_in_review or {}


@dataclass(frozen=True)
class ReviewDone:
    action: str
    ids: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.ids)


# --- selectors --------------------------------------------------------------------------------

def review_messages(*, workspace: Workspace, broadcast_id: int | None = None,
                    journey_id: int | None = None) -> QuerySet[Message]:
    """The workspace's messages in review, newest first, optionally of one broadcast or journey."""
    queryset = Message.objects.filter(workspace=workspace, status=MessageStatus.REVIEW)
    if broadcast_id is not None:
        queryset = queryset.filter(broadcast_id=broadcast_id)
    if journey_id is not None:
        queryset = queryset.filter(source__startswith=f"journey:{journey_id}:")
    return queryset.select_related("template", "version", "broadcast", "contact").order_by("-pk")


def review_count(*, workspace_id: int) -> int:
    return Message.objects.filter(workspace_id=workspace_id, status=MessageStatus.REVIEW).count()


def review_reasons(*, messages: list[Message]) -> dict[int, dict]:
    """Why each message is in review, in one query: the reason (and explanation) of its latest
    event that gives one, else the message's `error`."""
    found: dict[int, dict] = {}
    events = (MessageEvent.objects.filter(message_id__in=[m.pk for m in messages]).order_by("at", "pk")
              .values_list("message_id", "kind", "at", "detail"))
    for message_id, kind, at, detail in events:
        detail = detail if isinstance(detail, dict) else {}
        if detail.get("reason"):
            found[message_id] = {"reason": str(detail["reason"]), "why": str(detail.get("why") or ""),
                                 "kind": kind, "at": at}
    for m in messages:
        found.setdefault(m.pk, {"reason": m.error, "why": "", "kind": "", "at": m.sending_at})
    return found


def review_sources(*, workspace: Workspace) -> list[dict]:
    """The broadcasts and journeys that have messages in review, with how many, most first (one
    grouped query and one for the journeys' names)."""
    from leadflow.journeys.models import Journey
    from leadflow.journeys.selectors import journey_id_of_source

    rows = (Message.objects.filter(workspace=workspace, status=MessageStatus.REVIEW).order_by()
            .values("broadcast_id", "broadcast__name", "source").annotate(n=Count("pk")))
    broadcasts: dict[int, dict] = {}
    journeys: dict[int, int] = {}
    others = 0
    for row in rows:
        if row["broadcast_id"] is not None:
            entry = broadcasts.setdefault(row["broadcast_id"], {"kind": "broadcast", "id": row["broadcast_id"],
                                                               "name": row["broadcast__name"], "count": 0})
            entry["count"] += row["n"]
            continue
        journey_id = journey_id_of_source(row["source"])
        if journey_id is not None:
            journeys[journey_id] = journeys.get(journey_id, 0) + row["n"]
        else:
            others += row["n"]
    names = dict(Journey.objects.filter(workspace=workspace, pk__in=list(journeys)).values_list("pk", "name"))
    out = list(broadcasts.values()) + [{"kind": "journey", "id": pk, "name": names.get(pk, f"journey {pk}"),
                                        "count": n} for pk, n in journeys.items()]
    out.sort(key=lambda s: (-s["count"], s["kind"], s["name"]))
    if others:
        out.append({"kind": "other", "id": None, "count": others,
                    "name": "other sends (tests, opt-in confirmations, magnet deliveries)"})
    return out


# --- services ---------------------------------------------------------------------------------

def review_resend(*, workspace: Workspace, actor: str, message_ids: list[int] | None = None,
                  broadcast_id: int | None = None, journey_id: int | None = None, everything: bool = False,
                  note: str = "") -> ReviewDone:
    """Send the chosen messages again: `queued`, due now, same dedupe key and attempts."""
    return _act(RESEND, workspace=workspace, actor=actor, message_ids=message_ids, broadcast_id=broadcast_id,
                journey_id=journey_id, everything=everything, reason=note)


def review_mark_sent(*, workspace: Workspace, actor: str, message_ids: list[int] | None = None,
                     broadcast_id: int | None = None, journey_id: int | None = None, everything: bool = False,
                     note: str = "") -> ReviewDone:
    """Record that the chosen messages did arrive: `sent` as of when they were being sent."""
    return _act(MARK_SENT, workspace=workspace, actor=actor, message_ids=message_ids, broadcast_id=broadcast_id,
                journey_id=journey_id, everything=everything, reason=note)


def review_dismiss(*, workspace: Workspace, actor: str, reason: str, message_ids: list[int] | None = None,
                   broadcast_id: int | None = None, journey_id: int | None = None,
                   everything: bool = False) -> ReviewDone:
    """Record that the chosen messages did not go out and will not: `failed` with `reason`."""
    return _act(DISMISS, workspace=workspace, actor=actor, message_ids=message_ids, broadcast_id=broadcast_id,
                journey_id=journey_id, everything=everything, reason=reason)


def review_act(*, action: str, workspace: Workspace, actor: str, message_ids: list[int] | None = None,
               broadcast_id: int | None = None, journey_id: int | None = None, everything: bool = False,
               reason: str = "") -> ReviewDone:
    """One of the three by name (`resend`, `mark_sent`, `dismiss`): for the API and the page."""
    if action not in ACTIONS:
        raise ServiceError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    return _act(action, workspace=workspace, actor=actor, message_ids=message_ids, broadcast_id=broadcast_id,
                journey_id=journey_id, everything=everything, reason=reason)


def _clean_ids(message_ids) -> list[int]:
    ids: list[int] = []
    for raw in message_ids:
        if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit())):
            raise ServiceError(f"{raw!r} is not a message id")
        ids.append(int(raw))
    ids = sorted(set(ids))
    if not ids:
        raise ServiceError("choose at least one message")
    if len(ids) > MAX_IDS:
        raise ServiceError(f"at most {MAX_IDS} messages at a time ({len(ids)} given)")
    return ids


def _locked(queryset: QuerySet[Message]) -> QuerySet[Message]:
    queryset = queryset.select_related("template", "version").order_by("pk")
    if connection.vendor == "postgresql":
        queryset = queryset.select_for_update(of=("self",))
    return queryset


def _listing(ids, limit: int = 10) -> str:
    ids = list(ids)
    shown = ", ".join(f"#{pk}" for pk in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _select(workspace: Workspace, *, message_ids, broadcast_id, journey_id, everything) -> list[Message]:
    """The rows to act on, locked; refuses a selection with any message not in review."""
    chosen = sum([message_ids is not None, broadcast_id is not None, journey_id is not None, bool(everything)])
    if chosen != 1:
        raise ServiceError("choose the messages: a list of ids, a broadcast, a journey, or every message in review")
    if message_ids is None:
        rows = list(_locked(review_messages(workspace=workspace, broadcast_id=broadcast_id, journey_id=journey_id)))
        if not rows:
            where = (f"of broadcast {broadcast_id} " if broadcast_id is not None
                     else f"of journey {journey_id} " if journey_id is not None else "")
            raise ReviewRefused(f"no message {where}is in review in this workspace")
        return rows
    ids = _clean_ids(message_ids)
    rows: list[Message] = []
    for start in range(0, len(ids), BATCH):
        rows += _locked(Message.objects.filter(workspace=workspace, pk__in=ids[start:start + BATCH]))
    found = {m.pk for m in rows}
    not_found = [pk for pk in ids if pk not in found]
    not_in_review = {m.pk: m.status for m in rows if m.status != MessageStatus.REVIEW}
    if not_found or not_in_review:
        parts = []
        if not_in_review:
            by_status: dict[str, list[int]] = {}
            for pk, status in not_in_review.items():
                by_status.setdefault(status, []).append(pk)
            parts.append("; ".join(f"{_listing(pks)} {'is' if len(pks) == 1 else 'are'} {status}"
                                   for status, pks in by_status.items())
                         + " — only messages in review can be resent, marked as sent or dismissed")
        if not_found:
            parts.append(f"there is no message {_listing(not_found)} in this workspace")
        raise ReviewRefused("nothing was changed: " + "; ".join(parts), not_found=not_found,
                            not_in_review=not_in_review)
    return rows


def _check_resendable(rows: list[Message]) -> None:
    """A message of a cancelled broadcast would wait in the queue for ever: refuse to resend it."""
    broadcast_ids = {m.broadcast_id for m in rows if m.broadcast_id is not None}
    if not broadcast_ids:
        return
    cancelled = dict(Broadcast.objects.filter(pk__in=broadcast_ids, status=BroadcastStatus.CANCELLED)
                     .values_list("pk", "name"))
    if cancelled:
        held = [m.pk for m in rows if m.broadcast_id in cancelled]
        names = ", ".join(f"“{name}”" for name in cancelled.values())
        raise ReviewRefused(f"nothing was changed: {_listing(held)} belong{'s' if len(held) == 1 else ''} to a "
                            f"cancelled broadcast ({names}) and would never be sent; mark "
                            f"{'it' if len(held) == 1 else 'them'} as sent or dismiss "
                            f"{'it' if len(held) == 1 else 'them'} instead",
                            not_in_review={})


def _apply(action: str, batch: list[Message], *, now: dt.datetime, actor: str, reason: str) -> None:
    ids = [m.pk for m in batch]
    in_review = Message.objects.filter(pk__in=ids, status=MessageStatus.REVIEW)
    if action == RESEND:
        moved = in_review.update(status=MessageStatus.QUEUED, not_before=now, sending_at=None, error="")
        kind = MessageEventKind.REQUEUED
    elif action == MARK_SENT:
        moved = in_review.update(status=MessageStatus.SENT, error="",
                                 sent_at=Coalesce("sending_at", Value(now, output_field=DateTimeField())))
        kind = MessageEventKind.SENT
    else:
        moved = in_review.update(status=MessageStatus.FAILED, error=reason[:500])
        kind = MessageEventKind.FAILED
    if moved != len(batch):  # cannot happen under the lock; never record what did not happen
        raise ReviewRefused("nothing was changed: some of these messages were changed meanwhile; reload and "
                            "try again")
    details = [{"reason": reason, "review": action, "actor": actor, "previous_error": m.error} for m in batch]
    message_events_record_bulk(messages=batch, kind=kind, at=now, details=details)


def _act(action: str, *, workspace: Workspace, actor: str, message_ids, broadcast_id, journey_id, everything,
         reason: str) -> ReviewDone:
    reason = " ".join((reason or "").split())[:500]
    if action == DISMISS and not reason:
        raise ServiceError("say why the message is dismissed (for example: “not in the provider's log”)")
    reason = reason or DEFAULT_REASONS.get(action, "")
    now = clock.now()
    with transaction.atomic():
        rows = _select(workspace, message_ids=message_ids, broadcast_id=broadcast_id, journey_id=journey_id,
                       everything=everything)
        if action == RESEND:
            _check_resendable(rows)
        for start in range(0, len(rows), BATCH):
            batch = rows[start:start + BATCH]
            _apply(action, batch, now=now, actor=actor, reason=reason)
            audit_record(workspace=workspace, actor=actor, action=f"message.review.{action}",
                         target=f"message:{batch[0].pk}" if len(rows) == 1 else f"messages:{len(batch)}",
                         data={"ids": [m.pk for m in batch], "reason": reason, "broadcast_id": broadcast_id,
                               "journey_id": journey_id, "everything": bool(everything)})
    return ReviewDone(action, [m.pk for m in rows])
