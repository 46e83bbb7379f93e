"""The review queue: messages whose send was interrupted (the dispatcher killed after claiming
them, or the connection broken after the whole message went out) are resent, marked as sent or
dismissed by a person, through the real dispatcher and a real SMTP server on loopback; nothing
else can be acted on, nothing is sent twice, other workspaces see nothing; the page and the API."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from leadflow.consent.services import suppression_add
from leadflow.core.models import AuditEntry
from leadflow.core.services import ServiceError, user_create
from leadflow.journeys.models import Journey
from leadflow.messaging import dispatch, review, stats
from leadflow.messaging.models import Broadcast, Message, MessageEvent
from leadflow.messaging.outbox import message_queue
from leadflow.segments.models import Segment

from smtp_sink import dispatching_to_sink
from test_email_dispatch import make_template, person, queue, setup_sending, statuses

pytestmark = pytest.mark.django_db


class Killed(BaseException):
    """The dispatcher process dies (raised where it would start talking to the server)."""


@pytest.fixture
def sink():
    with dispatching_to_sink() as server:
        yield server


@pytest.fixture
def template(ws):
    return make_template(ws)


def in_review_by_drop(ws, sink, template, n: int = 1, **kwargs) -> Message:
    """A message whose connection broke after the whole message went out: `review`."""
    message = queue(ws, template, person(ws, n), **kwargs)
    sink.fail_next(1, "drop_after_body")
    dispatch.dispatch_run()
    message.refresh_from_db()
    assert message.status == "review"
    return message


def kill_after_claim(monkeypatch) -> None:
    """The next dispatch_run claims its messages (they are `sending`, committed) and dies before
    handing any to the server."""
    def dying(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(dispatch, "_send_group", dying)


def events(message, kind=None) -> list[MessageEvent]:
    query = MessageEvent.objects.filter(message=message).order_by("at", "pk")
    return list(query.filter(kind=kind) if kind else query)


def delivered_to(sink) -> list[str]:
    return sink.recipients()


# --- the services, through the real dispatcher ---------------------------------------------------

def test_a_dropped_send_is_resent_by_a_person_and_delivered_exactly_once_more(ws, sink, template, frozen_clock):
    setup_sending(ws, sink)
    message = in_review_by_drop(ws, sink, template, dedupe_key="journey:7:welcome:42")
    assert sink.messages == [] and len(sink.unanswered) == 1 and message.attempts == 1
    frozen_clock.advance(days=1)
    dispatch.dispatch_run()
    assert statuses(message) == ["review"] and sink.messages == []  # never by itself

    frozen_clock.advance(hours=1)
    done = review.review_resend(workspace=ws.workspace, actor="user:5", message_ids=[message.pk],
                                note="not in the provider's log")
    assert done.ids == [message.pk] and done.count == 1
    message.refresh_from_db()
    assert message.status == "queued" and message.not_before == frozen_clock.current
    assert message.dedupe_key == "journey:7:welcome:42" and message.attempts == 1 and message.error == ""
    [event] = events(message, "requeued")
    assert event.at == frozen_clock.current
    assert event.detail["actor"] == "user:5" and event.detail["reason"] == "not in the provider's log"
    assert event.detail["review"] == "resend" and "during reply" in event.detail["previous_error"]
    [audit] = AuditEntry.objects.filter(workspace=ws.workspace, action="message.review.resend")
    assert audit.actor == "user:5" and audit.target == f"message:{message.pk}" and audit.data["ids"] == [message.pk]
    # Queueing the same step again still finds the same row: its identity is kept.
    again = message_queue(workspace_id=ws.workspace.pk, contact=message.contact, template=template,
                          dedupe_key="journey:7:welcome:42")
    assert again.pk == message.pk and Message.objects.count() == 1

    assert dispatch.dispatch_run() == 1
    message.refresh_from_db()
    assert message.status == "sent" and message.attempts == 2 and message.sent_at == frozen_clock.current
    assert delivered_to(sink) == ["p1@example.org"]
    frozen_clock.advance(days=1)
    assert dispatch.dispatch_run() == 0
    assert delivered_to(sink) == ["p1@example.org"]  # exactly once more
    assert [e.kind for e in events(message)] == ["queued", "review", "requeued", "sent"]


def test_a_dispatcher_killed_after_claiming_leaves_its_chunk_to_review_and_a_bulk_resend_sends_each_once(
        ws, sink, template, frozen_clock, monkeypatch):
    setup_sending(ws, sink)
    messages = [queue(ws, template, person(ws, n)) for n in range(5)]
    send_group = dispatch._send_group
    kill_after_claim(monkeypatch)
    with pytest.raises(Killed):
        dispatch.dispatch_run()
    monkeypatch.setattr(dispatch, "_send_group", send_group)
    assert statuses(*messages) == ["sending"] * 5
    frozen_clock.advance(seconds=dispatch.lease_seconds() + 1)
    dispatch.dispatch_run()
    assert statuses(*messages) == ["review"] * 5 and sink.messages == []
    reasons = review.review_reasons(messages=list(review.review_messages(workspace=ws.workspace)))
    assert all("interrupted while sending" in r["reason"] for r in reasons.values())

    done = review.review_resend(workspace=ws.workspace, actor="user:1", everything=True)
    assert sorted(done.ids) == sorted(m.pk for m in messages)
    assert dispatch.dispatch_run() == 5
    dispatch.dispatch_run()
    assert statuses(*messages) == ["sent"] * 5
    assert sorted(delivered_to(sink)) == sorted(m.to_email for m in messages)  # each exactly once


def test_mark_sent_records_the_send_when_it_happened_and_it_is_never_sent(ws, sink, template, frozen_clock):
    setup_sending(ws, sink)
    message = in_review_by_drop(ws, sink, template)
    went_out = message.sending_at
    frozen_clock.advance(hours=3)
    review.review_mark_sent(workspace=ws.workspace, actor="user:2", message_ids=[message.pk])
    message.refresh_from_db()
    assert message.status == "sent" and message.sent_at == went_out and message.error == ""
    [event] = events(message, "sent")
    assert event.detail["actor"] == "user:2" and event.detail["review"] == "mark_sent"
    assert "recipient got it" in event.detail["reason"]
    figures = stats.messages_stats(workspace_id=ws.workspace.pk, template_id=template.pk)
    assert figures["sent"] == 1 and figures["delivered"] == 1
    frozen_clock.advance(days=1)
    dispatch.dispatch_run()
    assert statuses(message) == ["sent"] and sink.messages == []


def test_dismiss_needs_a_reason_and_fails_the_message_for_good(ws, sink, template, frozen_clock):
    setup_sending(ws, sink)
    message = in_review_by_drop(ws, sink, template)
    with pytest.raises(ServiceError, match="say why"):
        review.review_dismiss(workspace=ws.workspace, actor="user:3", reason="  ", message_ids=[message.pk])
    assert statuses(message) == ["review"] and not events(message, "failed")
    review.review_dismiss(workspace=ws.workspace, actor="user:3", reason="bounced at the provider",
                          message_ids=[message.pk])
    message.refresh_from_db()
    assert message.status == "failed" and message.error == "bounced at the provider"
    [event] = events(message, "failed")
    assert event.detail == {"reason": "bounced at the provider", "review": "dismiss", "actor": "user:3",
                            "previous_error": event.detail["previous_error"]}
    assert AuditEntry.objects.filter(action="message.review.dismiss", actor="user:3").count() == 1
    frozen_clock.advance(days=1)
    dispatch.dispatch_run()
    assert statuses(message) == ["failed"] and sink.messages == []


def test_only_messages_in_review_can_be_acted_on_and_a_refusal_changes_nothing(ws, sink, template, frozen_clock):
    setup_sending(ws, sink)
    in_review = in_review_by_drop(ws, sink, template, 1)
    sent = queue(ws, template, person(ws, 2))
    dispatch.dispatch_run()
    waiting = queue(ws, template, person(ws, 3), not_before=frozen_clock.current + dt.timedelta(days=1))
    assert statuses(in_review, sent, waiting) == ["review", "sent", "queued"]
    before = {m.pk: (m.status, m.error, m.not_before, m.attempts) for m in Message.objects.all()}
    event_count, audit_count = MessageEvent.objects.count(), AuditEntry.objects.count()

    for act in (review.review_resend, review.review_mark_sent):
        with pytest.raises(review.ReviewRefused) as refused:
            act(workspace=ws.workspace, actor="user:1", message_ids=[in_review.pk, sent.pk, waiting.pk])
        assert f"#{sent.pk} is sent" in str(refused.value) and f"#{waiting.pk} is queued" in str(refused.value)
        assert "nothing was changed" in str(refused.value)
        assert refused.value.not_in_review == {sent.pk: "sent", waiting.pk: "queued"}
    with pytest.raises(review.ReviewRefused, match="no message #999999"):
        review.review_dismiss(workspace=ws.workspace, actor="user:1", reason="x", message_ids=[in_review.pk, 999999])
    with pytest.raises(ServiceError, match="not a message id"):
        review.review_resend(workspace=ws.workspace, actor="user:1", message_ids=["7; drop table"])
    with pytest.raises(ServiceError, match="choose the messages"):
        review.review_resend(workspace=ws.workspace, actor="user:1")
    with pytest.raises(ServiceError, match="unknown action"):
        review.review_act(action="delete", workspace=ws.workspace, actor="user:1", message_ids=[in_review.pk])

    after = {m.pk: (m.status, m.error, m.not_before, m.attempts) for m in Message.objects.all()}
    assert after == before
    assert MessageEvent.objects.count() == event_count and AuditEntry.objects.count() == audit_count

    # A second decision on a message already decided is refused the same way.
    review.review_resend(workspace=ws.workspace, actor="user:1", message_ids=[in_review.pk])
    with pytest.raises(review.ReviewRefused, match="is queued"):
        review.review_dismiss(workspace=ws.workspace, actor="user:9", reason="too late", message_ids=[in_review.pk])
    assert statuses(in_review) == ["queued"]


def test_the_consent_gate_still_applies_to_a_resent_message(ws, sink, template, frozen_clock):
    setup_sending(ws, sink)
    message = in_review_by_drop(ws, sink, template)
    suppression_add(workspace_id=ws.workspace.pk, email=message.to_email, reason="manual", actor="test")
    review.review_resend(workspace=ws.workspace, actor="user:1", message_ids=[message.pk])
    dispatch.dispatch_run()
    message.refresh_from_db()
    assert message.status == "blocked" and sink.messages == []


def _review_group(ws, sink, template, frozen_clock, monkeypatch, *, broadcast=None, journey=None, first=0, n=3):
    """`n` messages of a broadcast or journey, put in review by a killed dispatcher."""
    made = []
    for i in range(first, first + n):
        extra = {"broadcast_id": broadcast.pk, "source": f"broadcast:{broadcast.slug}"} if broadcast else \
            {"source": f"journey:{journey.pk}:send-{i}"}
        made.append(message_queue(workspace_id=ws.workspace.pk, contact=person(ws, i), template=template, **extra))
    send_group = dispatch._send_group
    kill_after_claim(monkeypatch)
    with pytest.raises(Killed):
        dispatch.dispatch_run()
    monkeypatch.setattr(dispatch, "_send_group", send_group)
    frozen_clock.advance(seconds=dispatch.lease_seconds() + 1)
    dispatch.dispatch_run()
    assert statuses(*made) == ["review"] * n
    return made


@pytest.fixture
def broadcast(ws, template):
    segment = Segment.objects.create(workspace=ws.workspace, name="All", slug="all", definition={})
    return Broadcast.objects.create(workspace=ws.workspace, name="Spring sale", slug="spring-sale",
                                    template=template, segment=segment, status="done")


@pytest.fixture
def journey(ws):
    return Journey.objects.create(workspace=ws.workspace, slug="welcome", name="Welcome series")


def test_bulk_by_broadcast_or_journey_in_a_fixed_number_of_statements(ws, sink, template, frozen_clock, monkeypatch,
                                                                      broadcast, journey):
    setup_sending(ws, sink)
    of_broadcast = _review_group(ws, sink, template, frozen_clock, monkeypatch, broadcast=broadcast, n=3)
    of_journey = _review_group(ws, sink, template, frozen_clock, monkeypatch, journey=journey, first=10, n=12)
    sources = review.review_sources(workspace=ws.workspace)
    assert [(s["kind"], s["name"], s["count"]) for s in sources] == [
        ("journey", "Welcome series", 12), ("broadcast", "Spring sale", 3)]

    with CaptureQueriesContext(connection) as small:
        review.review_mark_sent(workspace=ws.workspace, actor="user:1", broadcast_id=broadcast.pk)
    with CaptureQueriesContext(connection) as large:
        review.review_mark_sent(workspace=ws.workspace, actor="user:1", journey_id=journey.pk)
    assert statuses(*of_broadcast, *of_journey) == ["sent"] * 15
    # 3 or 12 messages: the same statements (lock, update, events, event log, audit), not one per message.
    assert len(large.captured_queries) == len(small.captured_queries), [q["sql"] for q in large.captured_queries]
    [audit] = AuditEntry.objects.filter(action="message.review.mark_sent", data__journey_id=journey.pk)
    assert sorted(audit.data["ids"]) == sorted(m.pk for m in of_journey) and audit.target == "messages:12"
    with pytest.raises(review.ReviewRefused, match="no message of journey"):
        review.review_resend(workspace=ws.workspace, actor="user:1", journey_id=journey.pk)


def test_a_message_of_a_cancelled_broadcast_cannot_be_resent(ws, sink, template, frozen_clock, monkeypatch,
                                                             broadcast):
    setup_sending(ws, sink)
    [message] = _review_group(ws, sink, template, frozen_clock, monkeypatch, broadcast=broadcast, n=1)
    Broadcast.objects.filter(pk=broadcast.pk).update(status="cancelled")
    with pytest.raises(review.ReviewRefused, match="cancelled broadcast"):
        review.review_resend(workspace=ws.workspace, actor="user:1", message_ids=[message.pk])
    assert statuses(message) == ["review"]
    review.review_dismiss(workspace=ws.workspace, actor="user:1", reason="broadcast cancelled",
                          message_ids=[message.pk])
    assert statuses(message) == ["failed"]


def test_another_workspace_can_neither_see_nor_act(ws, other_ws, sink, template, frozen_clock):
    setup_sending(ws, sink)
    message = in_review_by_drop(ws, sink, template)
    assert list(review.review_messages(workspace=other_ws.workspace)) == []
    assert review.review_count(workspace_id=other_ws.workspace.pk) == 0
    assert review.review_sources(workspace=other_ws.workspace) == []
    with pytest.raises(review.ReviewRefused, match="no message") as refused:
        review.review_resend(workspace=other_ws.workspace, actor="user:1", message_ids=[message.pk])
    assert refused.value.not_found == [message.pk]
    with pytest.raises(review.ReviewRefused):
        review.review_mark_sent(workspace=other_ws.workspace, actor="user:1", everything=True)
    assert statuses(message) == ["review"] and not events(message, "requeued")


# --- the page ------------------------------------------------------------------------------------

def login(ws, username: str, role: str, **client) -> Client:
    c = Client(**client)
    c.force_login(user_create(username=username, password="pw-123456", email=f"{username}@acme.example",
                              workspace=ws.workspace, role=role))
    return c


def test_the_review_page_lists_why_and_acts_on_the_ticked(ws, sink, template, frozen_clock, monkeypatch, broadcast,
                                                          journey):
    setup_sending(ws, sink)
    dropped = in_review_by_drop(ws, sink, template, 1)
    of_broadcast = _review_group(ws, sink, template, frozen_clock, monkeypatch, broadcast=broadcast, first=20, n=2)
    of_journey = _review_group(ws, sink, template, frozen_clock, monkeypatch, journey=journey, first=30, n=2)
    marketer = login(ws, "mara", "marketer")
    page = marketer.get("/email/review/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'aria-current="page" data-testid="review-link">Review <span' in html and ">5</span>" in html  # badge
    assert "p1@example.org" in html and "Spring" in html and "v1" in html
    assert "Spring sale" in html and "Welcome series" in html
    assert "during reply" in html and "it may have been delivered, so it is not sent again" in html
    assert "interrupted while sending" in html
    assert html.count('name="ids"') == 5
    # the badge shows on the other email pages too
    assert ">5</span>" in marketer.get("/email/").content.decode()

    narrowed = marketer.get(f"/email/review/?broadcast={broadcast.pk}").content.decode()
    assert narrowed.count('name="ids"') == 2 and 'name="broadcast"' in narrowed

    r = marketer.post("/email/review/act/", {"action": "resend", "ids": [dropped.pk, of_journey[0].pk],
                                            "reason": "checked the log"})
    assert r.status_code == 302 and r["Location"] == "/email/review/"
    assert statuses(dropped, of_journey[0]) == ["queued", "queued"]
    assert events(dropped, "requeued")[0].detail["actor"].startswith("user:")
    assert statuses(*of_broadcast, of_journey[1]) == ["review"] * 3
    # dismiss without a reason: an error, nothing changed
    r = marketer.post("/email/review/act/", {"action": "dismiss", "ids": [of_journey[1].pk]}, follow=True)
    assert "say why" in r.content.decode() and statuses(of_journey[1]) == ["review"]
    # every message of the broadcast shown
    r = marketer.post("/email/review/act/", {"action": "mark_sent", "scope": "all", "broadcast": broadcast.pk})
    assert r["Location"] == f"/email/review/?broadcast={broadcast.pk}"
    assert statuses(*of_broadcast, of_journey[1]) == ["sent", "sent", "review"]
    # a message no longer in review: refused with the reason
    r = marketer.post("/email/review/act/", {"action": "dismiss", "ids": [dropped.pk], "reason": "x"}, follow=True)
    assert "is queued" in r.content.decode() and statuses(dropped) == ["queued"]
    r = marketer.post("/email/review/act/", {"action": "resend"}, follow=True)
    assert "Tick the messages" in r.content.decode()

    dispatch.dispatch_run()
    assert sorted(delivered_to(sink)) == sorted([dropped.to_email, of_journey[0].to_email])


def test_the_review_page_needs_an_editor_and_csrf(ws, other_ws, sink, template, frozen_clock):
    setup_sending(ws, sink)
    message = in_review_by_drop(ws, sink, template)
    analyst = login(ws, "ana", "analyst")
    page = analyst.get("/email/review/").content.decode()
    assert "p1@example.org" in page and 'name="ids"' not in page and 'value="resend"' not in page
    assert analyst.post("/email/review/act/", {"action": "resend", "ids": [message.pk]}).status_code == 403
    strict = login(ws, "mara", "marketer", enforce_csrf_checks=True)
    assert strict.post("/email/review/act/", {"action": "resend", "ids": [message.pk]}).status_code == 403
    assert strict.get("/email/review/act/").status_code == 405
    # someone of another workspace sees nothing and cannot act
    stranger = Client()
    stranger.force_login(user_create(username="olga", password="pw-123456", email="olga@other.example",
                                     workspace=other_ws.workspace, role="admin"))
    assert "p1@example.org" not in stranger.get("/email/review/").content.decode()
    r = stranger.post("/email/review/act/", {"action": "resend", "ids": [message.pk]}, follow=True)
    assert "no message" in r.content.decode()
    assert statuses(message) == ["review"] and not events(message, "requeued")


# --- the API -------------------------------------------------------------------------------------

def api(client, keys, path: str, body=None):
    if body is None:
        return client.get(f"/api/email/messages{path}", HTTP_AUTHORIZATION=keys.bearer)
    return client.post(f"/api/email/messages{path}", body, content_type="application/json",
                       HTTP_AUTHORIZATION=keys.bearer)


def test_the_api_lists_and_acts(client, ws, other_ws, sink, template, frozen_clock, monkeypatch, journey):
    setup_sending(ws, sink)
    dropped = in_review_by_drop(ws, sink, template, 1)
    of_journey = _review_group(ws, sink, template, frozen_clock, monkeypatch, journey=journey, first=10, n=2)
    listed = api(client, ws, "?status=review").json()["items"]
    assert sorted(i["id"] for i in listed) == sorted([dropped.pk, *(m.pk for m in of_journey)])
    errors = {i["id"]: i["error"] for i in listed}
    assert "during reply" in errors[dropped.pk] and "interrupted while sending" in errors[of_journey[0].pk]
    assert [i["id"] for i in api(client, ws, f"?status=review&journey_id={journey.pk}").json()["items"]] == \
        sorted((m.pk for m in of_journey), reverse=True)

    r = api(client, ws, f"/{dropped.pk}/review", {"action": "resend", "reason": "not in the log"})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["status"] == "queued" and body["events"][-1]["kind"] == "requeued"
    assert body["events"][-1]["detail"]["actor"].startswith("key:")
    r = api(client, ws, f"/{dropped.pk}/review", {"action": "dismiss", "reason": "x"})
    assert r.status_code == 409 and "is queued" in r.json()["detail"]
    assert api(client, ws, f"/{of_journey[0].pk}/review", {"action": "dismiss"}).status_code == 400
    assert api(client, ws, f"/{of_journey[0].pk}/review", {"action": "explode"}).status_code == 422

    # another workspace: 404, and nothing changes
    assert api(client, other_ws, f"/{of_journey[0].pk}/review", {"action": "resend"}).status_code == 404
    assert api(client, other_ws, "/review", {"action": "resend", "ids": [of_journey[0].pk]}).status_code == 404
    assert api(client, other_ws, "?status=review").json()["items"] == []
    assert statuses(*of_journey) == ["review", "review"]

    r = api(client, ws, "/review", {"action": "mark_sent", "journey_id": journey.pk})
    assert r.status_code == 200 and r.json() == {"action": "mark_sent", "count": 2,
                                                 "ids": sorted(m.pk for m in of_journey)}
    assert statuses(*of_journey) == ["sent", "sent"]
    r = api(client, ws, "/review", {"action": "resend", "all": True})
    assert r.status_code == 409 and "no message" in r.json()["detail"]
    assert api(client, ws, "/review", {"action": "resend", "ids": [dropped.pk], "all": True}).status_code == 400

    dispatch.dispatch_run()
    assert delivered_to(sink) == [dropped.to_email]


# --- two people at once (PostgreSQL: row locks between connections) -----------------------------

@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_people_deciding_at_once_act_once_and_the_second_is_refused(ws, template, frozen_clock):
    import threading

    from django.db import connections, transaction

    message = queue(ws, template, person(ws, 1))
    Message.objects.filter(pk=message.pk).update(status="review", sending_at=frozen_clock.current)
    first_holds, first_may_commit = threading.Event(), threading.Event()
    outcome: dict = {}

    def first():
        try:
            with transaction.atomic():
                review.review_resend(workspace=ws.workspace, actor="user:1", message_ids=[message.pk])
                first_holds.set()
                first_may_commit.wait(10)
        finally:
            connections.close_all()

    def second():
        first_holds.wait(10)
        try:
            review.review_dismiss(workspace=ws.workspace, actor="user:2", reason="not delivered",
                                  message_ids=[message.pk])
            outcome["second"] = "acted"
        except review.ReviewRefused as exc:
            outcome["second"] = str(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_holds.wait(10)
    # The second waits on the first's row lock (seen from a third connection), not on a timer.
    waiting = threading.Event()
    for _ in range(1000):
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND datname = current_database()")
            if cursor.fetchone()[0]:
                break
        waiting.wait(0.01)
    else:
        pytest.fail("the second decision never waited for the first one's lock")
    first_may_commit.set()
    for t in threads:
        t.join(10)
    assert "is queued" in outcome["second"] and "nothing was changed" in outcome["second"]
    message.refresh_from_db()
    assert message.status == "queued"
    assert [e.kind for e in events(message)] == ["queued", "requeued"]
