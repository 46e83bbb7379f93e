"""The dispatcher end to end against a real SMTP server on loopback (aiosmtpd): what arrives (MIME,
headers, DKIM, VERP, inlined CSS, tracked links), the consent gate, retries and backoff, refusals,
dropped and hanging connections, the circuit breaker and the rate limit by an injected clock, and a
dispatcher killed mid-batch: nothing is sent twice and nothing is lost."""

from __future__ import annotations

import datetime as dt
import re

import dkim
import pytest
from django.test import override_settings

from leadflow.consent.models import Suppression, Topic
from leadflow.contacts.models import Contact
from leadflow.core.pipeline import email_dispatch
from leadflow.core.services import ServiceError
from leadflow.messaging import dispatch
from leadflow.messaging.models import (Broadcast, Message, MessageEvent, MessageKind, SendingServer, Template,
                                       TemplateVersion)
from leadflow.messaging.outbox import message_queue
from leadflow.messaging.sending import (messaging_settings_update, sending_domain_create, sending_server_create)
from leadflow.messaging.tokens import verp_read

from smtp_sink import SmtpSink, TlsFiles

pytestmark = pytest.mark.django_db

PUBLIC = "https://lf.example.com"
HTML = """<html><head><style>p.lead { color: #123456; font-size: 18px }</style></head><body>
<p class="lead">Hi {{ contact.first_name | default("there") }},</p>
<p>Our spring catalogue is out: <a href="https://shop.acme.test/spring">have a look</a>.</p>
<p>{{ postal_address }} · <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>"""


class FakeTime:
    """A monotonic clock and a sleep that only advances it: rate limits without waiting."""

    def __init__(self):
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


@pytest.fixture
def fake_time():
    time = FakeTime()
    with dispatch.runtime_use(dispatch.Runtime(monotonic=time.monotonic, sleep=time.sleep)):
        yield time


@pytest.fixture(params=[False, True], ids=["plain", "pipelining"])
def sink(request):
    """The SMTP server, once without and once with PIPELINING (the large providers offer it)."""
    with SmtpSink(pipelining=request.param) as server:
        yield server


@pytest.fixture(autouse=True)
def public_url():
    with override_settings(PUBLIC_URL=PUBLIC):
        yield


def make_template(ws, *, slug="spring", html=HTML, subject="Spring news for {{ contact.first_name }}",
                  topic="", kind="marketing") -> Template:
    template = Template.objects.create(workspace=ws.workspace, name=slug.title(), slug=slug, kind=kind, topic=topic)
    version = TemplateVersion.objects.create(workspace=ws.workspace, template=template, number=1, subject=subject,
                                             html=html, status="approved")
    template.approved_version = version
    template.save(update_fields=["approved_version"])
    return template


def setup_sending(ws, sink, *, domain=True, **server) -> SendingServer:
    messaging_settings_update(workspace_id=ws.workspace.pk, from_name="Acme Marketing", from_email="news@acme.test",
                              reply_to="help@acme.test", postal_address="1 Main St\nSpringfield")
    if domain:
        sending_domain_create(workspace=ws.workspace, domain="acme.test", selector="lf2026",
                              bounce_domain="bounces.acme.test")
    options = {"rate_per_second": 0, "pool_size": 2, **server}
    return sending_server_create(workspace=ws.workspace, name="Loopback", url=options.pop("url", sink.url),
                                 is_default=True, **options)


def person(ws, n: int, **fields) -> Contact:
    return Contact.objects.create(workspace=ws.workspace, email=f"p{n}@example.org", first_name=f"Pat{n}", **fields)


def queue(ws, template, contact, **kwargs) -> Message:
    return message_queue(workspace_id=ws.workspace.pk, contact=contact, template=template, source="test",
                         **kwargs)


def dns_for(ws):
    from leadflow.messaging.models import SendingDomain

    domain = SendingDomain.objects.get(workspace=ws.workspace)

    def dnsfunc(name, timeout=5):
        assert name == f"{domain.dkim_selector}._domainkey.{domain.domain}.".encode(), name
        return f"v=DKIM1; k=rsa; p={domain.dkim_public_key}".encode()

    return dnsfunc


def statuses(*messages) -> list[str]:
    return [Message.objects.get(pk=m.pk).status for m in messages]


