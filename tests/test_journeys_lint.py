"""The journey linter: graph checks as plain functions, then everything a definition names checked
against the workspace, and the linter refusing to publish what would not run."""

from __future__ import annotations

import datetime as dt

import pytest

from leadflow.core.services import ServiceError
from leadflow.journeys import lint
from leadflow.journeys.language import journey_parse
from leadflow.journeys.lint import first_sends, graph_lint, journey_lint, same_day_sends, shared_trigger, trigger_keys

from journey_helpers import apply, identify, send, template, track

UTC = dt.timezone.utc


def definition(*nodes, **extra):
    return journey_parse({"name": "Test", "triggers": [{"event": "Signed Up"}], "nodes": list(nodes), **extra})


def codes(findings) -> list[tuple[str, str, str]]:
    return [(f.level, f.code, f.path) for f in findings]


# --- the graph, no database ---------------------------------------------------------------------

def test_a_straight_journey_has_no_findings():
    assert graph_lint(definition({"id": "w", "type": "wait", "days": 1, "next": "mail"},
                                 {"id": "mail", "type": "send_email", "template": "t"})) == []


def test_nodes_nobody_can_reach_are_named():
    found = graph_lint(definition({"id": "mail", "type": "send_email", "template": "t"},
                                  {"id": "orphan", "type": "send_email", "template": "t", "name": "Old promo"}))
    assert codes(found) == [("warning", "unreachable", "nodes[1]")]
    assert "'orphan' (Old promo)" in found[0].message


def test_a_loop_without_a_wait_is_an_error_naming_the_way_round():
    found = graph_lint(definition(
        {"id": "start", "type": "send_email", "template": "t", "next": "check"},
        {"id": "check", "type": "branch", "if": {"field": "traits.plan", "op": "eq", "value": "pro"},
         "yes": "tag", "no": None},
        {"id": "tag", "type": "tag", "add": ["x"], "next": "check"}))
    assert codes(found) == [("error", "loop_without_wait", "nodes[1]")]
    assert "'check' → 'tag' → 'check'" in found[0].message


@pytest.mark.parametrize("kind", ["wait_for_date", "holdout"])
def test_a_date_wait_or_a_holdout_does_not_hold_a_loop(kind):
    node = {"id": "pause", "type": "holdout", "percent": 10, "next": "check"}
    if kind == "wait_for_date":
        node = {"id": "pause", "type": "wait_for_date", "date_trait": "renewal", "next": "check"}
    found = graph_lint(definition(
        node, {"id": "check", "type": "branch", "if": {"field": "traits.plan", "op": "eq", "value": "pro"},
               "yes": "pause", "no": None}))
    assert ("error", "loop_without_wait", "nodes[0]") in codes(found)


def test_a_loop_with_a_wait_and_a_way_out_is_fine():
    assert graph_lint(definition(
        {"id": "wait", "type": "wait", "days": 7, "next": "check"},
        {"id": "check", "type": "branch", "if": {"field": "traits.plan", "op": "eq", "value": "pro"},
         "yes": None, "no": "mail"},
        {"id": "mail", "type": "send_email", "template": "t", "next": "wait"})) == []


def test_a_loop_with_no_way_out_traps_people_unless_a_goal_takes_them_out():
    nodes = [{"id": "intro", "type": "send_email", "template": "t", "next": "wait"},
             {"id": "wait", "type": "wait", "days": 14, "next": "mail"},
             {"id": "mail", "type": "send_email", "template": "t", "next": "wait"}]
    found = graph_lint(definition(*nodes))
    assert codes(found) == [("error", "no_exit", "nodes[1]")]
    assert "'wait' → 'mail' → 'wait'" in found[0].message
    with_goal = graph_lint(definition(*nodes, goals=[{"name": "Bought", "event": "Order Completed"}]))
    assert codes(with_goal) == [("warning", "no_exit", "nodes[1]")]


def test_a_wait_for_the_goal_event_and_a_stream_next_without_until_are_flagged():
    found = graph_lint(definition(
        {"id": "demo", "type": "wait_for_event", "event": "Demo Requested", "timeout_days": 5,
         "next": "thanks", "timeout_next": "drip"},
        {"id": "thanks", "type": "send_email", "template": "t"},
        {"id": "drip", "type": "stream", "pools": [{"stream": "s"}], "cadence": {"every_days": 14}, "next": "thanks"},
        goals=[{"name": "Demo", "event": "Demo Requested"}]))
    assert codes(found) == [("warning", "wait_for_goal_event", "nodes[0]"),
                            ("warning", "stream_next_unused", "nodes[2].next")]


