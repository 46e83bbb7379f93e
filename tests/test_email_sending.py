"""Sending setup: server URLs, the connection pool against a real SMTP server on loopback (TLS, login,
bad certificates), the rate limiter, MIME building, servers and domains (DKIM keys, the DNS checklist
and its live check), messaging settings, the API and the pages with their roles."""

from __future__ import annotations

import base64
import email
import email.policy
import smtplib
import socket

import dkim
import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_private_key
from django.test import override_settings

from leadflow.config import ConfigError
from leadflow.core.models import AuditEntry
from leadflow.core.services import ServiceError, user_create
from leadflow.messaging import mime, sending, smtp
from leadflow.messaging.models import Message, MessagingSettings, SendingDomain, SendingServer

from smtp_sink import SmtpSink, TlsFiles

DATA = b"From: a@acme.test\r\nTo: b@example.org\r\nSubject: hi\r\n\r\n.a line starting with a dot\r\nbye\r\n"


# --- server URLs ---------------------------------------------------------------------------------

def test_server_urls_parse_with_their_options():
    plain = smtp.parse_server_url("smtp://mailer:p%40ss@smtp.example.com")
    assert (plain.host, plain.port, plain.user, plain.password, plain.implicit_tls) == \
        ("smtp.example.com", 25, "mailer", "p@ss", False)
    assert plain.timeout == 30 and plain.verify
    tls = smtp.parse_server_url("smtps://smtp.example.com?timeout=5&cafile=/etc/ca.pem&helo=mx.acme.test")
    assert (tls.port, tls.implicit_tls, tls.timeout, tls.cafile, tls.local_hostname, tls.user) == \
        (465, True, 5.0, "/etc/ca.pem", "mx.acme.test", "")
    assert not smtp.parse_server_url("smtp://h:2525?verify=false").verify


@pytest.mark.parametrize("url, problem", [
    ("http://smtp.example.com", "use smtp://"), ("smtp://", "use smtp://"), ("smtp://h?timeout=soon", "timeout"),
    ("smtp://h?timeout=0", "between"), ("smtp://h?verify=maybe", "verify"), ("smtp://h?tls=on", "unknown option"),
    ("smtp://h:99999", "(?i)port"), ("", "empty"),
])
def test_bad_server_urls_are_refused_with_the_reason(url, problem):
    with pytest.raises(ConfigError, match=problem):
        smtp.parse_server_url(url)


def test_passwords_are_masked_and_a_masked_url_keeps_the_stored_password():
    stored = "smtp://mailer:s3cret@smtp.example.com:587?timeout=10"
    shown = smtp.redact_url(stored)
    assert shown == "smtp://mailer:********@smtp.example.com:587?timeout=10" and "s3cret" not in shown
    assert smtp.url_keep_password(new=shown.replace("587", "2525"), old=stored) == \
        "smtp://mailer:s3cret@smtp.example.com:2525?timeout=10"
    assert smtp.url_keep_password(new="smtp://mailer:new@h", old=stored) == "smtp://mailer:new@h"
    assert smtp.redact_url("smtp://h:25") == "smtp://h:25"


def test_a_blank_url_means_leadflow_smtp_url_else_files(tmp_path, monkeypatch):
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend", EMAIL_FILE_PATH=tmp_path):
        assert smtp.server_config("").file_path == str(tmp_path)
    monkeypatch.setenv("LEADFLOW_SMTP_URL", "smtps://u:p@relay.example.com:2465?timeout=7")
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="relay.example.com",
                           EMAIL_PORT=2465, EMAIL_HOST_USER="u", EMAIL_HOST_PASSWORD="p", EMAIL_USE_SSL=True):
        config = smtp.server_config("")
    assert (config.host, config.port, config.user, config.password, config.implicit_tls, config.timeout) == \
        ("relay.example.com", 2465, "u", "p", True, 7.0)


# --- the pool against a real server --------------------------------------------------------------

