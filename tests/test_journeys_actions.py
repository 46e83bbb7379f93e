"""Journey action steps: profile changes (traits, tags, lists, score, stage, owner), sales hand-off
and owner alerts, enrolling into and removing from other journeys, exits, and waits for a date."""

from __future__ import annotations

import datetime as dt

import pytest

from leadflow.core.services import user_create
from leadflow.journeys.models import Enrollment, EnrollmentStep
from leadflow.lifecycle.models import Assignment, Notification, SalesAlert
from leadflow.lifecycle.services import lifecycle_settings_update, sales_rep_set
from leadflow.segments import services as segment_services
from leadflow.segments.models import SegmentMember

from journey_helpers import apply, contact_of, identify, send, states, template, tick, track

pytestmark = pytest.mark.django_db


def steps_journey(slug: str, nodes: list, **extra) -> dict:
    return {"name": slug.title(), "slug": slug, "triggers": [{"event": "Go"}], "nodes": nodes, **extra}


def test_profile_steps_change_the_contact_and_segments_follow(ws, frozen_clock):
    segment_services.segment_create(workspace=ws.workspace, name="VIP list", kind="static", actor="test")
    segment_services.segment_create(workspace=ws.workspace, name="Ebook readers", kind="dynamic", actor="test",
                                    definition={"version": 1, "field": "traits.nurture", "op": "eq",
                                                "value": "ebook"})
    apply(ws, steps_journey("profile", [
        {"id": "traits", "type": "update_traits", "traits": {"nurture": "ebook", "tier": 2}, "next": "tags"},
        {"id": "tags", "type": "tag", "add": ["hot", "ebook"], "remove": ["cold"], "next": "vip"},
        {"id": "vip", "type": "list", "add": "vip-list", "next": "points"},
        {"id": "points", "type": "score", "points": 15, "next": "stage"},
        {"id": "stage", "type": "stage", "to": "marketing_qualified"},
    ]))
    send(ws, identify("ann", email="ann@example.com", tags=["cold", "web"]))
    send(ws, track("ann", "Go"))
    ann = contact_of(ws, "ann")
    assert ann.traits["nurture"] == "ebook" and ann.traits["tier"] == 2
    assert ann.traits["tags"] == ["web", "hot", "ebook"]
    assert ann.lifecycle_stage == "marketing_qualified"
    assert ann.engagement_score >= 15
    assert set(SegmentMember.objects.filter(contact=ann).values_list("segment__slug", flat=True)) == {
        "vip-list", "ebook-readers"}, "the static list step and a dynamic segment on a trait both follow at once"


def test_a_branch_and_a_segment_read_the_tags_a_step_wrote(ws, frozen_clock):
    segment_services.segment_create(workspace=ws.workspace, name="Hot leads", kind="dynamic", actor="test",
                                    definition={"version": 1, "field": "traits.tags", "op": "contains",
                                                "value": "HOT"})
    apply(ws, steps_journey("tagging", [
        {"id": "tags", "type": "tag", "add": ["hot"], "remove": ["cold"], "next": "check"},
        {"id": "check", "type": "branch", "if": {"field": "traits.tags", "op": "contains", "value": "web"},
         "yes": "web", "no": "other"},
        {"id": "web", "type": "update_traits", "traits": {"path": "web"}},
        {"id": "other", "type": "update_traits", "traits": {"path": "other"}},
    ]))
    send(ws, identify("ann", email="ann@example.com", tags=["cold", "web"]))
    send(ws, identify("bob", email="bob@example.com", tags=["webinar"]))  # an element, not a substring
    send(ws, track("ann", "Go"), track("bob", "Go"))
    ann, bob = contact_of(ws, "ann"), contact_of(ws, "bob")
    assert ann.traits["path"] == "web" and bob.traits["path"] == "other"
    members = set(SegmentMember.objects.filter(segment__slug="hot-leads").values_list("contact__user_id", flat=True))
    assert members == {"ann", "bob"}, "both were tagged hot by the step; the segment matches the list element"


