"""Writes of the lifecycle: stage transitions, routing, alerts, sales actions, tasks, settings.

Every stage change goes through `transitions_apply`: a StageChange row, the contact's
`lifecycle_stage`/`stage_changed_at`, and a `Lifecycle Stage Changed` event in the log, all in
the caller's transaction. Sales actions (tasks too) take the acting user and check that they are
the owner, the owner's manager or a workspace admin (docs/lifecycle.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, F, Q, Window
from django.db.models.functions import RowNumber

from leadflow.contacts.models import Contact
from leadflow.contacts.processing import rows_update
from leadflow.core import clock
from leadflow.core.models import Membership, Role, Workspace
from leadflow.core.services import ServiceError, audit_record
from leadflow.lifecycle import rules
from leadflow.lifecycle.models import (
    CUSTOMER, DISQUALIFIED, OPEN_STATUSES, OPPORTUNITY, RECYCLED, SAL, SQL, Assignment,
    AssignmentStatus, BreachAction, LifecycleSettings, Notification, QuietMark, RoutingRule,
    SalesAlert, SalesRep, SalesTask, StageChange,
)

log = logging.getLogger(__name__)

STAGE_EVENT = "Lifecycle Stage Changed"
QUIET_EVENT = "Lead Went Quiet"
HIGH_INTENT_PATHS = ("/pricing", "/demo", "/contact")
TIMELINE_LENGTH = 10
SALES_ROLES = (Role.SALES, Role.ADMIN)


class NotAllowed(ServiceError):
    """The acting user may not do this to this lead."""


# --- settings ---------------------------------------------------------------------------------

def lifecycle_settings_get(*, workspace_id: int) -> LifecycleSettings:
    """The workspace's settings, created with the defaults on first use."""
    found = LifecycleSettings.objects.filter(workspace_id=workspace_id).first()
    if found is not None:
        return found
    LifecycleSettings.objects.bulk_create([LifecycleSettings(workspace_id=workspace_id)], ignore_conflicts=True)
    return LifecycleSettings.objects.get(workspace_id=workspace_id)


def _user_ids(workspace: Workspace, values: object, what: str) -> list[int]:
    if not isinstance(values, list):
        raise ServiceError(f"{what} must be a list of user ids or usernames")
    out = []
    for value in values:
        user = user_resolve(workspace=workspace, ref=value)
        if user.pk not in out:
            out.append(user.pk)
    return out


