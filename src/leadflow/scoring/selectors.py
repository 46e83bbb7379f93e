"""Reads on scoring: rules, settings and the explanation of a contact's scores."""

from __future__ import annotations

import datetime as dt

from django.db.models import QuerySet

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.scoring import engine
from leadflow.scoring.models import ScoreEntry, ScoringRule, ScoringSettings
from leadflow.scoring.services import scoring_defaults_ensure

EXPLAIN_ENTRIES = 200


def rules_list(*, workspace: Workspace, kind: str | None = None) -> QuerySet[ScoringRule]:
    scoring_defaults_ensure(workspace_id=workspace.pk)
    rules = ScoringRule.objects.filter(workspace=workspace)
    if kind:
        rules = rules.filter(kind=kind)
    return rules.order_by("kind", "-active", "-points", "pk")


def rule_get(*, workspace: Workspace, rule_id: int) -> ScoringRule | None:
    return ScoringRule.objects.filter(workspace=workspace, pk=rule_id).first()


def settings_get(*, workspace: Workspace) -> ScoringSettings:
    return scoring_defaults_ensure(workspace_id=workspace.pk)


def score_explain(*, contact: Contact, now: dt.datetime | None = None, limit: int = EXPLAIN_ENTRIES) -> dict:
    """Why the contact has its scores: the fit rules it matches and its engagement ledger.

    `fit_total` and `engagement_total` are recomputed at `now` (default: the clock) with the same
    formulas the stage and the decay pass store, so they equal the stored scores as of the last
    pass (the hourly decay pass may lag by up to an hour of decay). Entries are newest first;
    all of them count in the totals even when only the newest `limit` are listed.
    """
    now = now or clock.now()
    settings = scoring_defaults_ensure(workspace_id=contact.workspace_id)
    fit_rules, _ = engine.active_rules(contact.workspace_id)
    facts = engine.contact_facts(contact, contact.company if contact.company_id else None)
    matched = engine.fit_matched(fit_rules, facts)
    fit_total = sum(r.points for r in matched)
    entries = []
    total = 0.0
    for entry in (ScoreEntry.objects.filter(workspace_id=contact.workspace_id, contact=contact)
                  .select_related("rule").order_by("-at", "-id")):
        expired = entry.expires_at is not None and entry.expires_at <= now
        worth = (engine.points_now(points=entry.points, at=entry.at, now=now,
                                   half_life_days=settings.half_life_days, expires_at=entry.expires_at)
                 if entry.rule.active else 0.0)
        total += worth
        if len(entries) < limit:
            entries.append({"rule_id": entry.rule_id, "rule": entry.rule.name, "rule_active": entry.rule.active,
                            "event_id": entry.event_id, "at": entry.at, "points": entry.points,
                            "points_now": round(worth, 2), "expired": expired, "expires_at": entry.expires_at})
    return {
        "contact_id": contact.pk,
        "at": now,
        "fit_score": contact.fit_score,
        "fit_grade": contact.fit_grade,
        "fit_total": fit_total,
        "fit_grade_now": engine.grade_for(fit_total, settings),
        "fit_rules": [{"rule_id": r.pk, "rule": r.name, "points": r.points} for r in matched],
        "engagement_score": contact.engagement_score,
        "engagement_total": round(total, 2),
        "engagement_entries": entries,
        "half_life_days": settings.half_life_days,
        "conversion_probability": contact.conversion_probability,
        "grades": {"A": settings.grade_a, "B": settings.grade_b, "C": settings.grade_c},
    }