# --- what arrives --------------------------------------------------------------------------------

def test_a_message_arrives_personalised_signed_and_with_every_header(ws, sink, fake_time, frozen_clock):
    setup_sending(ws, sink)
    Topic.objects.create(workspace=ws.workspace, slug="newsletter", name="Newsletter")
    contact = person(ws, 1)
    message = queue(ws, make_template(ws, topic="newsletter"), contact, topic="newsletter")

    assert dispatch.dispatch_run() == 1

    message.refresh_from_db()
    assert message.status == "sent" and message.sent_at == frozen_clock.current and message.attempts == 1
    assert message.subject == "Spring news for Pat1"
    assert MessageEvent.objects.filter(message=message, kind="sent").count() == 1
    [received] = sink.messages
    mail = received.message
    assert received.rcpt_tos == ["p1@example.org"]
    # VERP: the envelope sender names the message.
    local, _, host = received.mail_from.partition("@")
    assert host == "bounces.acme.test" and local.startswith("bounces+")
    assert verp_read(local.removeprefix("bounces+")) == message.pk
    # Headers.
    assert mail["From"] == "Acme Marketing <news@acme.test>"
    assert mail["To"] == "p1@example.org" and mail["Reply-To"] == "help@acme.test"
    assert mail["Subject"] == "Spring news for Pat1"
    assert mail["Message-ID"] == message.header_message_id and message.header_message_id.endswith("@acme.test>")
    assert mail["Date"].datetime == frozen_clock.current
    unsubscribe = [part.strip().strip("<>") for part in mail["List-Unsubscribe"].split(",")]
    assert unsubscribe[0].startswith(f"{PUBLIC}/u/")
    assert re.fullmatch(r"mailto:unsubscribe\+([a-z0-9]+)@bounces\.acme\.test\?subject=unsubscribe", unsubscribe[1])
    assert verp_read(re.search(r"unsubscribe\+([a-z0-9]+)@", unsubscribe[1]).group(1)) == message.pk
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Id"] == '"spring" <newsletter.acme.test>'
    assert mail["Feedback-ID"] == f"spring:marketing:{ws.workspace.slug}:leadflow"
    # DKIM: valid, and covering the RFC 8058 pair and List-Id.
    assert dkim.verify(received.data, dnsfunc=dns_for(ws))
    signature = mail["DKIM-Signature"]
    signed = {h.strip() for h in re.search(r"h=([^;]+);", signature.replace("\r\n", "").replace("\n", "")).group(1)
              .split(":")}
    assert {"from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post",
            "list-id"} <= signed
    assert "d=acme.test" in signature and "s=lf2026" in signature
    tampered = received.data.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                                     b"List-Unsubscribe-Post: List-Unsubscribe=Never")
    assert tampered != received.data and not dkim.verify(tampered, dnsfunc=dns_for(ws))
    # Content: multipart/alternative, CSS inlined, links tracked, the open pixel, a text part.
    assert mail.get_content_type() == "multipart/alternative"
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    assert re.search(r'<p class="lead" style="[^"]*color: ?#123456', html)
    assert f'href="{PUBLIC}/e/c/' in html and "https://shop.acme.test/spring" not in html
    assert f"{PUBLIC}/e/o/" in html
    assert "Hi Pat1," in text and "1 Main St" in html


def test_without_a_sending_domain_mail_goes_out_unsigned_with_verp_on_the_from_domain(ws, sink, fake_time):
    setup_sending(ws, sink, domain=False)
    message = queue(ws, make_template(ws), person(ws, 1))

    dispatch.dispatch_run()

    [received] = sink.messages
    assert "DKIM-Signature" not in received.message
    assert received.mail_from.startswith("bounces+") and received.mail_from.endswith("@acme.test")
    assert statuses(message) == ["sent"]


def test_transactional_and_test_messages_go_before_marketing(ws, sink, fake_time):
    setup_sending(ws, sink, pool_size=1)
    marketing = make_template(ws)
    confirm = make_template(ws, slug="confirm", kind="transactional", subject="Please confirm")
    late = [queue(ws, marketing, person(ws, n)) for n in range(3)]
    urgent = queue(ws, confirm, person(ws, 9), kind=MessageKind.TRANSACTIONAL)

    dispatch.dispatch_run()

    assert sink.recipients()[0] == "p9@example.org"
    assert "List-Unsubscribe" not in sink.messages[0].message  # not marketing: no list headers
    assert statuses(urgent, *late) == ["sent"] * 4


