"""Reads for the sales inbox, the manager view, tasks, stage history, alerts, reps and routing rules."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db.models import Count, F, QuerySet

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Membership, Role, Workspace
from leadflow.lifecycle.models import (
    MQL, OPEN_STATUSES, Assignment, AssignmentStatus, RoutingRule, SalesAlert, SalesRep, SalesTask, StageChange,
)


@dataclass
class LeadRow:
    """One lead in an inbox: the assignment, its contact, and where it stands against its SLA."""

    assignment: Assignment
    contact: Contact
    age: dt.timedelta
    due_at: dt.datetime | None
    due_in: dt.timedelta | None  # negative once overdue
    sla: str  # "accept", "work" or "" (worked or closed: no clock running)

    @property
    def overdue(self) -> bool:
        return self.due_in is not None and self.due_in < dt.timedelta(0)


def lead_row(assignment: Assignment, now: dt.datetime | None = None) -> LeadRow:
    now = now or clock.now()
    if assignment.status in (AssignmentStatus.ASSIGNED, AssignmentStatus.ESCALATED):
        due, sla = assignment.accept_due_at, "accept"
    elif assignment.status == AssignmentStatus.ACCEPTED:
        due, sla = assignment.work_due_at, "work"
    else:
        due, sla = None, ""
    return LeadRow(assignment=assignment, contact=assignment.contact, age=now - assignment.assigned_at,
                   due_at=due, due_in=(due - now) if due else None, sla=sla)


def sales_leads(*, workspace: Workspace, owner_ids: list[int] | None = None, status: str = "open",
                now: dt.datetime | None = None, limit: int = 500) -> list[LeadRow]:
    """Leads of the workspace (of some owners), most urgent first. `status` is "open" (default),
    "all" or one assignment status."""
    now = now or clock.now()
    qs = Assignment.objects.filter(workspace=workspace).select_related("contact__company", "owner")
    if owner_ids is not None:
        qs = qs.filter(owner_id__in=owner_ids)
    if status == "open":
        qs = qs.filter(status__in=OPEN_STATUSES)
    elif status != "all":
        if status not in AssignmentStatus.values:
            raise ValueError(f"status must be open, all or one of {', '.join(AssignmentStatus.values)}")
        qs = qs.filter(status=status)
    rows = [lead_row(a, now) for a in qs.order_by("-assigned_at", "-pk")[:limit]]
    far = dt.timedelta.max
    rows.sort(key=lambda r: (r.due_in if r.due_in is not None else far, -r.assignment.assigned_at.timestamp()))
    return rows


def sales_inbox(*, workspace: Workspace, user, status: str = "open", now: dt.datetime | None = None) -> list[LeadRow]:
    """My leads, most urgent first."""
    return sales_leads(workspace=workspace, owner_ids=[user.pk], status=status, now=now)


def managed_user_ids(*, workspace: Workspace, manager) -> list[int] | None:
    """The reps a user manages; None (everyone) for an admin."""
    role = Membership.objects.filter(workspace=workspace, user=manager).values_list("role", flat=True).first()
    if role == Role.ADMIN:
        return None
    return list(SalesRep.objects.filter(workspace=workspace, manager=manager).values_list("user_id", flat=True))


@dataclass
class TeamView:
    leads: list[LeadRow]
    by_owner: dict[int, dict] = field(default_factory=dict)  # user id → {user, counts, overdue}
    unassigned_mqls: list[Contact] = field(default_factory=list)


def sales_team_view(*, workspace: Workspace, manager, status: str = "open", now: dt.datetime | None = None) -> TeamView:
    """The manager view: every lead of the reps they manage (all reps for an admin), counts per
    rep by status with the overdue ones, and MQLs still waiting for an owner."""
    owners = managed_user_ids(workspace=workspace, manager=manager)
    leads = sales_leads(workspace=workspace, owner_ids=owners, status=status, now=now)
    by_owner: dict[int, dict] = {}
    for row in leads:
        entry = by_owner.setdefault(row.assignment.owner_id, {"user": row.assignment.owner, "counts": Counter(),
                                                              "overdue": 0})
        entry["counts"][row.assignment.status] += 1
        entry["overdue"] += int(row.overdue)
    waiting = list(unassigned_mqls(workspace=workspace)) if owners is None else []
    return TeamView(leads=leads, by_owner=by_owner, unassigned_mqls=waiting)


def unassigned_mqls(*, workspace: Workspace) -> QuerySet[Contact]:
    open_ids = Assignment.objects.filter(workspace=workspace, status__in=OPEN_STATUSES).values("contact_id")
    return (Contact.objects.filter(workspace=workspace, lifecycle_stage=MQL).exclude(pk__in=open_ids)
            .select_related("company").order_by("stage_changed_at", "pk"))


def lead_get(*, workspace: Workspace, contact_id: int) -> Assignment | None:
    """The contact's open assignment, if any."""
    return (Assignment.objects.select_related("contact__company", "owner")
            .filter(workspace=workspace, contact_id=contact_id, status__in=OPEN_STATUSES).first())


