"""The journey circuit breaker, driven by the clock against real downstream systems: a webhook
receiver on loopback answering 500s and an SMTP server refusing mail. Past the limits the
journey pauses itself and tells its owner; once the downstream answers again it resumes by
itself and everything that fell due meanwhile happens once. A journey paused by a person stays
paused."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter

import pytest
from django.test import override_settings

from leadflow.core.models import AuditEntry
from leadflow.core.pipeline import timers_run
from leadflow.core.services import user_create
from leadflow.journeys import services
from leadflow.journeys import webhooks as hooks
from leadflow.journeys.engine import journeys_run_due
from leadflow.journeys.health import journeys_health_run
from leadflow.journeys.models import Enrollment, EnrollmentStep, Journey, WebhookDelivery
from leadflow.lifecycle.models import Notification

from journey_helpers import apply, contact_of, identify, send, template
from test_journeys_webhooks import endpoint_for, receiver, receiver_clock  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


def people(ws, count: int, prefix: str = "p"):
    users = [f"{prefix}{i:02d}" for i in range(count)]
    send(ws, *[identify(u, email=f"{u}@example.com") for u in users])
    return [contact_of(ws, u) for u in users]


def two_hooks(ws, *, owner=None, slug: str = "crm-sync"):
    """Tell the CRM at once, wait ten minutes, tell it again."""
    journey = apply(ws, {"name": "CRM sync", "slug": slug, "triggers": [{"manual": True}],
                         "nodes": [{"id": "hook-1", "type": "webhook", "endpoint": "crm", "next": "wait-10m"},
                                   {"id": "wait-10m", "type": "wait", "minutes": 10, "next": "hook-2"},
                                   {"id": "hook-2", "type": "webhook", "endpoint": "crm"}]})
    if owner is not None:
        Journey.objects.filter(pk=journey.pk).update(owner=owner)
        journey.refresh_from_db()
    return journey


def olga(ws, email: str = "olga@acme.test"):
    return user_create(username="olga", password="pw-olga-1234", email=email, workspace=ws.workspace)


def enroll(journey, contacts, clock) -> None:
    services.journey_enroll(journey=journey, contacts=contacts, actor="test")
    journeys_run_due(now=clock.current)


def worker_minute(clock, *, minutes: int = 1) -> dict:
    """What a worker does in a minute: the engine, the webhooks, the health timer."""
    clock.advance(minutes=minutes)
    journeys_run_due(now=clock.current)
    hooks.webhooks_dispatch()
    return journeys_health_run(now=clock.current)


def status(journey) -> tuple[str, bool]:
    journey.refresh_from_db()
    return journey.status, journey.breaker_tripped_at is not None


def test_failing_webhooks_pause_the_journey_tell_the_owner_and_it_resumes_without_doing_anything_twice(
        ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    owner = olga(ws)
    journey = two_hooks(ws, owner=owner)
    receiver.default = (500, {})
    t0 = frozen_clock.current
    enroll(journey, people(ws, 12), frozen_clock)
    hooks.webhooks_dispatch()
    assert len(receiver.requests) == 12

    report = journeys_health_run(now=t0)
    assert report["tripped"] == ["crm-sync"]
    journey.refresh_from_db()
    assert journey.status == "paused" and journey.breaker_tripped_at == t0
    assert journey.paused_reason.startswith("paused by the circuit breaker: 12 of 12 webhook deliveries failed in "
                                            "the last 15 minutes (endpoint crm: HTTP 500")
    mail, = Notification.objects.filter(user=owner)
    assert mail.to_address == "olga@acme.test" and mail.subject == "Journey paused: CRM sync"
    assert "12 of 12 webhook deliveries failed" in mail.text_body and "resumes by itself" in mail.text_body
    trip = AuditEntry.objects.get(action="journey.breaker_trip", target=f"journey:{journey.pk}")
    assert trip.data["signals"][0]["kind"] == "webhooks" and trip.data["signals"][0]["failed"] == 12
    assert AuditEntry.objects.filter(action="journey.paused", actor="system:breaker").exists()

    held_reasons, resumed_at = [], None
    for minute in range(1, 61):
        if minute == 20:
            receiver.default = (200, {})  # the receiver is fixed
        report = worker_minute(frozen_clock)
        if report["held"]:
            held_reasons.append((minute, report["held"]["crm-sync"], report["probes"]))
        if report["resumed"]:
            resumed_at = frozen_clock.current
        if minute == 19:
            assert not WebhookDelivery.objects.filter(node="hook-2").exists(), \
                "the wait ended at minute 10, but nobody moves while the journey is paused"
            assert status(journey) == ("paused", True)
    assert held_reasons[0][0] == 1 and held_reasons[0][1].startswith("cooling down until")
    probing = [(m, why, probes) for m, why, probes in held_reasons if not why.startswith("cooling")]
    assert probing[0] == (15, "webhook endpoint crm failed its last attempt", 1), "after the cool-down, a probe"
    assert resumed_at == t0 + dt.timedelta(minutes=20), "the probe that succeeds at minute 20 lets it resume"
    assert status(journey) == ("live", False)

    # Everyone went on once: one delivery per person and node, each accepted once by the receiver.
    deliveries = list(WebhookDelivery.objects.filter(journey=journey))
    assert Counter(d.node for d in deliveries) == {"hook-1": 12, "hook-2": 12}
    assert {d.status for d in deliveries} == {"delivered"}
    assert all(d.created_at >= resumed_at for d in deliveries if d.node == "hook-2")
    accepted = receiver.accepted()
    assert all(accepted[d.msg_id] == 1 for d in deliveries)
    pings = [r for r in receiver.requests if json.loads(r["body"])["type"] == "leadflow.ping"]
    assert pings and all(r["verified"] is True for r in receiver.requests)
    assert sum(1 for r in pings if r["status"] == 200) == 1
    steps = Counter(EnrollmentStep.objects.filter(journey=journey, kind="webhook").values_list("enrollment_id", "node"))
    assert len(steps) == 24 and set(steps.values()) == {1}, "no step ran twice"
    assert set(Enrollment.objects.filter(journey=journey).values_list("state", flat=True)) == {"completed"}

    resumed = Notification.objects.filter(user=owner).order_by("pk").last()
    assert resumed.subject == "Journey resumed: CRM sync"
    assert list(AuditEntry.objects.filter(target=f"journey:{journey.pk}", actor="system:breaker")
                .order_by("pk").values_list("action", flat=True)) == [
        "journey.paused", "journey.breaker_trip", "journey.live", "journey.breaker_resume"]


def test_a_journey_paused_by_a_person_is_never_tripped_or_resumed_by_the_breaker(ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    journey = two_hooks(ws, owner=olga(ws))
    receiver.default = (500, {})
    enroll(journey, people(ws, 12), frozen_clock)
    services.journey_status_set(journey=journey, status="paused", actor="user:olga", reason="checking the copy")
    hooks.webhooks_dispatch()
    assert journeys_health_run(now=frozen_clock.current)["tripped"] == []
    receiver.default = (200, {})
    for _ in range(8):
        worker_minute(frozen_clock, minutes=30)
    journey.refresh_from_db()
    assert (journey.status, journey.paused_reason, journey.breaker_tripped_at) == ("paused", "checking the copy", None)
    assert not Notification.objects.exists()
    assert not WebhookDelivery.objects.filter(node="hook-2").exists()


def test_the_limits_need_both_volume_and_error_rate_and_come_from_settings(ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    few = two_hooks(ws, slug="few")
    enroll(few, people(ws, 3, "f"), frozen_clock)
    receiver.answer(500, 500, 500)
    hooks.webhooks_dispatch()
    assert journeys_health_run(now=frozen_clock.current)["tripped"] == [], "3 failures: too few to judge"
    with override_settings(LEADFLOW_JOURNEY_BREAKER_MIN_FAILURES=3):
        assert journeys_health_run(now=frozen_clock.current)["tripped"] == ["few"]

    mostly_fine = two_hooks(ws, slug="mostly-fine")
    enroll(mostly_fine, people(ws, 40, "m"), frozen_clock)
    receiver.answer(*[500] * 12)
    hooks.webhooks_dispatch()
    assert WebhookDelivery.objects.filter(journey=mostly_fine, status="pending").count() == 12
    assert journeys_health_run(now=frozen_clock.current)["tripped"] == [], "12 of 40 is under half"
    with override_settings(LEADFLOW_JOURNEY_BREAKER_ERROR_RATE=0.25):
        assert journeys_health_run(now=frozen_clock.current)["tripped"] == ["mostly-fine"]


def test_failures_older_than_the_window_or_than_a_resume_do_not_count(ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    journey = two_hooks(ws)
    enroll(journey, people(ws, 12), frozen_clock)
    receiver.default = (500, {})
    hooks.webhooks_dispatch()
    frozen_clock.advance(minutes=16)
    assert journeys_health_run(now=frozen_clock.current)["tripped"] == [], "out of the 15-minute window"

    frozen_clock.advance(minutes=10)
    hooks.webhooks_dispatch()  # the retries due now fail again: 12 new failures
    assert WebhookDelivery.objects.filter(journey=journey, status="pending", attempts=2).count() == 12
    services.journey_status_set(journey=journey, status="paused", actor="user:olga")
    frozen_clock.advance(minutes=1)
    services.journey_status_set(journey=journey, status="live", actor="user:olga")  # resumed by hand
    assert journeys_health_run(now=frozen_clock.current)["tripped"] == [], "a resume starts the count afresh"


def test_failing_steps_trip_it_and_a_disabled_endpoint_holds_it_until_enabled(ws, frozen_clock, receiver):
    endpoint = endpoint_for(ws, receiver)
    journey = two_hooks(ws, owner=olga(ws, email=""))
    hooks.webhook_endpoint_disable(endpoint=endpoint, actor="user:1", reason="moving to the new CRM")
    enroll(journey, people(ws, 10), frozen_clock)
    assert Enrollment.objects.filter(journey=journey, state="failed").count() == 10
    assert "journeys.health" in timers_run(), "the worker's minute timer runs the breaker"
    assert status(journey) == ("paused", True)
    journey.refresh_from_db()
    assert "10 of 10 steps failed in the last 15 minutes (at hook-1: ServiceError: webhook endpoint 'crm' is " \
           "disabled (moving to the new CRM)" in journey.paused_reason
    assert not Notification.objects.exists(), "an owner without an email address: the audit log only"
    assert AuditEntry.objects.filter(action="journey.breaker_trip").count() == 1

    report = worker_minute(frozen_clock, minutes=20)
    assert report["held"] == {"crm-sync": "webhook endpoint crm is disabled (moving to the new CRM); enable it"}
    hooks.webhook_endpoint_enable(endpoint=endpoint, actor="user:1")
    assert worker_minute(frozen_clock)["resumed"] == ["crm-sync"]
    assert status(journey) == ("live", False)


def test_a_journey_that_fails_again_after_resuming_waits_twice_as_long(ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    journey = two_hooks(ws)
    receiver.default = (500, {})
    enroll(journey, people(ws, 12, "a"), frozen_clock)
    hooks.webhooks_dispatch()
    journeys_health_run(now=frozen_clock.current)
    receiver.default = (200, {})
    resumed = [worker_minute(frozen_clock)["resumed"] for _ in range(16)]
    assert resumed.index(["crm-sync"]) == 14, "back after the first cool-down, 15 minutes"

    receiver.default = (500, {})
    enroll(journey, people(ws, 12, "b"), frozen_clock)
    hooks.webhooks_dispatch()
    assert journeys_health_run(now=frozen_clock.current)["tripped"] == ["crm-sync"]
    tripped = frozen_clock.current
    receiver.default = (200, {})
    resumed = None
    for _ in range(40):
        if worker_minute(frozen_clock)["resumed"]:
            resumed = frozen_clock.current
            break
    assert resumed is not None and resumed - tripped >= dt.timedelta(minutes=30), "the second cool-down is 30 min"


# --- email ------------------------------------------------------------------------------------------

@override_settings(LEADFLOW_JOURNEY_BREAKER_MIN_FAILURES=5)
def test_an_smtp_server_refusing_mail_pauses_the_journey_until_its_own_breaker_closes(ws, frozen_clock):
    from leadflow.messaging.dispatch import dispatch_run
    from leadflow.messaging.models import Message
    from leadflow.messaging.sending import messaging_settings_update, sending_server_create

    from smtp_sink import dispatching_to_sink

    template(ws, "welcome")
    template(ws, "follow-up")
    journey = apply(ws, {"name": "Welcome", "slug": "welcome", "triggers": [{"manual": True}],
                         "nodes": [{"id": "hello", "type": "send_email", "template": "welcome", "next": "wait"},
                                   {"id": "wait", "type": "wait", "minutes": 10, "next": "again"},
                                   {"id": "again", "type": "send_email", "template": "follow-up"}]})
    owner = olga(ws)
    Journey.objects.filter(pk=journey.pk).update(owner=owner)
    with dispatching_to_sink() as sink:
        messaging_settings_update(workspace_id=ws.workspace.pk, from_name="Acme", from_email="news@acme.test",
                                  postal_address="1 Main St, Springfield")
        server = sending_server_create(workspace=ws.workspace, name="Loopback", url=sink.url, is_default=True,
                                       rate_per_second=0)
        sink.mode = "refuse_451"
        enroll(journey, people(ws, 6), frozen_clock)
        dispatch_run()
        server.refresh_from_db()
        assert server.paused_until is not None, "the server's own breaker opened"
        report = journeys_health_run(now=frozen_clock.current)
        assert report["tripped"] == ["welcome"]
        journey.refresh_from_db()
        # How many were tried before the pause depends on the SMTP threads' timing; all of them failed.
        assert re.search(r"(\d+) of \1 emails could not be sent in the last 15 minutes \(server Loopback: 451",
                         journey.paused_reason), journey.paused_reason
        assert Notification.objects.get(user=owner).subject == "Journey paused: Welcome"

        held, resumed_at = [], None
        for minute in range(1, 61):
            if minute == 25:
                sink.mode = "ok"
            frozen_clock.advance(minutes=1)
            journeys_run_due(now=frozen_clock.current)
            dispatch_run()
            report = journeys_health_run(now=frozen_clock.current)
            held += [why for why in report["held"].values() if not why.startswith("cooling")]
            if report["resumed"]:
                resumed_at = minute
        assert any(why.startswith("sending server Loopback is paused after") for why in held)
        assert resumed_at is not None and resumed_at >= 25
        assert status(journey) == ("live", False)

    got = Counter((r.rcpt_tos[0], str(r.message["Subject"])) for r in sink.messages)
    assert len(got) == 12 and set(got.values()) == {1}, got
    assert set(Message.objects.values_list("status", flat=True)) == {"sent"}
    assert Counter(Message.objects.values_list("template__slug", flat=True)) == {"welcome": 6, "follow-up": 6}