@pytest.mark.parametrize("pipelining", [False, True])
def test_the_pool_sends_dot_stuffed_data_and_reuses_its_connections(pipelining):
    with SmtpSink(pipelining=pipelining) as sink:
        pool = smtp.SmtpPool(smtp.parse_server_url(sink.url), 2)
        try:
            answers = [f.result() for f in [pool.submit("bounces+x@acme.test", "b@example.org", DATA)
                                            for _ in range(20)]]
        finally:
            pool.close()
    assert answers[0].startswith("250") and len(sink.messages) == 20
    assert sink.messages[0].data == DATA and sink.messages[0].mail_from == "bounces+x@acme.test"
    assert 1 <= sink.connections <= 2


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_dropped_idle_connection_is_replaced_without_losing_the_message(pipelining):
    with SmtpSink(pipelining=pipelining) as sink:
        pool = smtp.SmtpPool(smtp.parse_server_url(sink.url), 1)
        try:
            pool.send("a@acme.test", "b@example.org", DATA)
            pool._idle[0].smtp.sock.shutdown(socket.SHUT_RDWR)  # the session died while idle
            pool.send("a@acme.test", "b@example.org", DATA)
        finally:
            pool.close()
    assert len(sink.messages) == 2 and sink.connections == 2


def test_starttls_with_a_certificate_the_client_trusts_and_login(tmp_path):
    tls = TlsFiles.make(tmp_path)
    with SmtpSink(tls=tls, auth=("mailer", "pw:with@chars")) as sink:
        assert smtp.connection_test(sink.url).startswith("250")
        pool = smtp.SmtpPool(smtp.parse_server_url(sink.url), 1)
        try:
            pool.send("a@acme.test", "b@example.org", DATA)
        finally:
            pool.close()
        assert sink.messages[0].tls and sink.messages[0].login == "mailer"
        wrong = sink.url.replace("pw%3Awith%40chars", "nope")
        with pytest.raises(smtp.SmtpFailure, match="authentication refused: 535") as refused:
            smtp.connection_test(wrong)
        assert refused.value.temporary and refused.value.server_fault  # messages wait, the server is paused
        untrusted = sink.url.split("?")[0]
        with pytest.raises(smtp.SmtpFailure, match="certificate verify failed"):
            smtp.connection_test(untrusted)
        assert smtp.connection_test(untrusted + "?verify=false").startswith("250")


def test_implicit_tls(tmp_path):
    with SmtpSink(tls=TlsFiles.make(tmp_path), implicit_tls=True) as sink:
        pool = smtp.SmtpPool(smtp.parse_server_url(sink.url), 1)
        try:
            pool.send("a@acme.test", "b@example.org", DATA)
        finally:
            pool.close()
    assert sink.messages[0].tls


def test_a_closed_port_is_a_temporary_connect_failure():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(smtp.SmtpFailure) as failure:
        smtp.connection_test(f"smtp://127.0.0.1:{port}?timeout=2")
    assert failure.value.stage == "connect" and failure.value.temporary and not failure.value.uncertain


@pytest.mark.parametrize("mode, stage, temporary, uncertain, code", [
    ("refuse_421", "mail", True, False, 421), ("refuse_451", "mail", True, False, 451),
    ("refuse_550", "rcpt", False, False, 550), ("drop_at_data", "data", True, False, None),
    ("drop_after_body", "reply", True, True, None),
])
@pytest.mark.parametrize("pipelining", [False, True])
def test_each_fault_is_classified(mode, stage, temporary, uncertain, code, pipelining):
    with SmtpSink(mode=mode, pipelining=pipelining) as sink:
        pool = smtp.SmtpPool(smtp.parse_server_url(sink.url), 1)
        try:
            with pytest.raises(smtp.SmtpFailure) as failure:
                pool.send("a@acme.test", "b@example.org", DATA)
        finally:
            pool.close()
    f = failure.value
    assert (f.stage, f.temporary, f.uncertain, f.code) == (stage, temporary, uncertain, code)
    assert f.hard_bounce == (mode == "refuse_550") and f.server_fault == (mode != "refuse_550")


