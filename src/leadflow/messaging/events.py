"""Recording what happens to a message: `message_event_record` (and its bulk form for the
dispatcher, `message_events_record_bulk`).

It writes the MessageEvent row, stamps the first time of each kind on the Message, and puts the
person-facing facts in the event log (so they show on the timeline, and segments and journeys see
them): `Email Delivered` when the server accepted it, `Email Opened`, `Email Clicked`,
`Email Bounced`, `Email Unsubscribed`, `Email Marked as Spam`, each with the `campaign`, template,
message and (for clicks) URL.

A human open or click goes through the pipeline like any of the person's own events (it scores,
it can trigger). It is appended under an identity the contact really has (its user id, else one
of its anonymous ids, else an anonymous id minted for it and stored as its Identity), never a
made-up one: identity resolution would otherwise create a second, empty contact and the click
would score nobody.

A machine open or bot click is appended already processed (LeadFlow's own record, never scored)
under its own name, `Email Opened (machine)` / `Email Clicked (machine)`, with `machine: true`:
segments and journeys that look for `Email Clicked` must not see link scanners.
"""

from __future__ import annotations

import datetime as dt

from django.db import IntegrityError, connection, transaction

from leadflow.contacts.processing import rows_insert_pg
from leadflow.core import clock
from leadflow.messaging.models import Message, MessageEvent, MessageEventKind

FIRST_TIME = {
    MessageEventKind.DELIVERED: "delivered_at", MessageEventKind.OPENED: "opened_at",
    MessageEventKind.CLICKED: "clicked_at", MessageEventKind.BOUNCED: "bounced_at",
    MessageEventKind.UNSUBSCRIBED: "unsubscribed_at", MessageEventKind.COMPLAINED: "complained_at",
}

LOG_EVENTS = {
    MessageEventKind.SENT: "Email Delivered", MessageEventKind.OPENED: "Email Opened",
    MessageEventKind.CLICKED: "Email Clicked", MessageEventKind.BOUNCED: "Email Bounced",
    MessageEventKind.UNSUBSCRIBED: "Email Unsubscribed", MessageEventKind.COMPLAINED: "Email Marked as Spam",
}
MACHINE_LOG_EVENTS = {
    MessageEventKind.OPENED: "Email Opened (machine)", MessageEventKind.CLICKED: "Email Clicked (machine)",
}

# The person's own actions: through the pipeline unless flagged machine.
PERSON_ACTIONS = frozenset({MessageEventKind.OPENED, MessageEventKind.CLICKED})
# Detail keys that describe the request, not the message: they go in the log event's context.
CONTEXT_KEYS = {"ip": "ip", "user_agent": "userAgent"}


def log_properties(message: Message) -> dict:
    return {"campaign": message.campaign, "message_id": message.pk,
            "template": message.template.slug if message.template_id else "",
            "template_version": message.version.number if message.version_id else None,
            "broadcast_id": message.broadcast_id, "topic": message.topic, "source": message.source}


def _first_times(message: Message, kind: str, at: dt.datetime, machine: bool) -> None:
    if machine:
        return
    columns = [FIRST_TIME[kind]] if kind in FIRST_TIME else []
    if kind == MessageEventKind.CLICKED:
        columns.append("opened_at")  # a click implies the message was opened
    for column in columns:
        if getattr(message, column) is None:
            Message.objects.filter(pk=message.pk, **{f"{column}__isnull": True}).update(**{column: at})
            setattr(message, column, at)


def message_event_record(*, message: Message, kind: str, at: dt.datetime | None = None, machine: bool = False,
                         url: str = "", detail: dict | None = None) -> MessageEvent:
    """Record that `kind` happened to `message` (in the caller's transaction)."""
    if kind not in MessageEventKind.values:
        raise ValueError(f"unknown message event kind {kind!r}")
    at = at or clock.now()
    detail = detail or {}
    row = MessageEvent.objects.create(workspace_id=message.workspace_id, message=message,
                                      contact_id=message.contact_id, kind=kind, at=at, machine=machine,
                                      url=url[:2000], detail=detail)
    _first_times(message, kind, at, machine)
    name = (MACHINE_LOG_EVENTS if machine else LOG_EVENTS).get(kind)
    if name and message.contact_id and message.kind != "test":
        properties = {**log_properties(message), **({"url": url} if url else {}),
                      **({"machine": True} if machine else {}),
                      **{k: v for k, v in detail.items() if k not in CONTEXT_KEYS}}
        context = {CONTEXT_KEYS[k]: v for k, v in detail.items() if k in CONTEXT_KEYS and v}
        _log_append(message, name, properties, context, row, at,
                    through_pipeline=kind in PERSON_ACTIONS and not machine)
    return row