def test_sales_alert_routes_the_lead_and_alerts_with_context(ws, frozen_clock):
    rep = user_create(username="advisor", password="pw-123456789", email="advisor@acme.test", workspace=ws.workspace,
                      role="sales")
    sales_rep_set(workspace=ws.workspace, user=rep, available=True, actor="test")
    lifecycle_settings_update(workspace=ws.workspace, changes={"default_pool": [rep.pk]}, actor="test")
    apply(ws, steps_journey("handoff", [{"id": "alert", "type": "sales_alert", "note": "downloaded the guide"}]))
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Go"))
    ann = contact_of(ws, "ann")
    assert ann.owner_id == rep.pk
    assert Assignment.objects.filter(contact=ann, owner=rep).exists()
    alert = SalesAlert.objects.get(contact=ann)
    assert alert.user_id == rep.pk and alert.context["journey"]["note"] == "downloaded the guide"
    assert Notification.objects.filter(to_address="advisor@acme.test", contact=ann).exists()


def test_notify_owner_and_assign_owner(ws, frozen_clock):
    rep = user_create(username="rep", password="pw-123456789", email="rep@acme.test", workspace=ws.workspace,
                      role="sales")
    apply(ws, steps_journey("owner", [
        {"id": "assign", "type": "assign_owner", "user": "rep", "next": "tell"},
        {"id": "tell", "type": "notify_owner", "task": "Call about the webinar"}]))
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Go"))
    ann = contact_of(ws, "ann")
    assert ann.owner_id == rep.pk
    alert = SalesAlert.objects.get(contact=ann, user=rep)
    assert alert.context["journey"]["task"] == "Call about the webinar"


def test_enroll_into_and_remove_from_other_journeys_and_exit(ws, frozen_clock):
    template(ws, "hello")
    other = apply(ws, {"name": "Other", "slug": "other", "triggers": [{"manual": True}],
                       "nodes": [{"id": "wait", "type": "wait", "days": 5}]})
    third = apply(ws, {"name": "Third", "slug": "third", "triggers": [{"event": "Go"}],
                       "nodes": [{"id": "wait", "type": "wait", "days": 5}]})
    first = apply(ws, steps_journey("first", [
        {"id": "into", "type": "enroll", "journey": "other", "next": "out"},
        {"id": "out", "type": "unenroll", "journey": "third", "next": "bye"},
        {"id": "bye", "type": "exit", "reason": "handed over"},
        {"id": "never", "type": "send_email", "template": "hello"}]))
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Go"))
    assert states(other) == {"ann": "active"}
    assert states(third) == {"ann": "exited"}
    e = Enrollment.objects.get(journey=first)
    assert (e.state, e.end_reason) == ("exited", "handed over")


def test_wait_for_a_date_trait_in_local_time(ws, frozen_clock):
    template(ws, "renewal")
    journey = apply(ws, steps_journey("renew", [
        {"id": "before", "type": "wait_for_date", "date_trait": "renewal_date", "offset_days": -7, "time": "09:30",
         "missing_next": "nodate", "next": "mail"},
        {"id": "mail", "type": "send_email", "template": "renewal"},
        {"id": "nodate", "type": "exit", "reason": "no renewal date"}]))
    send(ws, identify("ann", email="ann@example.com", renewal_date="2026-04-20", timezone="Europe/Berlin"),
         identify("bob", email="bob@example.com"))
    send(ws, track("ann", "Go"), track("bob", "Go"))
    assert Enrollment.objects.get(journey=journey, contact__user_id="ann").due_at == \
        dt.datetime(2026, 4, 13, 7, 30, tzinfo=dt.timezone.utc), "April 13th 09:30 in Berlin (CEST)"
    assert states(journey)["bob"] == "exited"
    tick(frozen_clock, days=45)
    assert states(journey)["ann"] == "completed"


