"""A pipeline stage that keeps conversion probabilities current (not wired in by default).

Add `process_events` to `leadflow.core.pipeline._stages()` after the scoring stage: every batch
then rescores, with the workspace's active model, the contacts its events touched. Workspaces
without a trained model cost one indexed query per batch.
"""

from __future__ import annotations

import logging

from leadflow.predictive.services import PredictiveError, predictive_score_contacts

log = logging.getLogger(__name__)


def process_events(events: list) -> int:
    """Score the contacts of a batch of processed events; returns how many were scored."""
    by_workspace: dict[int, set[int]] = {}
    for event in events:
        if event.contact_id is not None:
            by_workspace.setdefault(event.workspace_id, set()).add(event.contact_id)
    scored = 0
    for workspace_id, ids in by_workspace.items():
        try:
            scored += predictive_score_contacts(workspace=workspace_id, contact_ids=ids)
        except PredictiveError as exc:  # a model that cannot load must not stop event processing
            log.warning("workspace %s: predictive scoring skipped: %s", workspace_id, exc)
    return scored