def test_the_gate_blocks_and_defers_before_anything_is_sent(ws, sink, fake_time, frozen_clock):
    from leadflow.consent.services import suppression_add

    setup_sending(ws, sink)
    template = make_template(ws)
    suppressed = queue(ws, template, person(ws, 1))
    suppression_add(workspace_id=ws.workspace.pk, email="p1@example.org", reason="complaint")
    night_owl = queue(ws, template, person(ws, 2, timezone="UTC"))
    messaging_settings_update(workspace_id=ws.workspace.pk, quiet_start="08:00", quiet_end="10:00")

    assert dispatch.dispatch_run() == 2

    assert sink.messages == []
    blocked, deferred = Message.objects.get(pk=suppressed.pk), Message.objects.get(pk=night_owl.pk)
    assert blocked.status == "blocked" and blocked.error
    assert deferred.status == "deferred" and deferred.not_before == frozen_clock.current.replace(hour=10)
    assert deferred.attempts == 0
    assert MessageEvent.objects.get(message=blocked, kind="blocked").detail["reason"] == blocked.error
    deferral = MessageEvent.objects.get(message=deferred, kind="deferred").detail
    assert deferral["reason"] == deferred.error and deferral["until"] == deferred.not_before.isoformat()
    frozen_clock.set(frozen_clock.current.replace(hour=10, minute=1))
    dispatch.dispatch_run()
    assert sink.recipients() == ["p2@example.org"] and statuses(blocked, deferred) == ["blocked", "sent"]


def test_a_paused_or_cancelled_broadcast_holds_its_messages(ws, sink, fake_time):
    from leadflow.segments.services import segment_create

    setup_sending(ws, sink)
    template = make_template(ws)
    segment = segment_create(workspace=ws.workspace, name="All", kind="static", actor="test")
    broadcast = Broadcast.objects.create(workspace=ws.workspace, name="B", slug="b", template=template,
                                         segment=segment, status="paused")
    held = queue(ws, template, person(ws, 1), broadcast_id=broadcast.pk)
    free = queue(ws, template, person(ws, 2))

    dispatch.dispatch_run()
    assert statuses(held, free) == ["queued", "sent"]
    Broadcast.objects.filter(pk=broadcast.pk).update(status="cancelled")
    dispatch.dispatch_run()
    assert statuses(held) == ["queued"]
    Broadcast.objects.filter(pk=broadcast.pk).update(status="sending")
    dispatch.dispatch_run()
    assert statuses(held) == ["sent"] and sorted(sink.recipients()) == ["p1@example.org", "p2@example.org"]


def test_each_message_goes_through_its_own_server(ws, sink, fake_time):
    setup_sending(ws, sink)
    template = make_template(ws)
    with SmtpSink() as other:
        second = sending_server_create(workspace=ws.workspace, name="Second", url=other.url, rate_per_second=0)
        routed = queue(ws, template, person(ws, 1), server_id=second.pk)
        default = queue(ws, template, person(ws, 2))
        dispatch.dispatch_run()
        assert other.recipients() == ["p1@example.org"]
    assert sink.recipients() == ["p2@example.org"]
    assert statuses(routed, default) == ["sent", "sent"]


def test_connections_are_reused_across_messages_and_runs(ws, sink, fake_time):
    setup_sending(ws, sink, pool_size=1)
    template = make_template(ws)
    for n in range(5):
        queue(ws, template, person(ws, n))
    dispatch.dispatch_run()
    queue(ws, template, person(ws, 9))
    dispatch.dispatch_run()
    assert len(sink.messages) == 6 and sink.connections == 1


def test_starttls_and_login_are_used_when_configured(ws, tmp_path, fake_time):
    tls = TlsFiles.make(tmp_path)
    with SmtpSink(tls=tls, auth=("mailer", "s3cret pass")) as secure:
        setup_sending(ws, secure, url=secure.url)
        message = queue(ws, make_template(ws), person(ws, 1))
        dispatch.dispatch_run()
        [received] = secure.messages
    assert received.tls and received.login == "mailer"
    assert statuses(message) == ["sent"]


