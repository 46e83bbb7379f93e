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


def test_a_date_trait_trigger_with_a_positive_offset_enters_days_after_the_date(ws, frozen_clock):
    template(ws, "hello")
    journey = apply(ws, one_email("Check-in", "check-in", [{"date_trait": "signup_date", "offset_days": 3}]))
    send(ws, identify("ann", email="ann@example.com", signup_date="2026-03-02"),
         identify("bob", email="bob@example.com", signup_date="2026-03-04T16:30:00Z"))
    for day in (2, 3, 4):
        frozen_clock.set(dt.datetime(2026, 3, day, 10, tzinfo=dt.timezone.utc))
        assert date_triggers_run(now=frozen_clock.current) == 0, f"March {day} is before the date + 3 days"
    frozen_clock.set(dt.datetime(2026, 3, 5, 10, tzinfo=dt.timezone.utc))  # 3 days after ann's date
    assert date_triggers_run(now=frozen_clock.current) == 1
    assert date_triggers_run(now=frozen_clock.current) == 0, "the same day enters nobody twice"
    tick(frozen_clock)
    assert mailed(journey) == ["ann"]
    assert Enrollment.objects.get(journey=journey).entry_key == "d2026-03-02"
    frozen_clock.set(dt.datetime(2026, 3, 7, 10, tzinfo=dt.timezone.utc))  # 3 days after bob's
    date_triggers_run(now=frozen_clock.current)
    tick(frozen_clock)
    assert mailed(journey) == ["ann", "bob"]


# --- score and grade crossings ------------------------------------------------------------------

def test_a_grade_trigger_enters_when_the_fit_grade_reaches_it_or_becomes_it(ws, frozen_clock):
    # Default fit rules: a business address 15, a manager title 10, a director/VP title 25;
    # grades A 60, B 40, C 20.
    template(ws, "hello")
    good = apply(ws, one_email("Good fit", "good-fit", [{"grade": "B"}], reentry="every_time"))
    slipped = apply(ws, one_email("Slipped", "slipped", [{"grade": "c", "exactly": True}], reentry="every_time"))
    send(ws, identify("ann", email="ann@example.com", title="Director"),  # 40: B
         identify("bob", email="bob@example.com"))  # 15: D
    assert contact_of(ws, "ann").fit_grade == "B" and contact_of(ws, "bob").fit_grade == "D"
    assert mailed(good) == ["ann"] and mailed(slipped) == []
    assert Enrollment.objects.get(journey=good).data == {"grade": {"fit_grade": "B"}}
    send(ws, identify("ann", title="VP Sales"))
    assert mailed(good) == ["ann"], "still B or better: no new crossing"
    send(ws, identify("bob", title="Sales Manager"))  # 25: C
    assert mailed(slipped) == ["bob"] and mailed(good) == ["ann"]
    send(ws, identify("ann", title="Office Manager"))  # B to C
    assert mailed(slipped) == ["ann", "bob"]
    frozen_clock.advance(hours=1)
    send(ws, identify("ann", title="Director"))  # C to B again
    assert mailed(good) == ["ann", "ann"], "fell below B and reached it again"


def test_a_journeys_score_step_enters_people_into_a_score_journey_at_once(ws, frozen_clock):
    template(ws, "hello")
    hot = apply(ws, one_email("Hot", "hot", [{"score": "engagement_score", "at_least": 40}]))
    apply(ws, {"name": "Boost", "slug": "boost", "triggers": [{"event": "Go"}],
               "nodes": [{"id": "boost", "type": "score", "points": 50}]})
    send(ws, identify("ann", email="ann@example.com"), identify("bob", email="bob@example.com"))
    send(ws, track("ann", "Go"))  # no scoring rule counts "Go": only the step raises the score
    assert contact_of(ws, "ann").engagement_score == 50
    assert mailed(hot) == ["ann"], "entered by the step's crossing, without waiting for an event or a pass"
    assert Enrollment.objects.get(journey=hot).data == {"score": {"engagement_score": 50.0}}


