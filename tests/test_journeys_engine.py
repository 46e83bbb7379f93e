"""The journey engine through its public surface: events enter people, the clock moves them along,
sends go to the outbox once, goals take people out at once, branches, holdouts, versions, pausing."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from leadflow.core.services import ServiceError
from leadflow.journeys import services
from leadflow.journeys.engine import journeys_advance
from leadflow.journeys.language import JourneyError, journey_parse
from leadflow.journeys.models import Enrollment, EnrollmentStep
from leadflow.messaging.models import Message

from journey_helpers import apply, at_node, contact_of, identify, send, states, template, tick, track

pytestmark = pytest.mark.django_db

GUIDE = [{"field": "properties.magnet_slug", "op": "eq", "value": "retirement-guide"}]


def nurture(**extra) -> dict:
    return {"name": "Ebook nurture", "slug": "ebook", "reentry": "once",
            "triggers": [{"event": "Asset Downloaded", "where": GUIDE}],
            "goals": [{"name": "Became MQL", "filter": {"field": "lifecycle_stage", "op": "eq", "value": "marketing_qualified"}}],
            "nodes": [{"id": "wait-2d", "type": "wait", "days": 2, "next": "thanks"},
                      {"id": "thanks", "type": "send_email", "template": "thanks", "next": "wait-3d"},
                      {"id": "wait-3d", "type": "wait", "days": 3, "next": "video"},
                      {"id": "video", "type": "send_email", "template": "video"}],
            **extra}


def sent(journey) -> list[tuple[str, str]]:
    return sorted(Message.objects.filter(source__startswith=f"journey:{journey.pk}:")
                  .values_list("contact__user_id", "template__slug"))


def test_an_event_enters_people_and_the_clock_moves_them_to_each_email_once(ws, frozen_clock):
    template(ws, "thanks")
    template(ws, "video")
    journey = apply(ws, nurture())
    send(ws, identify("ann", email="ann@example.com"), identify("bob", email="bob@example.com"))
    send(ws, track("ann", "Asset Downloaded", magnet_slug="retirement-guide"),
         track("bob", "Asset Downloaded", magnet_slug="other-guide"))
    assert states(journey) == {"ann": "active"}, "only the retirement guide enters"
    tick(frozen_clock)
    assert at_node(journey) == {"ann": "wait-2d"}
    tick(frozen_clock, days=1, hours=23)
    assert sent(journey) == []
    tick(frozen_clock, hours=1)
    assert sent(journey) == [("ann", "thanks")] and at_node(journey) == {"ann": "wait-3d"}
    tick(frozen_clock, days=3)
    assert sent(journey) == [("ann", "thanks"), ("ann", "video")]
    assert states(journey) == {"ann": "completed"}
    tick(frozen_clock, days=30)
    assert len(sent(journey)) == 2
    send(ws, track("ann", "Asset Downloaded", magnet_slug="retirement-guide"))
    assert Enrollment.objects.filter(journey=journey).count() == 1, "re-entry once: never again"


def test_a_goal_takes_people_out_at_once_credited_to_the_step_before(ws, frozen_clock):
    from leadflow.lifecycle.services import contact_stage_set

    template(ws, "thanks")
    template(ws, "video")
    journey = apply(ws, nurture())
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Asset Downloaded", magnet_slug="retirement-guide"))
    tick(frozen_clock, days=2)
    assert sent(journey) == [("ann", "thanks")]
    contact_stage_set(contact=contact_of(ws, "ann"), to_stage="marketing_qualified", reason="test", actor="test")
    assert states(journey) == {"ann": "converted"}, "the stage change converts at once, before any tick"
    step = EnrollmentStep.objects.get(journey=journey, kind="converted")
    assert step.node == "thanks" and step.detail["goal"] == "Became MQL"
    tick(frozen_clock, days=10)
    assert sent(journey) == [("ann", "thanks")], "no email after the goal"


def test_a_redone_pass_sends_nothing_twice(ws, frozen_clock):
    template(ws, "thanks")
    template(ws, "video")
    journey = apply(ws, nurture())
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Asset Downloaded", magnet_slug="retirement-guide"))
    tick(frozen_clock, days=2)
    e = Enrollment.objects.get(journey=journey)
    # Put the enrollment back where it was before the send, as a crash before commit would have.
    Enrollment.objects.filter(pk=e.pk).update(node="thanks", resume="arrive", steps=e.steps - 1,
                                              due_at=frozen_clock.current)
    journeys_advance(now=frozen_clock.current)
    assert Message.objects.filter(source__startswith=f"journey:{journey.pk}:").count() == 1


def test_branches_switches_and_random_splits(ws, frozen_clock):
    template(ws, "hot")
    template(ws, "cold")
    journey = apply(ws, {
        "name": "Branchy", "slug": "branchy", "triggers": [{"event": "Signed Up"}],
        "nodes": [
            {"id": "hot", "type": "branch", "if": {"field": "traits.plan", "op": "eq", "value": "pro"},
             "yes": "mail-hot", "no": "by-role"},
            {"id": "by-role", "type": "switch", "field": "traits.role",
             "cases": [{"equals": ["Buyer"], "next": "mail-cold"}], "default": "split"},
            {"id": "split", "type": "random", "paths": [{"percent": 50, "next": "mail-hot"},
                                                        {"percent": 50, "next": "mail-cold"}]},
            {"id": "mail-hot", "type": "send_email", "template": "hot"},
            {"id": "mail-cold", "type": "send_email", "template": "cold"},
        ]})
    people = [identify("pro", email="pro@example.com", plan="pro"), identify("buyer", email="b@example.com", role="buyer")]
    people += [identify(f"r{i}", email=f"r{i}@example.com") for i in range(200)]
    send(ws, *people)
    send(ws, *[track(p["userId"], "Signed Up") for p in people])
    tick(frozen_clock)
    got = dict(sent(journey))
    assert got["pro"] == "hot" and got["buyer"] == "cold", "switch compares text without case"
    split = Counter(got[f"r{i}"] for i in range(200))
    assert 70 < split["hot"] < 130 and split["hot"] + split["cold"] == 200


def test_a_holdout_receives_nothing_and_conversions_are_counted_per_group(ws, frozen_clock):
    template(ws, "offer")
    journey = apply(ws, {
        "name": "Held", "slug": "held", "triggers": [{"event": "Signed Up"}],
        "goals": [{"name": "Bought", "event": "Order Completed"}],
        "nodes": [{"id": "control", "type": "holdout", "percent": 20, "days": 30, "next": "offer"},
                  {"id": "offer", "type": "send_email", "template": "offer", "next": "wait"},
                  {"id": "wait", "type": "wait", "days": 30}]})
    send(ws, *[identify(f"u{i}", email=f"u{i}@example.com") for i in range(300)])
    send(ws, *[track(f"u{i}", "Signed Up") for i in range(300)])
    tick(frozen_clock)
    held = set(Enrollment.objects.filter(journey=journey, group="holdout").values_list("contact__user_id", flat=True))
    assert 30 < len(held) < 90
    mailed = {user for user, _ in sent(journey)}
    assert not held & mailed and len(mailed) == 300 - len(held)
    send(ws, *[track(f"u{i}", "Order Completed") for i in range(0, 300, 3)])
    conversions = Counter(EnrollmentStep.objects.filter(journey=journey, kind="converted")
                          .values_list("detail__group", flat=True))
    assert sum(conversions.values()) == 100 and set(conversions) <= {"holdout", "treated"}
    tick(frozen_clock, days=31)
    assert set(Enrollment.objects.filter(journey=journey).values_list("state", flat=True)) == {"completed", "converted"}


def test_wait_for_event_with_timeout(ws, frozen_clock):
    template(ws, "thanks-for-attending")
    template(ws, "sorry-we-missed-you")
    journey = apply(ws, {
        "name": "Webinar", "slug": "webinar", "triggers": [{"event": "Webinar Registered"}],
        "nodes": [{"id": "attend", "type": "wait_for_event", "event": "Webinar Attended", "timeout_days": 2,
                   "next": "thanks", "timeout_next": "sorry"},
                  {"id": "thanks", "type": "send_email", "template": "thanks-for-attending"},
                  {"id": "sorry", "type": "send_email", "template": "sorry-we-missed-you"}]})
    send(ws, identify("a", email="a@example.com"), identify("b", email="b@example.com"))
    send(ws, track("a", "Webinar Registered"), track("b", "Webinar Registered"))
    tick(frozen_clock)
    frozen_clock.advance(hours=5)
    send(ws, track("a", "Webinar Attended"))
    tick(frozen_clock)
    assert sent(journey) == [("a", "thanks-for-attending")]
    tick(frozen_clock, days=2)
    assert sent(journey) == [("a", "thanks-for-attending"), ("b", "sorry-we-missed-you")]


def test_wait_until_a_local_weekday_and_time(ws, frozen_clock):
    template(ws, "tuesday")
    journey = apply(ws, {"name": "Tue", "slug": "tue", "triggers": [{"event": "Signed Up"}],
                         "nodes": [{"id": "tue", "type": "wait_until", "weekdays": ["tue"], "time": "10:00",
                                    "next": "mail"},
                                   {"id": "mail", "type": "send_email", "template": "tuesday"}]})
    send(ws, identify("ny", email="ny@example.com", timezone="America/New_York"))
    # Monday 2026-03-02 09:00 UTC
    send(ws, track("ny", "Signed Up"))
    tick(frozen_clock)
    due = Enrollment.objects.get(journey=journey).due_at
    assert due == dt.datetime(2026, 3, 3, 15, 0, tzinfo=dt.timezone.utc), "Tuesday 10:00 in New York (EST)"


def test_versions_people_in_flight_finish_on_theirs_unless_migrated(ws, frozen_clock):
    for slug in ("thanks", "video", "new-video"):
        template(ws, slug)
    journey = apply(ws, nurture())
    send(ws, identify("early", email="early@example.com"), identify("late", email="late@example.com"))
    send(ws, track("early", "Asset Downloaded", magnet_slug="retirement-guide"))
    tick(frozen_clock)
    changed = nurture()
    changed["nodes"][3] = {"id": "video", "type": "send_email", "template": "new-video"}
    journey = apply(ws, changed)
    assert journey.version.number == 2
    send(ws, track("late", "Asset Downloaded", magnet_slug="retirement-guide"))
    tick(frozen_clock, days=2)
    tick(frozen_clock, days=3)
    assert sent(journey) == [
        ("early", "thanks"), ("early", "video"), ("late", "new-video"), ("late", "thanks")]
    assert services.journey_apply(workspace=ws.workspace, data=changed, actor="t")[2] is False, "same file: no change"


def test_goals_are_those_of_the_version_each_person_is_on(ws, frozen_clock):
    """People finish on the version they entered, its goals included: a goal a new version drops
    still ends the people on the old one, and a goal it adds applies only to its own people."""
    template(ws, "thanks")
    template(ws, "video")
    journey = apply(ws, nurture(goals=[{"name": "Booked a demo", "event": "Demo Booked"}]))
    send(ws, identify("old1", email="old1@example.com"), identify("old2", email="old2@example.com"),
         identify("new1", email="new1@example.com"), identify("new2", email="new2@example.com"))
    send(ws, *(track(who, "Asset Downloaded", magnet_slug="retirement-guide") for who in ("old1", "old2")))
    journey = apply(ws, nurture(goals=[{"name": "Customer", "filter": {"field": "traits.plan", "op": "eq",
                                                                        "value": "paid"}}]))
    assert journey.version.number == 2
    send(ws, *(track(who, "Asset Downloaded", magnet_slug="retirement-guide") for who in ("new1", "new2")))
    send(ws, track("old1", "Demo Booked"), track("new1", "Demo Booked"))
    assert states(journey) == {"old1": "converted", "old2": "active", "new1": "active", "new2": "active"}
    send(ws, identify("old2", plan="paid"), identify("new2", plan="paid"))
    assert states(journey) == {"old1": "converted", "old2": "active", "new1": "active", "new2": "converted"}
    step = EnrollmentStep.objects.get(journey=journey, kind="converted", enrollment__contact__user_id="new2")
    assert step.detail["goal"] == "Customer"


def test_pausing_holds_everyone_and_resuming_carries_on_once(ws, frozen_clock):
    template(ws, "thanks")
    template(ws, "video")
    journey = apply(ws, nurture())
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Asset Downloaded", magnet_slug="retirement-guide"))
    tick(frozen_clock)
    services.journey_status_set(journey=journey, status="paused", actor="test")
    tick(frozen_clock, days=10)
    assert sent(journey) == []
    services.journey_status_set(journey=journey, status="live", actor="test")
    tick(frozen_clock)
    assert sent(journey) == [("ann", "thanks")]


def test_definition_errors_name_the_bad_part():
    base = {"name": "x", "triggers": [{"event": "E"}]}
    cases = [
        ({**base, "nodes": [{"id": "a", "type": "wait", "days": 0}]}, "nodes[0]", "greater than 0"),
        ({**base, "nodes": [{"id": "a", "type": "wait", "days": 1, "next": "zz"}]}, "nodes[0].next", "no node 'zz'"),
        ({**base, "nodes": [{"id": "a", "type": "sendmail"}]}, "nodes[0]", "type"),
        ({**base, "nodes": [{"id": "a", "type": "branch", "if": {"field": "nope", "op": "eq", "value": 1}}]},
         "nodes[0].if", "nope"),
        ({"name": "x", "triggers": [{"evnt": "E"}], "nodes": [{"id": "a", "type": "exit"}]}, "triggers[0]", "trigger"),
        ({**base, "nodes": [{"id": "a", "type": "random", "paths": [{"percent": 50}, {"percent": 40}]}]},
         "nodes[0]", "90"),
        ({**base, "nodes": [{"id": "a", "type": "wait_until", "time": "25:00"}]}, "nodes[0].time", "HH:MM"),
    ]
    for data, path, words in cases:
        with pytest.raises(JourneyError) as info:
            journey_parse(data)
        assert info.value.path.startswith(path) and words in str(info.value), (data, str(info.value))


def test_only_a_live_journey_takes_people_by_hand(ws, frozen_clock):
    template(ws, "thanks")
    template(ws, "video")
    journey = apply(ws, nurture(), publish=False)
    send(ws, identify("ann", email="ann@example.com"))
    with pytest.raises(ServiceError, match="draft"):
        services.journey_enroll(journey=journey, contacts=[contact_of(ws, "ann")], actor="test")


def test_a_person_holding_a_journey_the_breaker_paused_keeps_it_paused(ws, frozen_clock):
    from leadflow.journeys.models import Journey
    from leadflow.journeys.services import BREAKER

    template(ws, "thanks")
    template(ws, "video")
    journey = apply(ws, nurture())
    services.journey_status_set(journey=journey, status="paused", actor=BREAKER, reason="SMTP failing")
    Journey.objects.filter(pk=journey.pk).update(breaker_tripped_at=frozen_clock.current)
    journey.refresh_from_db()
    services.journey_status_set(journey=journey, status="paused", actor="user:1", reason="checking the copy")
    journey.refresh_from_db()
    assert journey.status == "paused" and journey.breaker_tripped_at is None
    assert journey.paused_reason == "checking the copy"


# --- goals while paused or draining, and draining itself -------------------------------------------

DEMO_GOAL = [{"name": "Booked a demo", "event": "Demo Booked"}]
OPTED_OUT = [{"name": "Opted out", "event": "Stop Emails"}]


def test_a_goal_event_while_paused_converts_at_once_and_the_resume_sends_nothing_more(ws, frozen_clock):
    from leadflow.journeys.selectors import journey_node_stats, journey_numbers

    template(ws, "thanks")
    template(ws, "video")
    journey = apply(ws, nurture(goals=DEMO_GOAL, exit_when=OPTED_OUT))
    send(ws, identify("ann", email="ann@example.com"), identify("bob", email="bob@example.com"),
         identify("cem", email="cem@example.com"))
    send(ws, *[track(u, "Asset Downloaded", magnet_slug="retirement-guide") for u in ("ann", "bob", "cem")])
    tick(frozen_clock, days=2)
    assert sent(journey) == [("ann", "thanks"), ("bob", "thanks"), ("cem", "thanks")]
    services.journey_status_set(journey=journey, status="paused", actor="test")
    tick(frozen_clock, days=1)
    send(ws, track("ann", "Demo Booked"), track("bob", "Stop Emails"))
    assert states(journey) == {"ann": "converted", "bob": "exited", "cem": "active"}, \
        "the goal and the exit rule apply while the journey is paused, not at the resume"
    converted = EnrollmentStep.objects.get(journey=journey, kind="converted")
    assert (converted.node, converted.detail["goal"], converted.at) == ("thanks", "Booked a demo", frozen_clock.current)
    tick(frozen_clock, days=10)
    services.journey_status_set(journey=journey, status="live", actor="test")
    tick(frozen_clock)
    assert sent(journey) == [("ann", "thanks"), ("bob", "thanks"), ("cem", "thanks"), ("cem", "video")], \
        "after the resume only the person still in gets the next email"
    numbers = journey_numbers(journeys=[journey])[journey.pk]
    assert (numbers.converted, numbers.exited, numbers.completed) == (1, 1, 1)
    nodes = {n.id: n for n in journey_node_stats(journey=journey).nodes}
    assert nodes["thanks"].converted == 1, "the conversion is credited to the step passed before"


def test_an_archived_journey_drains_on_its_versions_and_takes_nobody_new(client, ws, frozen_clock):
    template(ws, "thanks")
    template(ws, "video")
    template(ws, "new-video")
    journey = apply(ws, nurture(goals=DEMO_GOAL))
    send(ws, *[identify(u, email=f"{u}@example.com") for u in ("ann", "bob", "cem", "dan")])
    send(ws, *[track(u, "Asset Downloaded", magnet_slug="retirement-guide") for u in ("ann", "dan")])
    changed = nurture(goals=DEMO_GOAL)
    changed["nodes"][3] = {"id": "video", "type": "send_email", "template": "new-video"}
    journey, second, _ = services.journey_apply(workspace=ws.workspace, data=changed, actor="test")
    journey = services.journey_status_set(journey=journey, status="archived", actor="test")

    send(ws, track("bob", "Asset Downloaded", magnet_slug="retirement-guide"))
    assert set(states(journey)) == {"ann", "dan"}, "the trigger enters nobody into an archived journey"
    with pytest.raises(ServiceError, match="archived.*draining"):
        services.journey_enroll(journey=journey, contacts=[contact_of(ws, "cem")], actor="test")
    resp = client.post(f"/api/journeys/{journey.pk}/enrollments", {"user_ids": ["cem"]},
                       content_type="application/json", HTTP_AUTHORIZATION=ws.bearer)
    assert resp.status_code == 400 and "archived" in resp.json()["detail"], resp.content
    assert set(states(journey)) == {"ann", "dan"}

    tick(frozen_clock, days=2)
    assert sent(journey) == [("ann", "thanks"), ("dan", "thanks")]
    send(ws, track("dan", "Demo Booked"))
    assert states(journey)["dan"] == "converted", "a goal event ends people in a draining journey at once"
    tick(frozen_clock, days=3)
    assert sent(journey) == [("ann", "thanks"), ("ann", "video"), ("dan", "thanks")], \
        "ann finishes on the version she entered (video, not new-video); dan gets nothing more"
    assert states(journey) == {"ann": "completed", "dan": "converted"}
    assert set(Enrollment.objects.filter(journey=journey).values_list("version__number", flat=True)) == {1}
    assert second.number == 2
