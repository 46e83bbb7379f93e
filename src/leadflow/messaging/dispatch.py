"""The email dispatcher: sends the outbox (DESIGN principles 4 and 5).

`dispatch_run` is called by the worker loop (outside any transaction) and does, by the injected
clock:

1. **Review the stale.** A message left in `sending` past its lease (the process that claimed it
   died, maybe after the server accepted it) goes to `review`, never back to the queue.
2. **Claim.** Due rows (`queued`/`deferred`, `not_before <= now`, not in a paused or cancelled
   broadcast, not for a server whose circuit is open), transactional and test messages first,
   are locked with `SELECT … FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite runs one writer), passed
   through the consent gate — `block` → `blocked`, `defer` → `deferred` until the gate's time —
   and the rest moved to `sending` with `sending_at`, all in one committed transaction *before*
   any SMTP traffic. Each server gets at most what its rate limit allows in the next few seconds
   (one message when its circuit is half-open).
3. **Send**, per server: render (`rendering.message_render`), build (`mime`), wait for the rate
   limiter, hand to the server's connection pool, whose thread DKIM-signs (`Built.final`: the RSA
   step releases the GIL, so it overlaps rendering the next message) and sends; results are
   written in batches.
   Accepted → `sent` (+ the `sent` event); temporary failure (4xx, refused or dropped
   connection, timeout before the message was complete) → `deferred` with exponential backoff,
   `failed` after the last attempt; permanent 5xx → `failed` (a refused recipient address,
   5.1.1 and kin, is also a hard bounce: suppressed); the connection broke after the whole
   message went out → `review` (it may have been delivered: never resent).
4. **Circuit breaker** per server: `breaker_threshold` server failures in a row open it
   (`paused_until = now + cooldown`); its messages wait (unclaimed ones stay queued; claimed,
   unattempted ones are put back); after the cooldown one message tries (half-open) and a success
   closes it.

The per-process state (connection pools, rate limiters, DKIM keys) lives in a `Runtime`; tests
install one with a fake monotonic clock and sleep (`runtime_use`), so rate limits are checked
without sleeping.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, IntegerField, Value, When, prefetch_related_objects

from leadflow.config import ConfigError, env_int
from leadflow.core import clock
from leadflow.messaging import mime, smtp
from leadflow.messaging.events import message_event_record, message_events_record_bulk
from leadflow.messaging.models import (Broadcast, BroadcastStatus, Message, MessageEventKind, MessageKind,
                                       MessageStatus, SendingDomain, SendingServer)

log = logging.getLogger(__name__)

CLAIM_HORIZON_SECONDS = 5.0  # claim what the rate limit lets out in this long
SENDER_RETRY = dt.timedelta(minutes=5)  # mail of a workspace without a usable From address waits this long
CLAIM_CHUNK = 100  # messages claimed per transaction
FLUSH_EVERY = 100  # write results to the database every this many messages
DUE = (MessageStatus.QUEUED, MessageStatus.DEFERRED)
HELD_BROADCASTS = (BroadcastStatus.PAUSED, BroadcastStatus.CANCELLED)


def _setting(name: str, default: int) -> int:
    value = getattr(settings, name, None)
    return int(value) if value is not None else env_int(name, default)


def lease_seconds() -> int:
    """How long a message may stay in `sending` before it is taken for interrupted (default 600 s;
    must exceed the longest run: a batch against a hanging server takes about
    breaker_threshold × timeout / pool_size)."""
    return _setting("LEADFLOW_EMAIL_LEASE_SECONDS", 600)


def max_attempts() -> int:
    return _setting("LEADFLOW_EMAIL_MAX_ATTEMPTS", 8)


def retry_delay(attempts: int) -> dt.timedelta:
    """Exponential backoff after the `attempts`-th failed try: 1, 2, 4 … minutes, at most 6 h."""
    base = _setting("LEADFLOW_EMAIL_RETRY_BASE_SECONDS", 60)
    return dt.timedelta(seconds=min(6 * 3600, base * 2 ** max(0, attempts - 1)))


# --- per-process state --------------------------------------------------------------------------

class Runtime:
    """Connection pools, rate limiters and DKIM signers of this process, kept across runs."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.monotonic = monotonic
        self.sleep = sleep
        self._transports: dict[int, tuple[tuple, smtp.SmtpPool | smtp.FileTransport]] = {}
        self._buckets: dict[int, tuple[float, smtp.TokenBucket]] = {}
        self._signers: dict[tuple, mime.DkimSigner] = {}
        self._lock = threading.Lock()

    def transport(self, server: SendingServer) -> smtp.SmtpPool | smtp.FileTransport:
        config = smtp.server_config(server.url)
        key = (config, server.pool_size)
        with self._lock:
            current = self._transports.get(server.pk)
            if current is not None and current[0] == key:
                return current[1]
            if current is not None:
                current[1].close()
            transport = smtp.transport_open(config, pool_size=server.pool_size, monotonic=self.monotonic)
            self._transports[server.pk] = (key, transport)
            return transport

    def bucket(self, server: SendingServer) -> smtp.TokenBucket:
        current = self._buckets.get(server.pk)
        if current is None or current[0] != server.rate_per_second:
            current = (server.rate_per_second, smtp.TokenBucket(server.rate_per_second, monotonic=self.monotonic))
            self._buckets[server.pk] = current
        return current[1]

    def signer(self, domain: SendingDomain) -> mime.DkimSigner:
        key = (domain.pk, domain.domain, domain.dkim_selector,
               hashlib.sha256(domain.dkim_private_key.encode()).hexdigest())
        signer = self._signers.get(key)
        if signer is None:
            signer = mime.DkimSigner(domain=domain.domain, selector=domain.dkim_selector,
                                     private_key_pem=domain.dkim_private_key)
            self._signers[key] = signer
        return signer

    def close(self) -> None:
        with self._lock:
            transports, self._transports = self._transports, {}
        for _, transport in transports.values():
            transport.close()