def test_a_failing_step_fails_those_people_and_says_why(ws, frozen_clock):
    journey = apply(ws, steps_journey("broken", [{"id": "owner", "type": "assign_owner", "user": "nobody"}]),
                    publish=False)
    from leadflow.journeys.models import JourneyVersion
    from leadflow.journeys.services import journey_publish

    # The linter refuses unknown users on publish; a user deleted after publishing fails at run time.
    user = user_create(username="nobody", password="pw-123456789", workspace=ws.workspace)
    journey = journey_publish(journey=journey, version=JourneyVersion.objects.get(journey=journey), actor="t")
    user.delete()
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Go"))
    e = Enrollment.objects.get(journey=journey)
    assert e.state == "failed" and "nobody" in e.end_reason
    assert EnrollmentStep.objects.filter(enrollment=e, kind="failed").exists()


def test_the_sales_alert_note_is_in_the_email_and_a_redone_step_alerts_once(ws, frozen_clock):
    rep = user_create(username="advisor", password="pw-123456789", email="advisor@acme.test", workspace=ws.workspace,
                      role="sales")
    lifecycle_settings_update(workspace=ws.workspace, changes={"default_pool": [rep.pk]}, actor="test")
    journey = apply(ws, steps_journey("handoff", [{"id": "alert", "type": "sales_alert",
                                                   "note": "downloaded the guide"}]))
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Go"))
    mail = Notification.objects.get(to_address="advisor@acme.test")
    assert "From journey: Handoff, step alert" in mail.text_body
    assert "Note: downloaded the guide" in mail.text_body, "the note is written before the email, not after"
    Enrollment.objects.filter(journey=journey).update(node="alert", steps=0, state="active", ended_at=None,
                                                      end_reason="", due_at=frozen_clock(), resume="arrive")
    tick(frozen_clock)
    assert (SalesAlert.objects.count(), Notification.objects.count(), Assignment.objects.count()) == (1, 1, 1)


def test_a_sales_alert_nobody_can_take_waits_says_why_and_goes_out_when_a_rep_can_take_it(ws, frozen_clock):
    """As an MQL that routing cannot give to anyone stays unassigned and is routed again, a lead at
    a sales alert step with an empty routing pool is not passed on silently: it waits at the step,
    its history says why, and once a rep is in the pool the next try hands it over and alerts."""
    journey = apply(ws, steps_journey("handoff", [
        {"id": "alert", "type": "sales_alert", "note": "downloaded the guide", "next": "after"},
        {"id": "after", "type": "update_traits", "traits": {"handed_over": True}}]))
    send(ws, identify("ann", email="ann@example.com"))
    send(ws, track("ann", "Go"))
    ann = contact_of(ws, "ann")
    assert ann.owner_id is None and not Assignment.objects.exists() and not SalesAlert.objects.exists()
    enrollment = Enrollment.objects.get(journey=journey)
    assert (enrollment.state, enrollment.node) == ("active", "alert"), "not passed on as if alerted"
    reason = "no sales rep to route to: the routing pool is empty"
    assert enrollment.data["waiting_for"] == reason
    history = list(EnrollmentStep.objects.filter(journey=journey, node="alert").exclude(kind="entered")
                   .values_list("kind", "detail"))
    assert history == [("waiting", {"reason": reason})]
    for _ in range(6):  # tried again and again (1, 2, 4, 8… minutes): still nobody, no new history
        tick(frozen_clock, hours=1)
    enrollment.refresh_from_db()
    assert enrollment.node == "alert" and enrollment.data["route_tries"] >= 6
    assert EnrollmentStep.objects.filter(journey=journey, node="alert", kind="waiting").count() == 1
    assert enrollment.due_at <= frozen_clock() + dt.timedelta(minutes=15), "tried again every 15 minutes at most"

    rep = user_create(username="advisor", password="pw-123456789", email="advisor@acme.test", workspace=ws.workspace,
                      role="sales")
    sales_rep_set(workspace=ws.workspace, user=rep, available=False, actor="test")
    lifecycle_settings_update(workspace=ws.workspace, changes={"default_pool": [rep.pk]}, actor="test")
    tick(frozen_clock, hours=1)
    enrollment.refresh_from_db()
    away = ("no sales rep to route to: nobody in the routing pool is available (away, at their limit of open "
            "leads, or no longer a sales member)")
    assert enrollment.node == "alert" and enrollment.data["waiting_for"] == away
    assert list(EnrollmentStep.objects.filter(journey=journey, node="alert", kind="waiting").order_by("pk")
                .values_list("detail__reason", flat=True)) == [reason, away], "a new reason is recorded once"

    sales_rep_set(workspace=ws.workspace, user=rep, available=True, actor="test")
    tick(frozen_clock, hours=1)
    enrollment.refresh_from_db()
    ann.refresh_from_db()
    assert enrollment.state == "completed" and "waiting_for" not in enrollment.data
    assert ann.owner_id == rep.pk and ann.traits["handed_over"] is True
    alert = SalesAlert.objects.get(contact=ann)
    assert alert.user_id == rep.pk and alert.context["journey"]["note"] == "downloaded the guide"
    assert Notification.objects.filter(to_address="advisor@acme.test", contact=ann).count() == 1
    passed = EnrollmentStep.objects.get(journey=journey, node="alert", kind="passed")
    assert passed.detail == {"owner": rep.pk}