def test_first_sends_take_the_shortest_wait_and_shared_triggers_are_found():
    d = definition({"id": "attended", "type": "wait_for_event", "event": "Webinar Attended", "timeout_days": 3,
                    "next": "w", "timeout_next": "sorry"},
                   {"id": "w", "type": "wait", "hours": 6, "next": "thanks"},
                   {"id": "thanks", "type": "send_email", "template": "t"},
                   {"id": "sorry", "type": "send_email", "template": "t"})
    assert first_sends(d) == {"thanks": dt.timedelta(hours=6), "sorry": dt.timedelta(days=3)}
    any_stage = trigger_keys(journey_parse({"name": "a", "triggers": [{"stage_changed": True}],
                                            "nodes": [{"id": "x", "type": "exit"}]}))
    to_mql = trigger_keys(journey_parse({"name": "b", "nodes": [{"id": "x", "type": "exit"}],
                                         "triggers": [{"stage_changed": True, "to": ["marketing_qualified"]}]}))
    assert shared_trigger(to_mql, any_stage) == shared_trigger(any_stage, to_mql) == "a lifecycle stage change"
    assert shared_trigger(trigger_keys(d), to_mql) is None
    other = definition({"id": "w", "type": "wait", "days": 3, "hours": 12, "next": "m"},
                       {"id": "m", "type": "send_email", "template": "t"})
    assert same_day_sends(d, other) == ("sorry", "m", dt.timedelta(days=3))


# --- the workspace --------------------------------------------------------------------------------

pytestmark_db = pytest.mark.django_db


def nurture(**extra) -> dict:
    return {"name": "Nurture", "slug": "nurture", "triggers": [{"event": "Asset Downloaded"}],
            "nodes": [{"id": "wait", "type": "wait", "days": 2, "next": "thanks"},
                      {"id": "thanks", "type": "send_email", "template": "thanks", "topic": "news"}], **extra}


@pytest.fixture
def news(ws):
    from leadflow.consent.models import Topic

    return Topic.objects.create(workspace=ws.workspace, slug="news", name="News")


@pytestmark_db
def test_emails_need_a_known_approved_template_and_a_topic(ws, news):
    from leadflow.messaging.models import Template

    found = journey_lint(workspace_id=ws.workspace.pk, definition=nurture())
    assert codes(found) == [("error", "unknown_template", "nodes[1].template")]
    Template.objects.create(workspace=ws.workspace, name="Thanks", slug="thanks")
    found = journey_lint(workspace_id=ws.workspace.pk, definition=nurture())
    assert codes(found) == [("error", "template_not_approved", "nodes[1].template")]
    assert "no approved version" in found[0].message
    Template.objects.filter(slug="thanks").delete()
    template(ws, "thanks")
    assert journey_lint(workspace_id=ws.workspace.pk, definition=nurture()) == []
    no_topic = nurture()
    del no_topic["nodes"][1]["topic"]
    found = journey_lint(workspace_id=ws.workspace.pk, definition=no_topic)
    assert codes(found) == [("warning", "missing_topic", "nodes[1]")]
    assert "unsubscribe from all marketing" in found[0].message
    template(ws, "topical", topic="webinars")
    no_topic["nodes"][1]["template"] = "topical"
    assert codes(journey_lint(workspace_id=ws.workspace.pk, definition=no_topic)) == [
        ("error", "unknown_topic", "nodes[1].template")], "the template's own topic must exist too"


@pytestmark_db
def test_publishing_is_refused_while_there_are_errors(ws, news, frozen_clock):
    with pytest.raises(ServiceError, match="cannot publish: nodes\\[1\\].template: 'thanks' sends 'thanks'"):
        apply(ws, nurture())
    template(ws, "thanks")
    assert apply(ws, nurture()).status == "live"


