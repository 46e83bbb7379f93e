"""The Segment-compatible tracking API: auth, limits, validation, idempotency, clock skew."""

from __future__ import annotations

import base64
import datetime as dt
import gzip

import orjson
import pytest
from django.test import override_settings

from leadflow.core.services import api_key_revoke
from leadflow.core.models import ApiKey
from leadflow.tracking.models import Event

from conftest import post_batch


def page(n: int, **extra) -> dict:
    return {"type": "page", "anonymousId": f"anon-{n}", "messageId": f"msg-{n}",
            "name": "Pricing", "properties": {"path": "/pricing"}, **extra}


def test_batch_stores_each_event_once_and_retry_is_idempotent(client, ws):
    messages = [page(n) for n in range(5)]
    first = post_batch(client, ws, messages)
    assert first.status_code == 200
    assert first.json() == {"success": True, "accepted": 5}
    again = post_batch(client, ws, messages)  # a client retrying the same batch
    assert again.status_code == 200
    assert Event.objects.filter(workspace=ws.workspace).count() == 5


def test_single_call_endpoints_accept_their_type(client, ws):
    calls = {
        "identify": {"userId": "u1", "traits": {"email": "a@b.co"}},
        "track": {"userId": "u1", "event": "Signed Up", "properties": {"plan": "pro"}},
        "page": {"anonymousId": "x", "name": "Home"},
        "screen": {"userId": "u1", "name": "Dashboard"},
        "group": {"userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}},
        "alias": {"userId": "u1", "previousId": "x"},
    }
    for kind, body in calls.items():
        resp = post_batch(client, ws, [], path=f"/v1/{kind}", body=body)
        assert resp.status_code == 200, (kind, resp.content)
    stored = dict(Event.objects.filter(workspace=ws.workspace).values_list("type", "event"))
    assert set(stored) == set(calls)
    assert stored["track"] == "Signed Up" and stored["page"] == "Home"


def test_write_key_in_body_or_basic_auth_and_bad_keys(client, ws):
    assert post_batch(client, None, [], body={"batch": [page(1)], "writeKey": ws.write_key}).status_code == 200
    assert post_batch(client, ws, [page(2)]).status_code == 200
    missing = post_batch(client, None, [page(3)])
    assert missing.status_code == 401 and "write key" in missing.json()["error"]
    wrong = post_batch(client, None, [page(4)], auth="Basic " + base64.b64encode(b"lfw_nope:").decode())
    assert wrong.status_code == 401
    secret_as_write = post_batch(client, None, [page(5)],
                                 auth="Basic " + base64.b64encode(f"{ws.secret_key}:".encode()).decode())
    assert secret_as_write.status_code == 401, "a secret key is not a write key"
    api_key_revoke(key=ApiKey.objects.get(workspace=ws.workspace, kind="write"))
    assert post_batch(client, ws, [page(6)]).status_code == 401
    assert set(Event.objects.values_list("message_id", flat=True)) == {"msg-1", "msg-2"}


def test_partial_batch_keeps_good_events_and_names_the_bad(client, ws):
    messages = [
        page(1),
        {"type": "track", "userId": "u", "messageId": "no-name"},
        {"type": "track", "event": "X", "messageId": "no-id"},
        {"type": "nonsense", "userId": "u", "messageId": "bad-type"},
        {"type": "identify", "userId": {"nested": 1}, "messageId": "obj-id"},
        {"type": "track", "userId": "u", "event": "Y", "properties": [1, 2], "messageId": "props-list"},
        {"type": "page", "userId": "u", "timestamp": "yesterday", "messageId": "bad-time"},
        "not an object",
        page(2),
    ]
    resp = post_batch(client, ws, messages)
    assert resp.status_code == 200
    body = resp.json()
    assert body["accepted"] == 2 and body["success"] is False
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert set(reasons) == {1, 2, 3, 4, 5, 6, 7}
    assert "event name" in reasons[1]
    assert "userId or anonymousId" in reasons[2]
    assert "type must be one of" in reasons[3]
    assert "userId must be a string" in reasons[4]
    assert "properties must be a JSON object" in reasons[5]
    assert "ISO 8601" in reasons[6]
    assert "JSON object" in reasons[7]
    assert set(Event.objects.values_list("message_id", flat=True)) == {"msg-1", "msg-2"}


def test_all_bad_is_400_and_stores_nothing(client, ws):
    resp = post_batch(client, ws, [{"type": "track", "userId": "u"}])
    assert resp.status_code == 400
    assert resp.json()["rejected"][0]["reason"] == "track needs an event name"
    assert not Event.objects.exists()


@pytest.mark.parametrize("raw,expected", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"batch": {"a": 1}}', "batch must be a JSON array"),
    (b'{"batch": []}', "batch is empty"),
])
def test_malformed_bodies_are_400(client, ws, raw, expected):
    resp = client.generic("POST", "/v1/batch", raw, content_type="application/json",
                          HTTP_AUTHORIZATION=ws.basic_auth)
    assert resp.status_code == 400
    assert expected in resp.json()["error"]
    assert not Event.objects.exists()


