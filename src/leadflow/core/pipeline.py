"""Running the processors over the event log: the worker's loop.

The log is split into shards by person (user id, else anonymous id). One worker at a time holds a
shard: on PostgreSQL the shard row is taken with `SELECT … FOR UPDATE SKIP LOCKED`, so any number
of workers on any number of machines share the work without coordination; on SQLite one worker
runs. A batch is processed in one transaction with its effects, so a crash redoes it whole.
"""

from __future__ import annotations

import logging
import signal
import random
import threading
import time

import orjson
from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, transaction

from leadflow.core import clock

log = logging.getLogger(__name__)

RETRIES = 5
TIMER_CHECK_SECONDS = 5.0


def shards_ensure() -> None:
    from leadflow.tracking.models import ProcessingShard

    ProcessingShard.objects.bulk_create(
        [ProcessingShard(shard=n) for n in range(settings.LEADFLOW_SHARDS)], ignore_conflicts=True)


def _stages():
    """The processors every batch goes through, in order; each takes the batch's events (with
    `event.contact` set by identity resolution) inside the batch's transaction."""
    from leadflow.contacts.processing import process_events as identity_and_profile
    from leadflow.lifecycle.processing import process_events as lifecycle
    from leadflow.predictive.processing import process_events as predictive
    from leadflow.scoring.processing import process_events as scoring
    from leadflow.journeys.triggers import process_events as journeys
    from leadflow.segments.processing import process_events as segments

    return [identity_and_profile, scoring, predictive, lifecycle, segments, journeys]


def _timers():
    """Periodic passes: (name, interval in seconds, function taking `now`). Each runs in its own
    transaction, on one worker at a time, and must be idempotent and set-based."""
    from leadflow.journeys.health import journeys_health_run
    from leadflow.journeys.triggers import date_triggers_run, thresholds_run
    from leadflow.lifecycle.timers import lifecycle_timers_run
    from leadflow.messaging.bounces import mailbox_poll_run
    from leadflow.messaging.broadcasts import broadcasts_tick
    from leadflow.scoring.decay import decay_run
    from leadflow.segments.timers import segments_timers_run

    return [("scoring.decay", 3600, decay_run), ("lifecycle.timers", 60, lifecycle_timers_run),
            ("segments.timers", 300, segments_timers_run), ("messaging.broadcasts", 15, broadcasts_tick),
            ("messaging.mailbox", 60, mailbox_poll_run), ("journeys.dates", 3600, date_triggers_run),
            ("journeys.health", 60, journeys_health_run), ("journeys.thresholds", 300, thresholds_run)]


def timers_run(*, force: bool = False) -> list[str]:
    """Run every periodic pass that is due by the injected clock; returns the names that ran."""
    from leadflow.core.models import PeriodicRun

    ran = []
    now = clock.now()
    for name, interval, function in _timers():
        PeriodicRun.objects.bulk_create([PeriodicRun(name=name)], ignore_conflicts=True)
        with transaction.atomic():
            row = PeriodicRun.objects.select_for_update(skip_locked=True).filter(name=name).first()
            if row is None:
                continue  # another worker is running it
            if not force and row.last_run_at and (now - row.last_run_at).total_seconds() < interval:
                continue
            function(now=now)
            row.last_run_at = now
            row.save(update_fields=["last_run_at"])
            ran.append(name)
    return ran


def _pending(shard: int, limit: int):
    from django.db import connection

    from leadflow.tracking.models import Event

    query = Event.objects.filter(shard=shard, processed_at__isnull=True).order_by("id")[:limit]
    if connection.vendor != "postgresql":
        return list(query)
    # Same rows and the same model instances, but the JSON columns are decoded with orjson and
    # without the ORM's per-value converters: loading the batch was a third of a worker's time.
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        by_column = {f.column: f for f in Event._meta.concrete_fields}
        fields = [by_column[column[0]] for column in cursor.description]
    json_at = [i for i, f in enumerate(fields) if f.get_internal_type() == "JSONField"]
    names = [f.attname for f in fields]
    events = []
    for row in rows:
        row = list(row)
        for i in json_at:
            if isinstance(row[i], (str, bytes)):
                row[i] = orjson.loads(row[i])
        events.append(Event.from_db(connection.alias, names, row))
    return events


def events_process(events: list) -> None:
    """Run every stage over `events` (resolved in the caller's transaction); no shard is locked."""
    for stage in _stages():
        stage(events)