class _Writes:
    """Counts the client's writes to its SMTP socket (each `sendall`)."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = smtplib.SMTP.send

        def send(smtp_self, data):
            self.count += 1
            return original(smtp_self, data)

        monkeypatch.setattr(smtplib.SMTP, "send", send)


@pytest.mark.parametrize("pipelining, writes", [(False, 4), (True, 2)])
def test_a_server_offering_pipelining_gets_mail_rcpt_and_data_in_one_write(monkeypatch, pipelining, writes):
    with SmtpSink(pipelining=pipelining) as sink:
        pool = smtp.SmtpPool(smtp.parse_server_url(sink.url), 1)
        try:
            pool.send("a@acme.test", "b@example.org", DATA)  # opens the session (EHLO)
            counter = _Writes(monkeypatch)
            answer = pool.send("bounces+y@acme.test", "c@example.org", DATA)
            written = counter.count  # (closing the pool writes QUIT)
        finally:
            pool.close()
    assert answer.startswith("250") and written == writes
    assert [(m.mail_from, m.rcpt_tos, m.data) for m in sink.messages[1:]] == [
        ("bounces+y@acme.test", ["c@example.org"], DATA)]
    assert sink.messages[1].mail_options == sink.messages[0].mail_options == ["BODY=8BITMIME"]


@pytest.mark.parametrize("first", ["refuse_550", "refuse_451"])
def test_after_a_pipelined_refusal_the_session_goes_on_with_the_next_message(first):
    with SmtpSink(pipelining=True) as sink:
        pool = smtp.SmtpPool(smtp.parse_server_url(sink.url), 1)
        try:
            sink.fail_next(1, first)
            with pytest.raises(smtp.SmtpFailure) as refused:
                pool.send("a@acme.test", "gone@example.org", DATA)
            answer = pool.send("a@acme.test", "b@example.org", DATA)
        finally:
            pool.close()
    assert refused.value.stage == ("rcpt" if first == "refuse_550" else "mail")
    assert answer.startswith("250") and [m.rcpt_tos for m in sink.messages] == [["b@example.org"]]
    assert sink.connections == 1  # the refusal did not cost the session


def test_a_data_accepted_after_a_pipelined_refusal_is_ended_empty_and_the_session_goes_on():
    with SmtpSink(pipelining=True) as sink:
        sink.data_without_recipients = True
        pool = smtp.SmtpPool(smtp.parse_server_url(sink.url), 1)
        try:
            sink.fail_next(1, "refuse_550")
            with pytest.raises(smtp.SmtpFailure) as refused:
                pool.send("a@acme.test", "gone@example.org", DATA)
            answer = pool.send("a@acme.test", "b@example.org", DATA)
        finally:
            pool.close()
    assert (refused.value.stage, refused.value.code, refused.value.hard_bounce) == ("rcpt", 550, True)
    assert sink.empty_data == 1, "the DATA the server took was ended with no content"
    assert answer.startswith("250") and [m.rcpt_tos for m in sink.messages] == [["b@example.org"]]
    assert sink.connections == 1


def test_a_hanging_server_cannot_block_forever():
    with SmtpSink() as sink:
        sink.mode = "hang_greeting"
        with pytest.raises(smtp.SmtpFailure, match="timed out"):
            smtp.connection_test(sink.url_with(timeout=0.2))
    assert sink.connections_hung == 1


# --- rate limit ----------------------------------------------------------------------------------

def test_the_token_bucket_answers_how_long_to_wait():
    now = [0.0]
    bucket = smtp.TokenBucket(4, monotonic=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [0, 0, 0, 0]
    assert bucket.take() == pytest.approx(0.25)
    assert bucket.available(1.0) == 4
    now[0] += 0.5
    assert bucket.take() == 0 and bucket.take() == 0 and bucket.take() > 0
    now[0] += 100
    assert bucket.available(0) == 4  # never more than the burst
    assert smtp.TokenBucket(0).take() == 0  # 0: no limit


# --- MIME ------------------------------------------------------------------------------------------

class _Message:
    def __init__(self, **fields):
        self.pk, self.to_email, self.kind, self.topic, self.campaign = 42, "zoe@example.org", "marketing", "", "c"
        self.__dict__.update(fields)


def _sender(signer=None, **fields):
    values = dict(from_name="Zoë’s Shop", from_email="news@acme.test", reply_to="", domain="acme.test",
                  bounce_domain="acme.test", signer=signer)
    values.update(fields)
    return mime.Sender(**values)


def test_headers_are_encoded_and_a_newline_cannot_inject_a_header():
    import datetime as dt

    built = mime.message_build(message=_Message(), subject="Grüße\r\nBcc: everyone@example.org", html="<p>Hallo</p>",
                               text="Hallo", sender=_sender(), now=dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc),
                               unsubscribe_url="https://lf.example.com/u/x")
    mail = email.message_from_bytes(built.data, policy=email.policy.default)
    assert mail["Subject"] == "Grüße Bcc: everyone@example.org" and mail["Bcc"] is None
    assert mail["From"].addresses[0].display_name == "Zoë’s Shop"
    assert all(len(line) <= 998 and line.isascii() for line in built.data.split(b"\r\n"))


def test_parts_use_7bit_quoted_printable_or_base64_as_fits():
    import datetime as dt

    now = dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc)
    german = "<p>Schöne Grüße aus Köln, wir freuen uns auf Ihren Besuch.</p>\n" * 20
    latin = mime.message_build(message=_Message(), subject="s", html=german, text="plain",
                               sender=_sender(), now=now)
    cyrillic = mime.message_build(message=_Message(), subject="s", html="<p>" + "Привет мир " * 30 + "</p>",
                                  text="Привет", sender=_sender(), now=now)
    parts = {p.get_content_type(): p for p in email.message_from_bytes(latin.data, policy=email.policy.default)
             .walk() if not p.is_multipart()}
    assert parts["text/plain"]["Content-Transfer-Encoding"] == "7bit"
    assert parts["text/html"]["Content-Transfer-Encoding"] == "quoted-printable"
    assert parts["text/html"].get_content().replace("\r\n", "\n") == german.rstrip("\n")
    html = [p for p in email.message_from_bytes(cyrillic.data, policy=email.policy.default).walk()
            if p.get_content_type() == "text/html"][0]
    assert html["Content-Transfer-Encoding"] == "base64" and "Привет мир" in html.get_content()


def test_a_boundary_never_appears_in_the_parts_it_separates():
    """Boundaries come from a fast generator, not a secret one: content written to contain the
    next boundary (the generator's state is known here) gets another boundary."""
    import datetime as dt
    import random

    state = mime._unique.getstate()
    replay = random.Random()
    replay.setstate(state)
    replay.getrandbits(48)  # the Message-ID's part
    expected = f"=_lf_{replay.getrandbits(96):024x}"
    built = mime.message_build(message=_Message(), subject="s", html=f"<p>--{expected}--</p>", text=f"--{expected}",
                               sender=_sender(), now=dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc))
    mail = email.message_from_bytes(built.data, policy=email.policy.default)
    assert expected not in mail["Content-Type"]
    parts = [p for p in mail.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[1].get_content().strip() == f"<p>--{expected}--</p>"


@pytest.mark.parametrize("address", ["", "no-at-sign", "a@b", "two@@example.org", "a b@example.org",
                                     "x@example.org\r\nBcc: y@example.org", "<x@example.org>"])
def test_unusable_addresses_are_refused(address):
    import datetime as dt

    with pytest.raises(mime.MimeError):
        mime.message_build(message=_Message(to_email=address), subject="s", html="h", text="t", sender=_sender(),
                           now=dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc))


