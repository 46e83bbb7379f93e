"""What enters people into a journey (segment entry and exit, forms, score crossings, stage changes,
date traits, by hand), the re-entry policies, the journey's own email cap, exit rules, and merges."""

from __future__ import annotations

import datetime as dt

import pytest

from leadflow.contacts.services import contact_merge
from leadflow.core.pipeline import timers_run
from leadflow.journeys import services
from leadflow.journeys.models import Enrollment, EnrollmentStep
from leadflow.journeys.triggers import date_triggers_run
from leadflow.lifecycle.services import contact_stage_set
from leadflow.messaging.models import Message
from leadflow.segments import services as segment_services

from journey_helpers import apply, at_node, contact_of, identify, send, states, template, tick, track

pytestmark = pytest.mark.django_db


def one_email(name: str, slug: str, triggers: list, **extra) -> dict:
    return {"name": name, "slug": slug, "triggers": triggers,
            "nodes": [{"id": "mail", "type": "send_email", "template": "hello", "next": "hold"},
                      {"id": "hold", "type": "wait", "days": 1}], **extra}


def mailed(journey) -> list[str]:
    return sorted(Message.objects.filter(source__startswith=f"journey:{journey.pk}:")
                  .values_list("contact__user_id", flat=True))


def test_segment_entry_and_exit_triggers(ws, frozen_clock):
    template(ws, "hello")
    segment_services.segment_create(workspace=ws.workspace, name="Pro", kind="dynamic", actor="test",
                                    definition={"version": 1, "field": "traits.plan", "op": "eq", "value": "pro"})
    entered = apply(ws, one_email("On entry", "on-entry", [{"segment_entered": "pro"}]))
    left = apply(ws, one_email("On exit", "on-exit", [{"segment_exited": "pro"}]))
    send(ws, identify("ann", email="ann@example.com", plan="pro"), identify("bob", email="bob@example.com"))
    assert mailed(entered) == ["ann"] and mailed(left) == []
    send(ws, identify("ann", plan="free"))
    assert mailed(left) == ["ann"]


def test_form_submitted_and_stage_changed_triggers(ws, frozen_clock):
    from leadflow.tracking.models import Form

    template(ws, "hello")
    Form.objects.create(workspace=ws.workspace, slug="contact-us", name="Contact us")
    form = apply(ws, one_email("Form", "form", [{"form_submitted": "contact-us"}]))
    stage = apply(ws, one_email("Stage", "stage", [{"stage_changed": True, "to": ["customer"]}]))
    send(ws, identify("ann", email="ann@example.com"), identify("bob", email="bob@example.com"))
    send(ws, track("ann", "Form Submitted", form_slug="contact-us"), track("bob", "Form Submitted", form_slug="other"))
    assert mailed(form) == ["ann"]
    contact_stage_set(contact=contact_of(ws, "bob"), to_stage="marketing_qualified", reason="t", actor="t")
    assert mailed(stage) == []
    contact_stage_set(contact=contact_of(ws, "bob"), to_stage="customer", reason="t", actor="t")
    tick(frozen_clock)
    assert mailed(stage) == ["bob"]


def test_a_score_trigger_enters_on_crossing_only(ws, frozen_clock):
    from leadflow.scoring.services import rule_create

    template(ws, "hello")
    rule_create(workspace=ws.workspace, kind="engagement", name="Demo", condition={"event": "Demo Viewed"},
                points=25, actor="test")
    rule_create(workspace=ws.workspace, kind="engagement", name="Gone quiet", condition={"event": "Cooled"},
                points=-30, actor="test")
    journey = apply(ws, one_email("Hot", "hot", [{"score": "engagement_score", "at_least": 40}],
                                  reentry="every_time"))
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Demo Viewed"))
    assert mailed(journey) == [], "25 is below 40"
    send(ws, track("ann", "Demo Viewed"))
    assert mailed(journey) == ["ann"], "50 crossed 40"
    tick(frozen_clock, days=2)
    send(ws, track("ann", "Demo Viewed"))
    assert mailed(journey) == ["ann"], "still above: no new crossing"
    send(ws, track("ann", "Cooled"), track("ann", "Cooled"))  # about 73 (decayed) - 60
    send(ws, track("ann", "Demo Viewed"), track("ann", "Demo Viewed"))
    assert mailed(journey) == ["ann", "ann"], "dropped below and crossed again: every_time enters again"


def test_date_trait_trigger_enters_on_the_day(ws, frozen_clock):
    template(ws, "hello")
    journey = apply(ws, one_email("Renewal", "renewal", [{"date_trait": "renewal_date", "offset_days": -30}]))
    send(ws, identify("ann", email="ann@example.com", renewal_date="2026-04-01"),
         identify("bob", email="bob@example.com", renewal_date="2026-05-01"))
    frozen_clock.set(dt.datetime(2026, 3, 2, 10, tzinfo=dt.timezone.utc))  # 30 days before April 1st
    date_triggers_run(now=frozen_clock.current)
    date_triggers_run(now=frozen_clock.current)
    tick(frozen_clock)
    assert mailed(journey) == ["ann"]
    assert Enrollment.objects.get(journey=journey).entry_key == "d2026-04-01"


