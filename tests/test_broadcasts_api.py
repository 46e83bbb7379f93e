"""The broadcasts API: create with counts, list, get, update, schedule, send now, pause, resume,
cancel, pick the winner; clear errors for bad input; another workspace's broadcasts are invisible."""

from __future__ import annotations

import datetime as dt

import pytest

from leadflow.consent.models import Suppression
from leadflow.messaging.models import Broadcast, Message

from test_broadcasts import click, deliver_due, make_template, people, static_list

pytestmark = pytest.mark.django_db

BASE = "/api/email/broadcasts"


def call(client, keys, method: str, path: str, body=None):
    kwargs = {"HTTP_AUTHORIZATION": keys.bearer}
    if body is not None:
        return getattr(client, method)(path, body, content_type="application/json", **kwargs)
    return getattr(client, method)(path, **kwargs)


@pytest.fixture
def setup(ws):
    crowd = people(ws, 60)
    segment = static_list(ws, crowd)
    Suppression.objects.create(workspace=ws.workspace, email="p0@example.com", reason="complaint")
    return {"segment": segment, "a": make_template(ws, "offer-a", subject="Offer A"),
            "b": make_template(ws, "offer-b", subject="Offer B")}


def test_create_shows_the_counts_to_confirm_then_schedule_and_the_tick_starts_it(client, ws, setup, frozen_clock):
    resp = call(client, ws, "post", BASE, {"name": "April offer", "template_id": setup["a"].pk,
                                           "segment_id": setup["segment"].pk, "variants": [setup["b"].pk],
                                           "test_share": 0.5, "decide_after_hours": 2})
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["status"] == "draft" and body["slug"] == "april-offer"
    assert body["counts"] == {"recipients": 60, "consent_filtered": 59, "not_allowed": 1, "audience": None,
                              "topic": ""}
    assert [(v["label"], v["template"]) for v in body["variants"]] == [("A", "offer-a"), ("B", "offer-b")]
    assert body["decide_after_hours"] == 2 and body["winner_metric"] == "click_rate"
    bid = body["id"]

    resp = call(client, ws, "post", f"{BASE}/{bid}/schedule", {})
    assert resp.status_code == 400 and "give the time" in resp.json()["detail"]
    at = frozen_clock.current + dt.timedelta(hours=1)
    resp = call(client, ws, "post", f"{BASE}/{bid}/schedule", {"at": at.isoformat()})
    assert resp.status_code == 200 and resp.json()["status"] == "scheduled"
    assert resp.json()["scheduled_at"].startswith("2026-03-02T10:00")

    frozen_clock.set(at)
    from leadflow.messaging.broadcasts import broadcasts_tick
    broadcasts_tick(now=at)
    body = call(client, ws, "get", f"{BASE}/{bid}").json()
    assert body["status"] == "testing" and body["audience_count"] == 60 and body["version"] == 1
    stats = body["stats"]
    assert stats["total"]["messages"] == 60 and stats["total"]["held"] == 30 and stats["total"]["queued"] == 30
    assert [g["label"] for g in stats["groups"]] == ["A", "B", "rest"]

    b = Broadcast.objects.get(pk=bid)
    deliver_due(b, at)
    click(Message.objects.filter(broadcast=b, variant__label="A")[:3])
    resp = call(client, ws, "post", f"{BASE}/{bid}/winner", {"label": "Z"})
    assert resp.status_code == 422
    resp = client.generic("POST", f"{BASE}/{bid}/winner", b"", HTTP_AUTHORIZATION=ws.bearer)  # no body at all
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert body["winner"] == "A" and body["status"] == "sending"
    assert body["result"]["decision"] in ("significant", "not significant") and "p_value" in body["result"]


def test_send_now_pause_resume_cancel(client, ws, setup):
    bid = call(client, ws, "post", BASE, {"name": "News", "template_id": setup["a"].pk,
                                          "segment_id": setup["segment"].pk}).json()["id"]
    resp = call(client, ws, "post", f"{BASE}/{bid}/pause")
    assert resp.status_code == 400 and "only a sending broadcast" in resp.json()["detail"]
    body = call(client, ws, "post", f"{BASE}/{bid}/send").json()
    assert body["status"] == "sending" and body["stats"]["total"]["queued"] == 60
    assert call(client, ws, "post", f"{BASE}/{bid}/pause").json()["status"] == "paused"
    assert call(client, ws, "post", f"{BASE}/{bid}/resume").json()["status"] == "sending"
    resp = call(client, ws, "patch", f"{BASE}/{bid}", {"name": "Renamed"})
    assert resp.status_code == 400 and "only drafts and scheduled" in resp.json()["detail"]
    body = call(client, ws, "post", f"{BASE}/{bid}/cancel").json()
    assert body["status"] == "cancelled" and body["stats"]["total"]["cancelled"] == 60
    resp = call(client, ws, "post", f"{BASE}/{bid}/winner", {})
    assert resp.status_code == 400