def test_a_lead_with_an_open_assignment_is_alerted_to_its_owner_whatever_the_pool(ws, frozen_clock):
    from leadflow.lifecycle.services import leads_route

    rep = user_create(username="rep", password="pw-123456789", email="rep@acme.test", workspace=ws.workspace,
                      role="sales")
    lifecycle_settings_update(workspace=ws.workspace, changes={"default_pool": [rep.pk]}, actor="test")
    send(ws, identify("ann", email="ann@example.com"))
    leads_route(workspace_id=ws.workspace.pk, leads=[(contact_of(ws, "ann"), "by hand")], now=frozen_clock())
    lifecycle_settings_update(workspace=ws.workspace, changes={"default_pool": []}, actor="test")
    journey = apply(ws, steps_journey("handoff", [{"id": "alert", "type": "sales_alert", "note": "again"}]))
    send(ws, track("ann", "Go"))
    assert Enrollment.objects.get(journey=journey).state == "completed"
    assert SalesAlert.objects.filter(contact__user_id="ann", user=rep).count() == 2


def test_notify_owner_makes_a_sales_task_due_later_and_skips_people_without_an_owner(ws, frozen_clock):
    from leadflow.lifecycle.models import SalesTask

    rep = user_create(username="rep", password="pw-123456789", email="rep@acme.test", workspace=ws.workspace,
                      role="sales")
    journey = apply(ws, steps_journey("owner-task", [
        {"id": "route", "type": "branch", "if": {"field": "traits.vip", "op": "eq", "value": True},
         "yes": "assign", "no": "tell"},
        {"id": "assign", "type": "assign_owner", "user": "rep", "next": "tell"},
        {"id": "tell", "type": "notify_owner", "note": "VIP signed up", "task": "Call within a day",
         "due_days": 1.5}]))
    send(ws, identify("ann", email="ann@example.com", vip=True), identify("bob", email="bob@example.com"))
    send(ws, track("ann", "Go"), track("bob", "Go"))
    task = SalesTask.objects.get()
    assert (task.contact.user_id, task.owner_id, task.title) == ("ann", rep.pk, "Call within a day")
    assert task.due_at == frozen_clock() + dt.timedelta(hours=36)
    users = {contact_of(ws, u).pk: u for u in ("ann", "bob")}
    notified = {users[c]: told for c, told in EnrollmentStep.objects.filter(journey=journey, node="tell", kind="passed")
                .values_list("contact_id", "detail__notified")}
    assert notified == {"ann": True, "bob": False}, "bob has no owner: told nobody, no task"


