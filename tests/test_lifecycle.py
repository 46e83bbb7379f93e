"""Lifecycle stages, qualification, routing, sales actions, SLAs and the end-to-end handoff."""

from __future__ import annotations

import datetime as dt
import socket
import time
from types import SimpleNamespace

import pytest

from leadflow.contacts.models import Company, Contact
from leadflow.contacts.services import contact_merge
from leadflow.core.pipeline import timers_run
from leadflow.core.services import ServiceError, user_create
from leadflow.lifecycle import processing, selectors, services
from leadflow.lifecycle.models import (
    Assignment, LifecycleSettings, QuietMark, SalesAlert, StageChange,
)
from leadflow.lifecycle.timers import (
    accept_breaches_run, quiet_leads_run, recycled_returns_run, work_breaches_run,
)
from leadflow.tracking.models import Event

from conftest import post_batch


@pytest.fixture
def team(ws):
    w = ws.workspace
    users = SimpleNamespace(
        alice=user_create(username="alice", password="x" * 12, email="alice@sales.test", workspace=w, role="sales"),
        bob=user_create(username="bob", password="x" * 12, email="bob@sales.test", workspace=w, role="sales"),
        cara=user_create(username="cara", password="x" * 12, email="cara@sales.test", workspace=w, role="sales"),
        mona=user_create(username="mona", password="x" * 12, email="mona@sales.test", workspace=w, role="sales"),
        mark=user_create(username="mark", password="x" * 12, email="mark@mkt.test", workspace=w, role="marketer"),
        ada=user_create(username="ada", password="x" * 12, email="ada@admin.test", workspace=w, role="admin"),
    )
    for rep in (users.alice, users.bob, users.cara):
        services.sales_rep_set(workspace=w, user=rep, manager=users.mona, actor="test")
    return users


def pool(ws, *users, **more):
    return services.lifecycle_settings_update(workspace=ws.workspace, actor="test",
                                              changes={"default_pool": [u.pk for u in users], **more})


def contact(ws, email="lead@acme.test", *, grade="A", engagement=50.0, stage="", **fields):
    return Contact.objects.create(workspace=ws.workspace, email=email, fit_grade=grade, engagement_score=engagement,
                                  lifecycle_stage=stage, user_id=fields.pop("user_id", email), **fields)


def run_stage(contacts, *names, at=None):
    """Run the lifecycle stage as the pipeline would, on events touching `contacts`."""
    from leadflow.core import clock

    events = []
    for c in contacts:
        for name in names or ("",):
            events.append(SimpleNamespace(workspace_id=c.workspace_id, contact_id=c.pk, contact=c,
                                          type="track" if name else "page", event=name,
                                          timestamp=at or clock.now()))
    processing.process_events(events)
    for c in contacts:
        c.refresh_from_db()


def stages_of(c):
    return list(StageChange.objects.filter(contact=c).order_by("at", "pk").values_list("to_stage", flat=True))


# --- stages and qualification ------------------------------------------------------------------

def test_identified_contacts_become_leads_and_anonymous_ones_have_no_stage(ws, frozen_clock):
    known = contact(ws, grade="D", engagement=0)
    anon = Contact.objects.create(workspace=ws.workspace)
    sub = contact(ws, "news@acme.test", grade="D", engagement=0)
    run_stage([known, anon])
    run_stage([sub], "Newsletter Subscribed")
    assert known.lifecycle_stage == "lead" and known.stage_changed_at == frozen_clock()
    assert anon.lifecycle_stage == ""
    assert sub.lifecycle_stage == "subscriber"
    change = StageChange.objects.get(contact=known)
    assert (change.from_stage, change.to_stage, change.actor) == ("", "lead", "rule:new-contact")
    run_stage([sub], "Asset Downloaded")
    assert stages_of(sub) == ["subscriber", "lead"]
    # Each change is in the event log, already resolved to its contact and processed.
    logged = Event.objects.filter(contact=known, event=services.STAGE_EVENT).get()
    assert logged.processed_at is not None and logged.properties["to"] == "lead"
    assert logged.user_id == known.user_id