def test_the_dkim_signature_verifies_with_the_published_key():
    import datetime as dt

    private, public = sending.dkim_keypair()
    assert load_pem_private_key(private.encode(), None).key_size == 2048
    assert load_der_public_key(base64.b64decode(public)).key_size == 2048
    signer = mime.DkimSigner(domain="acme.test", selector="s1", private_key_pem=private)
    built = mime.message_build(message=_Message(kind="transactional"), subject="Bitte bestätigen", html="<p>x</p>",
                               text="x", sender=_sender(signer), now=dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc))
    lookup = lambda name, timeout=5: f"v=DKIM1; k=rsa; p={public}".encode()  # noqa: E731
    assert dkim.verify(built.data, dnsfunc=lookup)
    assert not dkim.verify(built.data.replace(b"<p>x</p>", b"<p>y</p>"), dnsfunc=lookup)
    assert b"List-Unsubscribe" not in built.data  # not marketing


@pytest.fixture(scope="module")
def dkim_key():
    private, public = sending.dkim_keypair()
    return private, (lambda name, timeout=5: f"v=DKIM1; k=rsa; p={public}".encode())


def _dkimpy_signature(signer, data: bytes, include: list[bytes]) -> bytes:
    """What dkimpy itself signs (pure-Python RSA, the key parsed from PEM)."""
    return dkim.DKIM(data).sign(signer.selector, signer.domain, signer.pem, include_headers=include,
                                canonicalize=(b"relaxed", b"simple"))


@pytest.mark.parametrize("kind,reply_to,url", [("marketing", "help@acme.test", "https://lf.example/u/abc:def"),
                                               ("marketing", "", "http://lf.example/u/x"),
                                               ("transactional", "", "")])
def test_the_kept_signer_signs_exactly_as_dkimpy_and_verifies(dkim_key, monkeypatch, kind, reply_to, url):
    import datetime as dt

    private, lookup = dkim_key
    signer = mime.DkimSigner(domain="acme.test", selector="s1", private_key_pem=private)
    monkeypatch.setattr(dkim.crypto, "parse_pem_private_key",  # the kept key, never the PEM again
                        lambda *a: pytest.fail("the PEM key was parsed again"))
    built = mime.message_build(message=_Message(kind=kind, campaign="Spring sale"),
                               subject="Grüße, " + "a long subject " * 8, html="<p>" + "Привет мир " * 40 + "</p>",
                               text="x\n\n\n", sender=_sender(signer, reply_to=reply_to),
                               now=dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc), unsubscribe_url=url)
    assert dkim.verify(built.data, dnsfunc=lookup)
    header, data = built.data.split(b"\r\nFrom:", 1)
    data = b"From:" + data
    monkeypatch.undo()
    fields = dkim.util.parse_tag_value(header.split(b":", 1)[1])
    include = fields[b"h"].split(b" : ")
    monkeypatch.setattr(dkim.time, "time", lambda: int(fields[b"t"]))
    assert signer.sign(data, include) == _dkimpy_signature(signer, data, include)
    assert (b"list-unsubscribe-post" in include) == url.startswith("https://")
    assert (b"reply-to" in include) == bool(reply_to)