_runtime = Runtime()


def runtime() -> Runtime:
    return _runtime


@contextlib.contextmanager
def runtime_use(new: Runtime) -> Iterator[Runtime]:
    """Install `new` for the block (tests: a fake monotonic clock and sleep); closes it after."""
    global _runtime
    previous, _runtime = _runtime, new
    try:
        yield new
    finally:
        _runtime = previous
        new.close()


# --- outcomes -----------------------------------------------------------------------------------

@dataclass
class Outcome:
    message: Message
    status: str
    reason: str = ""
    event: str = ""
    detail: dict = field(default_factory=dict)
    subject: str = ""
    header_message_id: str = ""
    at: dt.datetime | None = None
    attempted: bool = False
    not_before: dt.datetime | None = None
    hard_bounce: bool = False


def _failure_outcome(message: Message, failure: smtp.SmtpFailure, now: dt.datetime) -> Outcome:
    attempts = message.attempts + 1
    detail = {**failure.detail(), "attempt": attempts}
    if failure.uncertain:
        return Outcome(message, MessageStatus.REVIEW, failure.reason, MessageEventKind.REVIEW,
                       {**detail, "why": "the connection broke after the whole message was sent; it may have been "
                                         "delivered, so it is not sent again"}, attempted=True)
    if failure.temporary:
        if attempts >= max_attempts():
            return Outcome(message, MessageStatus.FAILED, f"gave up after {attempts} attempts: {failure.reason}",
                           MessageEventKind.FAILED, detail, attempted=True)
        return Outcome(message, MessageStatus.DEFERRED, failure.reason, MessageEventKind.DEFERRED,
                       {**detail, "retry": True}, attempted=True, not_before=now + retry_delay(attempts))
    return Outcome(message, MessageStatus.FAILED, failure.reason, MessageEventKind.FAILED,
                   {**detail, "hard_bounce": failure.hard_bounce}, attempted=True, hard_bounce=failure.hard_bounce)