def test_mql_needs_grade_and_threshold(ws, frozen_clock):
    a_hot = contact(ws, "a@x.test", grade="A", engagement=40)
    a_cold = contact(ws, "b@x.test", grade="A", engagement=39)
    c_hot = contact(ws, "c@x.test", grade="C", engagement=99)
    run_stage([a_hot, a_cold, c_hot])
    assert [a_hot.lifecycle_stage, a_cold.lifecycle_stage, c_hot.lifecycle_stage] == \
        ["marketing_qualified", "lead", "lead"]
    assert stages_of(a_hot) == ["lead", "marketing_qualified"]
    services.lifecycle_settings_update(workspace=ws.workspace, actor="test",
                                       changes={"mql_grades": ["A", "B", "C"], "mql_engagement_threshold": 30})
    run_stage([a_cold, c_hot])
    assert a_cold.lifecycle_stage == c_hot.lifecycle_stage == "marketing_qualified"


def test_hot_event_makes_an_mql_whatever_the_score(ws, frozen_clock):
    cold = contact(ws, grade="D", engagement=0)
    run_stage([cold])
    run_stage([cold], "Demo Requested")
    assert cold.lifecycle_stage == "marketing_qualified"
    change = StageChange.objects.filter(contact=cold).last()
    assert change.actor == "rule:hot-event" and change.reason == "hot: Demo Requested"


def test_reprocessing_changes_nothing_and_later_stages_are_not_pulled_back(ws, frozen_clock):
    c = contact(ws)
    run_stage([c])
    run_stage([c], "Demo Requested")
    assert StageChange.objects.filter(contact=c).count() == 2
    Contact.objects.filter(pk=c.pk).update(lifecycle_stage="customer")
    c.refresh_from_db()
    run_stage([c], "Demo Requested")
    assert c.lifecycle_stage == "customer" and StageChange.objects.filter(contact=c).count() == 2


def test_explicit_stage_moves_go_anywhere_and_close_the_assignment(ws, team, frozen_clock):
    pool(ws, team.alice)
    c = contact(ws)
    run_stage([c])
    services.contact_stage_set(contact=c, to_stage="churned", reason="left", actor="api:lfs_x")
    c.refresh_from_db()
    assert c.lifecycle_stage == "churned"
    assert not Assignment.objects.filter(contact=c, status__in=["assigned", "accepted"]).exists()
    assert Assignment.objects.get(contact=c).status == "closed"
    run_stage([c], "Demo Requested")  # churned is explicit: rules leave it alone
    assert c.lifecycle_stage == "churned"
    with pytest.raises(ServiceError):
        services.contact_stage_set(contact=c, to_stage="nowhere", reason="", actor="test")


# --- routing -----------------------------------------------------------------------------------

def test_account_owner_gets_the_lead_first(ws, team, frozen_clock):
    pool(ws, team.alice)
    acme = Company.objects.create(workspace=ws.workspace, name="Acme", owner=team.cara)
    c = contact(ws, company=acme)
    run_stage([c])
    a = Assignment.objects.get(contact=c)
    assert (a.owner, a.via, a.status) == (team.cara, "account_owner", "assigned")
    assert a.accept_due_at == frozen_clock() + dt.timedelta(hours=24)
    c.refresh_from_db()
    assert c.owner == team.cara


