"""The Segment-compatible HTTP tracking API (`/v1/...`).

Plain Django views rather than django-ninja: the body size, gzip and per-message validation must
happen before (and instead of) whole-request schema validation, so that one bad message never
costs the good ones (docs/decisions.md).
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time

import orjson
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from leadflow.core.models import KeyKind
from leadflow.core.services import api_key_authenticate
from leadflow.tracking.ingest import SHORT_TYPES, Rejected, batch_items, events_append, gunzip_limited

log = logging.getLogger(__name__)

_inflight = 0
_inflight_lock = threading.Lock()

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding, X-Retry-Count",
    "Access-Control-Max-Age": "86400",
}


def _json(status: int, body: dict, **headers: str) -> HttpResponse:
    response = HttpResponse(orjson.dumps(body), status=status, content_type="application/json")
    for name, value in {**CORS_HEADERS, **headers}.items():
        response[name] = value
    return response


def _basic_user(request: HttpRequest) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header.lower().startswith("basic "):
        return ""
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.split(":", 1)[0]


def _client_ip(request: HttpRequest) -> str | None:
    if settings.LEADFLOW_TRUST_X_FORWARDED_FOR:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[0].strip() or None
    return request.META.get("REMOTE_ADDR") or None


def _read_body(request: HttpRequest) -> bytes:
    limit = settings.LEADFLOW_MAX_REQUEST_BYTES
    length = request.META.get("CONTENT_LENGTH") or ""
    if length.isdigit() and int(length) > limit:
        raise OverflowError(f"request body is {length} bytes, over the {limit}-byte limit")
    body = request.read(limit + 1)
    if len(body) > limit:
        raise OverflowError(f"request body is over the {limit}-byte limit")
    if request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower() == "gzip":
        body = gunzip_limited(body, limit)
    return body


_backlog = {"checked": -1e9, "full": False}


def _backlog_full() -> bool:
    """True while more than LEADFLOW_INGEST_MAX_BACKLOG events wait for the worker (0: no limit).

    Checked at most once a second per process, so the guard costs nothing on the hot path.
    """
    limit = settings.LEADFLOW_INGEST_MAX_BACKLOG
    if limit <= 0:
        return False
    now = time.monotonic()
    if now - _backlog["checked"] >= 1.0:
        from leadflow.tracking.models import Event

        pending = Event.objects.filter(processed_at__isnull=True)[: limit + 1].count()
        _backlog.update(checked=now, full=pending > limit)
    return _backlog["full"]


@csrf_exempt
def ingest(request: HttpRequest, kind: str) -> HttpResponse:
    if request.method == "OPTIONS":
        return _json(204, {})
    if request.method != "POST":
        return _json(405, {"success": False, "error": "use POST"}, Allow="POST, OPTIONS")
    global _inflight
    with _inflight_lock:
        if _inflight >= settings.LEADFLOW_INGEST_MAX_INFLIGHT:
            return _json(429, {"success": False, "error": "too many requests in flight; retry"},
                         **{"Retry-After": "1"})
        _inflight += 1
    try:
        return _ingest(request, kind)
    finally:
        with _inflight_lock:
            _inflight -= 1


def _ingest(request: HttpRequest, kind: str) -> HttpResponse:
    kind = SHORT_TYPES.get(kind, kind)
    try:
        body = _read_body(request)
    except OverflowError as exc:
        return _json(413, {"success": False, "error": str(exc)})
    except Rejected as exc:
        return _json(400, {"success": False, "error": str(exc)})
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _json(400, {"success": False, "error": f"malformed JSON: {exc}"})
    if not isinstance(payload, dict):
        return _json(400, {"success": False, "error": "the body must be a JSON object"})

    raw_key = _basic_user(request) or payload.get("writeKey")
    if not isinstance(raw_key, str) or not raw_key:
        return _json(401, {"success": False,
                           "error": "missing write key (Basic auth user or writeKey in the body)"})
    try:
        key = api_key_authenticate(raw=raw_key, kind=KeyKind.WRITE)
    except DatabaseError:
        log.exception("write key look-up failed")
        return _json(503, {"success": False, "error": "database unavailable; retry"}, **{"Retry-After": "5"})
    if key is None:
        return _json(401, {"success": False, "error": "invalid or revoked write key"})

    if kind in ("batch", "import", "b"):
        try:
            messages = batch_items(payload)
        except Rejected as exc:
            return _json(400, {"success": False, "error": str(exc)})
        default_type = None
    else:
        messages = [{k: v for k, v in payload.items() if k != "writeKey"}]
        default_type = kind
        if isinstance(payload.get("type"), str) and payload["type"] != kind:
            return _json(400, {"success": False,
                               "error": f"type {payload['type']!r} sent to /v1/{kind}"})
    if not messages:
        return _json(400, {"success": False, "error": "batch is empty"})

    if _backlog_full():
        return _json(503, {"success": False, "error": "processing backlog is full; retry later"},
                     **{"Retry-After": "5"})
    try:
        result = events_append(workspace=key.workspace_id, messages=messages,
                               default_type=default_type, request_ip=_client_ip(request))
    except DatabaseError:
        log.exception("appending events failed")
        return _json(503, {"success": False, "error": "database busy or unavailable; retry"},
                     **{"Retry-After": "2"})
    body = {"success": not result.rejected, "accepted": result.accepted}
    if result.rejected:
        body["rejected"] = result.rejected
    status = 200 if result.accepted else 400
    return _json(status, body)
