"""Putting messages in the outbox: the one way anything in LeadFlow asks for an email to be sent.

The caller's transaction writes the Message row (and its `queued` event); the dispatcher
(`leadflow.messaging.dispatch`) sends it later. A `dedupe_key` (e.g. `journey:ENROLLMENT:NODE`,
`broadcast:ID:CONTACT`) makes queueing idempotent: queueing the same key again returns the row
already there and sends nothing twice.
"""

from __future__ import annotations

import datetime as dt
import functools

import orjson
from django.db import IntegrityError, connection, transaction

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
    1,000 rows (of the contact only its `pk` and `email` are read, so anything with those two
    will do). Returns the message id of each row, in order: the new row's, or the one already
    queued under the same key (None for those with `new_only`), so a step redone queues nothing
    twice."""
    now = now or clock.now()
    if version.status not in SENDABLE:
        raise ServiceError(f"version {version.number} of {template.slug!r} is not approved")
    _check_server(workspace_id, server_id)
    shared = dict(workspace_id=workspace_id, kind=MessageKind.MARKETING,
                  topic=topic if topic is not None else template.topic, template_id=template.pk,
                  version_id=version.pk, source=source, campaign=_campaign(template, campaign),
                  not_before=not_before or now, server_id=server_id, broadcast_id=broadcast_id,
                  variant_id=variant_id, queued_at=now)
    insert = _insert_new_pg if connection.vendor == "postgresql" else _insert_new
    out: list[int | None] = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        keys = [key for _, key, _ in chunk]
        stored, have = insert(workspace_id, chunk, shared, now)
        missing = [key for key in keys if key not in stored and key not in have]
        if missing:  # there already (PostgreSQL skips them on conflict), or queued by another worker meanwhile
            have.update(_existing(workspace_id, missing))
        for key in keys:
            if key in stored:
                out.append(stored[key])
            else:
                out.append(None if new_only else have.get(key))
    return out


def _existing(workspace_id: int, keys: list[str]) -> dict[str, int]:
    # `.exclude(dedupe_key="")` matches the partial unique index, so the lookup can use it.
    return dict(Message.objects.filter(workspace_id=workspace_id, dedupe_key__in=keys).exclude(dedupe_key="")
                .values_list("dedupe_key", "pk"))


def _insert_new(workspace_id: int, chunk: list[tuple[Contact, str, dict]], shared: dict,
                now: dt.datetime) -> tuple[dict[str, int], dict[str, int]]:
    """Insert the rows whose key is not queued yet, with their `queued` events. Returns (key → id
    of the rows inserted here, key → id of those found already there)."""
    have = _existing(workspace_id, [key for _, key, _ in chunk])
    new = [Message(contact_id=c.pk, to_email=c.email.strip(), context=context, dedupe_key=key, **shared)
           for c, key, context in chunk if key not in have]
    Message.objects.bulk_create(new, batch_size=BATCH, ignore_conflicts=True)
    stored = {key: (pk, contact_id) for key, pk, contact_id in Message.objects.filter(
        workspace_id=workspace_id, dedupe_key__in=[m.dedupe_key for m in new], queued_at=now)
        .exclude(dedupe_key="").values_list("dedupe_key", "pk", "contact_id")}
    MessageEvent.objects.bulk_create(
        [MessageEvent(workspace_id=workspace_id, message_id=pk, contact_id=contact_id,
                      kind=MessageEventKind.QUEUED, at=now) for pk, contact_id in stored.values()],
        batch_size=BATCH)
    return {key: pk for key, (pk, _) in stored.items()}, have


# The columns each queued message fills per row; every other column is the same for the chunk.
_PER_ROW = ("contact_id", "to_email", "dedupe_key", "context")


def _defaults(model, values: dict) -> dict:
    """Every concrete column but the id, by column name: `values` (by attname) where given, else
    the field's default, as a JSON object for `jsonb_populate_record`."""
    return {f.column: values[f.attname] if f.attname in values else f.get_default()
            for f in model._meta.concrete_fields if not f.primary_key}


def _insert_new_pg(workspace_id: int, chunk: list[tuple[Contact, str, dict]], shared: dict,
                   now: dt.datetime) -> tuple[dict[str, int], dict[str, int]]:
    """PostgreSQL: the messages and their `queued` events in one statement, `INSERT … ON CONFLICT
    DO NOTHING RETURNING` (the rows come as one JSON parameter; what every row shares as another),
    so keys already queued are skipped by the unique index instead of looked up first. Returns
    (key → id of the rows inserted here, {}: the caller looks up the others only if there are any)."""
    ops = connection.ops
    message_table = ops.quote_name(Message._meta.db_table)
    event_table = ops.quote_name(MessageEvent._meta.db_table)
    fixed = _defaults(Message, shared)
    message_columns = [column for column in fixed if column not in _PER_ROW] + list(_PER_ROW)
    event_fixed = _defaults(MessageEvent, dict(workspace_id=workspace_id, kind=MessageEventKind.QUEUED, at=now))
    event_columns = [column for column in event_fixed if column not in ("message_id", "contact_id")]
    q = ops.quote_name
    sql = (f"WITH new AS (INSERT INTO {message_table} ({', '.join(q(c) for c in message_columns)}) "
           f"SELECT {', '.join(('v.' if c in _PER_ROW else 'f.') + q(c) for c in message_columns)} "
           f"FROM jsonb_populate_recordset(NULL::{message_table}, %s::jsonb) AS v, "
           f"jsonb_populate_record(NULL::{message_table}, %s::jsonb) AS f "
           f"ON CONFLICT DO NOTHING RETURNING id, contact_id, dedupe_key), "
           f"events AS (INSERT INTO {event_table} ({', '.join(q(c) for c in event_columns)}, message_id, contact_id) "
           f"SELECT {', '.join('f.' + q(c) for c in event_columns)}, new.id, new.contact_id "
           f"FROM new, jsonb_populate_record(NULL::{event_table}, %s::jsonb) AS f) "
           f"SELECT dedupe_key, id FROM new")
    payload = [{"contact_id": c.pk, "to_email": c.email.strip(), "dedupe_key": key, "context": context}
               for c, key, context in chunk]
    dumps = functools.partial(orjson.dumps, option=orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS)
    with connection.cursor() as cursor:
        cursor.execute(sql, [dumps(payload).decode(), dumps(fixed).decode(), dumps(event_fixed).decode()])
        return dict(cursor.fetchall()), {}