def test_country_and_size_rules_route_by_priority(ws, team, frozen_clock):
    pool(ws, team.alice)
    services.routing_rule_save(workspace=ws.workspace, actor="test", changes={
        "name": "DACH", "priority": 10, "countries": ["de", "AT"], "target_user": "bob"})
    services.routing_rule_save(workspace=ws.workspace, actor="test", changes={
        "name": "Enterprise", "priority": 20, "employees_min": 1000, "pool": [team.cara.pk]})
    big = Company.objects.create(workspace=ws.workspace, name="Big", traits={"employees": "5,000"})
    german = contact(ws, "de@x.test", country="DE", company=big)
    large = contact(ws, "fr@x.test", country="FR", company=big)
    small = contact(ws, "us@x.test", country="US")
    run_stage([german, large, small])
    owners = {c.email: Assignment.objects.get(contact=c).owner for c in (german, large, small)}
    assert owners == {"de@x.test": team.bob, "fr@x.test": team.cara, "us@x.test": team.alice}
    assert Assignment.objects.get(contact=large).rule.name == "Enterprise"


def test_round_robin_only_among_available_reps_and_the_pointer_advances(ws, team, frozen_clock):
    pool(ws, team.alice, team.bob, team.cara)
    services.sales_rep_set(workspace=ws.workspace, user=team.bob, available=False, actor="test")
    leads = [contact(ws, f"l{n}@x.test") for n in range(4)]
    run_stage(leads)
    owners = [Assignment.objects.get(contact=c).owner.username for c in leads]
    assert owners == ["alice", "cara", "alice", "cara"]
    assert LifecycleSettings.objects.get(workspace=ws.workspace).default_pool_pointer == 0
    services.sales_rep_set(workspace=ws.workspace, user=team.bob, available=True, actor="test")
    services.sales_rep_set(workspace=ws.workspace, user=team.alice, max_open_leads=2, actor="test")
    more = [contact(ws, f"m{n}@x.test") for n in range(2)]
    run_stage(more)
    assert [Assignment.objects.get(contact=c).owner.username for c in more] == ["bob", "cara"]
    assert LifecycleSettings.objects.get(workspace=ws.workspace).default_pool_pointer == 0


def test_an_mql_nobody_can_take_waits_and_is_routed_when_a_rep_is_free(ws, team, frozen_clock):
    pool(ws, team.alice)
    services.sales_rep_set(workspace=ws.workspace, user=team.alice, available=False, actor="test")
    c = contact(ws)
    run_stage([c])
    assert c.lifecycle_stage == "marketing_qualified" and not Assignment.objects.filter(contact=c).exists()
    assert list(selectors.unassigned_mqls(workspace=ws.workspace)) == [c]
    services.sales_rep_set(workspace=ws.workspace, user=team.alice, available=True, actor="test")
    timers_run(force=True)
    assert Assignment.objects.get(contact=c).owner == team.alice


def test_one_open_assignment_per_contact_is_a_database_rule(ws, team, frozen_clock):
    from django.db import IntegrityError, transaction

    c = contact(ws)
    Assignment.objects.create(workspace=ws.workspace, contact=c, owner=team.alice)
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(workspace=ws.workspace, contact=c, owner=team.bob, status="accepted")
    Assignment.objects.create(workspace=ws.workspace, contact=c, owner=team.bob, status="recycled")


def test_alert_carries_the_context_and_queues_an_email(ws, team, frozen_clock):
    from leadflow.tracking.ingest import events_append

    pool(ws, team.alice)
    events_append(workspace=ws.workspace, messages=[
        {"type": "identify", "userId": "u1", "traits": {"email": "jane@acme-corp.io", "firstName": "Jane"}},
        {"type": "track", "userId": "u1", "event": "Asset Downloaded",
         "properties": {"magnet_name": "Buyer's guide", "magnet_slug": "buyers-guide"}},
        {"type": "page", "userId": "u1", "properties": {"url": "https://acme.test/pricing"}},
        {"type": "page", "userId": "u1", "properties": {"url": "https://acme.test/blog"}},
        {"type": "track", "userId": "u1", "event": "Demo Requested"},
    ])
    from leadflow.core.pipeline import process_pending

    process_pending()
    c = Contact.objects.get(email="jane@acme-corp.io")
    assert c.lifecycle_stage == "marketing_qualified"
    alert = SalesAlert.objects.get(contact=c)
    assert alert.user == team.alice and alert.kind == "new_lead"
    ctx = alert.context
    assert [m["slug"] for m in ctx["magnets"]] == ["buyers-guide"]
    assert [p["url"] for p in ctx["high_intent_pages"]] == ["https://acme.test/pricing"]
    assert len(ctx["timeline"]) == 5 and ctx["timeline"][0]["event"] == "Demo Requested"
    assert set(ctx["score"]) >= {"fit_score", "fit_grade", "engagement_score"}
    assert ctx["assignment"]["reason"] == "hot: Demo Requested"
    mail = alert.assignment.alerts.get().pk and services.Notification.objects.get(alert=alert)
    assert mail.to_address == "alice@sales.test" and mail.status == "pending"
    assert "Buyer's guide" in mail.text_body and "/pricing" in mail.text_body


