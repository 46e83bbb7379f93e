"""Inbound channels for bounces and complaints: the raw MIME endpoint, Amazon SES (SNS) and
Postmark webhooks (each authenticated by a workspace hook key; tests/test_hook_keys.py shows
every other kind of key refused), and the bounce mailbox poller over a Maildir, IMAP and POP3
(small protocol servers on loopback)."""

from __future__ import annotations

import base64
import mailbox
import socketserver
import threading

import orjson
import pytest
from django.test import override_settings

from leadflow.consent.models import ConsentRecord, Suppression
from leadflow.core.services import api_key_create
from leadflow.core.pipeline import timers_run
from leadflow.messaging.bounces import mailbox_poll_run
from leadflow.messaging.models import MessageEvent, MessageEventKind, MessageStatus
from leadflow.messaging.tokens import verp_local

from test_bounces import ARF_COMPLAINT, EXIM_MAILBOX_FULL, POSTFIX_USER_UNKNOWN, fill, verp
from test_email_tracking import make_contact, sent_message

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook(ws) -> str:
    """A hook key (lfh_…) of the `ws` workspace."""
    return api_key_create(workspace=ws.workspace, kind="hook")[1]


@pytest.fixture
def other_hook(other_ws) -> str:
    return api_key_create(workspace=other_ws.workspace, kind="hook")[1]


def basic(key: str, *, as_password: bool = False) -> str:
    pair = f":{key}" if as_password else f"{key}:"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def events(message, kind) -> int:
    return MessageEvent.objects.filter(message=message, kind=kind).count()


# --- /hooks/email/inbound -------------------------------------------------------------------------------

def test_inbound_mime_needs_a_hook_key_and_applies_the_bounce(client, ws, hook, other_hook, frozen_clock):
    message = sent_message(ws, make_contact(ws, "ada@example.com"))
    raw = fill(POSTFIX_USER_UNKNOWN, message=message)
    url = "/hooks/email/inbound"
    assert client.post(url, raw, content_type="message/rfc822").status_code == 401
    for wrong in (ws.write_key, ws.secret_key, "lfh_wrong"):  # hook keys only
        assert client.post(url, raw, content_type="message/rfc822",
                           HTTP_AUTHORIZATION=basic(wrong)).status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION=basic(hook)).status_code == 405
    # Another workspace's hook key: accepted, but it cannot touch this workspace's message.
    foreign = client.post(url, raw, content_type="message/rfc822", HTTP_AUTHORIZATION=basic(other_hook))
    assert foreign.status_code == 200 and foreign.json()["outcomes"][0]["message_id"] is None
    assert not Suppression.objects.exists()

    response = client.post(url, raw, content_type="message/rfc822", HTTP_AUTHORIZATION=basic(hook))
    assert response.status_code == 200
    body = response.json()
    assert body["kind"] == "bounce"
    assert body["outcomes"][0] | {"detail": ""} == {"address": "ada@example.com", "outcome": "hard",
                                                   "message_id": message.pk, "suppressed": True, "status": "5.1.1",
                                                   "detail": "", "duplicate": False}
    message.refresh_from_db()
    assert message.status == MessageStatus.BOUNCED
    # The key as the Basic password, or as ?key=, works too; a repeat changes nothing.
    again = client.post(url, raw, content_type="message/rfc822", HTTP_AUTHORIZATION=basic(hook, as_password=True))
    assert again.json()["outcomes"][0]["duplicate"] is True
    assert client.post(f"{url}?key={hook}", raw, content_type="message/rfc822").status_code == 200
    assert events(message, MessageEventKind.BOUNCED) == 1
    empty = client.post(url, b"", content_type="message/rfc822", HTTP_AUTHORIZATION=basic(hook))
    assert empty.status_code == 400 and empty.json()["detail"] == "the message is empty"


# --- Amazon SES through SNS ------------------------------------------------------------------------------

def sns(notification: dict, *, message_id: str = "sns-1") -> bytes:
    return orjson.dumps({"Type": "Notification", "MessageId": message_id, "TopicArn": "arn:aws:sns:eu-west-1:1:ses",
                         "Message": orjson.dumps(notification).decode(), "Timestamp": "2026-03-02T09:10:00.000Z"})


def ses_mail(message, *, verp_source: bool = True) -> dict:
    source = verp(message) if verp_source else "news@acme.example"
    return {"timestamp": "2026-03-02T09:00:00.000Z", "source": source, "messageId": f"ses-{message.pk}",
            "destination": [message.to_email], "headersTruncated": False,
            "headers": [{"name": "Message-ID", "value": message.header_message_id}],
            "commonHeaders": {"messageId": message.header_message_id, "subject": "Spring offer"}}