def lead_assignments(*, workspace: Workspace, contact_id: int) -> QuerySet[Assignment]:
    """Every assignment of a contact, newest first (its sales history)."""
    return (Assignment.objects.select_related("owner").filter(workspace=workspace, contact_id=contact_id)
            .order_by("-assigned_at", "-pk"))


def stage_history(*, workspace: Workspace, contact_id: int) -> QuerySet[StageChange]:
    return StageChange.objects.filter(workspace=workspace, contact_id=contact_id).order_by("at", "pk")


def sales_alerts(*, workspace: Workspace, user, unread_only: bool = False) -> QuerySet[SalesAlert]:
    qs = SalesAlert.objects.filter(workspace=workspace, user=user).select_related("contact", "assignment")
    if unread_only:
        qs = qs.filter(read_at__isnull=True)
    return qs.order_by("-created_at", "-pk")


TASK_STATUSES = ("open", "done", "all")


def sales_tasks(*, workspace: Workspace, owner_ids: list[int] | None = None, contact_id: int | None = None,
                status: str = "open", limit: int = 500) -> list[SalesTask]:
    """Tasks of the workspace (of some owners, of one contact). `status` "open" (default: the
    earliest due first, those without a due date last), "done" (the latest done first) or "all"
    (open ones first). Each task knows whether it is `overdue`."""
    if status not in TASK_STATUSES:
        raise ValueError(f"status must be one of {', '.join(TASK_STATUSES)}")
    qs = SalesTask.objects.filter(workspace=workspace).select_related("contact__company", "owner", "done_by")
    if owner_ids is not None:
        qs = qs.filter(owner_id__in=owner_ids)
    if contact_id is not None:
        qs = qs.filter(contact_id=contact_id)
    open_first = [F("due_at").asc(nulls_last=True), "created_at", "pk"]
    if status == "open":
        qs = qs.filter(done_at__isnull=True).order_by(*open_first)
    elif status == "done":
        qs = qs.filter(done_at__isnull=False).order_by("-done_at", "-pk")
    else:
        qs = qs.order_by(F("done_at").desc(nulls_first=True), *open_first)
    return list(qs[:limit])


def task_get(*, workspace: Workspace, task_id: int) -> SalesTask | None:
    return (SalesTask.objects.filter(workspace=workspace, pk=task_id).select_related("contact", "owner", "done_by")
            .first())


def sales_reps(*, workspace: Workspace) -> list[dict]:
    """Members with the sales or admin role, their profile (defaults when none) and open leads."""
    User = get_user_model()
    members = dict(Membership.objects.filter(workspace=workspace, role__in=[Role.SALES, Role.ADMIN])
                   .values_list("user_id", "role"))
    users = User.objects.in_bulk(list(members))
    reps = {r.user_id: r for r in SalesRep.objects.filter(workspace=workspace, user_id__in=list(members))}
    counts = defaultdict(int, {row["owner_id"]: row["n"] for row in
                               Assignment.objects.filter(workspace=workspace, status__in=OPEN_STATUSES)
                               .values("owner_id").annotate(n=Count("pk"))})
    out = []
    for user_id in sorted(members):
        rep = reps.get(user_id)
        out.append({"user": users[user_id], "role": members[user_id],
                    "available": rep.available if rep else True,
                    "manager": rep.manager if rep else None,
                    "max_open_leads": rep.max_open_leads if rep else None,
                    "open_leads": counts[user_id]})
    return out


def routing_rules(*, workspace: Workspace) -> QuerySet[RoutingRule]:
    return RoutingRule.objects.filter(workspace=workspace).select_related("target_user").order_by("priority", "pk")


def routing_rule_get(*, workspace: Workspace, rule_id: int) -> RoutingRule | None:
    return RoutingRule.objects.filter(workspace=workspace, pk=rule_id).first()
