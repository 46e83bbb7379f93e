"""Putting messages in the outbox: the one way anything in LeadFlow asks for an email to be sent.

The caller's transaction writes the Message row (and its `queued` event); the dispatcher
(`leadflow.messaging.dispatch`) sends it later. A `dedupe_key` (e.g. `journey:ENROLLMENT:NODE`,
`broadcast:ID:CONTACT`) makes queueing idempotent: queueing the same key again returns the row
already there and sends nothing twice.
"""

from __future__ import annotations

import datetime as dt

from django.db import IntegrityError, transaction

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.services import ServiceError
from leadflow.messaging.models import (Message, MessageEvent, MessageEventKind, MessageKind, SendingServer, Template,
                                       TemplateVersion)

BATCH = 1000
# A version that was approved: the current one, or one superseded since — sends that pinned it (a
# broadcast still queueing, a journey's people) finish on the version they started with.
SENDABLE = frozenset({"approved", "superseded"})


def _check_server(workspace_id: int, server_id: int | None) -> None:
    if server_id is not None and not SendingServer.objects.filter(pk=server_id, workspace_id=workspace_id).exists():
        raise ServiceError(f"there is no sending server {server_id} in this workspace")


def _campaign(template: Template | None, campaign: str) -> str:
    return campaign or (template.slug if template is not None else "")


def message_queue(*, workspace_id: int, contact: Contact | None, template: Template | None = None,
                  version: TemplateVersion | None = None, kind: str = MessageKind.MARKETING, topic: str | None = None,
                  source: str = "", campaign: str = "", context: dict | None = None, dedupe_key: str = "",
                  not_before: dt.datetime | None = None, server_id: int | None = None,
                  to_email: str | None = None, broadcast_id: int | None = None,
                  variant_id: int | None = None) -> Message:
    """Queue one message. `version` defaults to the template's approved version (a marketing
    message without one is refused); `to_email` defaults to the contact's address; `topic` to
    the template's. Returns the new row, or the existing one for the same `dedupe_key`."""
    now = clock.now()
    if template is not None and version is None:
        version = template.approved_version
    if kind != MessageKind.TEST and template is not None and (version is None or version.status not in SENDABLE):
        raise ServiceError(f"template {template.slug!r} has no approved version to send")
    address = (to_email if to_email is not None else (contact.email if contact is not None else "")).strip()
    if not address:
        raise ServiceError("the message has no recipient address")
    if kind not in MessageKind.values:
        raise ServiceError(f"unknown message kind {kind!r}")
    _check_server(workspace_id, server_id)
    fields = dict(workspace_id=workspace_id, contact=contact, to_email=address, kind=kind,
                  topic=topic if topic is not None else (template.topic if template is not None else ""),
                  template=template, version=version, source=source, campaign=_campaign(template, campaign),
                  context=context or {}, dedupe_key=dedupe_key, not_before=not_before or now,
                  server_id=server_id, broadcast_id=broadcast_id, variant_id=variant_id, queued_at=now)
    if dedupe_key:
        existing = Message.objects.filter(workspace_id=workspace_id, dedupe_key=dedupe_key).exclude(dedupe_key="").first()
        if existing is not None:
            return existing
        try:
            with transaction.atomic():
                message = Message.objects.create(**fields)
        except IntegrityError:
            return Message.objects.get(workspace_id=workspace_id, dedupe_key=dedupe_key)
    else:
        message = Message.objects.create(**fields)
    MessageEvent.objects.create(workspace_id=workspace_id, message=message, contact=contact,
                                kind=MessageEventKind.QUEUED, at=now)
    return message


def messages_queue_bulk(*, workspace_id: int, contacts: list[Contact], template: Template,
                        version: TemplateVersion, topic: str | None = None, source: str, campaign: str = "",
                        dedupe_prefix: str, not_before: dt.datetime | None = None, server_id: int | None = None,
                        broadcast_id: int | None = None, variant_id: int | None = None,
                        context: dict | None = None) -> int:
    """Queue one marketing message per contact (with an address) in a few statements; the dedupe
    key is `dedupe_prefix` + contact id, so running it again for the same people queues nothing
    new. Returns how many rows were new."""
    rows = [(c, f"{dedupe_prefix}{c.pk}", context or {}) for c in contacts if c.email.strip()]
    ids = messages_queue_many(workspace_id=workspace_id, rows=rows, template=template, version=version, topic=topic,
                              source=source, campaign=campaign, not_before=not_before, server_id=server_id,
                              broadcast_id=broadcast_id, variant_id=variant_id, new_only=True)
    return sum(1 for pk in ids if pk is not None)


def messages_queue_many(*, workspace_id: int, rows: list[tuple[Contact, str, dict]], template: Template,
                        version: TemplateVersion, topic: str | None = None, source: str, campaign: str = "",
                        not_before: dt.datetime | None = None, server_id: int | None = None,
                        broadcast_id: int | None = None, variant_id: int | None = None,
                        now: dt.datetime | None = None, new_only: bool = False) -> list[int | None]:
    """Queue one marketing message per (contact, dedupe key, context) in a few statements per
    1,000 rows. Returns the message id of each row, in order: the new row's, or the one already
    queued under the same key (None for those with `new_only`), so a step redone queues nothing
    twice."""
    now = now or clock.now()
    if version.status not in SENDABLE:
        raise ServiceError(f"version {version.number} of {template.slug!r} is not approved")
    _check_server(workspace_id, server_id)
    out: list[int | None] = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        keys = [key for _, key, _ in chunk]
        # `.exclude(dedupe_key="")` matches the partial unique index, so the lookup can use it.
        have = dict(Message.objects.filter(workspace_id=workspace_id, dedupe_key__in=keys).exclude(dedupe_key="")
                    .values_list("dedupe_key", "pk"))
        new = [Message(workspace_id=workspace_id, contact=c, to_email=c.email.strip(), kind=MessageKind.MARKETING,
                       topic=topic if topic is not None else template.topic, template=template, version=version,
                       source=source, campaign=_campaign(template, campaign), context=context,
                       dedupe_key=key, not_before=not_before or now, server_id=server_id,
                       broadcast_id=broadcast_id, variant_id=variant_id, queued_at=now)
               for c, key, context in chunk if key not in have]
        Message.objects.bulk_create(new, batch_size=BATCH, ignore_conflicts=True)
        stored = {key: (pk, contact_id) for key, pk, contact_id in Message.objects.filter(
            workspace_id=workspace_id, dedupe_key__in=[m.dedupe_key for m in new], queued_at=now)
            .exclude(dedupe_key="").values_list("dedupe_key", "pk", "contact_id")}
        MessageEvent.objects.bulk_create(
            [MessageEvent(workspace_id=workspace_id, message_id=pk, contact_id=contact_id,
                          kind=MessageEventKind.QUEUED, at=now) for pk, contact_id in stored.values()],
            batch_size=BATCH)
        if len(stored) < len(new):  # another worker queued some of them meanwhile
            have.update(Message.objects.filter(workspace_id=workspace_id, dedupe_key__in=keys)
                        .exclude(dedupe_key="").values_list("dedupe_key", "pk"))
        for key in keys:
            if key in stored:
                out.append(stored[key][0])
            else:
                out.append(None if new_only else have.get(key))
    return out