def test_without_an_smtp_server_mail_is_written_to_files(ws, tmp_path, fake_time):
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
                           EMAIL_FILE_PATH=tmp_path / "outbox"):
        messaging_settings_update(workspace_id=ws.workspace.pk, from_email="news@acme.test")
        message = queue(ws, make_template(ws), person(ws, 1))  # no server row: the default is made
        assert email_dispatch() == 1
    [written] = list((tmp_path / "outbox").glob("*.eml"))
    import email
    import email.policy

    mail = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    assert mail["To"] == "p1@example.org" and mail["Return-Path"].startswith("<bounces+")
    assert statuses(message) == ["sent"]
    assert SendingServer.objects.get(workspace=ws.workspace).url == ""


def test_a_message_that_cannot_render_fails_with_the_reason(ws, sink, fake_time):
    setup_sending(ws, sink)
    broken = make_template(ws, html="<p>{{ contact.first_name | no_such_filter }}</p>")
    message = queue(ws, broken, person(ws, 1))
    dispatch.dispatch_run()
    message.refresh_from_db()
    assert message.status == "failed" and "render" in message.error and "no_such_filter" in message.error
    assert sink.messages == []


def test_a_message_whose_signature_cannot_be_made_fails_unsent_and_the_rest_go(ws, sink, fake_time, monkeypatch):
    from leadflow.messaging import mime

    setup_sending(ws, sink)
    template = make_template(ws)
    broken, fine = queue(ws, template, person(ws, 1)), queue(ws, template, person(ws, 2))
    real_sign = mime.DkimSigner.sign

    def sign(self, data, include):  # signed in the SMTP thread now: its errors must still mean "not sent"
        if b"p1@example.org" in data:
            raise ValueError("the key is unusable")
        return real_sign(self, data, include)

    monkeypatch.setattr(mime.DkimSigner, "sign", sign)
    assert dispatch.dispatch_run() == 2
    broken.refresh_from_db()
    assert broken.status == "failed" and broken.error == "could not build or sign: the key is unusable"
    assert broken.attempts == 0 and MessageEvent.objects.get(message=broken, kind="failed").detail["stage"] == "build"
    assert statuses(fine) == ["sent"] and len(sink.messages) == 1 and "p2@example.org" in sink.messages[0].rcpt_tos
    assert SendingServer.objects.get().consecutive_failures == 0  # not the server's fault


def test_a_server_of_another_workspace_is_refused(ws, other_ws, sink, fake_time):
    setup_sending(ws, sink)
    foreign = sending_server_create(workspace=other_ws.workspace, name="Theirs", url=sink.url)
    template, contact = make_template(ws), person(ws, 1)
    with pytest.raises(ServiceError, match="no sending server"):
        queue(ws, template, contact, server_id=foreign.pk)
    message = queue(ws, template, contact)
    Message.objects.filter(pk=message.pk).update(server=foreign)  # written around the outbox
    dispatch.dispatch_run()
    message.refresh_from_db()
    assert message.status == "failed" and "another workspace" in message.error and sink.messages == []


# --- failures ------------------------------------------------------------------------------------

def test_a_temporary_refusal_is_retried_with_backoff_and_delivered_once(ws, sink, fake_time, frozen_clock):
    setup_sending(ws, sink)
    message = queue(ws, make_template(ws), person(ws, 1))
    sink.fail_next(1, "refuse_451")

    dispatch.dispatch_run()
    message.refresh_from_db()
    assert message.status == "deferred" and message.attempts == 1 and message.error.startswith("451")
    assert message.not_before == frozen_clock.current + dt.timedelta(seconds=60)
    assert MessageEvent.objects.get(message=message, kind="deferred").detail["smtp_code"] == 451
    dispatch.dispatch_run()  # not due yet
    assert sink.messages == []

    frozen_clock.advance(seconds=61)
    dispatch.dispatch_run()
    message.refresh_from_db()
    assert message.status == "sent" and message.attempts == 2 and message.error == ""
    assert sink.recipients() == ["p1@example.org"]


