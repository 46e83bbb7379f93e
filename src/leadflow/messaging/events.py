"""Recording what happens to a message: one function, `message_event_record`.

It writes the MessageEvent row, stamps the first time of each kind on the Message, and puts the
person-facing facts in the event log (so they show on the timeline, and segments and journeys see
them): `Email Delivered` when the server accepted it, `Email Opened`, `Email Clicked`,
`Email Bounced`, `Email Unsubscribed`, `Email Marked as Spam`, each with the `campaign`, template,
message and (for clicks) URL. A human open or click goes through the pipeline like any of the
person's own events (it scores, it can trigger); a machine open or bot click is appended already
processed (LeadFlow's own record, never scored) with `machine: true`.
"""

from __future__ import annotations

import datetime as dt

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

# The person's own actions: through the pipeline unless flagged machine.
PERSON_ACTIONS = frozenset({MessageEventKind.OPENED, MessageEventKind.CLICKED})


def log_properties(message: Message) -> dict:
    return {"campaign": message.campaign, "message_id": message.pk,
            "template": message.template.slug if message.template_id else "",
            "template_version": message.version.number if message.version_id else None,
            "broadcast_id": message.broadcast_id, "topic": message.topic, "source": message.source}


def message_event_record(*, message: Message, kind: str, at: dt.datetime | None = None, machine: bool = False,
                         url: str = "", detail: dict | None = None) -> MessageEvent:
    """Record that `kind` happened to `message` (in the caller's transaction)."""
    at = at or clock.now()
    row = MessageEvent.objects.create(workspace_id=message.workspace_id, message=message,
                                      contact_id=message.contact_id, kind=kind, at=at, machine=machine,
                                      url=url[:2000], detail=detail or {})
    column = FIRST_TIME.get(kind)
    if column and not machine and getattr(message, column) is None:
        Message.objects.filter(pk=message.pk, **{f"{column}__isnull": True}).update(**{column: at})
        setattr(message, column, at)
    name = LOG_EVENTS.get(kind)
    if name and message.contact_id and message.kind != "test":
        properties = {**log_properties(message), **({"url": url} if url else {}),
                      **({"machine": True} if machine else {}), **(detail or {})}
        _log_append(message, name, properties, row, at, through_pipeline=kind in PERSON_ACTIONS and not machine)
    return row


def _log_append(message: Message, name: str, properties: dict, row: MessageEvent, at: dt.datetime,
                *, through_pipeline: bool) -> None:
    from leadflow.contacts.models import Contact
    from leadflow.tracking.system_events import system_events_append

    contact = Contact.objects.filter(pk=message.contact_id).only("pk", "user_id", "workspace_id").first()
    if contact is None:
        return
    message_id = f"lf-email-{row.pk}"
    if not through_pipeline:
        system_events_append(workspace_id=message.workspace_id, now=at, system="email",
                             items=[(contact, message_id, name, properties)])
        return
    from leadflow.contacts.models import Identity
    from leadflow.tracking.ingest import events_append

    if contact.user_id:
        ident = {"userId": contact.user_id}
    else:
        anonymous = (Identity.objects.filter(contact_id=contact.pk, kind="anonymous_id").order_by("pk")
                     .values_list("value", flat=True).first())
        ident = {"anonymousId": anonymous or f"leadflow-contact-{contact.pk}"}
    events_append(workspace=message.workspace_id, messages=[{
        "type": "track", "event": name, "messageId": message_id, **ident, "timestamp": at.isoformat(),
        "properties": properties, "context": {"leadflow": {"system": "email"}}}])
