"""Lifecycle timers: SLAs, returns of recycled leads, routing retries, quiet leads, the outbox.

`lifecycle_timers_run` is one periodic pass (core.pipeline runs it every 60 s on one worker at a
time, in one transaction). Each step selects its due rows in one query by the injected clock and
is idempotent: a row it handled is no longer due. The email dispatcher runs after that
transaction commits, in transactions of its own (lifecycle.outbox).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from django.db import transaction
from django.db.models import Exists, OuterRef

from leadflow.contacts.models import Contact
from leadflow.contacts.processing import rows_update
from leadflow.core.models import Membership, Role, Workspace
from leadflow.core.services import audit_record
from leadflow.lifecycle.models import (
    LEAD, MQL, OPEN_STATUSES, RECYCLED, SUBSCRIBER, Assignment, AssignmentStatus, BreachAction,
    LifecycleSettings, QuietMark, SalesAlert,
)
from leadflow.lifecycle.services import (
    QUIET_EVENT, Router, Transition, alerts_create, leads_route, system_events_append, transitions_apply,
)

BATCH = 500
QUIET_STAGES = (SUBSCRIBER, LEAD, MQL, RECYCLED)


def lifecycle_timers_run(*, now: dt.datetime) -> None:
    accept_breaches_run(now=now)
    work_breaches_run(now=now)
    recycled_returns_run(now=now)
    unrouted_leads_run(now=now)
    quiet_leads_run(now=now)
    from leadflow.lifecycle.outbox import notifications_dispatch

    # After the pass commits, so the emails it queued are visible and the "sending" marks the
    # dispatcher writes are committed before each SMTP call (DESIGN principle 4).
    transaction.on_commit(lambda: notifications_dispatch())


def _due(qs):
    return list(qs.select_for_update(skip_locked=True, of=("self",))
                .select_related("contact__company", "rule").order_by("workspace_id", "pk")[:BATCH])


def _by_workspace(rows) -> dict[int, list]:
    out = defaultdict(list)
    for row in rows:
        out[row.workspace_id].append(row)
    return out


def accept_breaches_run(*, now: dt.datetime) -> int:
    """Leads not accepted in time: reassigned to the next available rep of their pool (never the
    same one) or, when nobody is free or the workspace says so, escalated to the owner's manager."""
    due = _due(Assignment.objects.filter(status=AssignmentStatus.ASSIGNED, accept_due_at__lte=now))
    for workspace_id, rows in _by_workspace(due).items():
        router = Router(workspace_id, now)
        reassigned, escalated, contacts = [], [], []
        for old in rows:
            next_user = None
            if router.settings.on_accept_breach == BreachAction.REASSIGN:
                next_user = router.pick_next(old)
            hours = f"{router.settings.accept_sla_hours:g}"
            if next_user is not None:
                old.status, old.closed_at = AssignmentStatus.REASSIGNED, now
                old.save(update_fields=["status", "closed_at"])
                router.open_counts[old.owner_id] -= 1
                new = router.assign(old.contact, next_user, via="reassign", rule=old.rule, previous=old,
                                    reason=f"sla: not accepted within {hours} h by user {old.owner_id}")
                reassigned.append(new)
                contacts.append(old.contact)
                audit_record(workspace=Workspace(pk=workspace_id), actor="system:sla", action="lead.reassign",
                             target=f"contact:{old.contact_id}", data={"from": old.owner_id, "to": next_user})
            else:
                old.status, old.escalated_at = AssignmentStatus.ESCALATED, now
                old.reason = f"sla: not accepted within {hours} h; escalated"
                old.save(update_fields=["status", "escalated_at", "reason"])
                escalated.append(old)
        rows_update(Contact, contacts, ["owner"])
        alerts_create(workspace_id=workspace_id, assignments=reassigned, now=now, kind=SalesAlert.Kind.NEW_LEAD)
        if escalated:
            admin = (Membership.objects.filter(workspace_id=workspace_id, role=Role.ADMIN)
                     .order_by("user_id").values_list("user_id", flat=True).first())
            recipients = {a.pk: router.manager_of(a.owner_id) or admin for a in escalated}
            alerts_create(workspace_id=workspace_id, assignments=escalated, now=now,
                          kind=SalesAlert.Kind.ESCALATION, recipients=recipients)
            for a in escalated:
                audit_record(workspace=Workspace(pk=workspace_id), actor="system:sla", action="lead.escalate",
                             target=f"contact:{a.contact_id}", data={"owner": a.owner_id, "to": recipients[a.pk]})
    return len(due)