def test_score_and_grade_changes_without_an_event_enter_people_by_the_periodic_pass(ws, frozen_clock):
    from leadflow.scoring.services import rule_create, settings_update

    template(ws, "hello")
    rule_create(workspace=ws.workspace, kind="engagement", name="Demo", condition={"event": "Demo Viewed"},
                points=25, actor="test")
    rule_create(workspace=ws.workspace, kind="engagement", name="Cooling off", condition={"event": "Cooled"},
                points=-30, expires_after_days=1, actor="test")
    hot = apply(ws, one_email("Hot", "hot", [{"score": "engagement_score", "at_least": 40}]))
    good = apply(ws, one_email("Good fit", "good-fit", [{"grade": "B"}]))
    send(ws, identify("ann", email="ann@example.com", title="Sales Manager"))  # fit 25: C
    send(ws, track("ann", "Cooled"), track("ann", "Demo Viewed"), track("ann", "Demo Viewed"))  # 50 - 30
    assert mailed(hot) == [] and mailed(good) == []

    settings_update(workspace=ws.workspace, changes={"grade_b": 25}, actor="test")  # rescores every contact
    assert contact_of(ws, "ann").fit_grade == "B"
    frozen_clock.advance(days=2)  # the -30 has expired; only the decay pass will notice
    assert mailed(good) == [] and mailed(hot) == [], "nothing happened to ann in the pipeline"
    ran = timers_run(force=True)
    assert ran.index("scoring.decay") < ran.index("journeys.thresholds")
    assert contact_of(ws, "ann").engagement_score > 40
    tick(frozen_clock)
    assert mailed(good) == ["ann"] and mailed(hot) == ["ann"]
    timers_run(force=True)
    send(ws, track("ann", "Demo Viewed"))
    tick(frozen_clock)
    assert mailed(good) == ["ann"] and mailed(hot) == ["ann"], "staying above is no new crossing"


def test_people_already_above_when_a_journey_goes_live_or_resumes_are_not_taken_for_crossings(ws, frozen_clock):
    from leadflow.scoring.services import rule_create

    template(ws, "hello")
    rule_create(workspace=ws.workspace, kind="engagement", name="Demo", condition={"event": "Demo Viewed"},
                points=25, actor="test")
    rule_create(workspace=ws.workspace, kind="engagement", name="Gone quiet", condition={"event": "Cooled"},
                points=-30, actor="test")
    send(ws, identify("ann", email="ann@example.com"), identify("bob", email="bob@example.com"))
    send(ws, track("ann", "Demo Viewed"), track("ann", "Demo Viewed"))  # 50, before the journey exists
    hot = apply(ws, one_email("Hot", "hot", [{"score": "engagement_score", "at_least": 40}], reentry="every_time"))
    send(ws, track("ann", "Ping"))
    timers_run(force=True)
    tick(frozen_clock)
    assert mailed(hot) == [], "ann was above before the journey went live: no crossing"

    services.journey_status_set(journey=hot, status="paused", actor="test")
    send(ws, track("bob", "Demo Viewed"), track("bob", "Demo Viewed"))  # bob crosses while it is paused
    services.journey_status_set(journey=hot, status="live", actor="test")
    send(ws, track("bob", "Ping"))
    timers_run(force=True)
    tick(frozen_clock)
    assert mailed(hot) == [], "nobody enters a paused journey, and the resume does not enter them late"

    send(ws, track("ann", "Cooled"))  # 20
    send(ws, track("ann", "Demo Viewed"))  # 45: a real crossing
    assert mailed(hot) == ["ann"]


def test_a_grade_trigger_round_trips_through_a_file_and_the_editor(ws):
    from leadflow.journeys.yamlio import yaml_load
    from leadflow.web import journey_editor

    text = """
name: Fit dropped
slug: fit-dropped
triggers:
  - grade: D
    exactly: true
  - grade: b
nodes:
  - {id: mail, type: send_email, template: hello}
"""
    template(ws, "hello")
    journey = apply(ws, yaml_load(text))
    exported = services.journey_export(journey=journey)
    assert exported["triggers"] == [{"grade": "D", "exactly": True}, {"grade": "B"}]
    state = journey_editor.state_from_definition(exported)
    assert [row.values for row in state.triggers] == [{"grade": "=D"}, {"grade": "B"}]
    assert journey_editor.state_definition(state, slug="fit-dropped")["triggers"] == exported["triggers"]
    with pytest.raises(Exception, match="triggers"):
        apply(ws, {**yaml_load(text), "triggers": [{"grade": "E"}]})