def test_backoff_doubles_and_gives_up_after_the_last_attempt(ws, sink, fake_time, frozen_clock):
    setup_sending(ws, sink, breaker_threshold=100)
    message = queue(ws, make_template(ws), person(ws, 1))
    sink.mode = "refuse_451"
    delays = []
    with override_settings(LEADFLOW_EMAIL_MAX_ATTEMPTS=3):
        for _ in range(3):
            dispatch.dispatch_run()
            message.refresh_from_db()
            if message.status == "deferred":
                delays.append((message.not_before - frozen_clock.current).total_seconds())
                frozen_clock.set(message.not_before)
    assert delays == [60, 120]
    assert message.status == "failed" and message.attempts == 3 and "gave up after 3 attempts" in message.error
    assert sink.messages == []


def test_a_refused_recipient_fails_and_is_suppressed_as_a_hard_bounce(ws, sink, fake_time):
    setup_sending(ws, sink)
    template = make_template(ws)
    bad, good = person(ws, 1), person(ws, 2)
    sink.reject = {"p1@example.org"}
    refused, accepted = queue(ws, template, bad), queue(ws, template, good)

    dispatch.dispatch_run()

    refused.refresh_from_db()
    assert refused.status == "failed" and "5.1.1" in refused.error
    assert set(MessageEvent.objects.filter(message=refused).values_list("kind", flat=True)) >= {"failed", "bounced"}
    assert refused.bounced_at is not None
    row = Suppression.objects.get(workspace=ws.workspace, email="p1@example.org", lifted_at__isnull=True)
    assert row.reason == "hard_bounce" and row.message_id == refused.pk
    assert statuses(accepted) == ["sent"] and sink.recipients() == ["p2@example.org"]
    # The server is fine: a refused recipient does not count against it.
    assert SendingServer.objects.get(workspace=ws.workspace).consecutive_failures == 0
    again = queue(ws, template, bad, dedupe_key="again")
    dispatch.dispatch_run()
    assert statuses(again) == ["blocked"]


def test_a_connection_dropped_before_the_message_went_out_is_retried(ws, sink, fake_time, frozen_clock):
    setup_sending(ws, sink)
    message = queue(ws, make_template(ws), person(ws, 1))
    sink.fail_next(1, "drop_at_data")
    dispatch.dispatch_run()
    message.refresh_from_db()
    assert message.status == "deferred" and "during data" in message.error and sink.drops == 1
    frozen_clock.advance(minutes=2)
    dispatch.dispatch_run()
    assert statuses(message) == ["sent"] and sink.recipients() == ["p1@example.org"]


def test_a_connection_dropped_after_the_whole_message_goes_to_review_and_is_never_resent(ws, sink, fake_time,
                                                                                       frozen_clock):
    setup_sending(ws, sink)
    message = queue(ws, make_template(ws), person(ws, 1))
    sink.fail_next(1, "drop_after_body")
    dispatch.dispatch_run()
    message.refresh_from_db()
    assert message.status == "review" and "during reply" in message.error
    assert MessageEvent.objects.filter(message=message, kind="review").count() == 1
    assert len(sink.unanswered) == 1  # the server has it; we cannot know whether it was accepted
    frozen_clock.advance(days=1)
    dispatch.dispatch_run()
    assert statuses(message) == ["review"] and sink.messages == [] and len(sink.unanswered) == 1


def test_a_hanging_server_times_out(ws, sink, fake_time, frozen_clock):
    setup_sending(ws, sink, url=sink.url_with(timeout=0.3), pool_size=1)
    template = make_template(ws)
    first = queue(ws, template, person(ws, 1))
    sink.mode = "hang_greeting"
    dispatch.dispatch_run()
    first.refresh_from_db()
    assert first.status == "deferred" and "timed out" in first.error and sink.connections_hung == 1

    sink.mode = "hang_after_body"
    frozen_clock.advance(minutes=5)
    dispatch.dispatch_run()
    first.refresh_from_db()
    assert first.status == "review" and "timed out" in first.error and len(sink.unanswered) == 1