@pytestmark_db
def test_every_unknown_reference_is_an_error_with_its_path(ws, news):
    from leadflow.segments.models import Segment

    Segment.objects.create(workspace=ws.workspace, name="Hot", slug="hot", kind="dynamic",
                           definition={"field": "traits.plan", "op": "eq", "value": "pro"})
    template(ws, "thanks", topic="news")
    data = {"name": "Everything", "slug": "everything",
            "triggers": [{"segment_entered": "nope-segment"}, {"form_submitted": "nope-form"},
                         {"stage_changed": True, "to": ["mql"]}],
            "goals": [{"name": "MQL",
                       "filter": {"field": "lifecycle_stage", "op": "in", "value": ["mql", "customer"]}}],
            "nodes": [{"id": "drip", "type": "stream", "pools": [{"stream": "nope-stream"}],
                       "cadence": {"every_days": 7}, "until": {"in_segment": "gone"}, "next": "hook"},
                      {"id": "hook", "type": "webhook", "endpoint": "nope-hook", "next": "add"},
                      {"id": "add", "type": "list", "add": "hot", "next": "enroll"},
                      {"id": "enroll", "type": "enroll", "journey": "nope-journey", "next": "owner"},
                      {"id": "owner", "type": "assign_owner", "user": "nobody", "next": "stage"},
                      {"id": "stage", "type": "stage", "to": "sql-ish", "next": "mail"},
                      {"id": "mail", "type": "send_email", "template": "thanks", "server": "nope-server"}]}
    found = journey_lint(workspace_id=ws.workspace.pk, definition=data)
    assert sorted(codes(found)) == sorted([
        ("error", "unknown_segment", "triggers[0].segment_entered"),
        ("error", "unknown_segment", "nodes[0].until.in_segment"),
        ("error", "unknown_form", "triggers[1].form_submitted"),
        ("error", "unknown_stage", "triggers[2].to"),
        ("error", "unknown_stage", "goals[0].filter"),
        ("error", "unknown_stream", "nodes[0].pools[0].stream"),
        ("error", "unknown_endpoint", "nodes[1].endpoint"),
        ("error", "list_not_static", "nodes[2].add"),
        ("error", "unknown_journey", "nodes[3].journey"),
        ("error", "unknown_user", "nodes[4].user"),
        ("error", "unknown_stage", "nodes[5].to"),
        ("error", "unknown_server", "nodes[6].server"),
    ])
    stage = next(f for f in found if f.path == "goals[0].filter")
    assert "'mql'" in stage.message and "marketing_qualified" in stage.message, "names the stages that exist"


