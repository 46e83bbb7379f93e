"""The periodic decay pass: engagement cools down as ledger entries age or expire.

Run hourly by the worker (core.pipeline._timers) with the injected clock's `now`. Set-based and
idempotent: per workspace, one `UPDATE … FROM (SELECT contact_id, SUM(decayed points) … GROUP BY
contact_id)` per range of 5,000 contact ids, writing only values that changed. Running it twice at
the same `now` changes nothing the second time.
"""

from __future__ import annotations

import datetime as dt
import logging

from leadflow.scoring import engine
from leadflow.scoring.models import ScoringSettings

log = logging.getLogger(__name__)


def decay_run(*, now: dt.datetime, batch: int = engine.BATCH) -> int:
    """Recompute every workspace's engagement at `now`; returns contacts whose score changed."""
    written = 0
    for settings in ScoringSettings.objects.order_by("workspace_id"):
        written += engine.engagement_rescore_workspace(workspace_id=settings.workspace_id, now=now,
                                                       half_life_days=settings.half_life_days, batch=batch)
    if written:
        log.info("score decay: %d contacts changed", written)
    return written
