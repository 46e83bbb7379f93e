"""The outbox dispatcher: sends the Notification rows (sales alert emails) over SMTP.

A row is claimed by moving it from `pending` to `sending` in its own committed transaction
before the SMTP call, and marked `sent` after. A row still in `sending` once its lease has run
out was interrupted between the two (a crash, a kill): it may or may not have reached the server,
so it goes to `review` and is never resent silently (DESIGN principle 4). Temporary failures
(4xx replies, refused or dropped connections) go back to `pending` with a backoff; after
MAX_ATTEMPTS, or on a permanent (5xx) refusal, the row is `failed` with the server's answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import smtplib

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import transaction
from django.db.models import F

from leadflow.core import clock
from leadflow.lifecycle.models import Notification, NotificationStatus

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
# Longer than any SMTP exchange can take (Django's EMAIL_TIMEOUT is 30 s per operation), so a row
# another dispatcher is sending right now is never taken for an interrupted one.
SENDING_LEASE = dt.timedelta(minutes=10)


def backoff(attempts: int) -> dt.timedelta:
    """Wait before the next try after `attempts` failed ones: 2, 4, 8, 16 … minutes."""
    return dt.timedelta(minutes=2 ** max(1, attempts))


def is_temporary(exc: BaseException) -> bool:
    """A failure worth trying again: 4xx replies, connection trouble. 5xx and others are final."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= code < 500 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, (smtplib.SMTPServerDisconnected, OSError))


def notifications_interrupted_mark(*, now: dt.datetime | None = None) -> int:
    """Rows left in `sending` past their lease go to `review`."""
    now = now or clock.now()
    return Notification.objects.filter(status=NotificationStatus.SENDING, sending_at__lte=now - SENDING_LEASE) \
        .update(status=NotificationStatus.REVIEW,
                error="interrupted while sending: check whether it arrived, then resend or drop it")


def notifications_dispatch(*, limit: int = 100) -> dict[str, int]:
    """Send due pending notifications over one pooled connection; returns counts by outcome."""
    counts = {"review": notifications_interrupted_mark(), "sent": 0, "retry": 0, "failed": 0}
    now = clock.now()
    due = list(Notification.objects.filter(status=NotificationStatus.PENDING, next_attempt_at__lte=now)
               .order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:limit])
    if not due:
        return counts
    connection = get_connection(fail_silently=False)
    try:
        for pk in due:
            with transaction.atomic():
                claimed = Notification.objects.filter(pk=pk, status=NotificationStatus.PENDING).update(
                    status=NotificationStatus.SENDING, sending_at=clock.now(), attempts=F("attempts") + 1)
            if not claimed:
                continue  # another dispatcher took it
            row = Notification.objects.get(pk=pk)
            try:
                message = EmailMultiAlternatives(subject=row.subject, body=row.text_body,
                                                 from_email=settings.DEFAULT_FROM_EMAIL, to=[row.to_address],
                                                 connection=connection)
                if row.html_body:
                    message.attach_alternative(row.html_body, "text/html")
                message.send()
            except Exception as exc:
                connection.close()  # the next message opens a fresh connection
                error = f"{type(exc).__name__}: {exc}"[:500]
                if is_temporary(exc) and row.attempts < MAX_ATTEMPTS:
                    Notification.objects.filter(pk=pk).update(
                        status=NotificationStatus.PENDING, error=error,
                        next_attempt_at=clock.now() + backoff(row.attempts))
                    counts["retry"] += 1
                else:
                    Notification.objects.filter(pk=pk).update(status=NotificationStatus.FAILED, error=error)
                    counts["failed"] += 1
                log.warning("notification %s to %s not sent (attempt %d): %s", pk, row.to_address,
                            row.attempts, error)
                continue
            Notification.objects.filter(pk=pk).update(status=NotificationStatus.SENT, sent_at=clock.now(), error="")
            counts["sent"] += 1
    finally:
        connection.close()
    return counts


def notification_resend(*, notification: Notification, actor: str) -> Notification:
    """An operator's decision after review: queue a `review` or `failed` row again."""
    from leadflow.core.models import Workspace
    from leadflow.core.services import ServiceError, audit_record

    if notification.status not in (NotificationStatus.REVIEW, NotificationStatus.FAILED):
        raise ServiceError("only notifications in review or failed can be resent")
    notification.status = NotificationStatus.PENDING
    notification.next_attempt_at = clock.now()
    notification.save(update_fields=["status", "next_attempt_at"])
    audit_record(workspace=Workspace(pk=notification.workspace_id), actor=actor, action="notification.resend",
                 target=f"notification:{notification.pk}")
    return notification