def test_a_message_dkimpy_would_read_differently_is_still_signed_as_dkimpy_does(dkim_key, monkeypatch):
    private, lookup = dkim_key
    signer = mime.DkimSigner(domain="acme.test", selector="s1", private_key_pem=private)
    monkeypatch.setattr(dkim.time, "time", lambda: 1_772_400_000)
    for data in [DATA.replace(b"\r\n", b"\n"), b"From: a@acme.test\r\nTo: b@example.org\r\n\r\n",
                 b"From: a@acme.test\r\nSubject: folded\r\n\tline\r\n\r\nbody\r\n\r\n\r\n"]:
        signature = signer.sign(data, [b"from", b"to", b"subject"])
        assert signature == _dkimpy_signature(signer, data, [b"from", b"to", b"subject"])
        assert dkim.verify(signature + data, dnsfunc=lookup)
    with pytest.raises(dkim.ParameterError):  # dkimpy's rules still apply
        signer.sign(DATA, [b"to", b"subject"])


# --- servers, domains, settings (services) -------------------------------------------------------

@pytest.mark.django_db
def test_servers_validate_never_show_the_password_and_keep_one_default(ws):
    first = sending.sending_server_create(workspace=ws.workspace, name="Relay", url="smtp://u:pw@relay.test:587")
    assert first.is_default  # the first one is the default
    out = sending.server_out(first)
    assert out["url"] == "smtp://u:********@relay.test:587" and "pw" not in str(out)
    second = sending.sending_server_create(workspace=ws.workspace, name="Backup", url="", is_default=True)
    first.refresh_from_db()
    assert second.is_default and not first.is_default and sending.server_out(second)["uses_environment"]
    with pytest.raises(ServiceError, match="already exists"):
        sending.sending_server_create(workspace=ws.workspace, name="Relay")
    with pytest.raises(ServiceError, match="url: "):
        sending.sending_server_create(workspace=ws.workspace, name="Bad", url="ftp://x")
    with pytest.raises(ServiceError, match="pool_size"):
        sending.sending_server_update(server=first, pool_size=0)
    with pytest.raises(ServiceError, match="another server the default"):
        sending.sending_server_update(server=second, is_default=False)
    first.consecutive_failures, first.paused_until = 5, None
    first.save()
    sending.sending_server_update(server=first, url="smtp://u:********@relay.test:2525", rate_per_second=5)
    first.refresh_from_db()
    assert first.url == "smtp://u:pw@relay.test:2525" and first.rate_per_second == 5
    assert first.consecutive_failures == 0  # a new address starts with a closed circuit
    assert not AuditEntry.objects.filter(data__icontains="pw@").exists()


@pytest.mark.django_db
def test_a_server_with_pending_messages_cannot_be_deleted(ws):
    from leadflow.contacts.models import Contact

    server = sending.sending_server_create(workspace=ws.workspace, name="Relay", url="smtp://relay.test")
    other = sending.sending_server_create(workspace=ws.workspace, name="Other", url="smtp://other.test")
    contact = Contact.objects.create(workspace=ws.workspace, email="p@example.org")
    Message.objects.create(workspace=ws.workspace, contact=contact, to_email="p@example.org", server=server)
    with pytest.raises(ServiceError, match="1 pending message"):
        sending.sending_server_delete(server=server)
    Message.objects.update(status="sent")
    sending.sending_server_delete(server=server)
    other.refresh_from_db()
    assert other.is_default  # the default moved on