def _suppress_hard_bounce(outcome: Outcome) -> None:
    message = outcome.message
    try:
        from leadflow.consent.services import suppression_add
    except ImportError:  # consent services not installed: the event carries the fact
        log.warning("message %s: hard bounce not suppressed (consent.services.suppression_add missing)", message.pk)
        return
    suppression_add(workspace_id=message.workspace_id, email=message.to_email, reason="hard_bounce",
                    detail=outcome.reason[:500], message_id=message.pk, actor="")


def _write(outcomes: list[Outcome]) -> None:
    """Store a batch of results in one transaction: one UPDATE and one event insert for the sent
    ones, a row each for the rest."""
    if not outcomes:
        return
    now = clock.now()
    sent = [o for o in outcomes if o.status == MessageStatus.SENT]
    with transaction.atomic():
        if sent:
            for o in sent:
                m = o.message
                m.status, m.sent_at, m.subject = MessageStatus.SENT, o.at or now, o.subject[:500]
                m.header_message_id, m.error, m.attempts = o.header_message_id[:255], "", m.attempts + 1
            _mark_sent([o.message for o in sent])
            _record_sent([o.message for o in sent], now)
        for o in outcomes:
            if o.status == MessageStatus.SENT:
                continue
            m = o.message
            fields = ["status", "error"]
            m.status, m.error = o.status, o.reason[:500]
            if o.attempted:
                m.attempts += 1
                fields.append("attempts")
            if o.not_before is not None:
                m.not_before = o.not_before
                fields.append("not_before")
            if o.subject:
                m.subject = o.subject[:500]
                fields.append("subject")
            m.save(update_fields=fields)
            message_event_record(message=m, kind=o.event, at=now, detail={"reason": o.reason, **o.detail})
            if o.hard_bounce:
                message_event_record(message=m, kind=MessageEventKind.BOUNCED, at=now,
                                     detail={"type": "hard", "during": "smtp", "reason": o.reason})
                _suppress_hard_bounce(o)


def _mark_sent(messages: list[Message]) -> None:
    """One UPDATE for a batch of sent messages (each with its own time, subject and Message-ID).
    Django's bulk_update builds a CASE per column and row in Python, which cost more than the
    rest of the write. PostgreSQL: the rows as one JSON parameter (`jsonb_to_recordset`), so the
    driver does not quote four values a row in Python; SQLite: `UPDATE … FROM (VALUES …)`."""
    table = connection.ops.quote_name(Message._meta.db_table)
    if connection.vendor == "postgresql":
        payload = orjson.dumps([{"id": m.pk, "sent_at": m.sent_at, "subject": m.subject, "hmid": m.header_message_id}
                                for m in messages], option=orjson.OPT_NAIVE_UTC).decode()
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS t SET status = %s, sent_at = v.sent_at, subject = v.subject, "
                f"header_message_id = v.hmid, error = '', attempts = t.attempts + 1 "
                f"FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, sent_at timestamptz, subject text, hmid text) "
                f"WHERE t.id = v.id", [MessageStatus.SENT, payload])
        return
    if connection.vendor != "sqlite":  # pragma: no cover - LeadFlow runs on PostgreSQL and SQLite
        Message.objects.bulk_update(messages, ["status", "sent_at", "subject", "header_message_id", "error",
                                               "attempts"])
        return
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        for start in range(0, len(messages), 500):
            chunk = messages[start:start + 500]
            params: list = []
            for m in chunk:
                params += [m.pk, adapt(m.sent_at), m.subject, m.header_message_id]
            cursor.execute(
                f"WITH v(id, sent_at, subject, hmid) AS (VALUES {', '.join(['(%s, %s, %s, %s)'] * len(chunk))}) "
                f"UPDATE {table} SET status = %s, sent_at = v.sent_at, subject = v.subject, "
                f"header_message_id = v.hmid, error = '', attempts = {table}.attempts + 1 "
                f"FROM v WHERE {table}.id = v.id", [*params, MessageStatus.SENT])


def _record_sent(messages: list[Message], at: dt.datetime) -> None:
    message_events_record_bulk(messages=messages, kind=MessageEventKind.SENT, at=at)


# --- step 1: the stale ---------------------------------------------------------------------------

