"""A webhook step that reaches the person (SMS, ads audiences, direct mail) honours consent like an
email: with a `topic`, people the consent gate stops for it — unsubscribed from the topic or from
all marketing, without a required opt-in, paused, erased — get no delivery and move on, skipped with
the gate's reason; without a topic (CRM sync) everyone gets the delivery. The check is set-based,
and the linter refuses an unknown topic on a webhook step."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from leadflow.consent.models import TopicMode
from leadflow.contacts.models import Contact
from leadflow.consent.services import (marketing_pause, subscription_set, suppression_add, topic_archive,
                                       topic_create, unsubscribe_all)
from leadflow.core import clock as clock_module
from leadflow.journeys import language as lang
from leadflow.journeys import services
from leadflow.journeys import webhooks as hooks
from leadflow.journeys.engine import journeys_run_due
from leadflow.journeys.lint import journey_lint
from leadflow.journeys.models import EnrollmentStep, WebhookDelivery
from leadflow.web import journey_editor as editor

from journey_helpers import apply, at_node, contact_of, identify, send
from test_journeys_webhooks import Receiver, receiver_clock  # noqa: F401 - the fixture is used by name

pytestmark = pytest.mark.django_db


def sms_journey(ws, *, topic: str | None = "sms-offers", slug: str = "sms"):
    step = {"id": "text-offer", "type": "webhook", "endpoint": "sms", "event_type": "sms.offer", "next": "wait-1d"}
    if topic is not None:
        step["topic"] = topic
    return apply(ws, {"name": slug.title(), "slug": slug, "triggers": [{"manual": True}],
                      "nodes": [step, {"id": "wait-1d", "type": "wait", "days": 1}]})


def people(ws, *users: str, **traits):
    send(ws, *[identify(u, email=f"{u}@example.com", first_name=u.title(), **traits) for u in users])
    return [contact_of(ws, u) for u in users]


def enroll(journey, contacts) -> None:
    services.journey_enroll(journey=journey, contacts=contacts, actor="test")
    journeys_run_due(now=clock_module.now())


def delivered_to(journey) -> set[str]:
    return set(WebhookDelivery.objects.filter(journey=journey).values_list("contact__user_id", flat=True))


def skipped(journey) -> dict[str, dict]:
    """user id → the detail of their `skipped` step at the webhook node."""
    steps = list(EnrollmentStep.objects.filter(journey=journey, kind="skipped", node="text-offer"))
    users = dict(Contact.objects.filter(pk__in=[s.contact_id for s in steps]).values_list("pk", "user_id"))
    return {users[s.contact_id]: s.detail for s in steps}


@pytest.fixture
def sms(ws):
    topic_create(workspace_id=ws.workspace.pk, name="SMS offers", slug="sms-offers", actor="test")
    return hooks.webhook_endpoint_create(workspace=ws.workspace, name="SMS gateway", slug="sms",
                                         url="http://127.0.0.1:9/never-called", actor="test")


def test_someone_unsubscribed_from_the_topic_gets_no_webhook_and_moves_on_while_the_others_get_theirs(
        ws, frozen_clock, sms, receiver_clock):
    ann, bob = people(ws, "ann", "bob")
    subscription_set(contact=bob, topic="sms-offers", granted=False, source="preference_centre")
    journey = sms_journey(ws)
    with Receiver() as receiver:
        hooks.webhook_endpoint_update(endpoint=sms, url=receiver.url, actor="test")
        receiver.secret = sms.secret
        enroll(journey, [ann, bob])

        assert delivered_to(journey) == {"ann"}
        assert set(skipped(journey)) == {"bob"}
        detail = skipped(journey)["bob"]
        assert detail["topic"] == "sms-offers"
        assert detail["reason"] == "unsubscribed from sms-offers on 2026-03-02", "the gate's own words"
        assert at_node(journey) == {"ann": "wait-1d", "bob": "wait-1d"}, "bob moves on like everyone else"
        assert not EnrollmentStep.objects.filter(journey=journey, contact_id=bob.pk, kind="webhook").exists()

        assert hooks.webhooks_dispatch() == 1
        request, = receiver.requests
        assert request["verified"] is True
        assert request["body"].count(b'"user_id":"ann"') == 1 and b"bob" not in request["body"]


@pytest.mark.parametrize("stop, reason", [
    ("all_marketing", "unsubscribed from all marketing on 2026-03-02"),
    ("paused", "paused by the person until 2026-03-16 09:00 UTC"),
    ("erased", "the person was erased (privacy request) on 2026-03-02"),
])
def test_all_marketing_withdrawn_a_pause_and_an_erasure_stop_the_webhook_too(ws, frozen_clock, sms, stop, reason):
    ann, bob = people(ws, "ann", "bob")
    if stop == "all_marketing":
        unsubscribe_all(contact=bob, source="preference_centre")
    elif stop == "paused":
        marketing_pause(contact=bob, weeks=2)
    else:
        suppression_add(workspace_id=ws.workspace.pk, email=bob.email, reason="erased")
    journey = sms_journey(ws)
    enroll(journey, [ann, bob])
    assert delivered_to(journey) == {"ann"}
    assert skipped(journey)["bob"]["reason"] == reason
    assert at_node(journey)["bob"] == "wait-1d"


def test_an_opt_in_topic_reaches_only_those_who_said_yes_with_or_without_an_email_address(ws, frozen_clock, sms):
    topic_create(workspace_id=ws.workspace.pk, name="Postcards", slug="postcards", mode=TopicMode.OPT_IN,
                 actor="test")
    ann, bob = people(ws, "ann", "bob")
    send(ws, identify("pat", first_name="Pat", phone="+15551234567"))
    pat = contact_of(ws, "pat")
    assert pat.email == ""
    for person in (ann, pat):
        subscription_set(contact=person, topic="postcards", granted=True, source="form")
    journey = sms_journey(ws, topic="postcards")
    enroll(journey, [ann, bob, pat])
    assert delivered_to(journey) == {"ann", "pat"}, "a person without an email address is reached by other means"
    assert skipped(journey)["bob"]["reason"] == "no opt-in for postcards (an opt-in topic)"


def test_without_a_topic_nothing_is_filtered(ws, frozen_clock, sms):
    ann, bob = people(ws, "ann", "bob")
    unsubscribe_all(contact=bob, source="preference_centre")
    marketing_pause(contact=ann, weeks=1)
    journey = sms_journey(ws, topic=None, slug="crm-sync")
    enroll(journey, [ann, bob])
    assert delivered_to(journey) == {"ann", "bob"}, "a CRM sync is not a message to the person"
    assert skipped(journey) == {}


def test_a_topic_archived_after_publishing_reaches_nobody(ws, frozen_clock, sms):
    ann, = people(ws, "ann")
    journey = sms_journey(ws)
    from leadflow.consent.models import Topic

    topic_archive(topic=Topic.objects.get(workspace=ws.workspace, slug="sms-offers"), actor="test")
    enroll(journey, [ann])
    assert delivered_to(journey) == set()
    assert skipped(journey)["ann"]["reason"] == "topic 'sms-offers' is archived"
    assert at_node(journey) == {"ann": "wait-1d"}


def test_the_consent_check_is_set_based(ws, frozen_clock, sms):
    def run(n: int) -> int:
        users = [f"p{n}-{i}" for i in range(n)]
        contacts = people(ws, *users)
        for person in contacts[::2]:
            subscription_set(contact=person, topic="sms-offers", granted=False, source="preference_centre")
        journey = sms_journey(ws, slug=f"sms-{n}")
        services.journey_enroll(journey=journey, contacts=contacts, actor="test")
        with CaptureQueriesContext(connection) as queries:
            journeys_run_due(now=clock_module.now())
        assert len(delivered_to(journey)) == n // 2 and len(skipped(journey)) == n // 2
        return len(queries)

    assert run(4) == run(40), "the same statements for 4 people as for 40"


def test_the_linter_refuses_an_unknown_topic_on_a_webhook_step_and_accepts_a_known_one(ws, sms):
    definition = {"name": "Texts", "slug": "texts", "triggers": [{"manual": True}],
                  "nodes": [{"id": "text-offer", "type": "webhook", "endpoint": "sms", "topic": "sms-ofers"}]}
    findings = journey_lint(workspace_id=ws.workspace.pk, definition=lang.journey_parse(definition))
    assert [(f.level, f.code, f.path) for f in findings] == [("error", "unknown_topic", "nodes[0].topic")]
    assert "sms-ofers" in findings[0].message
    definition["nodes"][0]["topic"] = "sms-offers"
    assert journey_lint(workspace_id=ws.workspace.pk, definition=lang.journey_parse(definition)) == []


def test_the_form_editor_keeps_a_webhook_steps_topic():
    data = {"version": lang.VERSION, "name": "Texts", "triggers": [{"manual": True}], "reentry": "not_while_in",
            "nodes": [{"id": "text-offer", "type": "webhook", "endpoint": "sms", "topic": "sms-offers"}]}
    state = editor.state_from_definition(data)
    assert editor.state_definition(state)["nodes"][0]["topic"] == "sms-offers"