def test_event_over_32kb_is_rejected_alone(client, ws):
    big = page(1, properties={"blob": "x" * 33_000})
    resp = post_batch(client, ws, [big, page(2)])
    assert resp.status_code == 200
    assert "over the 32768-byte limit" in resp.json()["rejected"][0]["reason"]
    assert list(Event.objects.values_list("message_id", flat=True)) == ["msg-2"]


def test_request_over_500kb_is_413(client, ws):
    messages = [page(n, properties={"blob": "y" * 20_000}) for n in range(30)]  # ~600 KB
    resp = post_batch(client, ws, messages)
    assert resp.status_code == 413
    assert not Event.objects.exists()


def test_gzip_body_is_accepted(client, ws):
    resp = post_batch(client, ws, [page(1), page(2)], gzip_body=True)
    assert resp.status_code == 200
    assert Event.objects.count() == 2


def test_gzip_bomb_is_413_without_inflating_it(client, ws):
    bomb = gzip.compress(b'{"batch": [' + b" " * 50_000_000 + b"]}")
    assert len(bomb) < 100_000  # small on the wire
    resp = client.generic("POST", "/v1/batch", bomb, content_type="application/json",
                          HTTP_AUTHORIZATION=ws.basic_auth, HTTP_CONTENT_ENCODING="gzip")
    assert resp.status_code == 413
    assert not Event.objects.exists()


def test_corrupt_gzip_is_400(client, ws):
    resp = client.generic("POST", "/v1/batch", b"\x1f\x8b garbage", content_type="application/json",
                          HTTP_AUTHORIZATION=ws.basic_auth, HTTP_CONTENT_ENCODING="gzip")
    assert resp.status_code == 400
    assert "gzip" in resp.json()["error"]


def test_clock_skew_is_corrected_from_sent_at(client, ws, frozen_clock):
    # The client's clock is 1 hour fast: it says it sent at 10:00 what happened at 09:59.
    message = page(1, timestamp="2026-03-02T09:59:00Z", sentAt="2026-03-02T10:00:00Z")
    assert post_batch(client, ws, [message]).status_code == 200
    event = Event.objects.get()
    assert event.received_at == frozen_clock()
    assert event.timestamp == frozen_clock() - dt.timedelta(minutes=1)
    assert event.original_timestamp == dt.datetime(2026, 3, 2, 9, 59, tzinfo=dt.timezone.utc)


def test_batch_level_sent_at_corrects_every_message(client, ws, frozen_clock):
    body = {"batch": [page(1, timestamp="2026-03-02T07:00:00Z"), page(2, timestamp="2026-03-02T07:30:00Z")],
            "sentAt": "2026-03-02T08:00:00Z"}  # client clock 1 hour fast
    assert post_batch(client, ws, [], body=body).status_code == 200
    times = list(Event.objects.order_by("message_id").values_list("timestamp", flat=True))
    assert times == [frozen_clock() - dt.timedelta(hours=1), frozen_clock() - dt.timedelta(minutes=30)]


