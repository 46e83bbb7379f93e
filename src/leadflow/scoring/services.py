"""Writes on scoring: rules, settings, the defaults of a new workspace, rescoring and replay.

Rule changes and engagement: the ledger records what each event earned under the rule as it was
when the event was processed (docs/scoring.md, "Changing rules"). A new or edited engagement rule
applies to events processed from then on; deactivating a rule removes its points at once
(entries of inactive rules do not count) and reactivating restores them; deleting a rule deletes
its entries. To apply a changed rule to history, replay stored events:
`leadflow scoring rescore --backfill-days N` (`events_replay`). Fit has no history: every change
recomputes every contact's fit.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import IntegrityError, transaction

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError, audit_record
from leadflow.scoring import conditions, defaults, engine
from leadflow.scoring.models import RuleKind, ScoreEntry, ScoringRule, ScoringSettings

REPLAY_BATCH = 5000


def scoring_defaults_ensure(*, workspace_id: int) -> ScoringSettings:
    """The workspace's settings, creating them and the default rules on first use."""
    found = ScoringSettings.objects.filter(workspace_id=workspace_id).first()
    if found is not None:
        return found
    now = clock.now()
    try:
        with transaction.atomic():
            settings = ScoringSettings.objects.create(workspace_id=workspace_id, updated_at=now)
            rules = [ScoringRule(workspace_id=workspace_id, kind=RuleKind.FIT, created_at=now, updated_at=now,
                                 **spec) for spec in defaults.FIT_RULES]
            rules += [ScoringRule(workspace_id=workspace_id, kind=RuleKind.ENGAGEMENT, created_at=now,
                                  updated_at=now, **spec) for spec in defaults.ENGAGEMENT_RULES]
            ScoringRule.objects.bulk_create(rules)
    except IntegrityError:  # another process created them first
        return ScoringSettings.objects.get(workspace_id=workspace_id)
    return settings