def _review_stale(now: dt.datetime) -> int:
    cutoff = now - dt.timedelta(seconds=lease_seconds())
    stale = list(Message.objects.filter(status=MessageStatus.SENDING, sending_at__lt=cutoff)[:500])
    if not stale:
        return 0
    reason = "interrupted while sending (the sending process stopped); it may have been delivered"
    with transaction.atomic():
        moved = Message.objects.filter(pk__in=[m.pk for m in stale], status=MessageStatus.SENDING,
                                       sending_at__lt=cutoff).update(status=MessageStatus.REVIEW, error=reason)
        if moved:
            for m in Message.objects.filter(pk__in=[m.pk for m in stale], status=MessageStatus.REVIEW,
                                            error=reason).select_related("template", "version"):
                message_event_record(message=m, kind=MessageEventKind.REVIEW, at=now,
                                     detail={"reason": reason, "sending_at": m.sending_at.isoformat()})
    if moved:
        log.warning("%d message(s) were left in sending past the lease and need review", moved)
    return moved


# --- step 2: claim ------------------------------------------------------------------------------

def _server_state(server: SendingServer, now: dt.datetime) -> str:
    if server.paused_until and server.paused_until > now:
        return "open"
    if server.consecutive_failures >= server.breaker_threshold:
        return "half-open"
    return "ok"


def _gate(messages: list[Message], now: dt.datetime) -> list:
    from leadflow.consent.gate import gate_check_many

    return list(gate_check_many(messages=messages, now=now))


def _claim(*, now: dt.datetime, limit: int, rt: Runtime) -> tuple[list[tuple[SendingServer, list[Message]]], int]:
    """Lock due rows, gate them, move the sendable ones to `sending`: ([(server, messages)],
    number blocked or deferred by the gate)."""
    from leadflow.messaging.sending import sending_server_default

    servers = {s.pk: s for s in SendingServer.objects.all()}
    held, held_default_ws = [], []
    for server in servers.values():
        state = _server_state(server, now)
        if state == "open" or (state == "ok" and rt.bucket(server).available(0) < 1):
            held.append(server.pk)
            if server.is_default:
                held_default_ws.append(server.workspace_id)
    due = (Message.objects.filter(status__in=DUE, not_before__lte=now)
           .exclude(broadcast_id__in=Broadcast.objects.filter(status__in=HELD_BROADCASTS).values("pk")))
    if held:
        due = due.exclude(server_id__in=held)
    if held_default_ws:
        due = due.exclude(server_id__isnull=True, workspace_id__in=held_default_ws)
    due = (due.annotate(_priority=Case(When(kind=MessageKind.MARKETING, then=Value(1)), default=Value(0),
                                       output_field=IntegerField()))
           .order_by("_priority", "not_before", "pk").select_related("contact"))
    if connection.vendor == "postgresql":
        due = due.select_for_update(skip_locked=True, of=("self",))
    gated = 0
    with transaction.atomic():
        candidates = list(due[:limit])
        if not candidates:
            return [], 0
        defaults = {s.workspace_id: s for s in servers.values() if s.is_default}
        budget: dict[int, int] = {}
        chosen: list[tuple[Message, SendingServer]] = []
        wrong_server: list[Message] = []
        for message in candidates:
            if message.server_id:
                server = servers.get(message.server_id)
            else:
                server = defaults.get(message.workspace_id)
                if server is None:
                    server = sending_server_default(workspace_id=message.workspace_id)
                    servers[server.pk] = defaults[message.workspace_id] = server
            if server is None or server.workspace_id != message.workspace_id:
                wrong_server.append(message)
                continue
            if server.pk in held:
                continue
            if server.pk not in budget:
                half_open = _server_state(server, now) == "half-open"
                budget[server.pk] = 1 if half_open else rt.bucket(server).available(CLAIM_HORIZON_SECONDS)
            if budget[server.pk] <= 0:
                continue
            budget[server.pk] -= 1
            chosen.append((message, server))
        decisions = _gate([m for m, _ in chosen], now) if chosen else []
        sendable: dict[int, list[Message]] = {}
        deferred, deferred_details, blocked, blocked_details = [], [], [], []
        for (message, server), decision in zip(chosen, decisions):
            if decision.action == "send":
                message._lf_previous_status = message.status
                sendable.setdefault(server.pk, []).append(message)
                continue
            gated += 1
            if decision.action == "defer":
                until = decision.until if decision.until and decision.until > now else now + dt.timedelta(minutes=1)
                message.status, message.not_before, message.error = MessageStatus.DEFERRED, until, decision.reason[:500]
                deferred.append(message)
                deferred_details.append({"reason": decision.reason, "until": until.isoformat(), "gate": True})
            else:
                message.status, message.error = MessageStatus.BLOCKED, decision.reason[:500]
                blocked.append(message)
                blocked_details.append({"reason": decision.reason})
        # A broadcast to a list with many unsubscribed people blocks thousands at once: a few
        # statements per batch, not a few per message (their events name template and version).
        prefetch_related_objects([*deferred, *blocked, *wrong_server], "template", "version")
        Message.objects.bulk_update(deferred, ["status", "not_before", "error"], batch_size=500)
        Message.objects.bulk_update(blocked, ["status", "error"], batch_size=500)
        message_events_record_bulk(messages=deferred, kind=MessageEventKind.DEFERRED, at=now, details=deferred_details)
        message_events_record_bulk(messages=blocked, kind=MessageEventKind.BLOCKED, at=now, details=blocked_details)
        for message in wrong_server:
            gated += 1
            reason = "the message's sending server belongs to another workspace"
            message.status, message.error = MessageStatus.FAILED, reason
            message.save(update_fields=["status", "error"])
            message_event_record(message=message, kind=MessageEventKind.FAILED, at=now, detail={"reason": reason})
        ids = [m.pk for group in sendable.values() for m in group]
        if ids:
            Message.objects.filter(pk__in=ids).update(status=MessageStatus.SENDING, sending_at=now)
        for group in sendable.values():
            for m in group:
                m.status, m.sending_at = MessageStatus.SENDING, now
    return [(servers[pk], group) for pk, group in sendable.items()], gated