def test_update_and_list(client, ws, setup, frozen_clock):
    bid = call(client, ws, "post", BASE, {"name": "News", "template_id": setup["a"].pk,
                                          "segment_id": setup["segment"].pk}).json()["id"]
    at = (frozen_clock.current + dt.timedelta(days=1)).isoformat()
    body = call(client, ws, "patch", f"{BASE}/{bid}", {"variants": [setup["b"].pk], "test_share": 0.3,
                                                       "winner_metric": "open_rate", "scheduled_at": at}).json()
    assert len(body["variants"]) == 2 and body["test_share"] == 0.3 and body["winner_metric"] == "open_rate"
    assert body["scheduled_at"] is not None and body["status"] == "draft"
    assert call(client, ws, "post", f"{BASE}/{bid}/schedule", {}).json()["status"] == "scheduled"
    body = call(client, ws, "patch", f"{BASE}/{bid}", {"scheduled_at": None}).json()
    assert body["status"] == "draft" and body["scheduled_at"] is None
    resp = call(client, ws, "patch", f"{BASE}/{bid}", {"name": None})
    assert resp.status_code == 400 and "name" in resp.json()["detail"]
    call(client, ws, "post", BASE, {"name": "Second", "template_id": setup["a"].pk, "segment_id": setup["segment"].pk})
    listing = call(client, ws, "get", f"{BASE}?limit=1").json()
    assert [b["name"] for b in listing["items"]] == ["Second"] and listing["next"]
    page2 = call(client, ws, "get", f"{BASE}?limit=1&next={listing['next']}").json()
    assert [b["name"] for b in page2["items"]] == ["News"]
    drafts = call(client, ws, "get", f"{BASE}?status=draft").json()
    assert len(drafts["items"]) == 2
    assert call(client, ws, "get", f"{BASE}?status=bogus").status_code == 422


@pytest.mark.parametrize("patch, status, error", [
    ({"template_id": 999999}, 400, "template_id: no template 999999"),
    ({"segment_id": 999999}, 400, "segment_id: no segment"),
    ({"variants": [999999]}, 400, "variants[0]: no template"),
    ({"server_id": 999999}, 400, "server_id: no sending server"),
    ({"test_share": 2}, 400, "between 0 and 1"),
    ({"winner_metric": "opens"}, 422, "winner_metric"),
    ({"test_share": "lots"}, 422, "test_share"),
])
def test_bad_input_gets_a_clear_error_and_stores_nothing(client, ws, setup, patch, status, error):
    body = {"name": "News", "template_id": setup["a"].pk, "segment_id": setup["segment"].pk, **patch}
    resp = call(client, ws, "post", BASE, body)
    assert resp.status_code == status and error in resp.json()["detail"]
    assert not Broadcast.objects.exists()


def test_another_workspace_cannot_see_or_touch_a_broadcast(client, ws, other_ws, setup):
    bid = call(client, ws, "post", BASE, {"name": "News", "template_id": setup["a"].pk,
                                          "segment_id": setup["segment"].pk}).json()["id"]
    for method, path, body in [("get", f"{BASE}/{bid}", None), ("patch", f"{BASE}/{bid}", {"name": "Mine"}),
                               ("post", f"{BASE}/{bid}/send", None), ("post", f"{BASE}/{bid}/schedule", {}),
                               ("post", f"{BASE}/{bid}/pause", None), ("post", f"{BASE}/{bid}/resume", None),
                               ("post", f"{BASE}/{bid}/cancel", None), ("post", f"{BASE}/{bid}/winner", {})]:
        resp = call(client, other_ws, method, path, body)
        assert resp.status_code == 404, (method, path, resp.content)
    assert call(client, other_ws, "get", BASE).json()["items"] == []
    # Nor use this workspace's template or segment for a broadcast of its own.
    resp = call(client, other_ws, "post", BASE, {"name": "Theirs", "template_id": setup["a"].pk,
                                                 "segment_id": setup["segment"].pk})
    assert resp.status_code == 400 and "no template" in resp.json()["detail"]
    b = Broadcast.objects.get(pk=bid)
    assert b.status == "draft" and b.name == "News" and not Message.objects.exists()
    assert call(client, ws, "get", f"{BASE}/{bid}", None).status_code == 200
    assert client.get(f"{BASE}/{bid}").status_code == 401
