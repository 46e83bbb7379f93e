"""Validating Segment-compatible messages and appending them to the event log.

Ingestion never touches profiles: it checks each message, fixes its time for client clock skew
and appends it. The worker derives everything else (docs/architecture.md).
"""

from __future__ import annotations

import datetime as dt
import uuid
import zlib
from dataclasses import dataclass, field

import orjson
from django.conf import settings
from django.db import connection, transaction

from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.tracking.models import Event, EventType

MAX_ID_LENGTH = 255
SHORT_TYPES = {"i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group", "a": "alias"}
_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
_TYPES = frozenset(EventType.values)
_TYPE_LIST = ", ".join(EventType.values)


class Rejected(ValueError):
    """One message that cannot be stored; the message says why."""


@dataclass
class AppendResult:
    accepted: int = 0
    rejected: list[dict] = field(default_factory=list)
    appended: list[tuple[int, str]] = field(default_factory=list)


def _parse_time(value: object, name: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Rejected(f"{name} must be an ISO 8601 string")
    try:
        return clock.parse_iso(value)
    except ValueError:
        raise Rejected(f"{name} {value!r} is not an ISO 8601 date-time") from None


def _ident(msg: dict, name: str) -> str:
    value = msg.get(name)
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Rejected(f"{name} must be a string")
    text = str(value).strip()
    if len(text) > MAX_ID_LENGTH:
        raise Rejected(f"{name} is longer than {MAX_ID_LENGTH} characters")
    return text


def shard_for(workspace_id: int, key: str) -> int:
    return zlib.crc32(f"{workspace_id}:{key}".encode()) % settings.LEADFLOW_SHARDS


def message_to_event(msg: object, *, workspace_id: int, received_at: dt.datetime,
                     default_type: str | None = None, request_ip: str | None = None,
                     size: int | None = None) -> Event:
    """Validate one message and build its (unsaved) Event; raises Rejected with the reason."""
    return Event(**_message_fields(msg, workspace_id=workspace_id, received_at=received_at,
                                   default_type=default_type, request_ip=request_ip, size=size))


def _message_fields(msg: object, *, workspace_id: int, received_at: dt.datetime,
                    default_type: str | None, request_ip: str | None, size: int | None) -> dict:
    """The checks of `message_to_event`, returning the Event's field values as a dict.

    `events_append` inserts these values directly, skipping model instances on the hot path.
    """
    if not isinstance(msg, dict):
        raise Rejected("each message must be a JSON object")
    encoded = orjson.dumps(msg)
    if size is None:
        size = len(encoded)
    if b"\\u0000" in encoded:
        raise Rejected("text may not contain NUL (\\u0000) characters")
    if size > settings.LEADFLOW_MAX_EVENT_BYTES:
        raise Rejected(f"message is {size} bytes, over the {settings.LEADFLOW_MAX_EVENT_BYTES}-byte limit")
    kind = msg.get("type") or default_type
    if not isinstance(kind, str) or kind not in _TYPES:
        raise Rejected(f"type must be one of {_TYPE_LIST}, not {kind!r}")
    user_id = _ident(msg, "userId")
    anonymous_id = _ident(msg, "anonymousId")
    message_id = _ident(msg, "messageId") or f"lf-{uuid.uuid4()}"
    for name in _OBJECT_FIELDS:
        if msg.get(name) is not None and not isinstance(msg[name], dict):
            raise Rejected(f"{name} must be a JSON object")
    group_id = previous_id = event_name = ""
    if kind == "alias":
        previous_id = _ident(msg, "previousId")
        if not user_id or not previous_id:
            raise Rejected("alias needs both userId and previousId")
    elif not user_id and not anonymous_id:
        raise Rejected("userId or anonymousId is required")
    if kind == "track":
        event_name = msg.get("event")
        if not isinstance(event_name, str) or not event_name.strip():
            raise Rejected("track needs an event name")
        event_name = event_name.strip()
        if len(event_name) > 255:
            raise Rejected("event name is longer than 255 characters")
    elif kind in ("page", "screen"):
        name = msg.get("name")
        if name is not None and not isinstance(name, str):
            raise Rejected("name must be a string")
        event_name = (name or "").strip()[:255]
    elif kind == "group":
        group_id = _ident(msg, "groupId")
        if not group_id:
            raise Rejected("group needs a groupId")

    client_time = _parse_time(msg.get("originalTimestamp"), "originalTimestamp") or \
        _parse_time(msg.get("timestamp"), "timestamp")
    sent_at = _parse_time(msg.get("sentAt"), "sentAt")
    if client_time and sent_at:
        timestamp = received_at - (sent_at - client_time)  # correct the client's clock skew
    else:
        timestamp = client_time or received_at

    properties = dict(msg.get("properties") or {})
    if kind in ("page", "screen"):
        for extra in ("name", "category"):
            if isinstance(msg.get(extra), str) and extra not in properties:
                properties[extra] = msg[extra]
    context = dict(msg.get("context") or {})
    if request_ip and not context.get("ip"):
        context["ip"] = request_ip
    traits = dict(msg.get("traits") or {})
    return dict(
        workspace_id=workspace_id, message_id=message_id, type=kind, event=event_name,
        anonymous_id=anonymous_id, user_id=user_id, group_id=group_id, previous_id=previous_id,
        properties=properties, traits=traits, context=context,
        integrations=dict(msg.get("integrations") or {}),
        timestamp=timestamp, original_timestamp=client_time, sent_at=sent_at, received_at=received_at,
        shard=shard_for(workspace_id, user_id or anonymous_id),
    )


def batch_items(payload: dict) -> list:
    """The messages of a /v1/batch body, with the batch's context and integrations merged in."""
    items = payload.get("batch")
    if not isinstance(items, list):
        raise Rejected("batch must be a JSON array of messages")
    shared = {name: payload[name] for name in ("context", "integrations")
              if isinstance(payload.get(name), dict)}
    sent_at = payload.get("sentAt")  # Segment's libraries stamp the batch, not each message
    if not shared and not sent_at:
        return items
    merged = []
    for item in items:
        if isinstance(item, dict):
            item = dict(item)
            if sent_at and not item.get("sentAt"):
                item["sentAt"] = sent_at
            for name, values in shared.items():
                own = item.get(name)
                item[name] = {**values, **own} if isinstance(own, dict) else (own if own is not None else dict(values))
        merged.append(item)
    return merged


def events_append(*, workspace: Workspace | int, messages: list, default_type: str | None = None,
                  request_ip: str | None = None, sizes: list[int] | None = None,
                  processed: tuple[dict[str, int], dt.datetime] | None = None) -> AppendResult:
    """Validate each message and append the good ones; idempotent on messageId.

    `processed` = (contact id by messageId, time): append them already processed, on those
    contacts (LeadFlow's own events, which identity resolution has nothing to learn from); the
    result's `appended` then lists (event id, messageId) of the rows that are new."""
    workspace_id = workspace if isinstance(workspace, int) else workspace.pk
    received_at = clock.now()
    result = AppendResult()
    rows = []
    for index, msg in enumerate(messages):
        try:
            rows.append(_message_fields(msg, workspace_id=workspace_id, received_at=received_at,
                                        default_type=default_type, request_ip=request_ip,
                                        size=sizes[index] if sizes else None))
        except Rejected as exc:
            entry = {"index": index, "reason": str(exc)}
            if isinstance(msg, dict) and isinstance(msg.get("messageId"), str):
                entry["messageId"] = msg["messageId"][:MAX_ID_LENGTH]
            result.rejected.append(entry)
    if rows and processed is not None:
        contact_of, at = processed
        for row in rows:
            row["contact_id"], row["processed_at"] = contact_of[row["message_id"]], at
        with transaction.atomic():
            result.appended = _events_insert_new(workspace_id, rows)
    elif rows:
        with transaction.atomic():
            _events_insert(rows)
    result.accepted = len(rows)
    return result


def _events_insert_new(workspace_id: int, rows: list[dict]) -> list[tuple[int, str]]:
    """`_events_insert`, returning (id, message_id) of the rows that were not there yet."""
    if connection.vendor == "postgresql":
        return _events_insert(rows, returning=True)
    keys = [row["message_id"] for row in rows]
    there = set(Event.objects.filter(workspace_id=workspace_id, message_id__in=keys)
                .values_list("message_id", flat=True))
    _events_insert(rows)
    new = [key for key in keys if key not in there]
    return list(Event.objects.filter(workspace_id=workspace_id, message_id__in=new).values_list("id", "message_id"))


# The event log's columns, in model order, without the serial id. Values are adapted here once
# instead of through the ORM's per-field preparation, which was most of the cost of `bulk_create`
# on this path (docs/benchmarks.md).
_JSON_FIELDS = frozenset(f.attname for f in Event._meta.concrete_fields if f.get_internal_type() == "JSONField")
_TIME_FIELDS = frozenset(f.attname for f in Event._meta.concrete_fields if f.get_internal_type() == "DateTimeField")
_INSERT_FIELDS = [f for f in Event._meta.concrete_fields if not f.primary_key]


def _events_insert(rows: list[dict], *, returning: bool = False) -> list[tuple[int, str]]:
    """Insert validated field dicts exactly as `bulk_create(..., ignore_conflicts=True)` would.

    PostgreSQL: one `INSERT … SELECT … FROM jsonb_populate_recordset(…) ON CONFLICT DO NOTHING`
    per 1,000 rows, the rows sent as one JSON parameter (orjson, date-times as ISO 8601 with
    offset), so neither the ORM nor the driver prepares values one by one; with `returning`,
    the (id, message_id) of the rows inserted (PostgreSQL only).
    SQLite: `INSERT OR IGNORE` of one prepared row statement through `executemany`.
    Fields the validator does not set (contact, processed_at, error) get their model defaults.
    """
    inserted: list[tuple[int, str]] = []
    ops = connection.ops
    table = ops.quote_name(Event._meta.db_table)
    fields = [f for f in _INSERT_FIELDS if f.attname in rows[0] or f.name in rows[0]] + \
        [f for f in _INSERT_FIELDS if f.attname not in rows[0] and f.name not in rows[0]]
    provided = [f.attname if f.attname in rows[0] else f.name for f in fields
                if f.attname in rows[0] or f.name in rows[0]]
    defaults = [f.get_default() for f in fields[len(provided):]]
    columns = ", ".join(ops.quote_name(f.column) for f in fields)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            names = [f.column for f in fields]
            default_items = list(zip(names[len(provided):], defaults))
            for start in range(0, len(rows), 1000):
                payload = [{**{column: row[name] for column, name in zip(names, provided)}, **dict(default_items)}
                           for row in rows[start:start + 1000]]
                cursor.execute(
                    f"INSERT INTO {table} ({columns}) SELECT {columns} FROM "
                    f"jsonb_populate_recordset(NULL::{table}, %s::jsonb) ON CONFLICT DO NOTHING"
                    + (" RETURNING id, message_id" if returning else ""),
                    [orjson.dumps(payload).decode()])
                if returning:
                    inserted += cursor.fetchall()
        else:
            adapt_time = ops.adapt_datetimefield_value
            dumps = orjson.dumps
            fixed = [f.get_db_prep_save(value, connection) for f, value in zip(fields[len(provided):], defaults)]

            def values(row: dict) -> list:
                out = []
                for name in provided:
                    value = row[name]
                    if name in _JSON_FIELDS:
                        value = dumps(value).decode()
                    elif name in _TIME_FIELDS and value is not None:
                        value = adapt_time(value)
                    out.append(value)
                return out + fixed

            marks = ", ".join(["%s"] * len(fields))
            cursor.executemany(f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({marks})",
                               [values(row) for row in rows])
    return inserted


def gunzip_limited(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing (with Rejected) anything that inflates past `limit`."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Rejected(f"body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise OverflowError(f"decompressed body is over the {limit}-byte limit")
    return out