def test_the_circuit_breaker_opens_and_closes_by_the_clock(ws, sink, fake_time, frozen_clock):
    server = setup_sending(ws, sink, breaker_threshold=3, breaker_cooldown_seconds=300, pool_size=1)
    template = make_template(ws)
    messages = [queue(ws, template, person(ws, n)) for n in range(10)]
    sink.mode = "refuse_421"

    dispatch.dispatch_run()
    server.refresh_from_db()
    tried = statuses(*messages).count("deferred")
    # It opens at the third failure in a row; what was already in flight still comes back.
    assert 3 <= tried <= 5 and server.consecutive_failures == tried
    assert server.paused_until == frozen_clock.current + dt.timedelta(minutes=5) and "421" in server.last_error
    assert statuses(*messages).count("queued") == 10 - tried  # the rest wait, unattempted
    assert all(m.attempts == 0 for m in Message.objects.filter(status="queued"))

    frozen_clock.advance(minutes=4)
    assert dispatch.dispatch_run() == 0  # open: nothing is even claimed
    frozen_clock.advance(minutes=1, seconds=1)
    dispatch.dispatch_run()  # half-open: exactly one tries, fails, and the circuit opens again
    server.refresh_from_db()
    assert server.consecutive_failures == tried + 1 and server.paused_until > frozen_clock.current
    assert statuses(*messages).count("deferred") == tried + 1

    sink.mode = "ok"
    frozen_clock.advance(minutes=5, seconds=1)
    dispatch.dispatch_run()  # half-open: one succeeds, the circuit closes and the rest follow
    server.refresh_from_db()
    assert server.consecutive_failures == 0 and server.paused_until is None
    assert statuses(*messages) == ["sent"] * 10
    assert sorted(sink.recipients()) == sorted(f"p{n}@example.org" for n in range(10))


def test_the_rate_limit_holds_without_sleeping_for_real(ws, sink, fake_time):
    setup_sending(ws, sink, rate_per_second=10, pool_size=2)
    template = make_template(ws)
    for n in range(35):
        queue(ws, template, person(ws, n))
    stamps = []
    original = dispatch.smtp.SmtpPool.submit

    def submit(self, *args):
        stamps.append(fake_time.now)
        return original(self, *args)

    dispatch.smtp.SmtpPool.submit = submit
    try:
        dispatch.dispatch_run()
    finally:
        dispatch.smtp.SmtpPool.submit = original
    assert len(sink.messages) == 35
    # A burst of 10, then 10 a second: 25 more need 2.5 s of (fake) waiting.
    assert fake_time.slept == pytest.approx(2.5)
    assert stamps[:10] == [stamps[0]] * 10  # the burst
    gaps = [b - a for a, b in zip(stamps[9:], stamps[10:])]
    assert len(gaps) == 25 and min(gaps) == pytest.approx(0.1)  # then one every 0.1 s


def test_a_slow_server_is_only_given_what_its_rate_allows(ws, sink, fake_time):
    setup_sending(ws, sink, rate_per_second=1)
    template = make_template(ws)
    for n in range(20):
        queue(ws, template, person(ws, n))
    dispatch.dispatch_run()
    # a burst of 1 plus 5 s of claim horizon; the rest stay queued, not `sending`
    assert Message.objects.filter(status="sent").count() == 6
    assert Message.objects.filter(status="queued").count() == 14


class Killed(BaseException):
    """The dispatcher process dies (raised from inside the send loop)."""


def test_a_dispatcher_killed_mid_batch_sends_nothing_twice_and_loses_nothing(ws, sink, fake_time, frozen_clock,
                                                                            monkeypatch):
    setup_sending(ws, sink, pool_size=1)
    template = make_template(ws)
    messages = [queue(ws, template, person(ws, n)) for n in range(12)]
    prepare = dispatch._prepare
    calls = []

    def dying(message, senders, now):
        calls.append(message.pk)
        if len(calls) == 7:
            raise Killed()
        return prepare(message, senders, now)

    monkeypatch.setattr(dispatch, "_prepare", dying)
    with pytest.raises(Killed):
        dispatch.dispatch_run()
    monkeypatch.setattr(dispatch, "_prepare", prepare)
    dispatch.runtime().close()  # let in-flight sends finish before counting
    after_crash = statuses(*messages)
    assert after_crash.count("queued") == 6  # never handed to the server: put back
    in_flight = [m for m, s in zip(messages, after_crash) if s == "sending"]
    assert after_crash.count("sent") + len(in_flight) == 6

    dispatch.dispatch_run()  # the rest go out; in-flight ones wait for their lease
    assert statuses(*in_flight) == ["sending"] * len(in_flight)
    frozen_clock.advance(seconds=dispatch.lease_seconds() + 1)
    dispatch.dispatch_run()

    final = statuses(*messages)
    assert set(final) <= {"sent", "review"} and final.count("review") == len(in_flight)
    delivered = sink.recipients()
    assert len(delivered) == len(set(delivered))  # nothing twice
    for message, status in zip(messages, final):
        count = delivered.count(message.to_email)
        assert count == 1 if status == "sent" else count <= 1


