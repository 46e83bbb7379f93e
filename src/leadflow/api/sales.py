"""The sales handoff over the API: the leads inbox, sales actions, tasks, rep profiles, alerts.

The management API authenticates a workspace secret key, not a person, so every action names the
salesperson it is done as in `acting_user` (a username or user id); that member's role and
relation to the lead are checked exactly as in the web UI (owner, their manager, or an admin).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from leadflow.api.auth import actor
from leadflow.contacts.selectors import contact_get
from leadflow.core.services import ServiceError
from leadflow.lifecycle import selectors, services

router = Router(tags=["sales"])


class UserRef(Schema):
    id: int
    username: str


class LeadOut(Schema):
    contact_id: int
    email: str
    name: str
    company: str
    stage: str
    fit_grade: str
    engagement_score: float
    assignment_id: int
    owner: UserRef | None
    status: str
    via: str
    reason: str
    assigned_at: dt.datetime
    age_hours: float
    accept_due_at: dt.datetime | None
    accepted_at: dt.datetime | None
    work_due_at: dt.datetime | None
    worked_at: dt.datetime | None
    sla: str = Field(description="the SLA clock running: accept, work or empty")
    due_at: dt.datetime | None
    overdue: bool


class LeadPage(Schema):
    items: list[LeadOut]


class ActingIn(Schema):
    acting_user: str | int = Field(description="username or id of the member acting (see the API notes)")


class WorkIn(ActingIn):
    kind: str = Field("note", description="call, email, meeting or note")
    notes: str = ""


class DisqualifyIn(ActingIn):
    reason: str = Field(min_length=1, max_length=500)
    notes: str = ""


class RecycleIn(ActingIn):
    reason: str = Field(min_length=1, max_length=500)
    notes: str = ""
    return_date: dt.date | None = Field(None, description="when the lead comes back to sales; "
                                                          "default: the workspace's recycle_days")


class AdvanceIn(ActingIn):
    stage: str = Field(description="sales_qualified, opportunity or customer")
    reason: str = ""


class RepOut(Schema):
    user: UserRef
    role: str
    available: bool
    manager: UserRef | None
    max_open_leads: int | None
    open_leads: int


class RepIn(Schema):
    user: str | int
    available: bool | None = None
    manager: str | int | None = Field(None, description="username or id; empty string clears it")
    max_open_leads: int | None = Field(None, ge=0, description="-1 is refused; send clear_max to remove")
    clear_max_open_leads: bool = False


class AlertOut(Schema):
    id: int
    kind: str
    contact_id: int
    assignment_id: int | None
    task_id: int | None
    created_at: dt.datetime
    read_at: dt.datetime | None
    context: dict[str, Any]


def _user(request, ref):
    try:
        return services.user_resolve(workspace=request.workspace, ref=ref)
    except ServiceError as exc:
        raise HttpError(400, f"acting_user: {exc}") from None


def _user_ref(user) -> dict | None:
    return {"id": user.pk, "username": user.username} if user else None


def lead_out(row: selectors.LeadRow) -> dict:
    a, c = row.assignment, row.contact
    return {
        "contact_id": c.pk, "email": c.email, "name": c.name, "company": c.company.name if c.company else "",
        "stage": c.lifecycle_stage, "fit_grade": c.fit_grade, "engagement_score": c.engagement_score,
        "assignment_id": a.pk, "owner": _user_ref(a.owner), "status": a.status, "via": a.via, "reason": a.reason,
        "assigned_at": a.assigned_at, "age_hours": round(row.age.total_seconds() / 3600, 2),
        "accept_due_at": a.accept_due_at, "accepted_at": a.accepted_at, "work_due_at": a.work_due_at,
        "worked_at": a.worked_at, "sla": row.sla, "due_at": row.due_at, "overdue": row.overdue,
    }


def _contact(request, contact_id: int):
    contact = contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    return contact


def _act(request, contact_id: int, body: ActingIn, action, **kwargs) -> dict:
    contact = _contact(request, contact_id)
    user = _user(request, body.acting_user)
    try:
        action(contact=contact, user=user, via=actor(request), **kwargs)
    except services.NotAllowed as exc:
        raise HttpError(403, str(exc)) from None
    # The lead's latest assignment (the open one, or the one the action closed), read afresh.
    assignment = selectors.lead_assignments(workspace=request.workspace, contact_id=contact.pk) \
        .select_related("contact__company").first()
    return lead_out(selectors.lead_row(assignment))


@router.get("/leads", response=LeadPage, summary="Leads with age and SLA due times, most urgent first")
def leads_list(request, owner: str = Query("", description="username or id; empty: every owner"),
               status: str = Query("open", description="open, all, or one assignment status")):
    owner_ids = [_user(request, owner).pk] if owner else None
    try:
        rows = selectors.sales_leads(workspace=request.workspace, owner_ids=owner_ids, status=status)
    except ValueError as exc:
        raise HttpError(400, f"status: {exc}") from None
    return {"items": [lead_out(r) for r in rows]}


@router.post("/leads/{contact_id}/accept", response=LeadOut, summary="Accept a lead (becomes SAL)")
def lead_accept(request, contact_id: int, body: ActingIn):
    return _act(request, contact_id, body, services.lead_accept)


@router.post("/leads/{contact_id}/work", response=LeadOut, summary="Log a call, email, meeting or note")
def lead_work(request, contact_id: int, body: WorkIn):
    return _act(request, contact_id, body, services.lead_work_log, kind=body.kind, note=body.notes)


@router.post("/leads/{contact_id}/disqualify", response=LeadOut, summary="Disqualify with a reason")
def lead_disqualify(request, contact_id: int, body: DisqualifyIn):
    return _act(request, contact_id, body, services.lead_disqualify, reason=body.reason, notes=body.notes)


@router.post("/leads/{contact_id}/recycle", response=LeadOut,
             summary="Recycle to marketing with a reason, notes and a return date")
def lead_recycle(request, contact_id: int, body: RecycleIn):
    return _act(request, contact_id, body, services.lead_recycle, reason=body.reason, notes=body.notes,
                return_date=body.return_date)


@router.post("/leads/{contact_id}/advance", response=LeadOut,
             summary="Mark sales qualified, opportunity or customer (forward only)")
def lead_advance(request, contact_id: int, body: AdvanceIn):
    return _act(request, contact_id, body, services.lead_advance, to_stage=body.stage, reason=body.reason)


def _reps_out(request) -> list[dict]:
    return [{**r, "user": _user_ref(r["user"]), "manager": _user_ref(r["manager"])}
            for r in selectors.sales_reps(workspace=request.workspace)]


@router.get("/reps", response=list[RepOut], summary="Sales reps: availability, manager, capacity, open leads")
def reps_list(request):
    return _reps_out(request)


@router.put("/reps", response=list[RepOut], summary="Set reps' availability, manager and capacity")
def reps_update(request, body: list[RepIn]):
    from django.db import transaction

    with transaction.atomic():
        for item in body:
            user = _user(request, item.user)
            manager = _user(request, item.manager) if item.manager not in (None, "") else None
            services.sales_rep_set(workspace=request.workspace, user=user, available=item.available,
                                   manager=manager, clear_manager=item.manager == "",
                                   max_open_leads=item.max_open_leads,
                                   clear_max_open_leads=item.clear_max_open_leads, actor=actor(request))
    return _reps_out(request)


@router.get("/alerts", response=list[AlertOut], summary="A member's in-app sales alerts, newest first")
def alerts_list(request, user: str = Query(..., description="username or id"), unread: bool = False):
    member = _user(request, user)
    return [{"id": a.pk, "kind": a.kind, "contact_id": a.contact_id, "assignment_id": a.assignment_id,
             "task_id": a.task_id, "created_at": a.created_at, "read_at": a.read_at, "context": a.context}
            for a in selectors.sales_alerts(workspace=request.workspace, user=member, unread_only=unread)[:200]]


class TaskOut(Schema):
    id: int
    contact_id: int
    contact_email: str
    contact_name: str
    owner: UserRef | None
    title: str
    note: str
    due_at: dt.datetime | None
    overdue: bool
    created_at: dt.datetime
    created_by: str
    journey: str = Field(description="slug of the journey that made it; empty for a task added by hand")
    journey_step: str
    done_at: dt.datetime | None
    done_by: UserRef | None


class TaskPage(Schema):
    items: list[TaskOut]


class TaskIn(ActingIn):
    contact_id: int
    title: str = Field(min_length=1, max_length=200)
    note: str = ""
    due_at: dt.datetime | None = Field(None, description="ISO 8601; without a zone it is UTC")
    owner: str | int | None = Field(None, description="username or id; default: the acting user")


def task_out(task) -> dict:
    return {"id": task.pk, "contact_id": task.contact_id, "contact_email": task.contact.email,
            "contact_name": task.contact.name, "owner": _user_ref(task.owner), "title": task.title,
            "note": task.note, "due_at": task.due_at, "overdue": task.overdue, "created_at": task.created_at,
            "created_by": task.created_by, "journey": task.journey_slug, "journey_step": task.journey_step,
            "done_at": task.done_at, "done_by": _user_ref(task.done_by)}


def _task(request, task_id: int):
    task = selectors.task_get(workspace=request.workspace, task_id=task_id)
    if task is None:
        raise HttpError(404, f"no task {task_id} in this workspace")
    return task


def _task_act(request, task_id: int, body: ActingIn, action) -> dict:
    task = _task(request, task_id)
    user = _user(request, body.acting_user)
    try:
        task = action(task=task, user=user, via=actor(request))
    except services.NotAllowed as exc:
        raise HttpError(403, str(exc)) from None
    except services.TaskConflict as exc:
        raise HttpError(409, str(exc)) from None
    return task_out(selectors.task_get(workspace=request.workspace, task_id=task.pk))


@router.get("/tasks", response=TaskPage, summary="Sales tasks: open ones earliest due first, with overdue")
def tasks_list(request, owner: str = Query("", description="username or id; empty: every owner"),
               contact_id: int | None = Query(None, description="only this contact's tasks"),
               status: str = Query("open", description="open, done or all")):
    owner_ids = [_user(request, owner).pk] if owner else None
    try:
        tasks = selectors.sales_tasks(workspace=request.workspace, owner_ids=owner_ids, contact_id=contact_id,
                                      status=status)
    except ValueError as exc:
        raise HttpError(400, f"status: {exc}") from None
    return {"items": [task_out(t) for t in tasks]}


@router.post("/tasks", response={201: TaskOut}, summary="Add a task (for the acting user or a rep they manage)")
def task_add(request, body: TaskIn):
    contact = _contact(request, body.contact_id)
    user = _user(request, body.acting_user)
    owner = None
    if body.owner not in (None, ""):
        try:
            owner = services.user_resolve(workspace=request.workspace, ref=body.owner)
        except ServiceError as exc:
            raise HttpError(400, f"owner: {exc}") from None
    try:
        task = services.task_create(contact=contact, user=user, owner=owner, title=body.title, note=body.note,
                                    due_at=body.due_at, via=actor(request))
    except services.NotAllowed as exc:
        raise HttpError(403, str(exc)) from None
    return Status(201, task_out(selectors.task_get(workspace=request.workspace, task_id=task.pk)))


@router.post("/tasks/{task_id}/complete", response=TaskOut, summary="Mark a task done")
def task_complete(request, task_id: int, body: ActingIn):
    return _task_act(request, task_id, body, services.task_complete)


@router.post("/tasks/{task_id}/reopen", response=TaskOut, summary="Open a done task again")
def task_reopen(request, task_id: int, body: ActingIn):
    return _task_act(request, task_id, body, services.task_reopen)
