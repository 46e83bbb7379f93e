"""Broadcast pages: the form saves what it shows, the counts appear before sending, the confirm
step starts or schedules, progress and A/B results after; analysts only read."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client

from leadflow.consent.models import Suppression
from leadflow.core.services import user_create
from leadflow.messaging.broadcasts import broadcast_create, broadcast_send_now, broadcasts_tick
from leadflow.messaging.models import Broadcast, Message

from test_broadcasts import click, deliver_due, make_template, people, static_list

pytestmark = pytest.mark.django_db


def login(ws, name: str, role: str) -> Client:
    c = Client()
    c.force_login(user_create(username=name, password=f"pw-{name}-123", workspace=ws.workspace, role=role))
    return c


@pytest.fixture
def marketer(ws):
    return login(ws, "mara", "marketer")


@pytest.fixture
def analyst(ws):
    return login(ws, "anna", "analyst")


@pytest.fixture
def setup(ws):
    crowd = people(ws, 40)
    Suppression.objects.create(workspace=ws.workspace, email="p3@example.com", reason="hard_bounce")
    return {"segment": static_list(ws, crowd, name="Trial users"),
            "a": make_template(ws, "offer-a", subject="Offer A"), "b": make_template(ws, "offer-b", subject="Offer B")}


def test_create_an_ab_broadcast_see_the_counts_confirm_and_follow_it(ws, marketer, setup, frozen_clock):
    page = marketer.get("/email/broadcasts/new/").content.decode()
    assert "Offer A" in page and "Trial users" in page and "variant B" in page
    resp = marketer.post("/email/broadcasts/new/", {
        "name": "April offer", "template": setup["a"].pk, "segment": setup["segment"].pk, "scheduled_at": "",
        "server": "", "variant_b": setup["b"].pk, "variant_c": "", "variant_d": "", "test_share": "50",
        "winner_metric": "click_rate", "decide_after_hours": "3"})
    b = Broadcast.objects.get(workspace=ws.workspace, name="April offer")
    assert resp.status_code == 302 and resp["Location"] == f"/email/broadcasts/{b.pk}/"
    assert b.test_share == 0.5 and b.variants.count() == 2 and b.result["decide_after_hours"] == 3

    page = marketer.get(f"/email/broadcasts/{b.pk}/").content.decode()
    assert 'data-testid="recipients">40<' in page and 'data-testid="consent-filtered">39<' in page
    assert "Send or schedule" in page and "Draft" in page

    confirm = marketer.get(f"/email/broadcasts/{b.pk}/confirm/").content.decode()
    assert "Send now to 40 recipients" in confirm and 'data-testid="consent-filtered">39<' in confirm
    assert not Message.objects.filter(broadcast=b).exists(), "nothing is sent before the confirmation"

    resp = marketer.post(f"/email/broadcasts/{b.pk}/confirm/", {"action": "send"})
    assert resp.status_code == 302
    b.refresh_from_db()
    assert b.status == "testing" and Message.objects.filter(broadcast=b).count() == 40
    deliver_due(b, frozen_clock.current)
    click(Message.objects.filter(broadcast=b, variant__label="B")[:6])
    page = marketer.get(f"/email/broadcasts/{b.pk}/").content.decode()
    assert 'data-testid="progress"' in page and 'data-testid="sent">20<' in page
    assert "waiting for the A/B winner" in page and "Pick the winner now" in page

    resp = marketer.post(f"/email/broadcasts/{b.pk}/winner/", {"label": ""}, follow=True)
    assert "Variant B goes to the rest" in resp.content.decode()
    page = marketer.get(f"/email/broadcasts/{b.pk}/").content.decode()
    assert 'data-testid="decision"' in page and "Winner: variant B" in page and "p = " in page

    listing = marketer.get("/email/broadcasts/").content.decode()
    assert "April offer" in listing and "winner B" in listing


def test_schedule_from_the_confirm_step_and_the_tick_starts_it(ws, marketer, setup, frozen_clock):
    b = broadcast_create(workspace=ws.workspace, name="News", template=setup["a"], segment=setup["segment"],
                         actor="test")
    resp = marketer.post(f"/email/broadcasts/{b.pk}/confirm/", {"action": "schedule", "at": "2026-03-02T08:00"})
    assert resp.status_code == 200 and "in the past" in resp.content.decode()
    resp = marketer.post(f"/email/broadcasts/{b.pk}/confirm/", {"action": "schedule", "at": "not a time"})
    assert "give the date and time" in resp.content.decode()
    resp = marketer.post(f"/email/broadcasts/{b.pk}/confirm/", {"action": "schedule", "at": "2026-03-02T12:30"},
                         follow=True)
    assert "Scheduled for 2026-03-02 12:30 UTC" in resp.content.decode()
    b.refresh_from_db()
    assert b.status == "scheduled" and b.scheduled_at == dt.datetime(2026, 3, 2, 12, 30, tzinfo=dt.timezone.utc)
    broadcasts_tick(now=b.scheduled_at)
    b.refresh_from_db()
    assert b.status == "sending"
    resp = marketer.get(f"/email/broadcasts/{b.pk}/confirm/")
    assert resp.status_code == 302, "nothing left to confirm"


def test_edit_form_shows_and_keeps_the_stored_values(ws, marketer, setup):
    b = broadcast_create(workspace=ws.workspace, name="News", template=setup["a"], segment=setup["segment"],
                         variants=[setup["b"]], test_share=0.25, decide_after_hours=6, actor="test")
    page = marketer.get(f"/email/broadcasts/{b.pk}/edit/").content.decode()
    assert 'value="25"' in page and 'value="6.0"' in page
    assert f'<option value="{setup["b"].pk}" selected>' in page
    resp = marketer.post(f"/email/broadcasts/{b.pk}/edit/", {
        "name": "News", "template": setup["a"].pk, "segment": setup["segment"].pk, "scheduled_at": "",
        "server": "", "variant_b": setup["a"].pk, "variant_c": "", "variant_d": "", "test_share": "25",
        "winner_metric": "click_rate", "decide_after_hours": "6"})
    assert resp.status_code == 200 and "already a variant" in resp.content.decode()
    b.refresh_from_db()
    assert [v.version.template_id for v in b.variants.order_by("label")] == [setup["a"].pk, setup["b"].pk]
    resp = marketer.post(f"/email/broadcasts/{b.pk}/edit/", {
        "name": "News", "template": setup["a"].pk, "segment": setup["segment"].pk, "scheduled_at": "",
        "server": "", "variant_b": "", "variant_c": "", "variant_d": "", "test_share": "120",
        "winner_metric": "click_rate", "decide_after_hours": "6"})
    assert resp.status_code == 200 and "less than or equal to 99" in resp.content.decode()


def test_pause_resume_and_cancel_buttons(ws, marketer, setup):
    b = broadcast_send_now(broadcast=broadcast_create(workspace=ws.workspace, name="News", template=setup["a"],
                                                      segment=setup["segment"], actor="test"), actor="test")
    page = marketer.get(f"/email/broadcasts/{b.pk}/").content.decode()
    assert "Pause" in page and "Cancel broadcast" in page and "Resume" not in page
    marketer.post(f"/email/broadcasts/{b.pk}/pause/")
    b.refresh_from_db()
    assert b.status == "paused"
    assert "Resume" in marketer.get(f"/email/broadcasts/{b.pk}/").content.decode()
    marketer.post(f"/email/broadcasts/{b.pk}/resume/")
    b.refresh_from_db()
    assert b.status == "sending"
    resp = marketer.post(f"/email/broadcasts/{b.pk}/cancel/", follow=True)
    b.refresh_from_db()
    assert b.status == "cancelled" and "Cancelled" in resp.content.decode()
    resp = marketer.post(f"/email/broadcasts/{b.pk}/resume/", follow=True)
    assert "not paused" in resp.content.decode()
    assert marketer.post(f"/email/broadcasts/{b.pk}/explode/").status_code == 404
    assert marketer.get(f"/email/broadcasts/{b.pk}/pause/").status_code == 405


def test_analysts_read_but_cannot_change(ws, analyst, setup):
    b = broadcast_create(workspace=ws.workspace, name="News", template=setup["a"], segment=setup["segment"],
                         actor="test")
    assert analyst.get("/email/broadcasts/").status_code == 200
    page = analyst.get(f"/email/broadcasts/{b.pk}/").content.decode()
    assert 'data-testid="recipients">40<' in page and "Send or schedule" not in page
    for path in ("/email/broadcasts/new/", f"/email/broadcasts/{b.pk}/edit/", f"/email/broadcasts/{b.pk}/confirm/"):
        assert analyst.get(path).status_code == 403
    assert analyst.post(f"/email/broadcasts/{b.pk}/confirm/", {"action": "send"}).status_code == 403
    assert analyst.post(f"/email/broadcasts/{b.pk}/cancel/").status_code == 403
    b.refresh_from_db()
    assert b.status == "draft" and not Message.objects.exists()


def test_another_workspaces_broadcast_is_not_found(ws, other_ws, setup):
    b = broadcast_create(workspace=ws.workspace, name="News", template=setup["a"], segment=setup["segment"],
                         actor="test")
    outsider = login(other_ws, "otto", "marketer")
    for path in (f"/email/broadcasts/{b.pk}/", f"/email/broadcasts/{b.pk}/edit/",
                 f"/email/broadcasts/{b.pk}/confirm/"):
        assert outsider.get(path).status_code == 404
    assert outsider.post(f"/email/broadcasts/{b.pk}/cancel/").status_code == 404
    assert "News" not in outsider.get("/email/broadcasts/").content.decode()
    # The form offers only the workspace's own templates and segments.
    form = outsider.get("/email/broadcasts/new/").content.decode()
    assert "Offer A" not in form and "Trial users" not in form
    b.refresh_from_db()
    assert b.status == "draft"