def _release(messages: list[Message], reason: str) -> None:
    """Put claimed messages that were never handed to the server back where they were."""
    by_status: dict[str, list[int]] = {}
    for m in messages:
        by_status.setdefault(getattr(m, "_lf_previous_status", MessageStatus.QUEUED), []).append(m.pk)
    with transaction.atomic():
        for status, ids in by_status.items():
            Message.objects.filter(pk__in=ids, status=MessageStatus.SENDING).update(status=status, sending_at=None,
                                                                                   error=reason[:500])


# --- step 3: send -------------------------------------------------------------------------------

@dataclass
class _Senders:
    """Sender identities per workspace for one run (settings, domain and signer loaded once)."""

    rt: Runtime
    cache: dict[int, tuple[mime.Sender, str]] = field(default_factory=dict)
    unusable: dict[int, str] = field(default_factory=dict)  # workspace → why its mail cannot go out yet

    def load(self, workspace_ids: set[int]) -> None:
        from leadflow.core.models import Workspace
        from leadflow.messaging.sending import messaging_settings_get, sender_address

        missing = workspace_ids - set(self.cache)
        if not missing:
            return
        slugs = dict(Workspace.objects.filter(pk__in=missing).values_list("pk", "slug"))
        rows = {w: messaging_settings_get(workspace_id=w) for w in missing}
        wanted = {}
        for w, row in rows.items():
            name, address = sender_address(row)
            wanted[w] = (name, address, address.rpartition("@")[2].lower(), row.reply_to)
        domains = {(d.workspace_id, d.domain): d for d in
                   SendingDomain.objects.filter(workspace_id__in=missing,
                                                domain__in={v[2] for v in wanted.values()})}
        for w, (name, address, domain_name, reply_to) in wanted.items():
            try:
                mime.address_check(address)
            except mime.MimeError as exc:
                self.unusable[w] = (f"waiting for a sender: the From address cannot be used ({exc}); set it under "
                                    f"Email → Sending → Settings")
            domain = domains.get((w, domain_name))
            signer = self.rt.signer(domain) if domain is not None else None
            bounce = (domain.bounce_domain if domain is not None and domain.bounce_domain else domain_name)
            self.cache[w] = (mime.Sender(from_name=name, from_email=address, reply_to=reply_to, domain=domain_name,
                                         bounce_domain=bounce, signer=signer), slugs.get(w, ""))