@pytest.mark.django_db
def test_a_domain_gets_a_key_and_a_checklist_of_records(ws):
    sending.sending_server_create(workspace=ws.workspace, name="Relay", url="smtp://smtp.provider.test:587")
    domain = sending.sending_domain_create(workspace=ws.workspace, domain="Acme.TEST.", selector="lf1",
                                           bounce_domain="bounces.acme.test")
    assert domain.domain == "acme.test" and domain.dkim_private_key.startswith("-----BEGIN RSA PRIVATE KEY")
    records = {r.purpose: r for r in sending.dns_checklist(domain=domain)}
    assert records["spf"].name == "bounces.acme.test" and records["spf"].type == "TXT"
    assert records["spf"].value == "v=spf1 a:smtp.provider.test ~all" and "include:" in records["spf"].note
    assert records["dkim"].name == "lf1._domainkey.acme.test"
    assert records["dkim"].value == f"v=DKIM1; k=rsa; p={domain.dkim_public_key}"
    assert records["dmarc"].name == "_dmarc.acme.test" and records["dmarc"].value.startswith("v=DMARC1; p=none; rua=")
    assert records["mx"].name == "bounces.acme.test" and records["mx"].type == "MX"
    with pytest.raises(ServiceError, match="already a sending domain"):
        sending.sending_domain_create(workspace=ws.workspace, domain="acme.test")
    for bad in ("acme", "-acme.test", "acme..test", "a" * 64 + ".test"):
        with pytest.raises(ServiceError, match="not a domain name"):
            sending.sending_domain_create(workspace=ws.workspace, domain=bad)
    with pytest.raises(ServiceError, match="selector"):
        sending.sending_domain_create(workspace=ws.workspace, domain="b.test", selector="bad selector")


@pytest.mark.django_db
def test_the_live_dns_check_compares_what_is_published(ws):
    domain = sending.sending_domain_create(workspace=ws.workspace, domain="acme.test")
    zone = {
        ("acme.test", "TXT"): ["v=spf1 include:_spf.provider.test ~all", "google-site-verification=x"],
        ("leadflow._domainkey.acme.test", "TXT"): [f"v=DKIM1; k=rsa; p={domain.dkim_public_key[:100]} "
                                                   f"{domain.dkim_public_key[100:]}"],
        ("_dmarc.acme.test", "TXT"): [],
    }

    def lookup(name, rdtype):
        if rdtype == "MX":
            raise LookupError("the resolver timed out")
        return zone.get((name, rdtype), [])

    status = {r.purpose: r.status for r in sending.dns_check(domain=domain, lookup=lookup)}
    assert status == {"spf": "ok", "dkim": "ok", "dmarc": "missing", "mx": "error"}
    zone[("leadflow._domainkey.acme.test", "TXT")] = ["v=DKIM1; k=rsa; p=SOMETHINGELSE"]
    assert {r.purpose: r.status for r in sending.dns_check(domain=domain, lookup=lookup)}["dkim"] == "different"


@pytest.mark.django_db
def test_messaging_settings_are_validated(ws):
    w = ws.workspace.pk
    row = sending.messaging_settings_update(workspace_id=w, from_name="  Acme   Team ", from_email="news@acme.test",
                                            quiet_start="21:00", quiet_end="08:00", default_timezone="Europe/Berlin",
                                            cap_per_day=2, cap_per_week=5)
    assert row.from_name == "Acme Team" and str(row.quiet_start) == "21:00:00"
    for fields, problem in [({"from_email": "not-an-address"}, "not an email"),
                            ({"quiet_start": None}, "both a start and an end"),
                            ({"quiet_end": "21:00"}, "same time"), ({"quiet_start": "25:00"}, "time of day"),
                            ({"default_timezone": "Mars/Olympus"}, "time zone"),
                            ({"cap_per_week": 1}, "lower than cap_per_day"), ({"cap_per_day": 0}, "between"),
                            ({"soft_bounce_limit": "x"}, "number"), ({"colour": "red"}, "unknown field")]:
        with pytest.raises(ServiceError, match=problem):
            sending.messaging_settings_update(workspace_id=w, **fields)
    row = MessagingSettings.objects.get(workspace_id=w)
    assert row.cap_per_week == 5 and row.default_timezone == "Europe/Berlin"  # nothing half-saved


@pytest.mark.django_db
def test_the_status_warns_about_what_is_missing(ws):
    with override_settings(PUBLIC_URL="http://localhost:8000"):
        warnings = " ".join(sending.sending_status(workspace=ws.workspace)["warnings"])
    assert "No sender address" in warnings and "postal address" in warnings and "one-click" in warnings
    sending.messaging_settings_update(workspace_id=ws.workspace.pk, from_email="news@acme.test",
                                      postal_address="1 Main St")
    warnings = " ".join(sending.sending_status(workspace=ws.workspace)["warnings"])
    assert "acme.test has no sending domain" in warnings and "without a DKIM signature" in warnings
    sending.sending_domain_create(workspace=ws.workspace, domain="acme.test")
    with override_settings(PUBLIC_URL="https://lf.example.com"):
        warnings = " ".join(sending.sending_status(workspace=ws.workspace)["warnings"])
    assert "DKIM" not in warnings and "postal" not in warnings