def test_reentry_policies(ws, frozen_clock):
    template(ws, "hello")
    policies = {p: apply(ws, one_email(p, p.replace("_", "-"), [{"event": "Ping"}], reentry=p,
                                       **({"reentry_days": 7} if p == "once_per_period" else {})))
                for p in ("once", "not_while_in", "every_time", "once_per_period")}
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Ping"))
    send(ws, track("ann", "Ping"))  # still in every journey (waiting a day)
    tick(frozen_clock, days=2)  # all finished
    send(ws, track("ann", "Ping"))
    counts = {p: Enrollment.objects.filter(journey=j).count() for p, j in policies.items()}
    assert counts == {"once": 1, "not_while_in": 2, "every_time": 3, "once_per_period": 1}
    tick(frozen_clock, days=8)
    send(ws, track("ann", "Ping"))
    assert Enrollment.objects.filter(journey=policies["once_per_period"]).count() == 2


def test_the_entry_filter_must_also_hold(ws, frozen_clock):
    template(ws, "hello")
    journey = apply(ws, one_email("Entry", "entry", [{"event": "Ping"}],
                                  entry={"field": "country", "op": "eq", "value": "DE"}))
    send(ws, identify("de", email="de@example.com", country="DE"), identify("us", email="us@example.com", country="US"))
    send(ws, track("de", "Ping"), track("us", "Ping"))
    assert mailed(journey) == ["de"]


def test_the_journey_cap_holds_a_send_until_the_window_frees(ws, frozen_clock):
    template(ws, "hello")
    template(ws, "again")
    journey = apply(ws, {"name": "Capped", "slug": "capped", "triggers": [{"event": "Ping"}],
                         "cap": {"emails": 1, "days": 3},
                         "nodes": [{"id": "one", "type": "send_email", "template": "hello", "next": "w"},
                                   {"id": "w", "type": "wait", "days": 1, "next": "two"},
                                   {"id": "two", "type": "send_email", "template": "again"}]})
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Ping"))
    tick(frozen_clock, days=1)
    assert Message.objects.filter(source__startswith=f"journey:{journey.pk}:").count() == 1
    assert at_node(journey) == {"ann": "two"}, "held at the send by the cap"
    tick(frozen_clock, days=2)
    assert Message.objects.filter(source__startswith=f"journey:{journey.pk}:").count() == 2
    second = Message.objects.get(template__slug="again")
    assert second.queued_at == frozen_clock.current


def test_exit_rules_take_people_out_without_a_conversion(ws, frozen_clock):
    template(ws, "hello")
    journey = apply(ws, one_email("Exits", "exits", [{"event": "Ping"}],
                                  exit_when=[{"name": "Unsubscribed", "event": "Unsubscribed"}]))
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Ping"))
    send(ws, track("ann", "Unsubscribed"))
    assert states(journey) == {"ann": "exited"}
    assert not EnrollmentStep.objects.filter(journey=journey, kind="converted").exists()


def test_enroll_by_hand_and_remove(ws, frozen_clock):
    template(ws, "hello")
    journey = apply(ws, one_email("Manual", "manual", [{"manual": True}]))
    send(ws, identify("ann", email="ann@example.com"), identify("bob", email="bob@example.com"))
    made = services.journey_enroll(journey=journey, contacts=[contact_of(ws, "ann"), contact_of(ws, "bob")],
                                   actor="test")
    assert len(made) == 2
    assert services.journey_remove(journey=journey, contacts=[contact_of(ws, "bob")], actor="test") == 1
    tick(frozen_clock)
    assert mailed(journey) == ["ann"] and states(journey) == {"ann": "active", "bob": "exited"}


def test_a_merge_keeps_one_enrollment_per_journey(ws, frozen_clock):
    template(ws, "hello")
    journey = apply(ws, one_email("Once", "once-j", [{"event": "Ping"}], reentry="once"))
    send(ws, identify("ann", email="ann@example.com"), identify("ann2", email="ann2@example.com"))
    send(ws, track("ann", "Ping"), track("ann2", "Ping"))
    winner, loser = contact_of(ws, "ann"), contact_of(ws, "ann2")
    contact_merge(winner=winner, loser=loser, reason="same person", actor="test")
    rows = list(Enrollment.objects.filter(journey=journey).values_list("contact_id", "state"))
    assert sorted(rows) == [(winner.pk, "active"), (winner.pk, "exited")]


def test_migrating_people_in_flight_node_by_node(ws, frozen_clock):
    template(ws, "hello")
    template(ws, "better")
    first = one_email("Mig", "mig", [{"event": "Ping"}])
    journey = apply(ws, first)
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Ping"))
    assert at_node(journey) == {"ann": "hold"}
    second = {**first, "nodes": [{"id": "mail", "type": "send_email", "template": "hello", "next": "hold-2"},
                                 {"id": "hold-2", "type": "wait", "days": 1, "next": "more"},
                                 {"id": "more", "type": "send_email", "template": "better"}]}
    journey, version, _ = services.journey_apply(workspace=ws.workspace, data=second, actor="t",
                                                 migrate={"hold": "hold-2"})
    e = Enrollment.objects.get(journey=journey)
    assert (e.version_id, e.node) == (version.pk, "hold-2")
    tick(frozen_clock, days=1)
    assert sorted(Message.objects.values_list("template__slug", flat=True)) == ["better", "hello"]
    with pytest.raises(Exception, match="no node"):
        services.journey_apply(workspace=ws.workspace, data={**second, "name": "Mig 3"}, actor="t",
                               migrate={"nope": "more"})


def test_timers_run_the_date_pass(ws, frozen_clock):
    template(ws, "hello")
    journey = apply(ws, one_email("Birthday", "birthday", [{"date_trait": "birthday"}]))
    send(ws, identify("ann", email="ann@example.com", birthday="2026-03-02"))
    assert "journeys.dates" in timers_run(force=True)
    tick(frozen_clock)
    assert mailed(journey) == ["ann"]
