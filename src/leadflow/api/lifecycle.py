"""Lifecycle settings, routing rules and a contact's stage history over the API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ninja import Field, Router, Schema, Status
from ninja.errors import HttpError

from leadflow.api.auth import actor
from leadflow.contacts.selectors import contact_get
from leadflow.lifecycle import selectors, services
from leadflow.lifecycle.models import RoutingRule

router = Router(tags=["lifecycle"])


class SettingsOut(Schema):
    stages: list[dict[str, Any]]
    mql_grades: list[str]
    mql_engagement_threshold: float
    hot_events: list[str]
    subscriber_events: list[str]
    inactive_days: int
    accept_sla_hours: float
    work_sla_hours: float
    on_accept_breach: str
    recycle_days: int
    default_pool: list[int]


class SettingsIn(Schema):
    stages: list[dict[str, Any]] | None = None
    mql_grades: list[str] | None = None
    mql_engagement_threshold: float | None = None
    hot_events: list[str] | None = None
    subscriber_events: list[str] | None = None
    inactive_days: int | None = None
    accept_sla_hours: float | None = None
    work_sla_hours: float | None = None
    on_accept_breach: str | None = Field(None, description="reassign or escalate")
    recycle_days: int | None = None
    default_pool: list[int | str] | None = Field(None, description="user ids or usernames, round-robin order")


class RuleIn(Schema):
    name: str = Field(min_length=1, max_length=200)
    priority: int = 100
    countries: list[str] = []
    employees_min: int | None = None
    employees_max: int | None = None
    source_channels: list[str] = []
    target_user: int | str | None = None
    pool: list[int | str] = []
    active: bool = True


class RulePatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=200)
    priority: int | None = None
    countries: list[str] | None = None
    employees_min: int | None = None
    employees_max: int | None = None
    source_channels: list[str] | None = None
    target_user: int | str | None = None
    pool: list[int | str] | None = None
    active: bool | None = None


class RuleOut(Schema):
    id: int
    name: str
    priority: int
    countries: list[str]
    employees_min: int | None
    employees_max: int | None
    source_channels: list[str]
    target_user: int | None
    pool: list[int]
    active: bool


class StageChangeOut(Schema):
    id: int
    from_stage: str
    to_stage: str
    at: dt.datetime
    reason: str
    actor: str


class StageIn(Schema):
    stage: str
    reason: str = Field("", max_length=500)


def _settings_out(s) -> dict:
    return {name: getattr(s, name) for name in SettingsOut.model_fields}


def _rule_out(rule: RoutingRule) -> dict:
    return {"id": rule.pk, "name": rule.name, "priority": rule.priority, "countries": rule.countries,
            "employees_min": rule.employees_min, "employees_max": rule.employees_max,
            "source_channels": rule.source_channels, "target_user": rule.target_user_id, "pool": rule.pool,
            "active": rule.active}


@router.get("/settings", response=SettingsOut, summary="Stages, MQL rule, SLAs and default pool")
def settings_get(request):
    return _settings_out(services.lifecycle_settings_get(workspace_id=request.workspace.pk))


@router.put("/settings", response=SettingsOut, summary="Edit the settings (only the fields sent)")
def settings_put(request, body: SettingsIn):
    changes = body.dict(exclude_unset=True)
    return _settings_out(services.lifecycle_settings_update(workspace=request.workspace, changes=changes,
                                                            actor=actor(request)))


@router.get("/routing-rules", response=list[RuleOut], summary="Routing rules by priority")
def rules_list(request):
    return [_rule_out(r) for r in selectors.routing_rules(workspace=request.workspace)]


def _rule(request, rule_id: int) -> RoutingRule:
    rule = selectors.routing_rule_get(workspace=request.workspace, rule_id=rule_id)
    if rule is None:
        raise HttpError(404, f"no routing rule {rule_id} in this workspace")
    return rule


@router.post("/routing-rules", response={201: RuleOut}, summary="Create a routing rule")
def rules_create(request, body: RuleIn):
    rule = services.routing_rule_save(workspace=request.workspace, changes=body.dict(), actor=actor(request))
    return Status(201, _rule_out(rule))


@router.get("/routing-rules/{rule_id}", response=RuleOut)
def rules_get(request, rule_id: int):
    return _rule_out(_rule(request, rule_id))


@router.patch("/routing-rules/{rule_id}", response=RuleOut, summary="Edit a routing rule")
def rules_update(request, rule_id: int, body: RulePatch):
    rule = services.routing_rule_save(workspace=request.workspace, rule=_rule(request, rule_id),
                                      changes=body.dict(exclude_unset=True), actor=actor(request))
    return _rule_out(rule)


@router.delete("/routing-rules/{rule_id}", response={204: None}, summary="Delete a routing rule")
def rules_delete(request, rule_id: int):
    services.routing_rule_delete(rule=_rule(request, rule_id), actor=actor(request))
    return Status(204, None)


def _contact(request, contact_id: int):
    contact = contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    return contact


@router.get("/contacts/{contact_id}/stages", response=list[StageChangeOut],
            summary="A contact's stage history, oldest first")
def contact_stages(request, contact_id: int):
    contact = _contact(request, contact_id)
    return list(selectors.stage_history(workspace=request.workspace, contact_id=contact.pk))


@router.post("/contacts/{contact_id}/stage", response=StageChangeOut,
             summary="Set a contact's stage explicitly (any stage; recorded as api:KEY)")
def contact_stage_set(request, contact_id: int, body: StageIn):
    contact = _contact(request, contact_id)
    return services.contact_stage_set(contact=contact, to_stage=body.stage, reason=body.reason or "set via API",
                                      actor=f"api:{request.api_key.prefix}")
