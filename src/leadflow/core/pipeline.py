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

from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, transaction

from leadflow.core import clock

log = logging.getLogger(__name__)

RETRIES = 5


def shards_ensure() -> None:
    from leadflow.tracking.models import ProcessingShard

    ProcessingShard.objects.bulk_create(
        [ProcessingShard(shard=n) for n in range(settings.LEADFLOW_SHARDS)], ignore_conflicts=True)


def _stages():
    from leadflow.contacts.processing import process_events

    return [process_events]


def _pending(shard: int, limit: int):
    from leadflow.tracking.models import Event

    return list(Event.objects.filter(shard=shard, processed_at__isnull=True).order_by("id")[:limit])


def _run_stages(events: list) -> None:
    for stage in _stages():
        stage(events)


def shard_process_batch(shard: int, *, limit: int | None = None) -> int | None:
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
                _run_stages(events)
                row.last_run_at = clock.now()
                row.processed += len(events)
                row.save(update_fields=["last_run_at", "processed"])
                return len(events)
        except (IntegrityError, OperationalError) as exc:
            # Two workers created the same identity, or a deadlock: redo the batch from the rows.
            log.info("shard %s batch conflicted (attempt %d), retrying: %s", shard, attempt + 1, exc)
            time.sleep(random.uniform(0.0, 0.05 * (attempt + 1)))
    return _process_one_by_one(shard, limit)


def _process_one_by_one(shard: int, limit: int) -> int:
    """Last resort after repeated failures: isolate the event that cannot be processed."""
    from leadflow.tracking.models import Event, ProcessingShard

    done = 0
    with transaction.atomic():
        if ProcessingShard.objects.select_for_update(skip_locked=True).filter(shard=shard).first() is None:
            return 0
        for event in _pending(shard, limit):
            try:
                with transaction.atomic():
                    _run_stages([event])
            except DatabaseError as exc:
                log.error("event %s could not be processed: %s", event.pk, exc)
                Event.objects.filter(pk=event.pk).update(processed_at=clock.now(),
                                                         error=str(exc)[:500])
            done += 1
    return done


def process_pending(*, max_batches: int | None = None) -> int:
    """Process pending events on every shard until none are left (or `max_batches` ran)."""
    shards_ensure()
    total = batches = 0
    while True:
        progressed = False
        for shard in range(settings.LEADFLOW_SHARDS):
            count = shard_process_batch(shard)
            if count:
                total += count
                batches += 1
                progressed = True
                if max_batches is not None and batches >= max_batches:
                    return total
        if not progressed:
            return total


def worker_loop(*, idle_sleep: float = 0.2, stop: threading.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or `stop` is set), finishing the batch in hand first."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    log.info("worker started")
    while not stop.is_set():
        try:
            done = process_pending(max_batches=50)
        except DatabaseError:
            log.exception("worker pass failed; retrying shortly")
            done = 0
            stop.wait(2.0)
        if not done:
            stop.wait(idle_sleep)
    log.info("worker stopped")