# --- sales actions -----------------------------------------------------------------------------

def routed(ws, team, email="lead@acme.test"):
    pool(ws, team.alice, team.bob)
    c = contact(ws, email)
    run_stage([c])
    return c


def test_accept_work_and_forward_moves(ws, team, frozen_clock):
    c = routed(ws, team)
    services.lead_accept(contact=c, user=team.alice)
    a = Assignment.objects.get(contact=c)
    assert a.status == "accepted" and a.accepted_at == frozen_clock()
    assert a.work_due_at == frozen_clock() + dt.timedelta(hours=72)
    frozen_clock.advance(hours=2)
    services.lead_work_log(contact=c, user=team.alice, kind="call", note="left a voicemail")
    a.refresh_from_db()
    assert a.status == "worked" and a.activities[0]["note"] == "left a voicemail"
    services.lead_advance(contact=c, user=team.alice, to_stage="sales_qualified")
    services.lead_advance(contact=c, user=team.alice, to_stage="opportunity")
    with pytest.raises(ServiceError, match="back"):
        services.lead_advance(contact=c, user=team.alice, to_stage="sales_qualified")
    services.lead_advance(contact=c, user=team.alice, to_stage="customer")
    c.refresh_from_db()
    assert c.lifecycle_stage == "customer"
    assert stages_of(c) == ["lead", "marketing_qualified", "sales_accepted", "sales_qualified", "opportunity",
                            "customer"]
    assert Assignment.objects.get(contact=c).status == "closed"
    assert StageChange.objects.filter(contact=c, actor=f"user:{team.alice.pk}").count() == 4


def test_only_owner_manager_or_admin_may_act(ws, team, frozen_clock):
    c = routed(ws, team)
    for outsider in (team.bob, team.mark):
        with pytest.raises(services.NotAllowed):
            services.lead_accept(contact=c, user=outsider)
    services.lead_accept(contact=c, user=team.mona)  # alice's manager
    services.lead_work_log(contact=c, user=team.ada, kind="note", note="admin checked")


def test_disqualify_and_recycle_need_reasons(ws, team, frozen_clock):
    c = routed(ws, team)
    with pytest.raises(ServiceError):
        services.lead_disqualify(contact=c, user=team.alice, reason=" ")
    services.lead_disqualify(contact=c, user=team.alice, reason="student")
    c.refresh_from_db()
    assert c.lifecycle_stage == "disqualified" and Assignment.objects.get(contact=c).status == "disqualified"
    d = contact(ws, "other@acme.test")
    run_stage([d])
    owner = Assignment.objects.get(contact=d).owner
    services.lead_recycle(contact=d, user=owner, reason="no budget", notes="call in Q3",
                          return_date=dt.date(2026, 6, 1))
    d.refresh_from_db()
    a = Assignment.objects.get(contact=d)
    assert d.lifecycle_stage == "recycled" and d.owner is None
    assert (a.status, a.reason, a.notes) == ("recycled", "no budget", "call in Q3")
    assert a.return_at == dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)