def test_a_due_date_needs_a_task(ws):
    from leadflow.journeys.language import JourneyError

    with pytest.raises(JourneyError, match="due_days"):
        apply(ws, steps_journey("bad", [{"id": "tell", "type": "notify_owner", "note": "hi", "due_days": 2}]))
    with pytest.raises(JourneyError, match="due_days"):
        apply(ws, steps_journey("bad", [{"id": "tell", "type": "notify_owner", "task": "Call", "due_days": -1}]))


def test_a_list_step_removes_people_from_a_static_list(ws, frozen_clock):
    newsletter = segment_services.segment_create(workspace=ws.workspace, name="Newsletter", kind="static",
                                                 actor="test")
    template(ws, "hello")
    left = apply(ws, {"name": "Left the list", "slug": "left-list", "triggers": [{"segment_exited": "newsletter"}],
                      "nodes": [{"id": "mail", "type": "send_email", "template": "hello"}]})
    unlist = apply(ws, steps_journey("unlist", [
        {"id": "out", "type": "list", "remove": "newsletter", "next": "again"},
        {"id": "again", "type": "list", "remove": "newsletter"}]))
    send(ws, identify("ann", email="ann@example.com"), identify("bob", email="bob@example.com"),
         identify("cem", email="cem@example.com"))
    segment_services.segment_members_add(segment=newsletter, actor="test", user_ids=["ann", "bob"])
    send(ws, track("ann", "Go"), track("cem", "Go"))  # cem is not on the list: nothing to remove
    members = set(SegmentMember.objects.filter(segment=newsletter).values_list("contact__user_id", flat=True))
    assert members == {"bob"}
    assert states(unlist) == {"ann": "completed", "cem": "completed"}, "removing someone not on it is no error"
    assert states(left) == {"ann": "completed"}, "the removal is a segment exit other journeys hear, once"


def test_a_send_step_that_names_a_sending_server_sends_through_it(ws, frozen_clock):
    from leadflow.messaging import dispatch
    from leadflow.messaging.models import Message
    from leadflow.messaging.sending import messaging_settings_update, sending_server_create

    from smtp_sink import SmtpSink, dispatching_to_sink

    template(ws, "hello")
    template(ws, "partner-offer")
    with dispatching_to_sink() as main_sink, SmtpSink() as partner_sink:
        messaging_settings_update(workspace_id=ws.workspace.pk, from_name="Acme", from_email="news@acme.test",
                                  postal_address="1 Main St, Springfield")
        sending_server_create(workspace=ws.workspace, name="Main", url=main_sink.url, is_default=True,
                              rate_per_second=0)
        partner = sending_server_create(workspace=ws.workspace, name="Partner", url=partner_sink.url,
                                        rate_per_second=0)
        apply(ws, steps_journey("via-partner", [
            {"id": "offer", "type": "send_email", "template": "partner-offer", "server": "Partner"}]))
        apply(ws, {"name": "Default", "slug": "default-server", "triggers": [{"event": "Hello"}],
                   "nodes": [{"id": "hello", "type": "send_email", "template": "hello"}]})
        send(ws, identify("ann", email="ann@example.com"), identify("bob", email="bob@example.com"))
        send(ws, track("ann", "Go"), track("bob", "Hello"))
        assert Message.objects.get(template__slug="partner-offer").server_id == partner.pk
        dispatch.dispatch_run()
        assert partner_sink.recipients() == ["ann@example.com"], "the named server carried the step's email"
        assert main_sink.recipients() == ["bob@example.com"], "a step without a server uses the default"
        assert partner_sink.messages[0].message["Subject"] == "Partner offer"