# --- API -----------------------------------------------------------------------------------------

def _api(client, keys, method, path, body=None):
    import json

    kwargs = {"HTTP_AUTHORIZATION": keys.bearer}
    if body is not None:
        kwargs.update(data=json.dumps(body), content_type="application/json")
    return getattr(client, method)(f"/api/email/sending{path}", **kwargs)


@pytest.mark.django_db
def test_api_servers(client, ws):
    with SmtpSink() as sink:
        created = _api(client, ws, "post", "/servers", {"name": "Loopback", "url": sink.url.replace(
            "smtp://", "smtp://u:secret@"), "rate_per_second": 20})
        assert created.status_code == 201, created.content
        server = created.json()
        assert server["url"].startswith("smtp://u:********@") and b"secret" not in created.content
        assert server["is_default"] and server["state"] == "ok"
        sid = server["id"]
        test = _api(client, ws, "post", f"/servers/{sid}/test").json()
    assert test["ok"] is False and "AUTH" in test["detail"]  # the sink offers no login: a real answer
    patched = _api(client, ws, "patch", f"/servers/{sid}", {"url": server["url"], "pool_size": 4}).json()
    assert patched["pool_size"] == 4
    assert SendingServer.objects.get(pk=sid).url.startswith("smtp://u:secret@")
    assert _api(client, ws, "get", "/servers").json()[0]["id"] == sid
    bad = _api(client, ws, "post", "/servers", {"name": "Bad", "url": "smtp://h?timeout=never"})
    assert bad.status_code == 400 and "timeout" in bad.json()["detail"]
    assert _api(client, ws, "post", "/servers", {"name": "X", "pool_size": "many"}).status_code == 422
    assert _api(client, ws, "delete", f"/servers/{sid}").status_code == 204
    assert not SendingServer.objects.filter(pk=sid).exists()


@pytest.mark.django_db
def test_api_domains_and_settings(client, ws):
    created = _api(client, ws, "post", "/domains", {"domain": "acme.test", "bounce_domain": "bounces.acme.test"})
    assert created.status_code == 201
    domain = created.json()
    assert "PRIVATE" not in created.content.decode() and domain["public_key"]
    assert [r["purpose"] for r in domain["dns"]] == ["spf", "dkim", "dmarc", "mx"]
    assert _api(client, ws, "post", "/domains", {"domain": "nope"}).status_code == 400
    patched = _api(client, ws, "patch", f"/domains/{domain['id']}", {"bounce_domain": ""}).json()
    assert patched["dns"][0]["name"] == "acme.test"
    settings = _api(client, ws, "patch", "/settings", {"from_email": "news@acme.test", "quiet_start": "22:00",
                                                       "quiet_end": "07:00"})
    assert settings.status_code == 200 and settings.json()["quiet_start"] == "22:00:00"
    assert _api(client, ws, "patch", "/settings", {"quiet_end": None}).status_code == 400
    assert _api(client, ws, "get", "/settings").json()["from_email"] == "news@acme.test"
    status = _api(client, ws, "get", "/status").json()
    assert status["from_email"] == "news@acme.test" and status["outbox"]["queued"] == 0
    assert _api(client, ws, "delete", f"/domains/{domain['id']}").status_code == 204


@pytest.mark.django_db
def test_api_cannot_reach_another_workspaces_servers_or_domains(client, ws, other_ws):
    server = sending.sending_server_create(workspace=other_ws.workspace, name="Theirs", url="smtp://u:pw@their.test")
    domain = sending.sending_domain_create(workspace=other_ws.workspace, domain="their.test")
    for method, path in [("get", f"/servers/{server.pk}"), ("patch", f"/servers/{server.pk}"),
                         ("delete", f"/servers/{server.pk}"), ("post", f"/servers/{server.pk}/test"),
                         ("get", f"/domains/{domain.pk}"), ("delete", f"/domains/{domain.pk}"),
                         ("post", f"/domains/{domain.pk}/check")]:
        response = _api(client, ws, method, path, {} if method == "patch" else None)
        assert response.status_code == 404, (method, path)
    assert _api(client, ws, "get", "/servers").json() == [] and _api(client, ws, "get", "/domains").json() == []
    assert SendingServer.objects.filter(pk=server.pk).exists() and SendingDomain.objects.filter(pk=domain.pk).exists()