def test_recycled_lead_comes_back_on_its_return_date(ws, team, frozen_clock):
    c = routed(ws, team)
    services.lead_recycle(contact=c, user=team.alice, reason="later", return_date=dt.date(2026, 3, 10))
    assert recycled_returns_run(now=frozen_clock()) == 0
    frozen_clock.set(dt.datetime(2026, 3, 10, tzinfo=dt.timezone.utc))
    timers_run(force=True)
    c.refresh_from_db()
    assert c.lifecycle_stage == "marketing_qualified"
    new = Assignment.objects.get(contact=c, status="assigned")
    assert new.previous.status == "recycled" and new.previous.returned_at == frozen_clock()
    assert StageChange.objects.filter(contact=c).last().actor == "system:return-date"
    assert recycled_returns_run(now=frozen_clock()) == 0


def test_recycled_lead_active_again_requalifies_before_its_return_date(ws, team, frozen_clock):
    c = routed(ws, team)
    services.lead_recycle(contact=c, user=team.alice, reason="later")
    run_stage([c], at=frozen_clock() - dt.timedelta(hours=1))  # an old event arriving late: no
    assert c.lifecycle_stage == "recycled"
    frozen_clock.advance(days=2)
    run_stage([c], "Demo Requested")
    assert c.lifecycle_stage == "marketing_qualified"
    assert Assignment.objects.get(contact=c, status="recycled").returned_at == frozen_clock()
    assert Assignment.objects.filter(contact=c, status="assigned").count() == 1


# --- SLAs ---------------------------------------------------------------------------------------

def test_not_accepted_in_time_is_reassigned_to_another_rep(ws, team, frozen_clock):
    c = routed(ws, team)
    first = Assignment.objects.get(contact=c)
    frozen_clock.advance(hours=23)
    assert accept_breaches_run(now=frozen_clock()) == 0
    frozen_clock.advance(hours=2)
    assert accept_breaches_run(now=frozen_clock()) == 1
    first.refresh_from_db()
    second = Assignment.objects.get(contact=c, status="assigned")
    assert first.status == "reassigned" and second.owner == team.bob and second.previous == first
    assert second.reason.startswith("sla: not accepted")
    c.refresh_from_db()
    assert c.owner == team.bob
    assert SalesAlert.objects.filter(user=team.bob, contact=c).exists()


def test_no_other_rep_free_escalates_to_the_manager(ws, team, frozen_clock):
    pool(ws, team.alice)
    c = contact(ws)
    run_stage([c])
    frozen_clock.advance(hours=25)
    timers_run(force=True)
    a = Assignment.objects.get(contact=c)
    assert a.status == "escalated" and a.owner == team.alice and a.escalated_at == frozen_clock()
    alert = SalesAlert.objects.get(kind="escalation")
    assert alert.user == team.mona and alert.contact == c
    timers_run(force=True)  # recorded once
    assert SalesAlert.objects.filter(kind="escalation").count() == 1
    services.lead_accept(contact=c, user=team.alice)  # can still be accepted


def test_escalate_setting_escalates_even_with_reps_free(ws, team, frozen_clock):
    pool(ws, team.alice, team.bob, on_accept_breach="escalate")
    c = contact(ws)
    run_stage([c])
    frozen_clock.advance(hours=24)
    timers_run(force=True)
    assert Assignment.objects.get(contact=c).status == "escalated"


def test_accepted_but_not_worked_is_recycled_automatically(ws, team, frozen_clock):
    c = routed(ws, team)
    services.lead_accept(contact=c, user=team.alice)
    frozen_clock.advance(hours=71)
    assert work_breaches_run(now=frozen_clock()) == 0
    frozen_clock.advance(hours=2)
    timers_run(force=True)
    c.refresh_from_db()
    a = Assignment.objects.get(contact=c)
    assert c.lifecycle_stage == "recycled" and c.owner is None
    assert (a.status, a.reason) == ("recycled", "sla: not worked")
    assert a.return_at == frozen_clock() + dt.timedelta(days=30)
    change = StageChange.objects.filter(contact=c).last()
    assert (change.to_stage, change.actor, change.reason) == ("recycled", "system:sla", "sla: not worked")