def _clean(*, kind: str, name: str, condition: Any, points: Any, daily_cap: Any,
           expires_after_days: Any) -> dict:
    if kind not in RuleKind.values:
        raise ServiceError(f"kind: must be 'fit' or 'engagement', not {kind!r}")
    name = (name or "").strip()
    if not name:
        raise ServiceError("name: a rule needs a name")
    if len(name) > 200:
        raise ServiceError("name: 200 characters at most")
    try:
        condition = conditions.condition_validate(kind=kind, condition=condition)
    except conditions.ConditionError as exc:
        raise ServiceError(str(exc)) from None
    if isinstance(points, bool) or not isinstance(points, int):
        raise ServiceError("points: must be a whole number (negative to subtract)")
    if not -1000 <= points <= 1000:
        raise ServiceError("points: between -1000 and 1000")
    for label, value in (("daily_cap", daily_cap), ("expires_after_days", expires_after_days)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ServiceError(f"{label}: a whole number of at least 1, or empty for none")
    if kind == RuleKind.FIT and (daily_cap is not None or expires_after_days is not None):
        raise ServiceError("daily_cap and expires_after_days apply to engagement rules only")
    return {"kind": kind, "name": name, "condition": condition, "points": points,
            "daily_cap": daily_cap, "expires_after_days": expires_after_days}


def rule_create(*, workspace: Workspace, kind: str, name: str, condition: Any, points: int,
                daily_cap: int | None = None, expires_after_days: int | None = None, active: bool = True,
                actor: str) -> ScoringRule:
    scoring_defaults_ensure(workspace_id=workspace.pk)
    values = _clean(kind=kind, name=name, condition=condition, points=points, daily_cap=daily_cap,
                    expires_after_days=expires_after_days)
    now = clock.now()
    with transaction.atomic():
        rule = ScoringRule.objects.create(workspace=workspace, active=bool(active), created_at=now,
                                          updated_at=now, **values)
        audit_record(workspace=workspace, actor=actor, action="scoring.rule.create",
                     target=f"scoring_rule:{rule.pk}", data={"name": rule.name, "kind": rule.kind})
        if rule.kind == RuleKind.FIT:  # a new engagement rule applies to events from now on
            rules_rescore(workspace=workspace, fit=True, engagement=False)
    return rule


RULE_FIELDS = ("name", "condition", "points", "daily_cap", "expires_after_days", "active")


def rule_update(*, rule: ScoringRule, changes: dict, actor: str) -> ScoringRule:
    """Change any of RULE_FIELDS (the kind is fixed); bumps the rule's version and rescores."""
    unknown = set(changes) - set(RULE_FIELDS)
    if unknown:
        raise ServiceError(f"{sorted(unknown)[0]}: cannot be changed")
    merged = {name: changes.get(name, getattr(rule, name)) for name in RULE_FIELDS}
    values = _clean(kind=rule.kind, name=merged["name"], condition=merged["condition"],
                    points=merged["points"], daily_cap=merged["daily_cap"],
                    expires_after_days=merged["expires_after_days"])
    was_active = rule.active
    with transaction.atomic():
        for name, value in values.items():
            setattr(rule, name, value)
        rule.active = bool(merged["active"])
        rule.version += 1
        rule.updated_at = clock.now()
        rule.save()
        audit_record(workspace=rule.workspace, actor=actor, action="scoring.rule.update",
                     target=f"scoring_rule:{rule.pk}", data={"fields": sorted(changes), "version": rule.version})
        rules_rescore(workspace=rule.workspace,
                      fit=rule.kind == RuleKind.FIT,
                      engagement=rule.kind == RuleKind.ENGAGEMENT and was_active != rule.active)
    return rule


def rule_delete(*, rule: ScoringRule, actor: str) -> None:
    """Delete a rule and (engagement) the points it granted; every affected score is recomputed."""
    workspace, kind = rule.workspace, rule.kind
    with transaction.atomic():
        audit_record(workspace=workspace, actor=actor, action="scoring.rule.delete",
                     target=f"scoring_rule:{rule.pk}", data={"name": rule.name, "kind": kind})
        rule.delete()
        rules_rescore(workspace=workspace, fit=kind == RuleKind.FIT, engagement=kind == RuleKind.ENGAGEMENT)


def settings_update(*, workspace: Workspace, changes: dict, actor: str) -> ScoringSettings:
    settings = scoring_defaults_ensure(workspace_id=workspace.pk)
    allowed = {"grade_a", "grade_b", "grade_c", "half_life_days"}
    unknown = set(changes) - allowed
    if unknown:
        raise ServiceError(f"{sorted(unknown)[0]}: not a scoring setting")
    values = {name: changes.get(name, getattr(settings, name)) for name in allowed}
    for name in ("grade_a", "grade_b", "grade_c"):
        if isinstance(values[name], bool) or not isinstance(values[name], int):
            raise ServiceError(f"{name}: must be a whole number")
    if not values["grade_a"] >= values["grade_b"] >= values["grade_c"]:
        raise ServiceError("grade thresholds: A must be at least B, and B at least C")
    half_life = values["half_life_days"]
    if isinstance(half_life, bool) or not isinstance(half_life, (int, float)) or not 0 <= half_life <= 3650:
        raise ServiceError("half_life_days: a number of days from 0 (no decay) to 3650")
    grades_changed = any(values[n] != getattr(settings, n) for n in ("grade_a", "grade_b", "grade_c"))
    decay_changed = float(half_life) != settings.half_life_days
    with transaction.atomic():
        for name, value in values.items():
            setattr(settings, name, value)
        settings.half_life_days = float(half_life)
        settings.updated_at = clock.now()
        settings.save()
        audit_record(workspace=workspace, actor=actor, action="scoring.settings.update",
                     target=f"workspace:{workspace.pk}", data={"fields": sorted(changes)})
        rules_rescore(workspace=workspace, fit=grades_changed, engagement=decay_changed)
    return settings


def rules_rescore(*, workspace: Workspace, fit: bool = True, engagement: bool = True,
                  now: dt.datetime | None = None) -> dict:
    """Recompute fit (every contact, streamed) and/or engagement (every contact with ledger
    entries, one aggregate UPDATE per id range). Returns how many contacts changed."""
    settings = scoring_defaults_ensure(workspace_id=workspace.pk)
    result = {"fit_changed": 0, "engagement_changed": 0}
    if fit:
        result["fit_changed"] = engine.fit_rescore_workspace(workspace_id=workspace.pk, settings=settings)
    if engagement:
        result["engagement_changed"] = engine.engagement_rescore_workspace(
            workspace_id=workspace.pk, now=now or clock.now(), half_life_days=settings.half_life_days)
    return result


def contact_rescore(*, contact: Contact) -> Contact:
    """Recompute one contact's scores now (after a merge or a manual trait edit)."""
    contacts_rescore(workspace_id=contact.workspace_id, contacts=[contact])
    return contact


def contacts_rescore(*, workspace_id: int, contacts) -> None:
    """Recompute the scores of some contacts of one workspace now (e.g. a company's, after its
    traits were edited), in batches."""
    from leadflow.scoring.processing import contacts_score

    settings = scoring_defaults_ensure(workspace_id=workspace_id)
    fit_rules, _ = engine.active_rules(workspace_id)
    batch = []
    for contact in contacts:
        batch.append(contact)
        if len(batch) == 1000:
            contacts_score(batch, settings=settings, fit_rules=fit_rules, now=clock.now())
            batch = []
    if batch:
        contacts_score(batch, settings=settings, fit_rules=fit_rules, now=clock.now())


def events_replay(*, workspace: Workspace, since: dt.datetime, rule: ScoringRule | None = None,
                  batch: int = REPLAY_BATCH) -> dict:
    """Rebuild the engagement ledger from the event log from `since` on, under today's rules
    (or only `rule`), then recompute every contact's scores. Idempotent; each batch of events is
    one transaction-free pass of the same code the pipeline stage runs."""
    from leadflow.tracking.models import Event

    settings = scoring_defaults_ensure(workspace_id=workspace.pk)
    _, rules = engine.active_rules(workspace.pk)
    if rule is not None:
        rules = [r for r in rules if r.pk == rule.pk]
    entries = ScoreEntry.objects.filter(workspace=workspace, at__gte=since)
    entries = entries.filter(rule=rule) if rule is not None else entries.filter(rule__kind=RuleKind.ENGAGEMENT)
    removed, _ = entries.delete()
    last, seen, granted = 0, 0, 0
    while rules:
        events = list(Event.objects.filter(workspace=workspace, pk__gt=last, timestamp__gte=since,
                                           contact__isnull=False, processed_at__isnull=False)
                      .order_by("pk")[:batch])
        if not events:
            break
        new = engine.entries_grant(workspace_id=workspace.pk, events=events, rules=rules)
        ScoreEntry.objects.bulk_create(new, ignore_conflicts=True)
        seen, granted, last = seen + len(events), granted + len(new), events[-1].pk
    rescored = rules_rescore(workspace=workspace, fit=True, engagement=True)
    return {"events": seen, "entries_removed": removed, "entries_granted": granted, **rescored,
            "half_life_days": settings.half_life_days}