def message_events_record_bulk(*, messages: list[Message], kind: str, at: dt.datetime | None = None,
                               details: list[dict] | None = None) -> int:
    """`message_event_record` for many messages at once (the dispatcher's sent, deferred and
    blocked), in a fixed number of statements: one insert of the rows, one update per first-time
    column, one append of the log events. `details`, when given, is each message's detail, in
    order. Only for kinds that are not a person's action (they never go through the pipeline).
    Returns the number of rows written."""
    from leadflow.contacts.models import Contact
    from leadflow.tracking.system_events import system_events_append

    if kind in PERSON_ACTIONS:
        raise ValueError("opens and clicks are recorded one by one (they go through the pipeline)")
    if not messages:
        return 0
    at = at or clock.now()
    rows = _events_insert([MessageEvent(workspace_id=m.workspace_id, message=m, contact_id=m.contact_id, kind=kind,
                                        at=at, detail=details[i] if details else {})
                           for i, m in enumerate(messages)])
    column = FIRST_TIME.get(kind)
    if column:
        Message.objects.filter(pk__in=[m.pk for m in messages], **{f"{column}__isnull": True}).update(**{column: at})
    name = LOG_EVENTS.get(kind)
    if name:
        wanted = [(m, row) for m, row in zip(messages, rows) if m.contact_id and m.kind != "test"]
        by_workspace: dict[int, list] = {}
        contacts = Contact.objects.filter(pk__in={m.contact_id for m, _ in wanted}).only("pk", "user_id")
        contact_of = {c.pk: c for c in contacts}
        for message, row in wanted:
            contact = contact_of.get(message.contact_id)
            if contact is not None and row.pk is not None:
                by_workspace.setdefault(message.workspace_id, []).append(
                    (contact, f"lf-email-{row.pk}", name, log_properties(message)))
        for workspace_id, items in by_workspace.items():
            system_events_append(workspace_id=workspace_id, now=at, system="email", items=items)
    return len(rows)


_INSERT_COLUMNS = ("workspace_id", "message_id", "contact_id", "kind", "at", "machine", "url", "detail")


def _events_insert(rows: list[MessageEvent]) -> list[MessageEvent]:
    """`bulk_create(rows)`. On PostgreSQL the rows go as one JSON parameter into `INSERT … SELECT
    … FROM jsonb_populate_recordset(…) RETURNING id`: Django sends a bulk insert as one array per
    column, and psycopg quotes every array element in Python."""
    if connection.vendor != "postgresql":
        return MessageEvent.objects.bulk_create(rows)
    ids = rows_insert_pg(MessageEvent, _INSERT_COLUMNS,
                         [{column: getattr(row, column) for column in _INSERT_COLUMNS} for row in rows], returning=True)
    for row, pk in zip(rows, ids):
        row.pk = pk
        row._state.adding = False
        row._state.db = connection.alias
    return rows


def contact_log_identity(contact) -> dict:
    """The Segment identity fields under which an event resolves to exactly this contact.

    Its user id if it has a user_id Identity, else its oldest anonymous_id Identity, else a new
    anonymous id `leadflow-contact-<id>` stored as its Identity (a contact imported or created by
    email only has no key a track call can carry: `track` needs a userId or an anonymousId).
    """
    from leadflow.contacts.models import Identity

    owned = dict(Identity.objects.filter(workspace_id=contact.workspace_id, contact_id=contact.pk,
                                         kind__in=["user_id", "anonymous_id"])
                 .order_by("-kind", "pk").values_list("kind", "value")[:1])
    if "user_id" in owned:
        return {"userId": owned["user_id"]}
    if "anonymous_id" in owned:
        return {"anonymousId": owned["anonymous_id"]}
    value = f"leadflow-contact-{contact.pk}"
    try:
        with transaction.atomic():
            Identity.objects.create(workspace_id=contact.workspace_id, contact_id=contact.pk,
                                    kind="anonymous_id", value=value, created_at=clock.now())
    except IntegrityError:
        pass  # made by a concurrent click, or the contact it was made for was merged into this one
    return {"anonymousId": value}


def _log_append(message: Message, name: str, properties: dict, context: dict, row: MessageEvent,
                at: dt.datetime, *, through_pipeline: bool) -> None:
    from leadflow.contacts.models import Contact
    from leadflow.core.services import ServiceError
    from leadflow.tracking.system_events import system_events_append

    contact = Contact.objects.filter(pk=message.contact_id).only("pk", "user_id", "workspace_id").first()
    if contact is None:
        return
    message_id = f"lf-email-{row.pk}"
    if not through_pipeline:
        system_events_append(workspace_id=message.workspace_id, now=at, system="email",
                             items=[(contact, message_id, name, properties)])
        return
    from leadflow.tracking.ingest import events_append

    result = events_append(workspace=message.workspace_id, messages=[{
        "type": "track", "event": name, "messageId": message_id, **contact_log_identity(contact),
        "timestamp": at.isoformat(), "properties": properties,
        "context": {**context, "leadflow": {"system": "email"}}}])
    if result.rejected:
        raise ServiceError(f"email event rejected: {result.rejected}")