def test_worked_leads_are_not_recycled(ws, team, frozen_clock):
    c = routed(ws, team)
    services.lead_work_log(contact=c, user=team.alice, kind="email")
    frozen_clock.advance(days=10)
    timers_run(force=True)
    c.refresh_from_db()
    assert c.lifecycle_stage == "sales_accepted"


def test_quiet_leads_get_one_event_per_quiet_spell(ws, frozen_clock):
    now = frozen_clock()
    c = contact(ws, stage="lead", last_seen_at=now - dt.timedelta(days=31))
    fresh = contact(ws, "fresh@x.test", stage="lead", last_seen_at=now - dt.timedelta(days=3))
    assert quiet_leads_run(now=now) == 1
    assert quiet_leads_run(now=now) == 0
    quiet = Event.objects.get(event=services.QUIET_EVENT)
    assert quiet.contact == c and quiet.processed_at is not None
    Contact.objects.filter(pk=c.pk).update(last_seen_at=now)  # active again, then quiet again
    frozen_clock.advance(days=31)
    assert quiet_leads_run(now=frozen_clock()) == 2  # the new spell, and `fresh` now
    assert Event.objects.filter(event=services.QUIET_EVENT, contact=c).count() == 2
    assert QuietMark.objects.filter(contact=fresh).count() == 1


# --- merges -------------------------------------------------------------------------------------

def test_merge_keeps_the_winners_assignment_and_the_further_stage(ws, team, frozen_clock):
    winner = routed(ws, team, "w@x.test")
    loser = contact(ws, "l@x.test")
    run_stage([loser])
    services.lead_accept(contact=loser, user=Assignment.objects.get(contact=loser).owner)
    contact_merge(winner=winner, loser=loser, reason="test")
    winner.refresh_from_db()
    assignments = Assignment.objects.filter(contact=winner)
    assert assignments.filter(status__in=["assigned", "accepted"]).count() == 1
    assert assignments.get(status="closed").reason.startswith("merged")
    assert winner.lifecycle_stage == "sales_accepted"
    assert StageChange.objects.filter(contact=winner).count() == 5


# --- end to end ---------------------------------------------------------------------------------

class _Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, envelope.content.decode("utf8", "replace")))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server(settings):
    from aiosmtpd.controller import Controller

    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 10
    yield inbox
    controller.stop()


def _wait_for(inbox, count: int) -> list:
    deadline = time.monotonic() + 10
    while len(inbox.messages) < count and time.monotonic() < deadline:
        time.sleep(0.02)  # aiosmtpd hands the message over on its own thread
    return inbox.messages


