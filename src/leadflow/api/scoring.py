"""Scoring: rules (fit and engagement), settings, and why a contact has its scores."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from ninja import Router, Schema, Status
from ninja.errors import HttpError
from pydantic import Field

from leadflow.api.auth import actor
from leadflow.contacts import selectors as contact_selectors
from leadflow.scoring import selectors, services
from leadflow.scoring.models import ScoringRule

router = Router(tags=["scoring"])


class RuleIn(Schema):
    kind: str = Field(description="'fit' (who they are) or 'engagement' (what they do)")
    name: str
    condition: Any = Field(description="see docs/scoring.md for the condition language")
    points: int = Field(description="may be negative")
    daily_cap: int | None = Field(None, description="engagement: most points per contact per UTC day")
    expires_after_days: int | None = Field(None, description="engagement: points stop counting after N days")
    active: bool = True


class RulePatch(Schema):
    name: str | None = None
    condition: Any = None
    points: int | None = None
    daily_cap: int | None = None
    expires_after_days: int | None = None
    active: bool | None = None


class RuleOut(Schema):
    id: int
    kind: str
    name: str
    condition: Any
    points: int
    daily_cap: int | None
    expires_after_days: int | None
    active: bool
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


class SettingsIO(Schema):
    grade_a: int = Field(description="fit score for grade A (at least)")
    grade_b: int
    grade_c: int
    half_life_days: float = Field(description="engagement halves every N days; 0 = no decay")


class SettingsPatch(Schema):
    grade_a: int | None = None
    grade_b: int | None = None
    grade_c: int | None = None
    half_life_days: float | None = None


class FitRuleOut(Schema):
    rule_id: int
    rule: str
    points: int


class EntryOut(Schema):
    rule_id: int
    rule: str
    rule_active: bool
    event_id: int
    at: dt.datetime
    points: int
    points_now: float
    expired: bool
    expires_at: dt.datetime | None


class ExplainOut(Schema):
    contact_id: int
    at: dt.datetime
    fit_score: int
    fit_grade: str
    fit_total: int
    fit_grade_now: str
    fit_rules: list[FitRuleOut]
    engagement_score: float
    engagement_total: float
    engagement_entries: list[EntryOut]
    half_life_days: float
    conversion_probability: float | None
    grades: dict[str, int]


def _rule(request, rule_id: int) -> ScoringRule:
    rule = selectors.rule_get(workspace=request.workspace, rule_id=rule_id)
    if rule is None:
        raise HttpError(404, f"no scoring rule {rule_id} in this workspace")
    return rule


@router.get("/rules", response=list[RuleOut], summary="List scoring rules (fit first, then engagement)")
def rules_list(request, kind: str | None = None):
    return list(selectors.rules_list(workspace=request.workspace, kind=kind))


@router.post("/rules", response={201: RuleOut},
             summary="Create a rule; fit rules rescore every contact, engagement rules apply to new events")
def rules_create(request, payload: RuleIn):
    rule = services.rule_create(workspace=request.workspace, actor=actor(request), **payload.dict())
    return Status(201, rule)


@router.get("/rules/{rule_id}", response=RuleOut, summary="One scoring rule")
def rules_get(request, rule_id: int):
    return _rule(request, rule_id)


@router.patch("/rules/{rule_id}", response=RuleOut,
              summary="Change a rule (only the fields sent; null clears a cap or expiry) and rescore")
def rules_update(request, rule_id: int, payload: RulePatch):
    rule = _rule(request, rule_id)
    changes = payload.dict(exclude_unset=True)
    for name in ("name", "condition", "points", "active"):
        if name in changes and changes[name] is None:
            raise HttpError(400, f"{name}: cannot be null")
    return services.rule_update(rule=rule, changes=changes, actor=actor(request))


@router.delete("/rules/{rule_id}", response={204: None},
               summary="Delete a rule and the engagement points it granted; scores are recomputed")
def rules_delete(request, rule_id: int):
    services.rule_delete(rule=_rule(request, rule_id), actor=actor(request))
    return Status(204, None)


@router.get("/settings", response=SettingsIO, summary="Grade thresholds and engagement half-life")
def settings_get(request):
    return selectors.settings_get(workspace=request.workspace)


@router.put("/settings", response=SettingsIO, summary="Change grade thresholds or half-life and rescore")
def settings_put(request, payload: SettingsPatch):
    changes = {k: v for k, v in payload.dict(exclude_unset=True).items() if v is not None}
    with transaction.atomic():
        return services.settings_update(workspace=request.workspace, changes=changes, actor=actor(request))


@router.get("/contacts/{contact_id}/explain", response=ExplainOut,
            summary="Which rules gave a contact its fit and engagement points, and when")
def contacts_explain(request, contact_id: int):
    contact = contact_selectors.contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    return selectors.score_explain(contact=contact)
