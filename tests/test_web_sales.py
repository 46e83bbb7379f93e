"""The sales pages: inbox with SLA clocks, a lead's context and actions, alerts, the team view and
the lifecycle settings, driven through the Django test client over the real pipeline."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client

from leadflow.contacts.models import Contact
from leadflow.core.pipeline import timers_run
from leadflow.core.services import user_create
from leadflow.lifecycle.models import Assignment, SalesAlert
from leadflow.lifecycle.services import lifecycle_settings_update

from conftest import post_batch


@pytest.fixture
def team(ws):
    rep = user_create(username="rita", password="pw-rita-123", workspace=ws.workspace, role="sales")
    other = user_create(username="otto", password="pw-otto-123", workspace=ws.workspace, role="sales")
    admin = user_create(username="ana", password="pw-ana-123", workspace=ws.workspace, role="admin")
    analyst = user_create(username="ivo", password="pw-ivo-123", workspace=ws.workspace, role="analyst")
    lifecycle_settings_update(workspace=ws.workspace, changes={"default_pool": [rep.pk]}, actor="test")
    return {"rep": rep, "other": other, "admin": admin, "analyst": analyst}


def _as(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def _hot_lead(client, ws, process) -> Contact:
    resp = post_batch(client, ws, [
        {"type": "page", "anonymousId": "v-7", "name": "Pricing",
         "context": {"page": {"url": "https://acme.example/pricing"},
                     "campaign": {"source": "google", "medium": "cpc", "name": "brand"}}},
        {"type": "identify", "anonymousId": "v-7", "traits": {"email": "lia@prospect.example",
                                                               "first_name": "Lia", "title": "CFO"}},
        {"type": "track", "anonymousId": "v-7", "event": "Demo Requested"},
    ])
    assert resp.status_code == 200
    process()
    return Contact.objects.get(email="lia@prospect.example")


def test_routed_lead_reaches_the_reps_inbox_with_its_context(client, ws, team, process, frozen_clock):
    contact = _hot_lead(client, ws, process)
    assert contact.lifecycle_stage == "marketing_qualified" and contact.owner_id == team["rep"].pk
    rep = _as(team["rep"])
    home = rep.get("/contacts/").content.decode()
    assert 'aria-label="1 unread alerts"' in home  # the nav badge
    inbox = rep.get("/sales/").content.decode()
    assert "Lia" in inbox and "accept:" in inbox and "left" in inbox
    page = rep.get(f"/sales/leads/{contact.pk}/").content.decode()
    assert "CFO" in page and "pricing" in page and "Accept lead" in page
    assert SalesAlert.objects.get(contact=contact).read_at is not None, "opening the lead reads its alert"
    # Someone else's inbox does not show it.
    assert "Lia" not in _as(team["other"]).get("/sales/").content.decode()


def test_actions_accept_log_and_recycle(client, ws, team, process, frozen_clock):
    contact = _hot_lead(client, ws, process)
    rep = _as(team["rep"])
    resp = rep.post(f"/sales/leads/{contact.pk}/accept/", follow=True)
    assert "Lead accepted" in resp.content.decode()
    assert Assignment.objects.get(contact=contact).status == "accepted"
    rep.post(f"/sales/leads/{contact.pk}/work/", {"kind": "call", "note": "Left a voicemail"})
    assignment = Assignment.objects.get(contact=contact)
    assert assignment.status == "worked" and assignment.activities[0]["note"] == "Left a voicemail"
    missing = rep.post(f"/sales/leads/{contact.pk}/recycle/", {"reason": ""}, follow=True).content.decode()
    assert "a reason is required" in missing
    back = (frozen_clock() + dt.timedelta(days=45)).date().isoformat()
    rep.post(f"/sales/leads/{contact.pk}/recycle/", {"reason": "no budget until Q3", "return_date": back})
    contact.refresh_from_db()
    assert contact.lifecycle_stage == "recycled" and contact.owner_id is None
    assert Assignment.objects.get(contact=contact).return_at.date().isoformat() == back


def test_only_the_owner_manager_or_admin_may_act(client, ws, team, process):
    contact = _hot_lead(client, ws, process)
    resp = _as(team["other"]).post(f"/sales/leads/{contact.pk}/accept/", follow=True).content.decode()
    assert "only the lead&#x27;s owner" in resp or "only the lead's owner" in resp
    assert Assignment.objects.get(contact=contact).status == "assigned"
    _as(team["admin"]).post(f"/sales/leads/{contact.pk}/disqualify/", {"reason": "competitor"})
    contact.refresh_from_db()
    assert contact.lifecycle_stage == "disqualified"


def test_overdue_lead_shows_in_the_team_view(client, ws, team, process, frozen_clock):
    from leadflow.lifecycle.services import sales_rep_set

    sales_rep_set(workspace=ws.workspace, user=team["rep"], manager=team["admin"], actor="test")
    lifecycle_settings_update(workspace=ws.workspace, changes={"on_accept_breach": "escalate"}, actor="test")
    contact = _hot_lead(client, ws, process)
    frozen_clock.advance(hours=30)  # past the 24 h accept SLA
    page = _as(team["rep"]).get("/sales/").content.decode()
    assert "overdue by" in page
    timers_run(force=True)
    team_page = _as(team["admin"]).get("/sales/team/").content.decode()
    assert "rita" in team_page and "Lia" in team_page
    assert Assignment.objects.get(contact=contact).status == "escalated"
    assert _as(team["rep"]).get("/sales/team/").status_code == 403  # not a manager


def test_lifecycle_settings_edit_and_roles(ws, team):
    admin = _as(team["admin"])
    resp = admin.post("/sales/settings/", {
        "form": "settings", "mql_grades": ["A"], "mql_engagement_threshold": "55", "hot_events": "Demo Requested, Trial Started",
        "inactive_days": "21", "accept_sla_hours": "8", "work_sla_hours": "48", "on_accept_breach": "reassign",
        "recycle_days": "60", "default_pool": [str(team["rep"].pk), str(team["other"].pk)]}, follow=True)
    assert "Lifecycle settings saved" in resp.content.decode()
    from leadflow.lifecycle.services import lifecycle_settings_get

    s = lifecycle_settings_get(workspace_id=ws.workspace.pk)
    assert (s.mql_grades, s.mql_engagement_threshold, s.accept_sla_hours) == (["A"], 55.0, 8.0)
    assert s.hot_events == ["Demo Requested", "Trial Started"] and s.default_pool == [team["rep"].pk, team["other"].pk]
    resp = admin.post("/sales/settings/", {"form": "rule", "name": "Iberia", "priority": "10", "countries": "pt, es",
                                           "pool": [str(team["other"].pk)]}, follow=True)
    page = resp.content.decode()
    assert "Routing rule added" in page and "Iberia" in page and "ES, PT" in page
    bad = admin.post("/sales/settings/", {
        "form": "settings", "mql_grades": ["A"], "mql_engagement_threshold": "55", "inactive_days": "21",
        "accept_sla_hours": "soon", "work_sla_hours": "48", "recycle_days": "60"}, follow=True)
    assert "The accept SLA must be a number, not &#x27;soon&#x27;" in bad.content.decode()
    assert lifecycle_settings_get(workspace_id=ws.workspace.pk).accept_sla_hours == 8.0, "nothing half-saved"
    assert _as(team["analyst"]).post("/sales/settings/", {"form": "settings"}).status_code == 403
    assert _as(team["analyst"]).get("/sales/settings/").status_code == 200  # may look


def test_profile_shows_the_lifecycle_panel(client, ws, team, process):
    contact = _hot_lead(client, ws, process)
    page = _as(team["admin"]).get(f"/contacts/{contact.pk}/").content.decode()
    assert "Lifecycle" in page and "Marketing qualified" in page and "rita" in page


def test_sales_pages_are_scoped_to_the_workspace(client, ws, other_ws, team, process):
    contact = _hot_lead(client, ws, process)
    outsider = user_create(username="zed", password="pw-zed-123", workspace=other_ws.workspace, role="admin")
    c = _as(outsider)
    assert c.get(f"/sales/leads/{contact.pk}/").status_code == 404
    assert c.post(f"/sales/leads/{contact.pk}/accept/").status_code == 404
    assert Assignment.objects.get(contact=contact).status == "assigned"
