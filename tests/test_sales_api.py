"""The sales and lifecycle API: settings, routing rules, reps, the inbox and sales actions."""

from __future__ import annotations


from leadflow.contacts.models import Contact
from leadflow.lifecycle.models import RoutingRule

from test_lifecycle import contact, pool, run_stage, team  # noqa: F401  (the fixture)


def call(client, ws, method, path, body=None):
    kwargs = {"HTTP_AUTHORIZATION": ws.bearer}
    if body is not None:
        kwargs.update(data=body, content_type="application/json")
    return getattr(client, method)(path, **kwargs)


def test_settings_read_and_edit(client, ws, team):
    got = call(client, ws, "get", "/api/lifecycle/settings").json()
    assert got["mql_grades"] == ["A", "B"] and got["mql_engagement_threshold"] == 40
    assert got["hot_events"] == ["Demo Requested", "Contact Sales"] and got["accept_sla_hours"] == 24
    assert [s["key"] for s in got["stages"]][:3] == ["subscriber", "lead", "marketing_qualified"]
    put = call(client, ws, "put", "/api/lifecycle/settings",
               {"mql_engagement_threshold": 55, "default_pool": ["alice", team.bob.pk], "on_accept_breach": "escalate"})
    assert put.status_code == 200, put.content
    assert put.json()["default_pool"] == [team.alice.pk, team.bob.pk] and put.json()["on_accept_breach"] == "escalate"
    bad = call(client, ws, "put", "/api/lifecycle/settings", {"mql_grades": ["A", "Z"]})
    assert bad.status_code == 400 and "mql_grades" in bad.json()["detail"]
    assert call(client, ws, "put", "/api/lifecycle/settings", {"default_pool": ["nobody"]}).status_code == 400


def test_routing_rules_crud(client, ws, team):
    made = call(client, ws, "post", "/api/lifecycle/routing-rules",
                {"name": "DACH", "priority": 5, "countries": ["de", "at"], "pool": ["alice", "bob"]})
    assert made.status_code == 201, made.content
    rule = made.json()
    assert rule["countries"] == ["AT", "DE"] and rule["pool"] == [team.alice.pk, team.bob.pk]
    both = call(client, ws, "patch", f"/api/lifecycle/routing-rules/{rule['id']}", {"target_user": "cara"})
    assert both.status_code == 400 and "not both" in both.json()["detail"]
    edited = call(client, ws, "patch", f"/api/lifecycle/routing-rules/{rule['id']}",
                  {"employees_min": 10, "employees_max": 500})
    assert edited.json()["employees_max"] == 500
    assert [r["name"] for r in call(client, ws, "get", "/api/lifecycle/routing-rules").json()] == ["DACH"]
    assert call(client, ws, "delete", f"/api/lifecycle/routing-rules/{rule['id']}").status_code == 204
    assert not RoutingRule.objects.exists()


def test_reps_read_and_edit(client, ws, team):
    reps = {r["user"]["username"]: r for r in call(client, ws, "get", "/api/sales/reps").json()}
    assert set(reps) == {"alice", "bob", "cara", "mona", "ada"}
    assert reps["alice"]["manager"]["username"] == "mona" and reps["ada"]["available"] is True
    put = call(client, ws, "put", "/api/sales/reps",
               [{"user": "alice", "available": False, "max_open_leads": 3}, {"user": "bob", "manager": ""}])
    assert put.status_code == 200, put.content
    reps = {r["user"]["username"]: r for r in put.json()}
    assert reps["alice"]["available"] is False and reps["alice"]["max_open_leads"] == 3
    assert reps["bob"]["manager"] is None
    assert call(client, ws, "put", "/api/sales/reps", [{"user": "mark"}]).status_code == 400


def test_inbox_and_actions_as_a_user(client, ws, team, frozen_clock):
    pool(ws, team.alice)
    leads = [contact(ws, f"l{n}@x.test") for n in range(3)]
    run_stage(leads)
    inbox = call(client, ws, "get", "/api/sales/leads?owner=alice").json()["items"]
    assert len(inbox) == 3 and inbox[0]["sla"] == "accept" and inbox[0]["overdue"] is False
    first, second, third = (c.pk for c in leads)

    denied = call(client, ws, "post", f"/api/sales/leads/{first}/accept", {"acting_user": "bob"})
    assert denied.status_code == 403
    accepted = call(client, ws, "post", f"/api/sales/leads/{first}/accept", {"acting_user": "alice"})
    assert accepted.status_code == 200 and accepted.json()["stage"] == "sales_accepted"
    worked = call(client, ws, "post", f"/api/sales/leads/{first}/work",
                  {"acting_user": team.alice.pk, "kind": "call", "notes": "good call"})
    assert worked.json()["status"] == "worked"
    dq = call(client, ws, "post", f"/api/sales/leads/{second}/disqualify", {"acting_user": "mona", "reason": "student"})
    assert dq.status_code == 200 and dq.json()["stage"] == "disqualified"
    rec = call(client, ws, "post", f"/api/sales/leads/{third}/recycle",
               {"acting_user": "ada", "reason": "no budget", "notes": "Q3", "return_date": "2026-07-01"})
    assert rec.status_code == 200 and rec.json()["status"] == "recycled", rec.content
    assert Contact.objects.get(pk=third).owner is None
    missing = call(client, ws, "post", f"/api/sales/leads/{third}/recycle", {"acting_user": "ada"})
    assert missing.status_code == 422
    assert call(client, ws, "get", "/api/sales/leads?owner=alice&status=worked").json()["items"][0]["contact_id"] == first
    assert call(client, ws, "get", "/api/sales/leads?status=bogus").status_code == 400
    adv = call(client, ws, "post", f"/api/sales/leads/{first}/advance", {"acting_user": "alice", "stage": "opportunity"})
    assert adv.json()["stage"] == "opportunity"
    alerts = call(client, ws, "get", "/api/sales/alerts?user=alice").json()
    assert len(alerts) == 3 and alerts[0]["context"]["contact"]["email"].endswith("@x.test")


def test_stage_history_and_explicit_stage_stay_in_the_workspace(client, ws, other_ws, frozen_clock):
    c = contact(ws)
    run_stage([c])
    history = call(client, ws, "get", f"/api/lifecycle/contacts/{c.pk}/stages").json()
    assert [h["to_stage"] for h in history] == ["lead", "marketing_qualified"]
    assert call(client, other_ws, "get", f"/api/lifecycle/contacts/{c.pk}/stages").status_code == 404
    set_ = call(client, ws, "post", f"/api/lifecycle/contacts/{c.pk}/stage", {"stage": "customer", "reason": "signed"})
    assert set_.status_code == 200 and set_.json()["actor"].startswith("api:lfs_")
    assert call(client, ws, "post", f"/api/lifecycle/contacts/{c.pk}/stage", {"stage": "nope"}).status_code == 400