def _render_prefetch(messages: list[Message]) -> None:
    from leadflow.messaging.rendering import messages_render_prefetch

    messages_render_prefetch(messages=messages)


def _prepare(message: Message, senders: _Senders, now: dt.datetime) -> tuple[mime.Built, str] | Outcome:
    from leadflow.consent.links import unsubscribe_url
    from leadflow.core.services import ServiceError
    from leadflow.messaging.rendering import message_render

    held = senders.unusable.get(message.workspace_id)
    if held:  # a setup problem, not this message's: it waits, without using up an attempt
        return Outcome(message, MessageStatus.DEFERRED, held, MessageEventKind.DEFERRED, {"stage": "sender"},
                       not_before=now + SENDER_RETRY)
    try:
        rendered = message_render(message=message)
    except Exception as exc:  # one message that cannot render must not stop the queue behind it
        if not isinstance(exc, (ServiceError, ValueError, LookupError, TypeError, RecursionError)):
            log.exception("message %s could not be rendered", message.pk)
        reason = f"could not render: {exc}"
        return Outcome(message, MessageStatus.FAILED, reason, MessageEventKind.FAILED, {"stage": "render"})
    sender, slug = senders.cache[message.workspace_id]
    try:
        built = mime.message_build(message=message, subject=rendered.subject, html=rendered.html, text=rendered.text,
                                   sender=sender, now=now, unsubscribe_url=unsubscribe_url(message),
                                   workspace_slug=slug, sign_later=True)
    except mime.MimeError as exc:
        return Outcome(message, MessageStatus.FAILED, str(exc), MessageEventKind.FAILED, {"stage": "build"},
                       subject=rendered.subject)
    except Exception as exc:  # dkimpy's and the encoders' errors have no common base
        return Outcome(message, MessageStatus.FAILED, f"could not build or sign: {exc}", MessageEventKind.FAILED,
                       {"stage": "build"}, subject=rendered.subject)
    return built, rendered.subject


@dataclass
class _Breaker:
    server: SendingServer
    failures: int
    now: dt.datetime
    last_error: str = ""
    opened: bool = False
    changed: bool = False

    def record(self, outcome: Outcome, failure: smtp.SmtpFailure | None) -> None:
        if failure is not None and failure.server_fault:
            self.failures += 1
            self.last_error = failure.reason
            self.changed = True
            if self.failures >= self.server.breaker_threshold:
                self.opened = True
        elif outcome.attempted or outcome.status == MessageStatus.SENT:
            if self.failures or self.server.paused_until:
                self.changed = True
            self.failures = 0

    def save(self) -> None:
        if not self.changed:
            return
        server = self.server
        server.consecutive_failures = self.failures
        if self.opened:
            server.paused_until = clock.now() + dt.timedelta(seconds=server.breaker_cooldown_seconds)
            log.warning("server %s failed %d times in a row; paused until %s: %s", server.name, self.failures,
                        server.paused_until, self.last_error)
        elif self.failures == 0:
            server.paused_until = None
        if self.last_error:
            server.last_error = self.last_error[:500]
        SendingServer.objects.filter(pk=server.pk).update(consecutive_failures=server.consecutive_failures,
                                                          paused_until=server.paused_until,
                                                          last_error=server.last_error)


