"""The scoring stage of the pipeline: runs after identity resolution, inside the batch's transaction.

Per workspace in the batch, with a fixed number of queries whatever the batch size: load the
active rules and settings (2), read the points already granted today for capped rules (1), insert
the new ledger entries with ON CONFLICT DO NOTHING (1, so reprocessing never double-counts),
aggregate the touched contacts' engagement (1 per 900 contacts), load their companies (1) and
write fit score, grade and engagement back (1 statement per 1,000 changed contacts).
"""

from __future__ import annotations

from collections import defaultdict

from leadflow.contacts.models import Contact
from leadflow.contacts.processing import rows_update
from leadflow.core import clock
from leadflow.scoring import engine
from leadflow.scoring.models import ScoreEntry

SCORE_FIELDS = ["fit_score", "fit_grade", "engagement_score"]


def process_events(events: list) -> int:
    by_workspace: dict[int, list] = defaultdict(list)
    for event in events:
        if getattr(event, "contact_id", None) is not None:
            by_workspace[event.workspace_id].append(event)
    now = clock.now()
    for workspace_id, group in by_workspace.items():
        _process_workspace(workspace_id, group, now)
    return len(events)


def _process_workspace(workspace_id: int, events: list, now) -> None:
    settings = engine.settings_for(workspace_id)
    fit_rules, engagement_rules = engine.active_rules(workspace_id)
    entries = engine.entries_grant(workspace_id=workspace_id, events=events, rules=engagement_rules)
    if entries:
        ScoreEntry.objects.bulk_create(entries, ignore_conflicts=True)
    contacts: dict[int, Contact] = {}
    for event in events:
        contact = event.contact
        contacts.setdefault(contact.pk, contact)
    contacts_score(list(contacts.values()), settings=settings, fit_rules=fit_rules, now=now)


def contacts_score(contacts: list[Contact], *, settings, fit_rules, now) -> None:
    """Recompute both scores of in-memory contacts of one workspace and write the changed ones."""
    if not contacts:
        return
    before = {c.pk: (c.fit_score, c.fit_grade, c.engagement_score) for c in contacts}
    engine.contacts_fit_apply(contacts, fit_rules, settings)
    engagement = engine.engagement_scores(workspace_id=settings.workspace_id, contact_ids=before, now=now,
                                          half_life_days=settings.half_life_days)
    for contact in contacts:
        contact.engagement_score = engagement.get(contact.pk, 0.0)
    changed = [c for c in contacts if before[c.pk] != (c.fit_score, c.fit_grade, c.engagement_score)]
    rows_update(Contact, changed, SCORE_FIELDS)