@pytest.mark.django_db(transaction=True)
def test_end_to_end_lead_is_routed_reassigned_recycled_and_requalifies(client, ws, frozen_clock, process,
                                                                       smtp_server):
    w = ws.workspace
    alice = user_create(username="alice", password="x" * 12, email="alice@sales.test", workspace=w, role="sales")
    bob = user_create(username="bob", password="x" * 12, email="bob@sales.test", workspace=w, role="sales")
    # The default scoring rules give +15 for a download, +10 (+1 page view) for pricing.
    pool(ws, alice, bob, mql_engagement_threshold=25)

    def send(*messages):
        assert post_batch(client, ws, list(messages)).status_code == 200
        process()

    send({"type": "identify", "userId": "jane", "traits": {
        "email": "jane@acme-corp.io", "firstName": "Jane", "lastName": "Doe", "title": "VP Marketing",
        "company": {"name": "Acme Corp", "employees": 200, "industry": "software"}}})
    jane = Contact.objects.get(email="jane@acme-corp.io")
    assert jane.lifecycle_stage == "lead" and jane.fit_grade == "A"
    frozen_clock.advance(minutes=5)
    send({"type": "track", "userId": "jane", "event": "Asset Downloaded",
          "properties": {"magnet_name": "Buyer's Guide", "magnet_slug": "buyers-guide"}})
    jane.refresh_from_db()
    assert jane.lifecycle_stage == "lead", f"not yet: engagement {jane.engagement_score}"
    frozen_clock.advance(minutes=5)
    send({"type": "page", "userId": "jane", "name": "Pricing", "properties": {"url": "https://acme.test/pricing"}})
    jane.refresh_from_db()
    assert jane.lifecycle_stage == "marketing_qualified", jane.engagement_score
    first = Assignment.objects.get(contact=jane)
    assert first.owner == alice and first.via == "default_pool"
    assert LifecycleSettings.objects.get(workspace=w).default_pool_pointer == 1

    # The alert: in-app with its context, and an email through a real SMTP server.
    alert = SalesAlert.objects.get(user=alice)
    assert alert.context["magnets"][0]["name"] == "Buyer's Guide"
    assert alert.context["high_intent_pages"][0]["url"] == "https://acme.test/pricing"
    assert alert.context["score"]["fit_grade"] == "A"
    assert "explain" in alert.context["score"]
    assert "lifecycle.timers" in timers_run(force=True)
    (rcpt, content), = _wait_for(smtp_server, 1)
    assert rcpt == ["alice@sales.test"] and "New lead for you: Jane Doe (Acme Corp)" in content
    assert "Buyer's Guide" in content and "/pricing" in content
    assert services.Notification.objects.get(alert=alert).status == "sent"

    # Not accepted within 24 h: reassigned to bob, who is alerted by email too.
    frozen_clock.advance(hours=24, minutes=1)
    timers_run(force=True)
    first.refresh_from_db()
    second = Assignment.objects.get(contact=jane, status="assigned")
    assert first.status == "reassigned" and second.owner == bob and second.previous == first
    assert _wait_for(smtp_server, 2)[1][0] == ["bob@sales.test"]

    # Bob accepts through the API, then does not work it within 72 h: recycled automatically.
    response = client.post(f"/api/sales/leads/{jane.pk}/accept", {"acting_user": "bob"},
                           content_type="application/json", HTTP_AUTHORIZATION=ws.bearer)
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "accepted" and response.json()["sla"] == "work"
    frozen_clock.advance(hours=72, minutes=1)
    timers_run(force=True)
    jane.refresh_from_db()
    assert jane.lifecycle_stage == "recycled" and jane.owner is None
    assert jane.engagement_score < 25, "the score cooled down while sales sat on it"

    # Back to activity: the pricing page again, and the lead is an MQL for sales once more.
    frozen_clock.advance(days=3)
    send({"type": "page", "userId": "jane", "properties": {"url": "https://acme.test/pricing"}})
    jane.refresh_from_db()
    assert jane.lifecycle_stage == "marketing_qualified"
    third = Assignment.objects.get(contact=jane, status="assigned")
    assert third.previous.status == "recycled" and third.previous.returned_at is not None
    assert stages_of(jane) == ["lead", "marketing_qualified", "sales_accepted", "recycled", "marketing_qualified"]
    history = client.get(f"/api/lifecycle/contacts/{jane.pk}/stages", HTTP_AUTHORIZATION=ws.bearer).json()
    assert [h["actor"] for h in history] == ["rule:new-contact", "rule:mql", f"user:{bob.pk}", "system:sla",
                                             "rule:mql"]
    logged = Event.objects.filter(contact=jane, event=services.STAGE_EVENT)
    assert logged.count() == 5 and not logged.filter(processed_at__isnull=True).exists()
    timers_run(force=True)
    assert len(_wait_for(smtp_server, 3)) == 3