@pytestmark_db
def test_references_that_exist_pass(ws, news):
    from django.contrib.auth import get_user_model

    from leadflow.core.models import Membership
    from leadflow.journeys.models import Stream, StreamItem, WebhookEndpoint
    from leadflow.segments.models import Segment
    from leadflow.tracking.models import Form

    t = template(ws, "thanks", topic="news")
    stream = Stream.objects.create(workspace=ws.workspace, slug="early", name="Early")
    StreamItem.objects.create(workspace=ws.workspace, stream=stream, position=1, template=t)
    WebhookEndpoint.objects.create(workspace=ws.workspace, slug="crm", name="CRM", url="https://crm.example/hook",
                                   secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    Segment.objects.create(workspace=ws.workspace, name="Webinar list", slug="webinar-list", kind="static")
    Form.objects.create(workspace=ws.workspace, slug="contact-us", name="Contact us")
    user = get_user_model().objects.create_user(username="ria", password="x" * 12)
    Membership.objects.create(workspace=ws.workspace, user=user)
    apply(ws, {"name": "Other", "slug": "other", "triggers": [{"manual": True}],
               "nodes": [{"id": "x", "type": "exit"}]})
    data = {"name": "Everything", "slug": "everything",
            "triggers": [{"form_submitted": "contact-us"}, {"stage_changed": True, "to": ["marketing_qualified"]}],
            "nodes": [{"id": "drip", "type": "stream", "pools": [{"stream": "early", "stages": ["lead"]}],
                       "cadence": {"every_days": 7}, "until": {"in_segment": "webinar-list"}, "next": "hook"},
                      {"id": "hook", "type": "webhook", "endpoint": "crm", "next": "add"},
                      {"id": "add", "type": "list", "add": "webinar-list", "next": "enroll"},
                      {"id": "enroll", "type": "enroll", "journey": "other", "next": "owner"},
                      {"id": "owner", "type": "assign_owner", "user": "ria", "next": "notify"},
                      {"id": "notify", "type": "notify_owner", "user": str(user.pk)}]}
    assert journey_lint(workspace_id=ws.workspace.pk, definition=data) == []


@pytestmark_db
def test_waits_that_can_never_fire_until_the_workspace_has_seen_the_event_or_trait(ws, frozen_clock):
    template(ws, "thanks", topic="marketing")
    data = {"name": "Webinar", "triggers": [{"date_trait": "renewal_date", "offset_days": -30}],
            "nodes": [{"id": "attended", "type": "wait_for_event", "event": "Webinar Attended", "timeout_days": 3,
                       "next": "clicked"},
                      {"id": "clicked", "type": "wait_for_event", "event": "Email Clicked", "timeout_days": 3,
                       "next": "renewal"},
                      {"id": "renewal", "type": "wait_for_date", "date_trait": "renewal_date", "next": "mail"},
                      {"id": "mail", "type": "send_email", "template": "thanks"}]}
    found = journey_lint(workspace_id=ws.workspace.pk, definition=data)
    assert codes(found) == [("warning", "event_never_seen", "nodes[0].event"),
                            ("warning", "date_trait_never_seen", "nodes[2].date_trait"),
                            ("warning", "date_trait_never_seen", "triggers[0].date_trait")]
    assert "wait 3 days and take the timeout path" in found[0].message
    send(ws, identify("ann", email="ann@example.com", renewal_date="2026-09-01"),
         track("ann", "Webinar Attended"))
    assert journey_lint(workspace_id=ws.workspace.pk, definition=data) == []


@pytestmark_db
def test_live_journeys_on_the_same_trigger_that_email_the_same_day_conflict(ws, news, frozen_clock):
    template(ws, "thanks")
    apply(ws, {**nurture(), "name": "Guide follow-up", "slug": "guide"})
    same_day = {**nurture(), "nodes": [{"id": "wait", "type": "wait", "days": 2, "hours": 6, "next": "hello"},
                                       {"id": "hello", "type": "send_email", "template": "thanks", "topic": "news"}]}
    found = journey_lint(workspace_id=ws.workspace.pk, definition=same_day)
    assert codes(found) == [("warning", "same_day_conflict", "nodes[1]")]
    assert "'Guide follow-up' (guide)" in found[0].message and "the event 'Asset Downloaded'" in found[0].message
    later = {**same_day, "nodes": [{**same_day["nodes"][0], "days": 4}, same_day["nodes"][1]]}
    assert journey_lint(workspace_id=ws.workspace.pk, definition=later) == []
    other_trigger = {**same_day, "triggers": [{"event": "Signed Up"}]}
    assert journey_lint(workspace_id=ws.workspace.pk, definition=other_trigger) == []
    journey = apply(ws, same_day)  # a warning does not stop publishing; a journey never conflicts with itself
    assert codes(journey_lint(workspace_id=ws.workspace.pk, definition=same_day, journey=journey)) == [
        ("warning", "same_day_conflict", "nodes[1]")]


@pytestmark_db
def test_a_live_journey_nobody_entered_for_90_days_is_stale(ws, news, frozen_clock):
    from leadflow.journeys.models import Journey

    template(ws, "thanks")
    journey = apply(ws, nurture())
    check = lambda: codes(journey_lint(workspace_id=ws.workspace.pk, definition=nurture(),  # noqa: E731
                                       journey=Journey.objects.get(pk=journey.pk)))
    assert check() == []
    frozen_clock.advance(days=91)
    assert check() == [("warning", "stale", "")]
    Journey.objects.filter(pk=journey.pk).update(last_entry_at=frozen_clock.current - dt.timedelta(days=10))
    assert check() == []


@pytestmark_db
def test_an_invalid_definition_is_one_finding_with_the_path(ws):
    found = journey_lint(workspace_id=ws.workspace.pk,
                         definition={"name": "x", "triggers": [{"manual": True}],
                                     "nodes": [{"id": "w", "type": "wait", "days": -1}]})
    assert codes(found) == [("error", "invalid", "nodes[0].days")]
    assert lint.findings_text(found).startswith("error: nodes[0].days: ")


def test_a_grade_trigger_every_grade_meets_is_flagged_and_grade_triggers_are_compared():
    def graded(*triggers):
        return journey_parse({"name": "g", "triggers": list(triggers), "nodes": [{"id": "x", "type": "exit"}]})

    found = graph_lint(graded({"event": "Signed Up"}, {"grade": "D"}))
    assert codes(found) == [("warning", "grade_always_met", "triggers[1]")]
    assert "first graded" in found[0].message and "exactly: true" in found[0].message
    assert graph_lint(graded({"grade": "D", "exactly": True}, {"grade": "B"})) == []
    b_or_better = trigger_keys(graded({"grade": "B"}))
    assert shared_trigger(b_or_better, trigger_keys(graded({"grade": "B"}))) == "the fit grade reaching B"
    assert shared_trigger(b_or_better, trigger_keys(graded({"grade": "B", "exactly": True}))) is None
    assert shared_trigger(b_or_better, trigger_keys(graded({"grade": "A"}))) is None


@pytestmark_db
def test_stream_content_without_an_approved_version_or_a_topic_is_flagged(ws, news, frozen_clock):
    from leadflow.journeys import streams
    from leadflow.messaging.models import Template

    template(ws, "ready", topic="news")
    template(ws, "no-topic")
    template(ws, "retired", topic="news")
    Template.objects.create(workspace=ws.workspace, name="Draft", slug="draft", topic="news")
    streams.stream_apply(workspace=ws.workspace, actor="test", data={"slug": "early", "items": [
        {"template": "ready"}, {"template": "draft"}, {"template": "no-topic", "role": "buyer"},
        {"template": "retired"}]})
    streams.stream_apply(workspace=ws.workspace, actor="test", data={"slug": "late", "items": [{"template": "ready"}]})
    Template.objects.filter(slug="retired").update(archived_at=frozen_clock.current)
    drip = {"id": "drip", "type": "stream", "pools": [{"stream": "early", "stages": ["lead"]}, {"stream": "late"}],
            "cadence": {"every_days": 14, "weekday": "tue"}}
    data = {"name": "Drip", "slug": "drip", "triggers": [{"event": "Signed Up"}], "nodes": [drip]}

    found = journey_lint(workspace_id=ws.workspace.pk, definition=data)
    path = "nodes[0].pools[0].stream"
    assert codes(found) == [("warning", "stream_item_not_approved", path),
                            ("warning", "stream_item_missing_topic", path),
                            ("warning", "stream_item_not_approved", path)], "the 'late' stream is fine"
    draft, no_topic, retired = (f.message for f in found)
    assert draft.startswith("Item 2 of the stream 'early' ('draft') has no approved version: 'drip' skips it")
    assert no_topic.startswith("Item 3 of the stream 'early' ('no-topic', for the role 'buyer') has no "
                               "subscription topic")
    assert retired.startswith("Item 4 of the stream 'early' ('retired') is archived")

    with_topic = {**data, "nodes": [{**drip, "topic": "news"}]}
    assert [f.code for f in journey_lint(workspace_id=ws.workspace.pk, definition=with_topic)] == [
        "stream_item_not_approved", "stream_item_not_approved"], "the step's topic covers every item"
    assert apply(ws, with_topic).status == "live", "warnings do not stop publishing"


@pytestmark_db
def test_a_sales_alert_warns_while_routing_has_nobody_to_give_leads_to(ws, news, frozen_clock):
    from leadflow.core.services import user_create
    from leadflow.journeys.models import Journey
    from leadflow.lifecycle.services import lifecycle_settings_update, routing_rule_save, sales_rep_set

    template(ws, "thanks", topic="news")
    data = nurture(slug="hot", nodes=[{"id": "alert", "type": "sales_alert", "note": "hot", "next": "mail"},
                                      {"id": "mail", "type": "send_email", "template": "thanks"}])
    check = lambda: journey_lint(workspace_id=ws.workspace.pk, definition=data)  # noqa: E731
    found = check()
    assert codes(found) == [("warning", "no_sales_rep", "nodes[0]")]
    assert "'alert' hands people to sales" in found[0].message and "the routing pool is empty" in found[0].message
    assert journey_lint(workspace_id=ws.workspace.pk, definition=nurture()) == [], "only journeys that alert sales"

    journey = apply(ws, data, publish=False)
    from leadflow.journeys.services import journey_publish

    journey_publish(journey=journey, version=journey.versions.get(), actor="test")  # a warning: publishing goes on
    assert Journey.objects.get(pk=journey.pk).status == "live"

    rep = user_create(username="rep", password="pw-123456789", workspace=ws.workspace, role="sales")
    lifecycle_settings_update(workspace=ws.workspace, changes={"default_pool": [rep.pk]}, actor="test")
    assert check() == []
    sales_rep_set(workspace=ws.workspace, user=rep, available=False, actor="test")
    found = check()
    assert codes(found) == [("warning", "no_sales_rep", "nodes[0]")] and "available" in found[0].message
    lifecycle_settings_update(workspace=ws.workspace, changes={"default_pool": []}, actor="test")
    other = user_create(username="other", password="pw-123456789", workspace=ws.workspace, role="sales")
    routing_rule_save(workspace=ws.workspace, changes={"name": "Germany", "countries": ["DE"], "pool": [other.pk]},
                      actor="test")
    assert check() == [], "a rep a routing rule names can take some leads"