def lifecycle_settings_update(*, workspace: Workspace, changes: dict, actor: str) -> LifecycleSettings:
    """Edit stages, MQL rule, SLAs and the default pool; unknown or bad values are refused."""
    current = lifecycle_settings_get(workspace_id=workspace.pk)
    clean: dict = {}
    for name, value in changes.items():
        if value is None:
            continue
        if name == "stages":
            try:
                clean[name] = rules.stages_validate(value)
            except rules.RuleError as exc:
                raise ServiceError(str(exc)) from None
        elif name == "mql_grades":
            if not isinstance(value, list) or any(g not in rules.GRADES for g in value):
                raise ServiceError("mql_grades must be a list of grades A, B, C, D")
            clean[name] = sorted(set(value))
        elif name in ("hot_events", "subscriber_events"):
            if not isinstance(value, list) or any(not isinstance(v, str) or not v.strip() for v in value):
                raise ServiceError(f"{name} must be a list of event names")
            clean[name] = [v.strip() for v in value]
        elif name in ("mql_engagement_threshold", "accept_sla_hours", "work_sla_hours"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or \
                    (name != "mql_engagement_threshold" and value == 0):
                raise ServiceError(f"{name} must be a positive number")
            clean[name] = float(value)
        elif name in ("inactive_days", "recycle_days"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServiceError(f"{name} must be a whole number of days, at least 1")
            clean[name] = value
        elif name == "on_accept_breach":
            if value not in BreachAction.values:
                raise ServiceError(f"on_accept_breach must be one of {', '.join(BreachAction.values)}")
            clean[name] = value
        elif name == "default_pool":
            clean[name] = _user_ids(workspace, value, "default_pool")
        else:
            raise ServiceError(f"unknown lifecycle setting {name!r}")
    with transaction.atomic():
        locked = LifecycleSettings.objects.select_for_update().get(pk=current.pk)
        for name, value in clean.items():
            setattr(locked, name, value)
        locked.updated_at = clock.now()
        locked.save()
        audit_record(workspace=workspace, actor=actor, action="lifecycle.settings.update",
                     data={"fields": sorted(clean)})
    return locked


def user_resolve(*, workspace: Workspace | int, ref: object):
    """A member of the workspace by id or username, or ServiceError."""
    User = get_user_model()
    workspace_id = workspace if isinstance(workspace, int) else workspace.pk
    if isinstance(ref, bool) or ref is None or ref == "":
        raise ServiceError("a user id or username is required")
    query = Q(pk=int(ref)) if isinstance(ref, int) or str(ref).isdigit() else Q(username=str(ref))
    user = User.objects.filter(query, memberships__workspace_id=workspace_id).first()
    if user is None:
        raise ServiceError(f"no member {ref!r} in this workspace")
    return user


# --- stage transitions ------------------------------------------------------------------------

@dataclass
class Transition:
    contact: Contact
    to_stage: str
    reason: str
    actor: str


def transitions_apply(*, workspace_id: int, transitions: list[Transition], now: dt.datetime,
                      extra_contact_fields: tuple[str, ...] = ()) -> list[StageChange]:
    """Record transitions (in order; several per contact chain) and write the contacts back.

    One insert of StageChange rows, one contact update, one append to the event log and one
    update marking those events processed, whatever the number of transitions.
    """
    if not transitions:
        return []
    changes, touched = [], {}
    for t in transitions:
        contact = t.contact
        changes.append(StageChange(workspace_id=workspace_id, contact=contact, from_stage=contact.lifecycle_stage,
                                   to_stage=t.to_stage, at=now, reason=t.reason[:500], actor=t.actor[:200]))
        contact.lifecycle_stage = t.to_stage
        contact.stage_changed_at = now
        touched[contact.pk] = contact
    StageChange.objects.bulk_create(changes)
    rows_update(Contact, list(touched.values()), ["lifecycle_stage", "stage_changed_at", *extra_contact_fields])
    system_events_append(workspace_id=workspace_id, now=now, items=[
        (c.contact, f"lf-stage-{c.pk}", STAGE_EVENT,
         {"from": c.from_stage, "to": c.to_stage, "reason": c.reason, "actor": c.actor})
        for c in changes])
    return changes


def system_events_append(*, workspace_id: int, now: dt.datetime, items: list[tuple]) -> None:
    """Append lifecycle events (contact, message id, name, properties), resolved and processed."""
    from leadflow.tracking.system_events import system_events_append as append

    append(workspace_id=workspace_id, now=now, items=items, system="lifecycle")


def _order(workspace_id: int) -> rules.StageOrder:
    return rules.StageOrder.of(lifecycle_settings_get(workspace_id=workspace_id).stages)


def contact_stage_set(*, contact: Contact, to_stage: str, reason: str, actor: str) -> StageChange:
    """An explicit move by a person or the API: any known stage, forward or not.

    Moving to recycled, disqualified or churned closes the contact's open assignment.
    """
    order = _order(contact.workspace_id)
    if not rules.explicit_move_allowed(order, contact.lifecycle_stage, to_stage):
        if to_stage == contact.lifecycle_stage:
            raise ServiceError(f"the contact is already {to_stage}")
        raise ServiceError(f"unknown stage {to_stage!r}")
    now = clock.now()
    with transaction.atomic():
        contact = Contact.objects.select_for_update().get(pk=contact.pk)
        if to_stage in rules.EXIT_STAGES:
            status = {RECYCLED: AssignmentStatus.RECYCLED, DISQUALIFIED: AssignmentStatus.DISQUALIFIED}.get(
                to_stage, AssignmentStatus.CLOSED)
            Assignment.objects.filter(contact=contact, status__in=OPEN_STATUSES).update(
                status=status, closed_at=now, reason=reason[:500])
        (change,) = transitions_apply(workspace_id=contact.workspace_id, now=now,
                                      transitions=[Transition(contact, to_stage, reason, actor)])
        audit_record(workspace=contact.workspace, actor=actor, action="lifecycle.stage.set",
                     target=f"contact:{contact.pk}", data={"from": change.from_stage, "to": to_stage})
    return change


# --- routing ----------------------------------------------------------------------------------

class Router:
    """Routes new MQLs of one workspace: account owner, then rules by priority, then the default
    pool. Loads rules, members, rep profiles and open-lead counts once per use."""

    def __init__(self, workspace_id: int, now: dt.datetime):
        self.workspace_id = workspace_id
        self.now = now
        self.settings = lifecycle_settings_get(workspace_id=workspace_id)
        self.rules = list(RoutingRule.objects.filter(workspace_id=workspace_id, active=True)
                          .order_by("priority", "pk"))
        self.members = set(Membership.objects.filter(workspace_id=workspace_id, role__in=SALES_ROLES)
                           .values_list("user_id", flat=True))
        self.reps = {r.user_id: r for r in SalesRep.objects.filter(workspace_id=workspace_id)}
        self.open_counts = defaultdict(int, {
            row["owner_id"]: row["n"] for row in
            Assignment.objects.filter(workspace_id=workspace_id, status__in=OPEN_STATUSES)
            .values("owner_id").annotate(n=Count("pk"))})

    def available(self, user_id: int | None) -> bool:
        if user_id is None or user_id not in self.members:
            return False
        rep = self.reps.get(user_id)
        if rep is None:
            return True
        return rep.available and (rep.max_open_leads is None or self.open_counts[user_id] < rep.max_open_leads)

    def manager_of(self, user_id: int | None) -> int | None:
        rep = self.reps.get(user_id)
        return rep.manager_id if rep else None

    def _pick_from_pool(self, holder, pool_field: str, pointer_field: str, exclude=()) -> int | None:
        """Round-robin over the holder's pool, advancing its pointer under a row lock."""
        locked = type(holder).objects.select_for_update().get(pk=holder.pk)
        pool = [int(u) for u in getattr(locked, pool_field) or []]
        eligible = {u for u in pool if self.available(u)}
        user_id, pointer = rules.round_robin_pick(pool, getattr(locked, pointer_field), eligible, exclude)
        if user_id is not None:
            setattr(locked, pointer_field, pointer)
            locked.save(update_fields=[pointer_field])
            setattr(holder, pointer_field, pointer)
        return user_id

    def pick_default(self, exclude=()) -> int | None:
        return self._pick_from_pool(self.settings, "default_pool", "default_pool_pointer", exclude)

    def choose(self, contact: Contact) -> tuple[int | None, str, RoutingRule | None]:
        """(user id, via, rule) for a new MQL; (None, "", None) when nobody can take it."""
        company = contact.company
        if company is not None and company.owner_id and company.owner_id in self.members:
            return company.owner_id, "account_owner", None
        employees = rules.employees_of(company.traits) if company is not None else None
        for rule in self.rules:
            cond = rules.RuleCondition(
                countries=frozenset(c.upper() for c in rule.countries or []),
                employees_min=rule.employees_min, employees_max=rule.employees_max,
                source_channels=frozenset(rule.source_channels or []))
            if not rules.condition_matches(cond, country=contact.country, employees=employees,
                                           channel=contact.source_channel):
                continue
            if rule.target_user_id:
                if self.available(rule.target_user_id):
                    return rule.target_user_id, "rule", rule
                continue
            user_id = self._pick_from_pool(rule, "pool", "pointer")
            if user_id is not None:
                return user_id, "rule", rule
        user_id = self.pick_default()
        if user_id is not None:
            return user_id, "default_pool", None
        return None, "", None

    def pick_next(self, assignment: Assignment) -> int | None:
        """Another available rep from the pool the assignment came from (the default pool when it
        came from an account owner or a named user); never its current owner."""
        exclude = [assignment.owner_id]
        rule = assignment.rule
        if rule is not None and rule.active and not rule.target_user_id and rule.pool:
            user_id = self._pick_from_pool(rule, "pool", "pointer", exclude)
            if user_id is not None:
                return user_id
        return self.pick_default(exclude)

    def assign(self, contact: Contact, user_id: int, *, via: str, rule: RoutingRule | None,
               reason: str, previous: Assignment | None = None) -> Assignment:
        assignment = Assignment.objects.create(
            workspace_id=self.workspace_id, contact=contact, owner_id=user_id, via=via, rule=rule,
            assigned_at=self.now, reason=reason[:500], previous=previous,
            accept_due_at=self.now + dt.timedelta(hours=self.settings.accept_sla_hours))
        self.open_counts[user_id] += 1
        contact.owner_id = user_id
        return assignment


def leads_route(*, workspace_id: int, leads: list[tuple[Contact, str]], now: dt.datetime,
                router: Router | None = None, alert_extra: dict[int, dict] | None = None,
                alert_keys: dict[int, str] | None = None) -> list[Assignment]:
    """Assign each new MQL (contact, why it qualified) an owner and alert them (`alert_extra`
    and `alert_keys` by contact id: see `alerts_create`).

    Contacts that already have an open assignment keep it; contacts nobody can take stay MQL
    without an owner and are tried again by every timers pass.
    """
    if not leads:
        return []
    router = router or Router(workspace_id, now)
    ids = [c.pk for c, _ in leads]
    already, previous = set(), {}
    for a in Assignment.objects.filter(contact_id__in=ids).order_by("pk"):
        if a.is_open:
            already.add(a.contact_id)
        else:
            previous[a.contact_id] = a  # the latest closed one: the new assignment links to it
    made: list[Assignment] = []
    for contact, reason in leads:
        if contact.pk in already:
            continue
        user_id, via, rule = router.choose(contact)
        if user_id is None:
            continue
        already.add(contact.pk)
        made.append(router.assign(contact, user_id, via=via, rule=rule, reason=reason,
                                  previous=previous.get(contact.pk)))
    if made:
        rows_update(Contact, [a.contact for a in made], ["owner"])
        alerts_create(workspace_id=workspace_id, assignments=made, now=now, kind=SalesAlert.Kind.NEW_LEAD,
                      extra=alert_extra, keys=alert_keys)
        for a in made:
            audit_record(workspace=Workspace(pk=workspace_id), actor="system:routing", action="lead.assign",
                         target=f"contact:{a.contact_id}",
                         data={"owner": a.owner_id, "via": a.via, "rule": a.rule_id, "reason": a.reason})
    return made


# --- alerts -----------------------------------------------------------------------------------

def _url_of(event) -> str:
    props = event.properties if isinstance(event.properties, dict) else {}
    page = event.context.get("page") if isinstance(event.context, dict) else None
    for value in (props.get("url"), props.get("path"), page.get("url") if isinstance(page, dict) else None):
        if isinstance(value, str) and value:
            return value
    return ""


def _event_brief(event) -> dict:
    return {"type": event.type, "event": event.event, "at": event.timestamp.isoformat(),
            **({"url": _url_of(event)} if event.type in ("page", "screen") else {})}


def alert_contexts(*, workspace_id: int, contacts: list[Contact]) -> dict[int, dict]:
    """The snapshot a salesperson sees for each contact: scores, source, magnets and high-intent
    pages, recent timeline. Two event queries for the whole list."""
    from leadflow.tracking.models import Event

    ids = [c.pk for c in contacts]
    intent = Q(event="Asset Downloaded")
    for path in HIGH_INTENT_PATHS:
        intent |= Q(type="page") & (Q(properties__url__icontains=path) | Q(properties__path__icontains=path)
                                    | Q(context__page__url__icontains=path))
    magnets, pages = defaultdict(list), defaultdict(list)
    for event in (Event.objects.filter(workspace_id=workspace_id, contact_id__in=ids).filter(intent)
                  .order_by("-timestamp", "-id")[:50 * len(ids)]):
        if event.event == "Asset Downloaded":
            props = event.properties if isinstance(event.properties, dict) else {}
            if len(magnets[event.contact_id]) < 20:
                magnets[event.contact_id].append({"name": str(props.get("magnet_name") or ""),
                                                  "slug": str(props.get("magnet_slug") or ""),
                                                  "at": event.timestamp.isoformat()})
        elif len(pages[event.contact_id]) < 20:
            pages[event.contact_id].append({"url": _url_of(event), "at": event.timestamp.isoformat()})
    timeline = defaultdict(list)
    ranked = (Event.objects.filter(workspace_id=workspace_id, contact_id__in=ids)
              .exclude(type="track", event__in=[STAGE_EVENT, QUIET_EVENT])
              .annotate(rank=Window(RowNumber(), partition_by=[F("contact_id")],
                                    order_by=[F("timestamp").desc(), F("id").desc()]))
              .filter(rank__lte=TIMELINE_LENGTH).order_by("contact_id", "rank"))
    for event in ranked:
        timeline[event.contact_id].append(_event_brief(event))
    out = {}
    for contact in contacts:
        out[contact.pk] = {
            "contact": {"id": contact.pk, "name": contact.name, "email": contact.email, "title": contact.title,
                        "company": contact.company.name if contact.company_id and contact.company else "",
                        "country": contact.country, "stage": contact.lifecycle_stage},
            "score": _score_context(contact),
            "source": {"channel": contact.source_channel, "first_touch": contact.first_touch,
                       "latest_touch": contact.latest_touch},
            "magnets": magnets[contact.pk],
            "high_intent_pages": pages[contact.pk],
            "timeline": timeline[contact.pk],
        }
    return out


def _score_context(contact: Contact) -> dict:
    score = {"fit_score": contact.fit_score, "fit_grade": contact.fit_grade,
             "engagement_score": round(float(contact.engagement_score), 2),
             "conversion_probability": contact.conversion_probability}
    try:
        from leadflow.scoring.selectors import score_explain
    except ImportError:
        return score
    try:
        with transaction.atomic():  # a failing explanation must not spoil the batch's transaction
            score["explain"] = _json_safe(score_explain(contact=contact))
    except Exception:  # the alert goes out without the breakdown rather than not at all
        log.exception("score explanation for contact %s failed", contact.pk)
    return score


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


@dataclass
class AlertItem:
    """One alert to write: who is told, about whom, on which assignment (if any), with what added
    to the snapshot (`extra`: a journey's note, a task), and a dedupe key for steps that may be
    redone (a journey's `enrollment:node:step`)."""

    user_id: int
    contact: Contact
    assignment: Assignment | None = None
    extra: dict = field(default_factory=dict)
    task: SalesTask | None = None
    dedupe_key: str = ""


def alerts_create(*, workspace_id: int, assignments: list[Assignment], now: dt.datetime, kind: str,
                  recipients: dict[int, int] | None = None, extra: dict[int, dict] | None = None,
                  keys: dict[int, str] | None = None) -> list[SalesAlert]:
    """An in-app alert and an outbox email per assignment, to its owner (or to `recipients`
    [assignment id → user id], e.g. a manager on escalation). `extra` [contact id → dict] is added
    to the snapshot before the email is written; `keys` [contact id → dedupe key] skip the
    assignments already alerted under that key."""
    recipients, extra, keys = recipients or {}, extra or {}, keys or {}
    items = []
    for a in assignments:
        user_id = recipients.get(a.pk, a.owner_id)
        if user_id:
            items.append(AlertItem(user_id=user_id, contact=a.contact, assignment=a,
                                   extra=extra.get(a.contact_id, {}), dedupe_key=keys.get(a.contact_id, "")))
    return alerts_write(workspace_id=workspace_id, items=items, now=now, kind=kind)


def alerts_write(*, workspace_id: int, items: list[AlertItem], now: dt.datetime, kind: str) -> list[SalesAlert]:
    """Write the alerts and queue their emails (one insert each, whatever the number), with the
    full snapshot and every `extra` already in it, so the email says what the in-app alert says.
    Items whose dedupe key is already taken are skipped (one query for all of them)."""
    User = get_user_model()
    wanted = [i.dedupe_key for i in items if i.dedupe_key]
    if wanted:
        taken = set(SalesAlert.objects.filter(workspace_id=workspace_id, dedupe_key__in=wanted)
                    .values_list("dedupe_key", flat=True))
        items = [i for i in items if not i.dedupe_key or i.dedupe_key not in taken]
    if not items:
        return []
    users = User.objects.in_bulk({i.user_id for i in items})
    contacts = {i.contact.pk: i.contact for i in items}
    if any(c.company_id and "company" not in c._state.fields_cache for c in contacts.values()):
        fresh = Contact.objects.select_related("company").in_bulk(list(contacts))
        contacts = {pk: fresh.get(pk, c) for pk, c in contacts.items()}
    contexts = alert_contexts(workspace_id=workspace_id, contacts=list(contacts.values()))
    alerts = []
    for item in items:
        context = dict(contexts[item.contact.pk])
        a = item.assignment
        if a is not None:
            context["assignment"] = {
                "id": a.pk, "status": a.status, "via": a.via, "reason": a.reason,
                "accept_due_at": a.accept_due_at.isoformat() if a.accept_due_at else None,
                "owner": a.owner_id}
        context.update(item.extra)
        alerts.append(SalesAlert(workspace_id=workspace_id, user_id=item.user_id, contact_id=item.contact.pk,
                                 assignment=a, task=item.task, kind=kind, created_at=now, context=context,
                                 dedupe_key=item.dedupe_key))
    SalesAlert.objects.bulk_create(alerts)
    mails = []
    for alert in alerts:
        user = users.get(alert.user_id)
        if user is None or not user.email:
            continue
        subject, text, html = alert_email_render(alert=alert, contact=contacts[alert.contact_id])
        mails.append(Notification(workspace_id=workspace_id, user_id=alert.user_id, contact_id=alert.contact_id,
                                  alert=alert, to_address=user.email, subject=subject, text_body=text,
                                  html_body=html, created_at=now, next_attempt_at=now))
    Notification.objects.bulk_create(mails)
    return alerts


def _utc_text(iso: str) -> str:
    return f"{iso[:16].replace('T', ' ')} UTC"


def alert_email_render(*, alert: SalesAlert, contact: Contact) -> tuple[str, str, str]:
    """Subject, text and HTML of the email about an alert. Plain Django escaping; no marketer
    content goes in, so no template sandbox is needed."""
    from django.utils.html import escape

    ctx = alert.context
    assignment = ctx.get("assignment") or {}
    journey = ctx.get("journey") or {}
    task = ctx.get("sales_task") or {}
    who = contact.name or contact.email or f"contact {contact.pk}"
    company = ctx["contact"].get("company")
    label = f"{who} ({company})" if company else who
    if alert.kind == SalesAlert.Kind.ESCALATION:
        subject = f"Escalated: {label} was not accepted in time"
    elif task:
        subject = f"New task: {task['title']} ({label})"
    elif alert.kind == SalesAlert.Kind.NOTE:
        subject = f"About {label}: a note from journey {journey.get('name') or journey.get('slug', '')}"
    else:
        subject = f"New lead for you: {label}"
    lines = [subject, ""]
    if task:
        lines.append(f"Task: {task['title']}")
        lines.append(f"Due: {_utc_text(task['due_at'])}" if task.get("due_at") else "Due: no due date")
    if journey:
        step = ctx.get("journey_step")
        lines.append(f"From journey: {journey.get('name') or journey.get('slug')}"
                     + (f", step {step}" if step else ""))
        if journey.get("note"):
            lines.append(f"Note: {journey['note']}")
    if assignment:
        lines.append(f"Why now: {assignment.get('reason') or 'qualified'}")
    score = ctx["score"]
    lines += [f"Fit {score['fit_score']} (grade {score['fit_grade'] or '-'}), engagement {score['engagement_score']}",
              f"Source: {ctx['source'].get('channel') or 'unknown'}"]
    if contact.email:
        lines.append(f"Email: {contact.email}")
    if contact.title:
        lines.append(f"Title: {contact.title}")
    if ctx["magnets"]:
        lines += ["", "Lead magnets:"] + [f"- {m['name'] or m['slug']} ({m['at'][:10]})" for m in ctx["magnets"]]
    if ctx["high_intent_pages"]:
        lines += ["", "High-intent pages:"] + [f"- {p['url']} ({p['at'][:10]})" for p in ctx["high_intent_pages"]]
    if ctx["timeline"]:
        lines += ["", "Recent activity:"] + [
            f"- {e['at'][:16].replace('T', ' ')} {e['event'] or e['type']} {e.get('url', '')}".rstrip()
            for e in ctx["timeline"]]
    due = assignment.get("accept_due_at")
    if due and assignment.get("status") in (AssignmentStatus.ASSIGNED, AssignmentStatus.ESCALATED):
        lines += ["", f"Please accept by {_utc_text(due)}."]
    base = getattr(django_settings, "PUBLIC_URL", "")
    if base:
        lines.append(f"{base}/sales/leads/{contact.pk}/" if task else f"{base}/contacts/{contact.pk}/")
    text = "\n".join(lines) + "\n"
    html = "<html><body>" + "".join(
        f"<p>{escape(line)}</p>" if line else "" for line in lines) + "</body></html>"
    return subject[:300], text, html


def sales_alert_mark_read(*, alert: SalesAlert, user) -> SalesAlert:
    if alert.user_id != user.pk:
        raise NotAllowed("only the person alerted can mark this alert read")
    if alert.read_at is None:
        alert.read_at = clock.now()
        alert.save(update_fields=["read_at"])
    return alert


# --- sales actions ----------------------------------------------------------------------------

def _open_assignment(contact: Contact, *, lock: bool = True) -> Assignment:
    qs = Assignment.objects.filter(workspace_id=contact.workspace_id, contact=contact, status__in=OPEN_STATUSES)
    if lock:
        qs = qs.select_for_update()
    assignment = qs.first()
    if assignment is None:
        raise ServiceError(f"contact {contact.pk} has no open sales assignment")
    return assignment


def actor_check(*, workspace_id: int, user, assignment: Assignment) -> str:
    """Who may act on a lead: its owner, the owner's manager, or a workspace admin; always a
    member with the sales or admin role. Returns the role."""
    return owner_actor_check(workspace_id=workspace_id, user=user, owner_id=assignment.owner_id, what="lead")


def owner_actor_check(*, workspace_id: int, user, owner_id: int | None, what: str) -> str:
    """`user` may act for `owner_id`: they are that owner, the owner's manager or a workspace admin,
    and a member with the sales or admin role. Returns the role."""
    role = Membership.objects.filter(workspace_id=workspace_id, user=user).values_list("role", flat=True).first()
    if role not in SALES_ROLES:
        raise NotAllowed(f"only members with the sales or admin role can act on {what}s")
    if role == Role.ADMIN or (owner_id is not None and owner_id == user.pk):
        return role
    manager = (SalesRep.objects.filter(workspace_id=workspace_id, user_id=owner_id)
               .values_list("manager_id", flat=True).first()) if owner_id is not None else None
    if manager == user.pk:
        return role
    raise NotAllowed(f"only the {what}'s owner, their manager or an admin can act on it")


def _audit(contact: Contact, user, via: str, action: str, data: dict) -> None:
    audit_record(workspace=Workspace(pk=contact.workspace_id), actor=via or f"user:{user.pk}", action=action,
                 target=f"contact:{contact.pk}", data={"user": user.pk, **data})


def _locked_contact(contact: Contact) -> Contact:
    return Contact.objects.select_for_update().get(pk=contact.pk, workspace_id=contact.workspace_id)


def lead_accept(*, contact: Contact, user, via: str = "") -> Assignment:
    """Accept a lead: it becomes sales accepted (SAL) and the work SLA starts."""
    now = clock.now()
    with transaction.atomic():
        contact = _locked_contact(contact)
        assignment = _open_assignment(contact)
        actor_check(workspace_id=contact.workspace_id, user=user, assignment=assignment)
        if assignment.status not in (AssignmentStatus.ASSIGNED, AssignmentStatus.ESCALATED):
            raise ServiceError("the lead is already accepted")
        _accept(contact, assignment, user, now)
        _audit(contact, user, via, "lead.accept", {"assignment": assignment.pk})
    return assignment


def _accept(contact: Contact, assignment: Assignment, user, now: dt.datetime) -> None:
    settings = lifecycle_settings_get(workspace_id=contact.workspace_id)
    assignment.status = AssignmentStatus.ACCEPTED
    assignment.accepted_at = now
    assignment.work_due_at = now + dt.timedelta(hours=settings.work_sla_hours)
    assignment.save(update_fields=["status", "accepted_at", "work_due_at"])
    order = rules.StageOrder.of(settings.stages)
    if order.is_forward(contact.lifecycle_stage, SAL) or contact.lifecycle_stage in (RECYCLED, ""):
        transitions_apply(workspace_id=contact.workspace_id, now=now,
                          transitions=[Transition(contact, SAL, "accepted by sales", f"user:{user.pk}")])


WORK_KINDS = ("call", "email", "meeting", "note")


def lead_work_log(*, contact: Contact, user, kind: str, note: str = "", via: str = "") -> Assignment:
    """Log a call, email, meeting or note; the lead counts as worked (an assigned lead is
    accepted first)."""
    if kind not in WORK_KINDS:
        raise ServiceError(f"kind must be one of {', '.join(WORK_KINDS)}")
    now = clock.now()
    with transaction.atomic():
        contact = _locked_contact(contact)
        assignment = _open_assignment(contact)
        actor_check(workspace_id=contact.workspace_id, user=user, assignment=assignment)
        if assignment.status in (AssignmentStatus.ASSIGNED, AssignmentStatus.ESCALATED):
            _accept(contact, assignment, user, now)
        assignment.status = AssignmentStatus.WORKED
        assignment.worked_at = now
        assignment.activities = [*assignment.activities,
                                 {"kind": kind, "note": note[:5000], "at": now.isoformat(), "user": user.pk}]
        assignment.save(update_fields=["status", "worked_at", "activities"])
        _audit(contact, user, via, "lead.work", {"assignment": assignment.pk, "kind": kind})
    return assignment


def lead_disqualify(*, contact: Contact, user, reason: str, notes: str = "", via: str = "") -> Assignment:
    """Not a fit: the contact becomes disqualified and the assignment is closed."""
    if not reason.strip():
        raise ServiceError("a reason is required to disqualify a lead")
    now = clock.now()
    with transaction.atomic():
        contact = _locked_contact(contact)
        assignment = _open_assignment(contact)
        actor_check(workspace_id=contact.workspace_id, user=user, assignment=assignment)
        assignment.status = AssignmentStatus.DISQUALIFIED
        assignment.closed_at = now
        assignment.reason = reason.strip()[:500]
        assignment.notes = notes
        assignment.save(update_fields=["status", "closed_at", "reason", "notes"])
        transitions_apply(workspace_id=contact.workspace_id, now=now, transitions=[
            Transition(contact, DISQUALIFIED, f"disqualified: {reason.strip()}", f"user:{user.pk}")])
        _audit(contact, user, via, "lead.disqualify", {"assignment": assignment.pk, "reason": reason})
    return assignment


def lead_recycle(*, contact: Contact, user, reason: str, notes: str = "",
                 return_date: dt.date | dt.datetime | None = None, via: str = "") -> Assignment:
    """Back to marketing: the contact becomes recycled, loses its owner and comes back to sales
    when it qualifies again or on the return date (default: in the workspace's recycle_days)."""
    if not reason.strip():
        raise ServiceError("a reason is required to recycle a lead")
    now = clock.now()
    settings = lifecycle_settings_get(workspace_id=contact.workspace_id)
    if return_date is None:
        return_at = now + dt.timedelta(days=settings.recycle_days)
    elif isinstance(return_date, dt.datetime):
        return_at = return_date if return_date.tzinfo else return_date.replace(tzinfo=dt.timezone.utc)
    else:
        return_at = dt.datetime.combine(return_date, dt.time(0, 0), tzinfo=dt.timezone.utc)
    if return_at <= now:
        raise ServiceError("the return date must be in the future")
    with transaction.atomic():
        contact = _locked_contact(contact)
        assignment = _open_assignment(contact)
        actor_check(workspace_id=contact.workspace_id, user=user, assignment=assignment)
        recycle(contact=contact, assignment=assignment, reason=reason.strip(), notes=notes,
                return_at=return_at, actor=f"user:{user.pk}", now=now)
        _audit(contact, user, via, "lead.recycle",
               {"assignment": assignment.pk, "reason": reason, "return_at": return_at.isoformat()})
    return assignment


def recycle(*, contact: Contact, assignment: Assignment, reason: str, notes: str, return_at: dt.datetime,
            actor: str, now: dt.datetime) -> None:
    """Close the assignment as recycled and move the contact to recycled without an owner."""
    Assignment.objects.filter(contact=contact, status=AssignmentStatus.RECYCLED, returned_at__isnull=True) \
        .exclude(pk=assignment.pk).update(returned_at=now)  # an older pending return is superseded
    assignment.status = AssignmentStatus.RECYCLED
    assignment.closed_at = now
    assignment.reason = reason[:500]
    if notes:
        assignment.notes = notes
    assignment.return_at = return_at
    assignment.save(update_fields=["status", "closed_at", "reason", "notes", "return_at"])
    contact.owner_id = None
    transitions_apply(workspace_id=contact.workspace_id, now=now, extra_contact_fields=("owner",),
                      transitions=[Transition(contact, RECYCLED, f"recycled: {reason}", actor)])


SALES_FORWARD = (SQL, OPPORTUNITY, CUSTOMER)


def lead_advance(*, contact: Contact, user, to_stage: str, reason: str = "", via: str = "") -> StageChange:
    """Mark a lead sales qualified, an opportunity or a customer (forward moves only). A customer
    closes the assignment as won."""
    if to_stage not in SALES_FORWARD:
        raise ServiceError(f"to_stage must be one of {', '.join(SALES_FORWARD)}")
    now = clock.now()
    with transaction.atomic():
        contact = _locked_contact(contact)
        assignment = _open_assignment(contact)
        actor_check(workspace_id=contact.workspace_id, user=user, assignment=assignment)
        order = _order(contact.workspace_id)
        if assignment.status in (AssignmentStatus.ASSIGNED, AssignmentStatus.ESCALATED):
            _accept(contact, assignment, user, now)
        if not order.is_forward(contact.lifecycle_stage, to_stage):
            raise ServiceError(f"cannot move from {contact.lifecycle_stage} back to {to_stage}")
        if to_stage == CUSTOMER:
            assignment.status = AssignmentStatus.CLOSED
            assignment.closed_at = now
            assignment.reason = "won"
            assignment.save(update_fields=["status", "closed_at", "reason"])
        (change,) = transitions_apply(workspace_id=contact.workspace_id, now=now, transitions=[
            Transition(contact, to_stage, reason or f"marked {to_stage} by sales", f"user:{user.pk}")])
        _audit(contact, user, via, f"lead.{to_stage}", {"assignment": assignment.pk})
    return change


# --- tasks ------------------------------------------------------------------------------------

class TaskConflict(ServiceError):
    """The task is already in the state asked for (done, or open)."""


def _task_title(title: str) -> str:
    title = (title or "").strip()
    if not title:
        raise ServiceError("a task needs a title")
    if len(title) > 200:
        raise ServiceError("a task title is at most 200 characters")
    return title


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.timezone.utc)


def tasks_create(*, workspace_id: int, tasks: list[SalesTask]) -> list[SalesTask]:
    """Insert tasks (unsaved rows) in one go, in the caller's transaction, and return them in the
    same order. A task whose `dedupe_key` is already taken is not added again: the stored one
    comes back in its place (one query finds them all), so a redone journey step adds nothing."""
    keys = [t.dedupe_key for t in tasks if t.dedupe_key]
    stored = {t.dedupe_key: t for t in SalesTask.objects.filter(workspace_id=workspace_id, dedupe_key__in=keys)} \
        if keys else {}
    new = []
    for t in tasks:
        if t.dedupe_key and t.dedupe_key in stored:
            continue
        t.workspace_id = workspace_id
        t.title = _task_title(t.title)
        t.due_at = _aware(t.due_at)
        new.append(t)
    SalesTask.objects.bulk_create(new, batch_size=1000)
    return [stored.get(t.dedupe_key, t) if t.dedupe_key else t for t in tasks]


def task_create(*, contact: Contact, user, title: str, note: str = "", due_at: dt.datetime | None = None,
                owner=None, via: str = "") -> SalesTask:
    """A task by hand: for `user` themselves, or (`owner`) for a rep they manage (an admin: for
    any member with the sales or admin role)."""
    owner = owner or user
    owner_actor_check(workspace_id=contact.workspace_id, user=user, owner_id=owner.pk, what="task")
    if not Membership.objects.filter(workspace_id=contact.workspace_id, user=owner, role__in=SALES_ROLES).exists():
        raise ServiceError(f"{owner.get_username()} is not a member with the sales or admin role")
    now = clock.now()
    with transaction.atomic():
        (task,) = tasks_create(workspace_id=contact.workspace_id, tasks=[SalesTask(
            contact=contact, owner=owner, title=title, note=note or "", due_at=due_at, created_at=now,
            created_by=via or f"user:{user.pk}")])
        _audit(contact, user, via, "task.create", {"task": task.pk, "owner": owner.pk, "title": task.title})
    return task


def _task_contact(task: SalesTask) -> Contact:
    return Contact(pk=task.contact_id, workspace_id=task.workspace_id)  # what the audit entry names


def _task_locked(task: SalesTask) -> SalesTask:
    return SalesTask.objects.select_for_update().get(pk=task.pk, workspace_id=task.workspace_id)


def _task_done_set(*, task: SalesTask, user, via: str, done: bool) -> SalesTask:
    with transaction.atomic():
        task = _task_locked(task)
        owner_actor_check(workspace_id=task.workspace_id, user=user, owner_id=task.owner_id, what="task")
        if (task.done_at is not None) == done:
            raise TaskConflict("the task is already done" if done else "the task is not done")
        task.done_at, task.done_by = (clock.now(), user) if done else (None, None)
        task.save(update_fields=["done_at", "done_by"])
        _audit(_task_contact(task), user, via, "task.complete" if done else "task.reopen",
               {"task": task.pk, "title": task.title})
    return task


def task_complete(*, task: SalesTask, user, via: str = "") -> SalesTask:
    """Mark a task done: its owner, their manager or an admin."""
    return _task_done_set(task=task, user=user, via=via, done=True)


def task_reopen(*, task: SalesTask, user, via: str = "") -> SalesTask:
    """Open a done task again (marked done by mistake)."""
    return _task_done_set(task=task, user=user, via=via, done=False)


# --- reps and routing rules -------------------------------------------------------------------

def sales_rep_set(*, workspace: Workspace, user, available: bool | None = None, manager=None,
                  max_open_leads: int | None = None, clear_manager: bool = False,
                  clear_max_open_leads: bool = False, actor: str) -> SalesRep:
    """Create or edit a member's sales profile."""
    if not Membership.objects.filter(workspace=workspace, user=user, role__in=SALES_ROLES).exists():
        raise ServiceError(f"{user.username} is not a member with the sales or admin role")
    rep, _ = SalesRep.objects.get_or_create(workspace=workspace, user=user)
    if available is not None:
        rep.available = available
    if manager is not None:
        if manager.pk == user.pk:
            raise ServiceError("a rep cannot be their own manager")
        rep.manager = manager
    elif clear_manager:
        rep.manager = None
    if max_open_leads is not None:
        if max_open_leads < 0:
            raise ServiceError("max_open_leads cannot be negative")
        rep.max_open_leads = max_open_leads
    elif clear_max_open_leads:
        rep.max_open_leads = None
    rep.updated_at = clock.now()
    rep.save()
    audit_record(workspace=workspace, actor=actor, action="sales.rep.update", target=f"user:{user.pk}",
                 data={"available": rep.available, "manager": rep.manager_id, "max_open_leads": rep.max_open_leads})
    return rep


RULE_FIELDS = ("name", "priority", "countries", "employees_min", "employees_max", "source_channels",
               "target_user", "pool", "active")


def routing_rule_save(*, workspace: Workspace, changes: dict, actor: str,
                      rule: RoutingRule | None = None) -> RoutingRule:
    """Create (rule None) or edit a routing rule. A rule targets one user or a pool, not both."""
    from leadflow.tracking.sources import CHANNELS

    rule = rule or RoutingRule(workspace=workspace)
    for name, value in changes.items():
        if name not in RULE_FIELDS:
            raise ServiceError(f"unknown routing rule field {name!r}")
        if name == "name":
            if not str(value or "").strip():
                raise ServiceError("a routing rule needs a name")
            rule.name = str(value).strip()[:200]
        elif name == "countries":
            if not isinstance(value, list) or any(not isinstance(c, str) or len(c.strip()) != 2 for c in value):
                raise ServiceError("countries must be a list of two-letter country codes")
            rule.countries = sorted({c.strip().upper() for c in value})
        elif name == "source_channels":
            if not isinstance(value, list) or any(c not in CHANNELS for c in value):
                raise ServiceError(f"source_channels must be a list of {', '.join(CHANNELS)}")
            rule.source_channels = list(value)
        elif name in ("employees_min", "employees_max"):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ServiceError(f"{name} must be a whole number")
            setattr(rule, name, value)
        elif name == "priority":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ServiceError("priority must be a whole number")
            rule.priority = value
        elif name == "target_user":
            rule.target_user = user_resolve(workspace=workspace, ref=value) if value not in (None, "") else None
        elif name == "pool":
            new_pool = _user_ids(workspace, value or [], "pool")
            if new_pool != rule.pool:
                rule.pool, rule.pointer = new_pool, 0
        elif name == "active":
            rule.active = bool(value)
    if not rule.name:
        raise ServiceError("a routing rule needs a name")
    if rule.target_user_id and rule.pool:
        raise ServiceError("a routing rule targets either one user or a pool, not both")
    if not rule.target_user_id and not rule.pool:
        raise ServiceError("a routing rule needs a target_user or a pool")
    if rule.employees_min is not None and rule.employees_max is not None and rule.employees_min > rule.employees_max:
        raise ServiceError("employees_min is above employees_max")
    created = rule.pk is None
    rule.save()
    audit_record(workspace=workspace, actor=actor, action="routing_rule.create" if created else "routing_rule.update",
                 target=f"routing_rule:{rule.pk}", data={"fields": sorted(changes)})
    return rule


def routing_rule_delete(*, rule: RoutingRule, actor: str) -> None:
    audit_record(workspace=Workspace(pk=rule.workspace_id), actor=actor, action="routing_rule.delete",
                 target=f"routing_rule:{rule.pk}", data={"name": rule.name})
    rule.delete()


# --- merges -----------------------------------------------------------------------------------

def merge_before(winner: Contact, loser: Contact) -> None:
    """Before a merge moves rows: keep one open assignment (the winner's), the further-along
    stage and an owner. StageChange rows and alerts then move to the winner like any other row."""
    now = clock.now()
    # The stored values: the caller's objects may be older than the last sales action.
    for c in (winner, loser):
        c.lifecycle_stage, c.stage_changed_at, c.owner_id = Contact.objects.filter(pk=c.pk).values_list(
            "lifecycle_stage", "stage_changed_at", "owner_id").get()
    open_rows = {a.contact_id: a for a in Assignment.objects.select_for_update()
                 .filter(contact_id__in=[winner.pk, loser.pk], status__in=OPEN_STATUSES)}
    if winner.pk in open_rows and loser.pk in open_rows:
        Assignment.objects.filter(pk=open_rows[loser.pk].pk).update(
            status=AssignmentStatus.CLOSED, closed_at=now, reason=f"merged into contact {winner.pk}")
    elif loser.pk in open_rows:
        winner.owner_id = loser.owner_id
    if winner.owner_id is None and loser.owner_id is not None:
        winner.owner_id = loser.owner_id
    QuietMark.objects.filter(contact=loser).delete()  # markers only; the winner's spell counts
    order = _order(winner.workspace_id)
    stage = order.further(winner.lifecycle_stage, loser.lifecycle_stage)
    if stage != winner.lifecycle_stage:
        winner.lifecycle_stage = stage
        winner.stage_changed_at = loser.stage_changed_at