def _send_group(server: SendingServer, messages: list[Message], *, rt: Runtime, senders: _Senders) -> int:
    now = clock.now()
    breaker = _Breaker(server, server.consecutive_failures, now)
    try:
        transport = rt.transport(server)
    except ConfigError as exc:
        breaker.record(Outcome(messages[0], MessageStatus.QUEUED),
                       smtp.SmtpFailure(f"the server URL cannot be used: {exc}", stage="connect", temporary=True))
        breaker.opened = True
        breaker.save()
        _release(messages, f"not sent: server {server.name!r} is misconfigured: {exc}")
        return 0
    bucket = rt.bucket(server)
    pending: list[Outcome] = []
    inflight: deque[tuple[Message, mime.Built, str, Future]] = deque()

    def settle(entry: tuple[Message, mime.Built, str, Future]) -> None:
        message, built, subject, future = entry
        failure = None
        try:
            future.result()
        except mime.SignError as exc:  # signed in the SMTP thread, before any SMTP traffic
            outcome = Outcome(message, MessageStatus.FAILED, str(exc), MessageEventKind.FAILED, {"stage": "build"},
                              subject=subject)
        except smtp.SmtpFailure as exc:
            failure = exc
            outcome = _failure_outcome(message, exc, clock.now())
            outcome.subject = subject
        except Exception as exc:  # a bug in the transport: we cannot know what went out
            log.exception("message %s: unexpected error while sending", message.pk)
            outcome = Outcome(message, MessageStatus.REVIEW, f"unexpected error while sending: {exc}"[:480],
                              MessageEventKind.REVIEW, {"stage": "unknown"}, subject=subject, attempted=True)
        else:
            outcome = Outcome(message, MessageStatus.SENT, subject=subject, header_message_id=built.message_id,
                              at=clock.now(), attempted=True)
        breaker.record(outcome, failure)
        pending.append(outcome)

    following = 0  # messages[following:] were never handed to the server
    try:
        for message in messages:
            if breaker.opened:
                break
            prepared = _prepare(message, senders, now)
            if isinstance(prepared, Outcome):
                pending.append(prepared)
            else:
                built, subject = prepared
                wait = bucket.take()
                while wait > 0:
                    rt.sleep(wait)
                    wait = bucket.take()
                inflight.append((message, built, subject,
                                 transport.submit(built.envelope_from, built.recipient, built.final)))
            following += 1
            while inflight and (len(inflight) > transport.size * 2 or inflight[0][3].done()):
                settle(inflight.popleft())
            if len(pending) >= FLUSH_EVERY:
                _flush(pending[:])
                pending.clear()
        while inflight:
            settle(inflight.popleft())
        _flush(pending[:])
        pending.clear()
    except BaseException:
        # Stopped mid-batch (an error, SIGTERM…): keep what is known, put back what never went
        # out; what was in flight stays `sending` and goes to review after the lease.
        with contextlib.suppress(Exception):
            _flush(pending[:])
        with contextlib.suppress(Exception):
            _release(messages[following:], "not sent yet: the dispatcher stopped before this message")
        raise
    finally:
        breaker.save()
    if following < len(messages):
        _release(messages[following:], f"not sent yet: server {server.name!r} is paused after repeated failures")
    return following


def _flush(outcomes: list[Outcome]) -> None:
    _write(outcomes)


# --- the run ------------------------------------------------------------------------------------

def dispatch_run(*, limit: int = 500) -> int:
    """Send what is due (see the module docstring), up to `limit` messages, claimed
    CLAIM_CHUNK at a time (so a process killed mid-run leaves at most one chunk to review).
    Returns the number of messages dealt with (sent, deferred, blocked, failed or put to review)."""
    rt = _runtime
    done = _review_stale(clock.now())
    senders = _Senders(rt)
    remaining = limit
    while remaining > 0:
        groups, gated = _claim(now=clock.now(), limit=min(CLAIM_CHUNK, remaining), rt=rt)
        claimed = sum(len(group) for _, group in groups)
        if not claimed and not gated:
            break
        remaining -= claimed + gated
        done += gated
        if not groups:
            continue
        chunk = [m for _, group in groups for m in group]
        senders.load({m.workspace_id for m in chunk})
        _render_prefetch(chunk)
        for server, group in groups:
            done += _send_group(server, group, rt=rt, senders=senders)
    return done