def test_a_dispatcher_killed_without_any_cleanup_leaves_one_chunk_to_review(ws, sink, fake_time, frozen_clock,
                                                                           monkeypatch):
    """A SIGKILL runs no cleanup: the chunk it had claimed stays `sending`, goes to review after
    the lease and is never resent; the chunks it had not claimed are sent once."""
    setup_sending(ws, sink, pool_size=1)
    template = make_template(ws)
    messages = [queue(ws, template, person(ws, n)) for n in range(12)]
    monkeypatch.setattr(dispatch, "CLAIM_CHUNK", 4)
    prepare, flush, release = dispatch._prepare, dispatch._flush, dispatch._release
    calls = []

    def dying(message, senders, now):
        calls.append(message.pk)
        if len(calls) == 6:
            monkeypatch.setattr(dispatch, "_flush", lambda outcomes: (_ for _ in ()).throw(Killed()))
            monkeypatch.setattr(dispatch, "_release", lambda *a: (_ for _ in ()).throw(Killed()))
            raise Killed()
        return prepare(message, senders, now)

    monkeypatch.setattr(dispatch, "_prepare", dying)
    with pytest.raises(Killed):
        dispatch.dispatch_run()
    for name, fn in (("_prepare", prepare), ("_flush", flush), ("_release", release)):
        monkeypatch.setattr(dispatch, name, fn)
    dispatch.runtime().close()
    assert statuses(*messages) == ["sent"] * 4 + ["sending"] * 4 + ["queued"] * 4

    frozen_clock.advance(seconds=dispatch.lease_seconds() + 1)
    dispatch.dispatch_run()
    assert statuses(*messages) == ["sent"] * 4 + ["review"] * 4 + ["sent"] * 4
    delivered = sink.recipients()
    assert len(delivered) == len(set(delivered))  # nothing twice
    # The 5th had been handed over (it is in review): it went out at most once, depending on
    # whether its SMTP thread (which also signs it) reached the server before the "kill".
    first_and_last = {m.to_email for m in messages[:4] + messages[8:]}
    assert first_and_last <= set(delivered) <= first_and_last | {messages[4].to_email}


def test_a_message_left_sending_past_its_lease_goes_to_review(ws, sink, fake_time, frozen_clock):
    setup_sending(ws, sink)
    message = queue(ws, make_template(ws), person(ws, 1))
    Message.objects.filter(pk=message.pk).update(status="sending",
                                                 sending_at=frozen_clock.current - dt.timedelta(minutes=9))
    dispatch.dispatch_run()
    assert statuses(message) == ["sending"]
    frozen_clock.advance(minutes=2)
    assert dispatch.dispatch_run() == 1
    message.refresh_from_db()
    assert message.status == "review" and "interrupted" in message.error and sink.messages == []
    assert MessageEvent.objects.filter(message=message, kind="review").count() == 1


def test_the_worker_hook_sends(ws, sink, fake_time):
    setup_sending(ws, sink)
    queue(ws, make_template(ws), person(ws, 1))
    assert email_dispatch() == 1 and len(sink.messages) == 1
    assert email_dispatch() == 0



def test_the_management_command_sends_until_empty(ws, sink, fake_time):
    import io

    from django.core.management import call_command

    setup_sending(ws, sink)
    template = make_template(ws)
    for n in range(3):
        queue(ws, template, person(ws, n))
    out = io.StringIO()
    with override_settings():
        call_command("email_dispatch", "--until-empty", "--limit", "2", stdout=out)
    assert "3 message(s)" in out.getvalue() and len(sink.messages) == 3
