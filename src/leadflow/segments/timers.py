"""Time-driven re-evaluation of segments: "in the last 30 days" lapses without any new event.

`segments_timers_run` is one periodic pass (core.pipeline runs it every 300 s, on one worker at a
time, in one transaction, with the injected clock's `now`):

- every active dynamic segment whose filter depends on the clock (`filter_time_sensitive`) is
  evaluated in full;
- contacts changed outside the pipeline since the previous pass (a stage moved by a lifecycle
  timer or by hand, traits edited through the API or the UI) are re-evaluated for the other
  dynamic segments;
- once every `RECONCILE_SECONDS` every other dynamic segment is evaluated in full too, which
  catches what no single contact's change announces (score decay, a company's traits).

Each evaluation locks the contacts it is about to move and decides again from committed rows, so
it can run beside the pipeline; running the pass twice at the same `now` changes nothing the
second time.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db.models import Exists, OuterRef, Q

from leadflow.segments.membership import (
    _dynamic_segments, _propagate, segment_filter, segment_reevaluate, segments_ordered,
)

log = logging.getLogger(__name__)

PASS_NAME = "segments.timers"
RECONCILE_NAME = "segments.reconcile"
RECONCILE_SECONDS = 3600


def segment_time_sensitive(segment) -> bool:
    from leadflow.segments.language import filter_time_sensitive

    return filter_time_sensitive(segment_filter(segment))


def _last_run(name: str):
    from leadflow.core.models import PeriodicRun

    return PeriodicRun.objects.filter(name=name).values_list("last_run_at", flat=True).first()


def _reconcile_due(now: dt.datetime) -> bool:
    from leadflow.core.models import PeriodicRun

    PeriodicRun.objects.bulk_create([PeriodicRun(name=RECONCILE_NAME)], ignore_conflicts=True)
    row = PeriodicRun.objects.select_for_update().get(name=RECONCILE_NAME)
    if row.last_run_at and (now - row.last_run_at).total_seconds() < RECONCILE_SECONDS:
        return False
    row.last_run_at = now
    row.save(update_fields=["last_run_at"])
    return True


def _changed_since(since: dt.datetime) -> Q:
    from leadflow.lifecycle.models import StageChange

    return Q(updated_at__gt=since) | Q(Exists(StageChange.objects.filter(contact=OuterRef("pk"), at__gt=since)))


def segments_timers_run(*, now: dt.datetime, reconcile: bool | None = None) -> dict[str, int]:
    """One pass over every workspace; returns counts of segments evaluated and contacts moved."""
    from leadflow.segments.models import Segment

    since = _last_run(PASS_NAME)
    if reconcile is None:
        reconcile = _reconcile_due(now)
    stats = {"evaluated": 0, "entered": 0, "exited": 0}
    workspaces = (Segment.objects.filter(kind="dynamic", archived_at__isnull=True)
                  .order_by().values_list("workspace_id", flat=True).distinct())
    for workspace_id in sorted(set(workspaces)):
        segments = segments_ordered(list(_dynamic_segments(workspace_id)))
        for segment in segments:
            full = reconcile or segment_time_sensitive(segment)
            if not full and since is None:
                continue
            scope = None if full else _changed_since(since)
            entered, exited = segment_reevaluate(segment=segment, now=now, scope=scope, verify=True)
            stats["evaluated"] += 1
            stats["entered"] += len(entered)
            stats["exited"] += len(exited)
            # Segments later in the order are evaluated anyway; those that are not (a dependent
            # evaluated only over changed contacts) get the contacts that moved here.
            if entered or exited:
                _propagate(workspace_id, [segment.pk], sorted(set(entered) | set(exited)), now)
    if stats["entered"] or stats["exited"]:
        log.info("segments timers: %(evaluated)d segments evaluated, %(entered)d entries, %(exited)d exits", stats)
    return stats