def post_ses(client, hook: str, body: bytes):
    return client.post("/hooks/email/ses", body, content_type="text/plain; charset=UTF-8",
                       HTTP_AUTHORIZATION=basic(hook))


def test_ses_subscription_confirmation_returns_the_url_and_fetches_nothing(client, hook):
    body = orjson.dumps({"Type": "SubscriptionConfirmation", "MessageId": "c1", "Token": "t",
                         "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=t"})
    response = post_ses(client, hook, body)
    assert response.status_code == 200
    assert response.json()["subscribe_url"].endswith("Action=ConfirmSubscription&Token=t")
    assert "confirm" in response.json()["note"]


def test_ses_bounces_complaints_and_deliveries(client, ws, hook, frozen_clock):
    ada, bo, cy, dee = (make_contact(ws, f"{n}@example.com") for n in ("ada", "bo", "cy", "dee"))
    hard, soft, complained, delivered = (sent_message(ws, c) for c in (ada, bo, cy, dee))
    permanent = {"notificationType": "Bounce", "mail": ses_mail(hard), "bounce": {
        "bounceType": "Permanent", "bounceSubType": "General", "feedbackId": "fb-1", "timestamp": "2026-03-02T09:01:00Z",
        "bouncedRecipients": [{"emailAddress": "ada@example.com", "action": "failed", "status": "5.1.1",
                               "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}}
    transient = {"notificationType": "Bounce", "mail": ses_mail(soft, verp_source=False), "bounce": {
        "bounceType": "Transient", "bounceSubType": "MailboxFull", "feedbackId": "fb-2",
        "bouncedRecipients": [{"emailAddress": "bo@example.com", "status": "4.2.2"}]}}
    complaint = {"eventType": "Complaint", "mail": ses_mail(complained), "complaint": {
        "feedbackId": "fb-3", "complaintFeedbackType": "abuse",
        "complainedRecipients": [{"emailAddress": "cy@example.com"}]}}
    delivery = {"notificationType": "Delivery", "mail": ses_mail(delivered), "delivery": {
        "recipients": ["dee@example.com"], "smtpResponse": "250 2.0.0 OK", "timestamp": "2026-03-02T09:00:02Z"}}
    for n, notification in enumerate((permanent, transient, complaint, delivery)):
        response = post_ses(client, hook, sns(notification, message_id=f"sns-{n}"))
        assert response.status_code == 200, response.content
    assert [o["outcome"] for o in post_ses(client, hook, sns(permanent)).json()["outcomes"]] == ["hard"]
    assert events(hard, MessageEventKind.BOUNCED) == 1  # the SNS retry was a duplicate
    assert Suppression.objects.get(email="ada@example.com").reason == "hard_bounce"
    assert events(soft, MessageEventKind.SOFT_BOUNCED) == 1  # mapped by Message-ID (no VERP source)
    assert not Suppression.objects.filter(email="bo@example.com").exists()
    assert Suppression.objects.get(email="cy@example.com").reason == "complaint"
    assert ConsentRecord.objects.get(contact=cy).status == "withdrawn"
    delivered.refresh_from_db()
    assert delivered.status == MessageStatus.DELIVERED and delivered.delivered_at == frozen_clock.current
    # Straight SES JSON (no SNS envelope) is accepted too; nonsense is a clear 400.
    assert post_ses(client, hook, orjson.dumps(delivery)).status_code == 200
    bad = post_ses(client, hook, b"{not json")
    assert bad.status_code == 400 and bad.json()["detail"].startswith("malformed JSON")
    assert post_ses(client, hook, orjson.dumps({"Type": "Notification", "Message": "{}"})).status_code == 400


def test_ses_notification_by_email_reads_like_the_webhook(ws, frozen_clock):
    from leadflow.messaging.bounces import bounce_process

    message = sent_message(ws, make_contact(ws, "eve@example.com"))
    notification = {"notificationType": "Bounce", "mail": ses_mail(message), "bounce": {
        "bounceType": "Permanent", "bounceSubType": "NoEmail", "feedbackId": "fb-9",
        "bouncedRecipients": [{"emailAddress": "eve@example.com"}]}}
    raw = (b"From: SES <no-reply@sns.amazonaws.com>\nTo: ops@acme.example\nSubject: AWS Notification Message\n"
           b"Message-ID: <sns-mail-1@email.amazonses.com>\nContent-Type: text/plain; charset=UTF-8\n\n"
           + orjson.dumps(notification) + b"\n\n--\nIf you wish to stop receiving notifications...\n")
    result = bounce_process(workspace_id=ws.workspace.pk, raw=raw)
    assert [(o.outcome, o.message_id) for o in result.outcomes] == [("hard", message.pk)]


# --- Postmark -----------------------------------------------------------------------------------------------

def post_postmark(client, hook: str, body: dict, *, query_key: bool = False):
    if query_key:
        return client.post(f"/hooks/email/postmark?key={hook}", orjson.dumps(body),
                           content_type="application/json")
    return client.post("/hooks/email/postmark", orjson.dumps(body), content_type="application/json",
                       HTTP_AUTHORIZATION=basic(hook))


def test_postmark_bounces_complaints_and_deliveries(client, ws, hook, frozen_clock):
    ada, bo, cy, dee = (make_contact(ws, f"{n}@example.com") for n in ("ada", "bo", "cy", "dee"))
    hard, soft, complained, delivered = (sent_message(ws, c) for c in (ada, bo, cy, dee))
    base = {"RecordType": "Bounce", "MessageStream": "outbound", "ServerID": 23, "Tag": "",
            "BouncedAt": "2026-03-02T09:03:00Z", "Inactive": True, "CanActivate": True}
    cases = [
        (hard, {**base, "ID": 1, "Type": "HardBounce", "TypeCode": 1, "Email": "ada@example.com",
                "MessageID": "pm-1", "Description": "The server was unable to deliver your message",
                "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist",
                "Metadata": {"lf_message": verp_local(hard.pk)}}, "hard"),
        (soft, {**base, "ID": 2, "Type": "SoftBounce", "TypeCode": 4096, "Email": "bo@example.com",
                "MessageID": "pm-2", "Details": "mailbox full"}, "soft"),
        (complained, {**base, "RecordType": "SpamComplaint", "ID": 3, "Type": "SpamComplaint", "TypeCode": 512,
                      "Email": "cy@example.com", "MessageID": "pm-3"}, "complaint"),
        (delivered, {"RecordType": "Delivery", "MessageID": "pm-4", "Recipient": "dee@example.com",
                     "DeliveredAt": "2026-03-02T09:00:03Z", "Details": "250 OK",
                     "Metadata": {"lf_message": verp_local(delivered.pk)}}, "delivered"),
    ]
    for message, body, outcome in cases:
        response = post_postmark(client, hook, body, query_key=outcome == "complaint")
        assert response.status_code == 200, response.content
        assert [(o["outcome"], o["message_id"]) for o in response.json()["outcomes"]] == [(outcome, message.pk)]
    assert Suppression.objects.get(email="ada@example.com").reason == "hard_bounce"
    assert events(soft, MessageEventKind.SOFT_BOUNCED) == 1 and not Suppression.objects.filter(email="bo@example.com")
    assert Suppression.objects.get(email="cy@example.com").reason == "complaint"
    assert MessageEvent.objects.filter(message=delivered, kind=MessageEventKind.DELIVERED).count() == 1
    ignored = post_postmark(client, hook, {**base, "ID": 5, "Type": "AutoResponder", "Email": "ada@example.com"})
    assert ignored.status_code == 200 and "needs no action" in ignored.json()["note"]
    assert post_postmark(client, hook, {"hello": "world"}).status_code == 400
    assert client.post("/hooks/email/postmark", b"{}", content_type="application/json").status_code == 401


# --- the bounce mailbox ------------------------------------------------------------------------------------

def test_no_mailbox_configured_is_a_no_op(frozen_clock):
    with override_settings(LEADFLOW_BOUNCE_MAILBOX=""):
        assert mailbox_poll_run(now=frozen_clock.current) == 0


def test_maildir_messages_are_processed_once_and_moved_to_cur(ws, frozen_clock, tmp_path,
                                                              django_capture_on_commit_callbacks):
    ada, bo = make_contact(ws, "ada@example.com"), make_contact(ws, "bo@example.com")
    hard, complained = sent_message(ws, ada), sent_message(ws, bo)
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    keys = [box.add(fill(POSTFIX_USER_UNKNOWN, message=hard)),
            box.add(fill(ARF_COMPLAINT, message=complained, to="fbl@acme.example")),
            box.add(b"From: someone@example.com\nSubject: hi\n\nnot a bounce\n")]
    url = f"maildir://{tmp_path / 'bounces'}"
    with override_settings(LEADFLOW_BOUNCE_MAILBOX=url):
        with django_capture_on_commit_callbacks(execute=True):
            assert mailbox_poll_run(now=frozen_clock.current) == 3
        assert {box.get_message(k).get_subdir() for k in keys} == {"cur"}
        assert all("S" in box.get_message(k).get_flags() for k in keys)
        assert Suppression.objects.get(email="ada@example.com").reason == "hard_bounce"
        assert Suppression.objects.get(email="bo@example.com").reason == "complaint"
        # Read again: nothing new (moved), and nothing doubled.
        with django_capture_on_commit_callbacks(execute=True):
            assert mailbox_poll_run(now=frozen_clock.current) == 0
        new_key = box.add(fill(EXIM_MAILBOX_FULL, message=hard))
        with django_capture_on_commit_callbacks(execute=True):
            ran = timers_run(force=True)  # the worker's timer runs it
        assert "messaging.mailbox" in ran and box.get_message(new_key).get_subdir() == "cur"
    assert events(hard, MessageEventKind.BOUNCED) == 1 and events(hard, MessageEventKind.SOFT_BOUNCED) == 1


def test_a_forged_report_in_the_mailbox_naming_only_an_address_suppresses_nobody(
        client, ws, hook, frozen_clock, tmp_path, django_capture_on_commit_callbacks):
    """Anyone can write to the bounce mailbox: a report there must name its message by the signed
    VERP address or the Message-ID of the mail. Naming only an address (an invented Message-ID,
    a plain envelope) changes nothing; the same report with the workspace's hook key may fall back
    to the address's latest message."""
    victim = sent_message(ws, make_contact(ws, "victim@example.com"))
    forged = [fill(ARF_COMPLAINT, rcpt="victim@example.com", sender="news@acme.example",
                   mid="<invented@acme.example>", to="fbl@acme.example"),
              fill(POSTFIX_USER_UNKNOWN, rcpt="victim@example.com", to="bounces@acme.example",
                   sender="news@acme.example", mid="<invented@acme.example>")]
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    for raw in forged:
        box.add(raw)
    with override_settings(LEADFLOW_BOUNCE_MAILBOX=f"maildir://{tmp_path / 'bounces'}"):
        with django_capture_on_commit_callbacks(execute=True):
            assert mailbox_poll_run(now=frozen_clock.current) == 2
    assert not Suppression.objects.exists() and not ConsentRecord.objects.exists()
    assert not MessageEvent.objects.filter(message=victim, kind__in=["bounced", "complained"]).exists()
    signed = client.post("/hooks/email/inbound", forged[1], content_type="message/rfc822",
                         HTTP_AUTHORIZATION=basic(hook))
    assert signed.json()["outcomes"][0]["message_id"] == victim.pk
    assert Suppression.objects.get(email="victim@example.com").reason == "hard_bounce"


def test_a_crash_before_commit_leaves_the_maildir_untouched(ws, frozen_clock, tmp_path):
    message = sent_message(ws, make_contact(ws))
    box = mailbox.Maildir(tmp_path / "b", create=True)
    key = box.add(fill(POSTFIX_USER_UNKNOWN, message=message))
    with override_settings(LEADFLOW_BOUNCE_MAILBOX=f"maildir://{tmp_path / 'b'}"):
        assert mailbox_poll_run(now=frozen_clock.current) == 1  # the test's transaction never commits
    assert box.get_message(key).get_subdir() == "new"


# --- IMAP and POP3 on loopback -------------------------------------------------------------------------------

class _Store:
    def __init__(self, messages: list[bytes]):
        self.messages = {n + 1: {"raw": raw, "seen": False, "deleted": False} for n, raw in enumerate(messages)}
        self.logins: list[tuple[str, str]] = []


class _ImapHandler(socketserver.StreamRequestHandler):
    """The IMAP4rev1 commands the poller uses: LOGIN, SELECT, UID SEARCH UNSEEN, UID FETCH
    (BODY.PEEK[]), UID STORE +FLAGS (\\Seen), LOGOUT."""

    def send(self, line: str | bytes) -> None:
        self.wfile.write((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def handle(self):
        store: _Store = self.server.store
        self.send("* OK [CAPABILITY IMAP4rev1] loopback ready")
        while True:
            line = self.rfile.readline().decode().strip()
            if not line:
                return
            tag, command, *args = line.split(" ")
            command = command.upper()
            if command == "CAPABILITY":
                self.send("* CAPABILITY IMAP4rev1")
            elif command == "LOGIN":
                store.logins.append((args[0].strip('"'), args[1].strip('"')))
            elif command == "SELECT":
                self.send(f"* {len(store.messages)} EXISTS")
                self.send("* FLAGS (\\Seen \\Deleted)")
            elif command == "UID" and args[0].upper() == "SEARCH":
                unseen = [str(uid) for uid, m in store.messages.items() if not m["seen"]]
                self.send("* SEARCH " + " ".join(unseen))
            elif command == "UID" and args[0].upper() == "FETCH":
                uid = int(args[1])
                raw = store.messages[uid]["raw"]
                self.send(f"* {uid} FETCH (UID {uid} BODY[] {{{len(raw)}}}".encode() + b"\r\n" + raw + b")")
            elif command == "UID" and args[0].upper() == "STORE":
                store.messages[int(args[1])]["seen"] = True
                self.send(f"* {args[1]} FETCH (FLAGS (\\Seen))")
            elif command == "LOGOUT":
                self.send("* BYE")
                self.send(f"{tag} OK LOGOUT completed")
                return
            self.send(f"{tag} OK {command} completed")


class _Pop3Handler(socketserver.StreamRequestHandler):
    """POP3 as the poller uses it: USER, PASS, STAT, RETR, DELE, QUIT (deletions at QUIT)."""

    def send(self, line: str | bytes) -> None:
        self.wfile.write((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def handle(self):
        store: _Store = self.server.store
        marked: set[int] = set()
        user = ""
        self.send("+OK loopback POP3 ready")
        while True:
            line = self.rfile.readline().decode().strip()
            if not line:
                return
            command, *args = line.split(" ")
            command = command.upper()
            live = {n: m for n, m in store.messages.items() if not m["deleted"]}
            if command == "USER":
                user = args[0]
                self.send("+OK")
            elif command == "PASS":
                store.logins.append((user, args[0]))
                self.send("+OK logged in")
            elif command == "STAT":
                self.send(f"+OK {len(live)} {sum(len(m['raw']) for m in live.values())}")
            elif command == "RETR":
                raw = live[int(args[0])]["raw"]
                self.send(f"+OK {len(raw)} octets")
                for body_line in raw.split(b"\n"):
                    self.send((b"." + body_line) if body_line.startswith(b".") else body_line)
                self.send(".")
            elif command == "DELE":
                marked.add(int(args[0]))
                self.send("+OK marked")
            elif command == "QUIT":
                for number in marked:
                    store.messages[number]["deleted"] = True
                self.send("+OK bye")
                return
            else:
                self.send("-ERR unknown command")


@pytest.fixture
def loopback():
    servers = []

    def start(handler, messages: list[bytes]):
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.store = _Store(messages)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_imap_unseen_messages_are_processed_and_flagged_seen(ws, frozen_clock, loopback,
                                                             django_capture_on_commit_callbacks):
    message = sent_message(ws, make_contact(ws, "ada@example.com"))
    server = loopback(_ImapHandler, [fill(POSTFIX_USER_UNKNOWN, message=message),
                                     fill(EXIM_MAILBOX_FULL, message=message)])
    host, port = server.server_address
    with override_settings(LEADFLOW_BOUNCE_MAILBOX=f"imap://bounce%40acme.example:s3cr%2Ft@{host}:{port}/INBOX"):
        with django_capture_on_commit_callbacks(execute=True):
            assert mailbox_poll_run(now=frozen_clock.current) == 2
        assert server.store.logins == [("bounce@acme.example", "s3cr/t")]
        assert all(m["seen"] for m in server.store.messages.values())
        with django_capture_on_commit_callbacks(execute=True):
            assert mailbox_poll_run(now=frozen_clock.current) == 0  # nothing unseen left
    assert events(message, MessageEventKind.BOUNCED) == 1 and events(message, MessageEventKind.SOFT_BOUNCED) == 1


def test_pop3_messages_are_processed_and_deleted(ws, frozen_clock, loopback, django_capture_on_commit_callbacks):
    message = sent_message(ws, make_contact(ws, "bo@example.com"))
    server = loopback(_Pop3Handler, [fill(POSTFIX_USER_UNKNOWN, message=message)])
    host, port = server.server_address
    with override_settings(LEADFLOW_BOUNCE_MAILBOX=f"pop3://bounces:pw@{host}:{port}"):
        with django_capture_on_commit_callbacks(execute=True):
            assert mailbox_poll_run(now=frozen_clock.current) == 1
        assert server.store.logins == [("bounces", "pw")]
        assert all(m["deleted"] for m in server.store.messages.values())
        with django_capture_on_commit_callbacks(execute=True):
            assert mailbox_poll_run(now=frozen_clock.current) == 0
    assert Suppression.objects.get(email="bo@example.com").reason == "hard_bounce"
