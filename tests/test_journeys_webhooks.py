"""Outgoing webhooks against a real HTTP server on loopback: endpoints and their secrets, a
journey's webhook step queued once per person (even when its pass is redone), Standard Webhooks
signatures that the reference library verifies, the same webhook-id on every retry, backoff and
Retry-After, 410 Gone disabling the endpoint, redirects never followed, and deliveries
interrupted mid-send going out again."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import socket
import threading
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction
from django.test import override_settings

from leadflow.core import clock as clock_module
from leadflow.core.models import AuditEntry
from leadflow.core.services import ServiceError
from leadflow.journeys import services
from leadflow.journeys import webhooks as hooks
from leadflow.journeys.engine import journeys_advance, journeys_run_due
from leadflow.journeys.models import Enrollment, EnrollmentStep, WebhookDelivery

from journey_helpers import apply, contact_of, identify, send, track

pytestmark = pytest.mark.django_db


# --- a receiver on loopback -----------------------------------------------------------------------

class Receiver:
    """A real HTTP server on 127.0.0.1 that records every request and answers from a script:
    `answer(...)` queues (status, headers) replies, `default` answers the rest. With `secret`
    set it verifies each request with the reference Standard Webhooks library, as a receiver
    would, against the injected clock (the simulated receiver lives in simulated time)."""

    def __init__(self, secret: str | None = None):
        self.secret = secret
        self.requests: list[dict] = []
        self.script: deque = deque()
        self.default: tuple[int, dict] = (200, {})
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver.lock:
                    status, headers = receiver.script.popleft() if receiver.script else receiver.default
                    receiver.requests.append({"method": self.command, "path": self.path, "body": body,
                                              "headers": {k.lower(): v for k, v in self.headers.items()},
                                              "status": status, "verified": receiver.verify(body, self.headers)})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_GET = _handle

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def verify(self, body: bytes, headers) -> object:
        if self.secret is None:
            return None
        from standardwebhooks import Webhook

        try:
            Webhook(self.secret).verify(body, dict(headers.items()))
            return True
        except Exception as exc:  # recorded, asserted by the test
            return f"{type(exc).__name__}: {exc}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def answer(self, *replies) -> None:
        for reply in replies:
            self.script.append(reply if isinstance(reply, tuple) else (reply, {}))

    def ids(self) -> list[str]:
        return [r["headers"].get("webhook-id") for r in self.requests if r["method"] == "POST"]

    def accepted(self) -> Counter:
        """webhook-id → how many times this receiver answered it with a 2xx."""
        return Counter(r["headers"]["webhook-id"] for r in self.requests if 200 <= r["status"] < 300)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_clock(monkeypatch):
    """Standard Webhooks receivers reject a timestamp more than 5 minutes from their clock; the
    reference library reads `datetime.now`, which here is the injected clock."""
    import standardwebhooks.webhooks as sw

    class ClockDatetime(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return clock_module.now().astimezone(tz)

    monkeypatch.setattr(sw, "datetime", ClockDatetime)


@pytest.fixture
def receiver(receiver_clock):
    with Receiver() as server:
        yield server


def endpoint_for(ws, server: Receiver, slug: str = "crm"):
    endpoint = hooks.webhook_endpoint_create(workspace=ws.workspace, name="CRM", slug=slug, url=server.url,
                                             actor="test")
    server.secret = endpoint.secret
    return endpoint


def hook_journey(ws, *, slug: str = "hooks", endpoint: str = "crm", data: dict | None = None, **extra):
    return apply(ws, {"name": slug.title(), "slug": slug, "triggers": [{"manual": True}],
                      "nodes": [{"id": "tell-crm", "type": "webhook", "endpoint": endpoint,
                                 "event_type": "lead.nurtured", "data": data or {"list": "spring"}}], **extra})


def people(ws, *users: str):
    send(ws, *[identify(u, email=f"{u}@example.com", first_name=u.title()) for u in users])
    return [contact_of(ws, u) for u in users]


def enroll(journey, contacts) -> None:
    services.journey_enroll(journey=journey, contacts=contacts, actor="test")
    journeys_run_due(now=clock_module.now())


def dispatch(clock=None, **delta) -> int:
    if clock is not None and delta:
        clock.advance(**delta)
    return hooks.webhooks_dispatch()


def only(journey) -> WebhookDelivery:
    return WebhookDelivery.objects.get(journey=journey)


# --- endpoints ------------------------------------------------------------------------------------

def test_an_endpoint_gets_a_generated_secret_and_bad_urls_and_secrets_get_clear_errors(ws):
    endpoint = hooks.webhook_endpoint_create(workspace=ws.workspace, name="  Sales   CRM ",
                                             url="https://crm.example/in?token=abc", actor="user:1")
    assert (endpoint.slug, endpoint.name) == ("sales-crm", "Sales CRM")
    assert endpoint.secret.startswith("whsec_") and len(base64.b64decode(endpoint.secret[6:])) == 32
    other = hooks.webhook_endpoint_create(workspace=ws.workspace, name="Sales CRM", url="http://10.0.0.5:8080/x",
                                          actor="user:1")
    assert other.slug == "sales-crm-2" and other.secret != endpoint.secret

    for url, message in [("ftp://crm.example/in", "must start with http:// or https://"),
                         ("crm.example/in", "must start with http:// or https://"),
                         ("https://", "names no host"), ("", "is required"),
                         ("https://crm.example:99999/", "port"), ("https://crm.example/a b", "spaces")]:
        with pytest.raises(ServiceError, match=message):
            hooks.webhook_endpoint_create(workspace=ws.workspace, name="Bad", url=url, actor="user:1")
    with pytest.raises(ServiceError, match="whsec_"):
        hooks.webhook_endpoint_create(workspace=ws.workspace, name="Bad", url="https://x.example", actor="u",
                                      secret="hunter2")
    with pytest.raises(ServiceError, match="24 to 64 bytes"):
        hooks.webhook_endpoint_create(workspace=ws.workspace, name="Bad", url="https://x.example", actor="u",
                                      secret="whsec_" + base64.b64encode(b"short").decode())
    with pytest.raises(ServiceError, match="already exists"):
        hooks.webhook_endpoint_create(workspace=ws.workspace, name="Bad", url="https://x.example", actor="u",
                                      slug="sales-crm")
    given = "whsec_" + base64.b64encode(b"k" * 24).decode()
    assert hooks.webhook_endpoint_create(workspace=ws.workspace, name="Mine", url="https://x.example", actor="u",
                                         secret=given).secret == given

    old = endpoint.secret
    hooks.webhook_endpoint_rotate_secret(endpoint=endpoint, actor="user:1")
    hooks.webhook_endpoint_update(endpoint=endpoint, actor="user:1", url="https://crm2.example/in")
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.url == "https://crm2.example/in"
    with pytest.raises(ServiceError, match="must start with http"):
        hooks.webhook_endpoint_update(endpoint=endpoint, actor="user:1", url="mailto:x@example.com")
    audit = list(AuditEntry.objects.filter(target=f"webhook_endpoint:{endpoint.pk}").order_by("pk")
                 .values_list("action", "data"))
    assert [a for a, _ in audit] == ["webhook_endpoint.create", "webhook_endpoint.rotate_secret",
                                     "webhook_endpoint.update"]
    assert audit[0][1]["url"] == "https://crm.example/in", "no query (it may carry a token) in the audit log"
    assert not any(endpoint.secret in json.dumps(d) or old in json.dumps(d) for _, d in audit), "secrets stay out"
    assert [e.slug for e in hooks.webhook_endpoints_list(workspace=ws.workspace)] == ["mine", "sales-crm",
                                                                                     "sales-crm-2"]


# --- a journey's webhook step -----------------------------------------------------------------------

def test_a_journey_step_sends_a_signed_payload_the_reference_library_verifies(ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    journey = hook_journey(ws, data={"list": "spring", "priority": 2})
    ann, = people(ws, "ann")
    ann.traits = {**ann.traits, "plan": "pro"}
    ann.save(update_fields=["traits"])
    enroll(journey, [ann])
    delivery = only(journey)
    assert delivery.status == "pending" and delivery.msg_id.startswith("msg_")
    step = EnrollmentStep.objects.get(journey=journey, kind="webhook")
    assert step.detail["delivery"] == delivery.pk and step.node == "tell-crm"
    assert receiver.requests == [], "nothing goes out inside the engine's pass"

    assert dispatch() == 1
    request, = receiver.requests
    assert request["verified"] is True
    assert request["headers"]["webhook-id"] == delivery.msg_id
    assert request["headers"]["webhook-timestamp"] == str(int(frozen_clock.current.timestamp()))
    assert request["headers"]["content-type"] == "application/json"
    body = json.loads(request["body"])
    assert body["type"] == "lead.nurtured" and body["timestamp"] == "2026-03-02T09:00:00Z"
    data = body["data"]
    assert (data["journey"], data["node"], data["list"], data["priority"]) == ("hooks", "tell-crm", "spring", 2)
    assert data["enrollment"] == Enrollment.objects.get(journey=journey).pk
    person = data["contact"]
    assert (person["id"], person["email"], person["user_id"], person["first_name"]) == (
        ann.pk, "ann@example.com", "ann", "Ann")
    assert person["traits"]["plan"] == "pro" and {"lifecycle_stage", "fit_score", "engagement_score"} <= set(person)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)
    assert delivery.delivered_at == frozen_clock.current
    assert dispatch() == 0 and len(receiver.requests) == 1, "delivered once"
    assert [d.pk for d in hooks.webhook_deliveries_list(workspace=ws.workspace, status="delivered")] == [delivery.pk]


def test_the_pipeline_enters_people_and_each_gets_the_webhook_exactly_once_even_when_the_pass_is_redone(
        ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    journey = apply(ws, {"name": "Guide", "slug": "guide", "reentry": "once",
                         "triggers": [{"event": "Asset Downloaded"}],
                         "nodes": [{"id": "wait-1d", "type": "wait", "days": 1, "next": "to-crm"},
                                   {"id": "to-crm", "type": "webhook", "endpoint": "crm",
                                    "event_type": "guide.downloaded"}]})
    people(ws, "ann", "bob")
    send(ws, track("ann", "Asset Downloaded", asset="guide"), track("bob", "Asset Downloaded", asset="guide"))
    frozen_clock.advance(days=1)

    class Crash(Exception):
        pass

    # A worker dies after its pass wrote everything but before the commit: nothing stays.
    with pytest.raises(Crash), transaction.atomic():
        assert journeys_advance(now=frozen_clock.current) == 2
        assert WebhookDelivery.objects.filter(journey=journey).count() == 2
        raise Crash
    assert WebhookDelivery.objects.filter(journey=journey).count() == 0
    journeys_run_due(now=frozen_clock.current)
    first = {d.contact.user_id: (d.pk, d.msg_id) for d in WebhookDelivery.objects.filter(journey=journey)}
    assert set(first) == {"ann", "bob"}

    # The pass is redone over rows whose move was lost (same node, same step count): the
    # deliveries are found by their key, with the same ids and webhook-ids.
    Enrollment.objects.filter(journey=journey).update(node="to-crm", steps=1, state="active", ended_at=None,
                                                      end_reason="", due_at=frozen_clock.current, resume="arrive")
    journeys_run_due(now=frozen_clock.current)
    again = {d.contact.user_id: (d.pk, d.msg_id) for d in WebhookDelivery.objects.filter(journey=journey)}
    assert again == first
    recorded = EnrollmentStep.objects.filter(journey=journey, kind="webhook").values_list("detail__delivery", flat=True)
    assert sorted(recorded) == sorted([pk for pk, _ in first.values()] * 2), "each pass recorded the same delivery"

    dispatch()
    frozen_clock.advance(days=3)
    dispatch()
    assert sorted(receiver.accepted().values()) == [1, 1]
    assert set(receiver.accepted()) == {msg for _, msg in first.values()}
    assert all(r["verified"] is True for r in receiver.requests)
    bodies = {json.loads(r["body"])["data"]["contact"]["user_id"]: json.loads(r["body"]) for r in receiver.requests}
    assert bodies["ann"]["type"] == "guide.downloaded" and bodies["bob"]["data"]["node"] == "to-crm"


def test_an_unknown_or_disabled_endpoint_fails_the_step_with_the_reason(ws, frozen_clock, receiver):
    endpoint = endpoint_for(ws, receiver)
    journey = hook_journey(ws)
    ann, bob = people(ws, "ann", "bob")
    hooks.webhook_endpoint_disable(endpoint=endpoint, actor="user:1", reason="the CRM is being migrated")
    enroll(journey, [ann])
    e = Enrollment.objects.get(journey=journey, contact=ann)
    assert e.state == "failed"
    assert "webhook endpoint 'crm' is disabled (the CRM is being migrated)" in e.end_reason
    assert not WebhookDelivery.objects.exists()

    hooks.webhook_endpoint_enable(endpoint=endpoint, actor="user:1")
    enroll(journey, [bob])
    assert Enrollment.objects.get(journey=journey, contact=bob).state == "completed"
    assert dispatch() == 1 and receiver.accepted() == Counter({only(journey).msg_id: 1})
    assert list(AuditEntry.objects.filter(target=f"webhook_endpoint:{endpoint.pk}").values_list("action", flat=True)
                .order_by("pk")) == ["webhook_endpoint.create", "webhook_endpoint.disable", "webhook_endpoint.enable"]


# --- retries ----------------------------------------------------------------------------------------

def test_retries_keep_the_webhook_id_back_off_and_each_attempt_is_signed_anew(ws, frozen_clock, receiver):
    endpoint = endpoint_for(ws, receiver)
    journey = hook_journey(ws)
    enroll(journey, people(ws, "ann"))
    receiver.answer(500, 503, 502)
    start = frozen_clock.current
    assert hooks.webhook_endpoint_health(endpoint=endpoint) == "unknown"

    assert dispatch() == 1
    delivery = only(journey)
    assert (delivery.status, delivery.attempts, delivery.last_status) == ("pending", 1, 500)
    assert delivery.next_attempt_at == start + dt.timedelta(minutes=1) and "HTTP 500" in delivery.error
    assert hooks.webhook_endpoint_health(endpoint=endpoint) == "failing"
    assert dispatch(frozen_clock, seconds=59) == 0, "not before the backoff"
    assert dispatch(frozen_clock, seconds=1) == 1
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.next_attempt_at) == (2, frozen_clock.current + dt.timedelta(minutes=3))
    dispatch(frozen_clock, minutes=3)
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == frozen_clock.current + dt.timedelta(minutes=9)
    dispatch(frozen_clock, minutes=9)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status, delivery.error) == ("delivered", 4, 200, "")
    assert hooks.webhook_endpoint_health(endpoint=endpoint) == "ok"

    assert receiver.ids() == [delivery.msg_id] * 4, "the same webhook-id on every attempt"
    stamps = [int(r["headers"]["webhook-timestamp"]) for r in receiver.requests]
    assert stamps == sorted(set(stamps)), "each attempt carries its own time"
    assert all(r["verified"] is True for r in receiver.requests), [r["verified"] for r in receiver.requests]
    assert len({r["body"] for r in receiver.requests}) == 1, "the same body each time"


def test_retry_after_in_seconds_or_as_an_http_date_is_honoured(ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    journey = hook_journey(ws)
    enroll(journey, people(ws, "ann"))
    receiver.answer((429, {"Retry-After": "600"}))
    dispatch()
    delivery = only(journey)
    assert delivery.next_attempt_at == frozen_clock.current + dt.timedelta(minutes=10), "not the 1-minute backoff"
    assert dispatch(frozen_clock, minutes=9) == 0

    frozen_clock.advance(minutes=1)
    later = frozen_clock.current + dt.timedelta(hours=2)
    receiver.answer((503, {"Retry-After": email.utils.format_datetime(later, usegmt=True)}))
    assert dispatch() == 1
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == later and delivery.last_status == 503
    assert dispatch(frozen_clock, minutes=119) == 0
    assert dispatch(frozen_clock, minutes=1) == 1
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and len(receiver.requests) == 3


@override_settings(LEADFLOW_WEBHOOK_MAX_ATTEMPTS=3)
def test_after_the_last_attempt_the_delivery_fails_with_the_last_answer(ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    journey = hook_journey(ws)
    enroll(journey, people(ws, "ann"))
    receiver.default = (500, {})
    for _ in range(5):
        dispatch(frozen_clock, hours=1)
    delivery = only(journey)
    assert (delivery.status, delivery.attempts, delivery.last_status) == ("failed", 3, 500)
    assert delivery.error.startswith("gave up after 3 attempts: HTTP 500")
    assert len(receiver.requests) == 3


def test_other_client_errors_and_redirects_fail_at_once_and_redirects_are_never_followed(ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    journey = hook_journey(ws)
    enroll(journey, people(ws, "ann", "bob"))
    receiver.answer((400, {}), (302, {"Location": "/elsewhere"}))
    assert dispatch() == 2
    by_status = {d.last_status: d for d in WebhookDelivery.objects.filter(journey=journey)}
    assert by_status[400].status == "failed" and by_status[400].error.startswith("HTTP 400")
    assert by_status[302].status == "failed" and "redirects are not followed" in by_status[302].error
    assert "/elsewhere" in by_status[302].error
    dispatch(frozen_clock, days=1)
    assert [r["path"] for r in receiver.requests] == ["/hooks", "/hooks"], "nothing went to /elsewhere"


def test_410_gone_disables_the_endpoint_and_fails_what_was_waiting_for_it(ws, frozen_clock, receiver):
    endpoint = endpoint_for(ws, receiver)
    journey = hook_journey(ws)
    enroll(journey, people(ws, "ann", "bob", "cat"))
    receiver.answer(500, 500, 500)
    dispatch()
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"pending"}
    receiver.answer((410, {}))
    dispatch(frozen_clock, minutes=1)
    endpoint.refresh_from_db()
    assert endpoint.disabled_at == frozen_clock.current and "410 Gone" in endpoint.disabled_reason
    assert sorted(WebhookDelivery.objects.values_list("status", flat=True)) == ["failed"] * 3
    assert len(receiver.requests) == 4, "after the 410 nothing more went to it"
    assert hooks.webhook_endpoint_health(endpoint=endpoint) == "disabled"
    dispatch(frozen_clock, hours=5)
    assert len(receiver.requests) == 4
    assert AuditEntry.objects.filter(action="webhook_endpoint.disable", actor="webhooks").count() == 1

    dan, = people(ws, "dan")
    enroll(journey, [dan])
    assert "is disabled" in Enrollment.objects.get(contact=dan).end_reason


def test_an_unreachable_endpoint_is_retried_and_tried_once_per_run(ws, frozen_clock, receiver_clock):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hooks.webhook_endpoint_create(workspace=ws.workspace, name="CRM", slug="crm", url=f"http://127.0.0.1:{port}/x",
                                  actor="test")
    journey = hook_journey(ws)
    enroll(journey, people(ws, "ann", "bob", "cat"))
    assert dispatch() == 3
    rows = list(WebhookDelivery.objects.filter(journey=journey).order_by("pk"))
    assert [d.status for d in rows] == ["pending"] * 3
    assert [d.attempts for d in rows] == [1, 0, 0], "one refused connection is enough to know"
    assert "could not reach the endpoint" in rows[0].error and "not tried yet" in rows[1].error
    assert {d.next_attempt_at for d in rows} == {frozen_clock.current + dt.timedelta(minutes=1)}


@override_settings(LEADFLOW_WEBHOOK_TIMEOUT_SECONDS=1)
def test_a_receiver_that_never_answers_times_out_and_is_retried(ws, frozen_clock):
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hooks.webhook_endpoint_create(workspace=ws.workspace, name="CRM", slug="crm",
                                      url=f"http://127.0.0.1:{silent.getsockname()[1]}/x", actor="test")
        journey = hook_journey(ws)
        enroll(journey, people(ws, "ann"))
        dispatch()
    delivery = only(journey)
    assert (delivery.status, delivery.attempts, delivery.last_status) == ("pending", 1, None)
    assert delivery.error == "no answer within 1 s"


def test_a_delivery_interrupted_mid_send_goes_out_again_with_the_same_webhook_id(ws, frozen_clock, receiver):
    endpoint_for(ws, receiver)
    journey = hook_journey(ws)
    enroll(journey, people(ws, "ann"))
    # A worker claimed it and died during the request (the receiver may or may not have it).
    WebhookDelivery.objects.filter(journey=journey).update(status="sending", sending_at=frozen_clock.current)
    assert dispatch(frozen_clock, minutes=9) == 0, "within the lease it is left alone"
    assert dispatch(frozen_clock, minutes=2) == 2, "recovered, then delivered"
    delivery = only(journey)
    assert (delivery.status, delivery.attempts) == ("delivered", 2)
    assert receiver.ids() == [delivery.msg_id]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_in_parallel_never_send_a_delivery_twice(ws, frozen_clock, receiver):
    from django.db import connections

    endpoint_for(ws, receiver)
    journey = hook_journey(ws)
    enroll(journey, people(ws, *[f"p{i}" for i in range(60)]))
    assert WebhookDelivery.objects.filter(journey=journey).count() == 60

    def work():
        try:
            while hooks.webhooks_dispatch(limit=10):
                pass
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(receiver.requests) == 60 and set(receiver.accepted().values()) == {1}
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"delivered"}
