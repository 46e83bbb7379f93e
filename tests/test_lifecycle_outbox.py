"""The sales-alert outbox: sent once over real SMTP, interrupted sends go to review, retries."""

from __future__ import annotations

import datetime as dt

import pytest

from leadflow.lifecycle.models import Notification
from leadflow.lifecycle.outbox import MAX_ATTEMPTS, SENDING_LEASE, notification_resend, notifications_dispatch

from test_lifecycle import _free_port, _wait_for, smtp_server  # noqa: F401  (the fixture)


def queue(ws, **fields) -> Notification:
    return Notification.objects.create(workspace=ws.workspace, to_address="rep@sales.test", subject="New lead",
                                       text_body="Jane is hot", html_body="<p>Jane is hot</p>", **fields)


def test_a_pending_notification_is_sent_once(ws, frozen_clock, smtp_server):
    row = queue(ws)
    assert notifications_dispatch()["sent"] == 1
    (rcpt, content), = _wait_for(smtp_server, 1)
    assert rcpt == ["rep@sales.test"] and "Subject: New lead" in content and "text/html" in content
    row.refresh_from_db()
    assert (row.status, row.attempts, row.sent_at) == ("sent", 1, frozen_clock())
    assert notifications_dispatch()["sent"] == 0


def test_a_row_left_sending_goes_to_review_and_is_never_resent(ws, frozen_clock, smtp_server):
    row = queue(ws, status="sending", sending_at=frozen_clock(), attempts=1)
    assert notifications_dispatch()["review"] == 0  # may still be in another dispatcher's hands
    frozen_clock.advance(seconds=SENDING_LEASE.total_seconds() + 1)
    assert notifications_dispatch() == {"review": 1, "sent": 0, "retry": 0, "failed": 0}
    row.refresh_from_db()
    assert row.status == "review" and "interrupted" in row.error
    notifications_dispatch()
    assert smtp_server.messages == []
    notification_resend(notification=row, actor="user:1")  # a person decided
    assert notifications_dispatch()["sent"] == 1


class _Refusing:
    def __init__(self, reply: str):
        self.reply = reply
        self.tries = 0

    async def handle_DATA(self, server, session, envelope):
        self.tries += 1
        return self.reply


@pytest.fixture
def refusing_smtp(settings):
    from aiosmtpd.controller import Controller

    def start(reply: str) -> _Refusing:
        handler = _Refusing(reply)
        controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
        controller.start()
        started.append(controller)
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        return handler

    started = []
    yield start
    for controller in started:
        controller.stop()


def test_temporary_failures_retry_with_backoff_then_fail(ws, frozen_clock, refusing_smtp):
    server = refusing_smtp("451 4.3.0 try again later")
    row = queue(ws)
    for attempt in range(1, MAX_ATTEMPTS):
        assert notifications_dispatch()["retry"] == 1
        row.refresh_from_db()
        assert (row.status, row.attempts) == ("pending", attempt) and "451" in row.error
        assert row.next_attempt_at > frozen_clock()
        assert notifications_dispatch()["retry"] == 0  # not due yet
        frozen_clock.set(row.next_attempt_at)
    assert notifications_dispatch()["failed"] == 1
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("failed", MAX_ATTEMPTS)
    assert server.tries == MAX_ATTEMPTS


def test_a_permanent_refusal_fails_at_once(ws, frozen_clock, refusing_smtp):
    refusing_smtp("550 5.7.1 not allowed")
    row = queue(ws)
    assert notifications_dispatch()["failed"] == 1
    row.refresh_from_db()
    assert row.status == "failed" and row.attempts == 1 and "550" in row.error


def test_no_server_listening_is_temporary(ws, frozen_clock, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", _free_port()
    settings.EMAIL_TIMEOUT = 5
    row = queue(ws)
    assert notifications_dispatch()["retry"] == 1
    row.refresh_from_db()
    assert row.status == "pending" and row.next_attempt_at == frozen_clock() + dt.timedelta(minutes=2)