def work_breaches_run(*, now: dt.datetime) -> int:
    """Leads accepted but not worked in time go back to marketing: recycled, owner cleared,
    back on the workspace's recycle_days."""
    due = _due(Assignment.objects.filter(status=AssignmentStatus.ACCEPTED, work_due_at__lte=now))
    for workspace_id, rows in _by_workspace(due).items():
        settings = LifecycleSettings.objects.filter(workspace_id=workspace_id).first()
        days = settings.recycle_days if settings else 30
        transitions = []
        for a in rows:
            a.status, a.closed_at = AssignmentStatus.RECYCLED, now
            a.reason, a.return_at = "sla: not worked", now + dt.timedelta(days=days)
            a.contact.owner_id = None
            transitions.append(Transition(a.contact, RECYCLED, "sla: not worked", "system:sla"))
            audit_record(workspace=Workspace(pk=workspace_id), actor="system:sla", action="lead.recycle",
                         target=f"contact:{a.contact_id}", data={"owner": a.owner_id, "reason": "sla: not worked"})
        rows_update(Assignment, rows, ["status", "closed_at", "reason", "return_at"])
        Assignment.objects.filter(contact_id__in=[a.contact_id for a in rows], status=AssignmentStatus.RECYCLED,
                                  returned_at__isnull=True).exclude(pk__in=[a.pk for a in rows]) \
            .update(returned_at=now)
        transitions_apply(workspace_id=workspace_id, transitions=transitions, now=now,
                          extra_contact_fields=("owner",))
    return len(due)


def recycled_returns_run(*, now: dt.datetime) -> int:
    """Recycled leads whose return date has come are MQLs again and routed anew."""
    stale = Assignment.objects.filter(status=AssignmentStatus.RECYCLED, returned_at__isnull=True,
                                      return_at__lte=now).exclude(contact__lifecycle_stage=RECYCLED)
    stale.update(returned_at=now)  # moved on some other way; nothing left to return
    due = _due(Assignment.objects.filter(status=AssignmentStatus.RECYCLED, returned_at__isnull=True,
                                         return_at__lte=now, contact__lifecycle_stage=RECYCLED))
    for workspace_id, rows in _by_workspace(due).items():
        for a in rows:
            a.returned_at = now
        rows_update(Assignment, rows, ["returned_at"])
        contacts = {a.contact_id: a.contact for a in rows}
        reason = "return date reached"
        transitions_apply(workspace_id=workspace_id, now=now, transitions=[
            Transition(c, MQL, reason, "system:return-date") for c in contacts.values()])
        leads_route(workspace_id=workspace_id, leads=[(c, reason) for c in contacts.values()], now=now)
    return len(due)


def unrouted_leads_run(*, now: dt.datetime) -> int:
    """MQLs nobody could take when they qualified (no rep available) are routed again."""
    open_assignment = Assignment.objects.filter(contact=OuterRef("pk"), status__in=OPEN_STATUSES)
    waiting = list(Contact.objects.select_related("company").filter(lifecycle_stage=MQL)
                   .exclude(Exists(open_assignment)).order_by("workspace_id", "pk")[:BATCH])
    for workspace_id, contacts in _by_workspace(waiting).items():
        leads_route(workspace_id=workspace_id, now=now,
                    leads=[(c, "marketing qualified; waiting for an available rep") for c in contacts])
    return len(waiting)


def quiet_leads_run(*, now: dt.datetime) -> int:
    """Leads inactive for the workspace's inactive_days get one `Lead Went Quiet` event per quiet
    spell (a spell is identified by the last_seen_at it started from), for re-engagement journeys."""
    days_of = dict(LifecycleSettings.objects.values_list("workspace_id", "inactive_days"))
    marked = 0
    for workspace_id in Workspace.objects.order_by("pk").values_list("pk", flat=True):
        days = days_of.get(workspace_id, 30)
        announced = QuietMark.objects.filter(contact=OuterRef("pk"), quiet_since=OuterRef("last_seen_at"))
        quiet = list(Contact.objects.filter(workspace_id=workspace_id, lifecycle_stage__in=QUIET_STAGES,
                                            last_seen_at__lte=now - dt.timedelta(days=days))
                     .exclude(Exists(announced)).order_by("pk")[:BATCH])
        if not quiet:
            continue
        QuietMark.objects.bulk_create([QuietMark(workspace_id=workspace_id, contact=c, quiet_since=c.last_seen_at,
                                                 marked_at=now) for c in quiet], ignore_conflicts=True)
        system_events_append(workspace_id=workspace_id, now=now, items=[
            (c, f"lf-quiet-{c.pk}-{int(c.last_seen_at.timestamp())}", QUIET_EVENT,
             {"last_seen_at": c.last_seen_at.isoformat(), "inactive_days": days, "stage": c.lifecycle_stage})
            for c in quiet])
        marked += len(quiet)
    return marked