def test_batch_context_and_integrations_merge_into_items(client, ws):
    body = {
        "batch": [page(1), page(2, context={"locale": "pt-PT", "library": {"name": "own"}})],
        "context": {"library": {"name": "analytics-python"}, "ip": "203.0.113.9"},
        "integrations": {"All": False},
    }
    assert post_batch(client, ws, [], body=body).status_code == 200
    first, second = Event.objects.order_by("message_id")
    assert first.context["library"] == {"name": "analytics-python"}
    assert first.context["ip"] == "203.0.113.9"
    assert first.integrations == {"All": False}
    assert second.context["library"] == {"name": "own"}  # the item's own value wins
    assert second.context["locale"] == "pt-PT"


def test_campaign_page_referrer_ip_and_user_agent_are_kept(client, ws):
    ctx = {"campaign": {"source": "newsletter", "medium": "email", "name": "may"},
           "page": {"url": "https://acme.test/guide?utm_source=newsletter", "referrer": "https://mail.test/"},
           "userAgent": "Mozilla/5.0 (X11)"}
    post_batch(client, ws, [page(1, context=ctx)], )
    event = Event.objects.get()
    assert event.context["campaign"]["medium"] == "email"
    assert event.context["page"]["referrer"] == "https://mail.test/"
    assert event.context["userAgent"] == "Mozilla/5.0 (X11)"
    assert event.context["ip"] == "127.0.0.1"  # taken from the connection when the client sends none


def test_overload_answers_retryable_statuses(client, ws):
    post_batch(client, ws, [page(1), page(2)])  # two events wait for the worker
    with override_settings(LEADFLOW_INGEST_MAX_BACKLOG=1):
        from leadflow.tracking import api_views

        api_views._backlog.update(checked=-1e9)
        resp = post_batch(client, ws, [page(3)])
        assert resp.status_code == 503 and resp["Retry-After"]
        api_views._backlog.update(checked=-1e9, full=False)
    with override_settings(LEADFLOW_INGEST_MAX_INFLIGHT=0):
        resp = post_batch(client, ws, [page(4)])
        assert resp.status_code == 429 and resp["Retry-After"] == "1"
    assert Event.objects.count() == 2


def test_cors_preflight_and_get(client):
    pre = client.options("/v1/track")
    assert pre.status_code == 204 and pre["Access-Control-Allow-Origin"] == "*"
    assert client.get("/v1/track").status_code == 405


def test_messages_without_message_id_get_one(client, ws):
    msg = {"type": "track", "userId": "u", "event": "Viewed"}
    assert post_batch(client, ws, [msg, msg]).status_code == 200
    ids = list(Event.objects.values_list("message_id", flat=True))
    assert len(ids) == 2 and len(set(ids)) == 2


def test_ingestion_does_not_touch_profiles(client, ws):
    from leadflow.contacts.models import Contact

    post_batch(client, ws, [{"type": "identify", "userId": "u1", "traits": {"email": "a@b.co"}}])
    assert Event.objects.get().processed_at is None
    assert not Contact.objects.exists()


def test_raw_body_limit_uses_content_length_first(client, ws):
    payload = orjson.dumps({"batch": [page(1)]})
    resp = client.generic("POST", "/v1/batch", payload, content_type="application/json",
                          HTTP_AUTHORIZATION=ws.basic_auth, CONTENT_LENGTH="9999999")
    assert resp.status_code == 413


def test_nul_characters_are_rejected_per_message(client, ws):
    # PostgreSQL cannot store NUL in text or jsonb; such a message must not fail the whole batch.
    resp = post_batch(client, ws, [page(1, properties={"title": "bad\x00title"}), page(2)])
    assert resp.status_code == 200
    assert "NUL" in resp.json()["rejected"][0]["reason"]
    assert list(Event.objects.values_list("message_id", flat=True)) == ["msg-2"]