# --- pages ---------------------------------------------------------------------------------------

def _login(client, ws, role, name):
    client.force_login(user_create(username=name, password=f"pw-{name}-1234", workspace=ws.workspace, role=role))
    return client


@pytest.mark.django_db
def test_an_admin_adds_tests_and_edits_a_server_on_the_pages(client, ws):
    _login(client, ws, "admin", "ada")
    with SmtpSink() as sink:
        response = client.post("/email/sending/servers/new/", {"name": "Loopback", "url": sink.url,
                                                               "rate_per_second": "10", "pool_size": "2",
                                                               "breaker_threshold": "5",
                                                               "breaker_cooldown_seconds": "300"})
        assert response.status_code == 302
        server = SendingServer.objects.get(workspace=ws.workspace)
        tested = client.post(f"/email/sending/servers/{server.pk}/test/", follow=True)
        assert "Loopback: connected — 250" in tested.content.decode()
    page = client.get("/email/sending/").content.decode()
    assert "Loopback" in page and "Test connection" in page and "No sending domain yet" in page
    bad = client.post("/email/sending/servers/new/", {"name": "Bad", "url": "pop3://x", "rate_per_second": "1",
                                                     "pool_size": "1", "breaker_threshold": "1",
                                                     "breaker_cooldown_seconds": "1"})
    assert bad.status_code == 200 and "use smtp://" in bad.content.decode()
    assert SendingServer.objects.filter(workspace=ws.workspace).count() == 1
    edit = client.get(f"/email/sending/servers/{server.pk}/")
    assert edit.status_code == 200 and "Loopback" in edit.content.decode()


@pytest.mark.django_db
def test_domains_show_their_records_and_check_them(client, ws, monkeypatch):
    _login(client, ws, "admin", "ada")
    response = client.post("/email/sending/domains/new/", {"domain": "acme.test", "selector": "leadflow",
                                                          "bounce_domain": ""})
    domain = SendingDomain.objects.get(workspace=ws.workspace)
    assert response.status_code == 302 and response["Location"].endswith(f"/domains/{domain.pk}/")
    page = client.get(f"/email/sending/domains/{domain.pk}/").content.decode()
    assert "leadflow._domainkey.acme.test" in page and domain.dkim_public_key in page and "_dmarc.acme.test" in page
    monkeypatch.setattr(sending, "_default_lookup", lambda name, rdtype: ["v=spf1 mx ~all"] if rdtype == "TXT"
                        and name == "acme.test" else [])
    checked = client.post(f"/email/sending/domains/{domain.pk}/check/").content.decode()
    assert "published" in checked and "missing" in checked


@pytest.mark.django_db
def test_roles_on_the_sending_pages(client, ws, other_ws):
    server = sending.sending_server_create(workspace=ws.workspace, name="Relay", url="smtp://relay.test")
    theirs = sending.sending_server_create(workspace=other_ws.workspace, name="Theirs", url="smtp://their.test")
    _login(client, ws, "marketer", "mara")
    assert client.get("/email/sending/").status_code == 200
    assert client.get("/email/sending/servers/new/").status_code == 403
    assert client.post(f"/email/sending/servers/{server.pk}/delete/").status_code == 403
    assert client.post("/email/sending/domains/new/", {"domain": "acme.test"}).status_code == 403
    saved = client.post("/email/sending/settings/", {"from_name": "Acme", "from_email": "news@acme.test",
                                                     "default_timezone": "UTC", "soft_bounce_limit": "3",
                                                     "soft_bounce_days": "30"})
    assert saved.status_code == 302 and MessagingSettings.objects.get(workspace=ws.workspace).from_name == "Acme"
    refused = client.post("/email/sending/settings/", {"from_email": "bad", "default_timezone": "UTC",
                                                       "soft_bounce_limit": "3", "soft_bounce_days": "30"})
    assert refused.status_code == 200 and "not an email address" in refused.content.decode()
    client.logout()
    _login(client, ws, "analyst", "ana")
    assert client.get("/email/sending/settings/").status_code == 200
    assert client.post("/email/sending/settings/", {"from_name": "X"}).status_code == 403
    client.logout()
    _login(client, ws, "admin", "ada")
    assert client.get(f"/email/sending/servers/{theirs.pk}/").status_code == 404
    assert client.post(f"/email/sending/servers/{theirs.pk}/delete/").status_code == 404
    assert SendingServer.objects.filter(pk=theirs.pk).exists()