TRANSIENT = (IntegrityError, OperationalError)  # two workers made the same identity; a deadlock


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0.0, 0.05 * 2 ** attempt))


def shard_process_batch(shard: int, *, limit: int | None = None, isolate_failures: bool = True) -> int | None:
    """Process up to `limit` pending events of one shard. None when another worker holds it."""
    from leadflow.tracking.models import ProcessingShard

    limit = limit or settings.LEADFLOW_WORKER_BATCH
    for attempt in range(RETRIES):
        try:
            with transaction.atomic():
                row = (ProcessingShard.objects.select_for_update(skip_locked=True)
                       .filter(shard=shard).first())
                if row is None:
                    return None
                events = _pending(shard, limit)
                if not events:
                    return 0
                events_process(events)
                row.last_run_at = clock.now()
                row.processed += len(events)
                row.save(update_fields=["last_run_at", "processed"])
                return len(events)
        except TRANSIENT as exc:
            # Redo the batch from the rows once the other worker's transaction is through.
            log.info("shard %s batch conflicted (attempt %d), retrying: %s", shard, attempt + 1, exc)
            if not isolate_failures and attempt == RETRIES - 1:
                raise
            _backoff(attempt)
        except Exception:
            if not isolate_failures:
                raise
            log.exception("shard %s batch failed; isolating the event that fails", shard)
            break
    return _process_one_by_one(shard, limit)


def _process_one_by_one(shard: int, limit: int) -> int:
    """Last resort: each event on its own, retried on conflicts; one that still fails is marked
    with its error so it never blocks the events behind it."""
    from leadflow.tracking.models import Event, ProcessingShard

    done = 0
    with transaction.atomic():
        if ProcessingShard.objects.select_for_update(skip_locked=True).filter(shard=shard).first() is None:
            return 0
        for event in _pending(shard, limit):
            for attempt in range(RETRIES):
                try:
                    with transaction.atomic():
                        events_process([event])
                    break
                except TRANSIENT as exc:
                    if attempt == RETRIES - 1:
                        _mark_failed(Event, event, exc)
                    else:
                        _backoff(attempt)
                except Exception as exc:
                    _mark_failed(Event, event, exc)
                    break
            done += 1
    return done


def _mark_failed(model, event, exc: Exception) -> None:
    log.error("event %s could not be processed: %s", event.pk, exc)
    model.objects.filter(pk=event.pk).update(processed_at=clock.now(), error=f"{type(exc).__name__}: {exc}"[:500])


def process_pending(*, max_batches: int | None = None, isolate_failures: bool = True) -> int:
    """Process pending events on every shard until none are left (or `max_batches` ran).

    With `isolate_failures` (the worker), an event that cannot be processed is marked with its
    error and the rest go on; without it (imports, which must be all or nothing), the error is
    raised so the caller's transaction rolls back.
    """
    shards_ensure()
    total = batches = 0
    while True:
        progressed = False
        for shard in range(settings.LEADFLOW_SHARDS):
            count = shard_process_batch(shard, isolate_failures=isolate_failures)
            if count:
                total += count
                batches += 1
                progressed = True
                if max_batches is not None and batches >= max_batches:
                    return total
        if not progressed:
            return total


def journeys_step() -> int:
    """Advance the journey enrollments that are due (a few passes), then deliver due webhooks
    (outside any transaction: HTTP must not hold row locks)."""
    from leadflow.journeys.engine import journeys_run_due
    from leadflow.journeys.webhooks import webhooks_dispatch

    done = journeys_run_due(max_passes=20)
    return done + webhooks_dispatch()


def email_dispatch() -> int:
    """Send the email that is due (outside any transaction: SMTP must not hold row locks)."""
    from leadflow.messaging.dispatch import dispatch_run

    return dispatch_run()


def worker_loop(*, idle_sleep: float = 0.2, stop: threading.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or `stop` is set), finishing the batch in hand first."""
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    log.info("worker started")
    timers_checked = float("-inf")
    try:
        while not stop.is_set():
            try:
                done = process_pending(max_batches=50)
                done += journeys_step()
                done += email_dispatch()
                if time.monotonic() - timers_checked >= TIMER_CHECK_SECONDS:
                    timers_run()  # each pass has its own interval; this only bounds how often we look
                    timers_checked = time.monotonic()
            except DatabaseError:
                log.exception("worker pass failed; retrying shortly")
                done = 0
                stop.wait(2.0)
            if not done:
                stop.wait(idle_sleep)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("worker stopped")
