"""Sales pages: my leads with their SLA clocks and my open tasks, the manager view, a lead's page
with the context that made it hot, its tasks and the actions (accept, log work, disqualify,
recycle, advance, add a task), marking tasks done, alerts, and the lifecycle settings (MQL rule,
SLAs, routing rules, reps)."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from leadflow.contacts import selectors as contact_selectors
from leadflow.core.models import Role
from leadflow.core.services import ServiceError
from leadflow.lifecycle import selectors as sales_selectors
from leadflow.lifecycle import services as sales
from leadflow.lifecycle.models import AssignmentStatus, SalesAlert
from leadflow.web.views import _actor, workspace_view

SALES_ROLES = {Role.SALES, Role.ADMIN}
STATUS_FILTERS = ("open", *AssignmentStatus.values, "all")
ADVANCE = (("sales_qualified", "Sales qualified (SQL)"), ("opportunity", "Opportunity"), ("customer", "Customer"))


@workspace_view()
def inbox(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "open")
    if status not in STATUS_FILTERS:
        status = "open"
    rows = sales_selectors.sales_inbox(workspace=request.workspace, user=request.user, status=status)
    manages = sales_selectors.managed_user_ids(workspace=request.workspace, manager=request.user)
    return render(request, "web/sales/inbox.html", {
        "section": "sales", "rows": rows, "status": status, "statuses": STATUS_FILTERS,
        "is_manager": manages is None or bool(manages),
        "tasks": sales_selectors.sales_tasks(workspace=request.workspace, owner_ids=[request.user.pk]),
        "acts_for": _acts_for(request, manages),
        "alerts": sales_selectors.sales_alerts(workspace=request.workspace, user=request.user,
                                               unread_only=True)[:20],
    })


@workspace_view()
def team(request: HttpRequest) -> HttpResponse:
    manages = sales_selectors.managed_user_ids(workspace=request.workspace, manager=request.user)
    if manages is not None and not manages:
        return render(request, "web/forbidden.html", {"role": request.role,
                                                      "why": "Only managers and admins see the team view."},
                      status=403)
    status = request.GET.get("status", "open")
    if status not in STATUS_FILTERS:
        status = "open"
    view = sales_selectors.sales_team_view(workspace=request.workspace, manager=request.user, status=status)
    owners = sorted(view.by_owner.values(), key=lambda e: (-e["overdue"], e["user"].get_username()))
    tasks = sales_selectors.sales_tasks(workspace=request.workspace, owner_ids=manages)
    return render(request, "web/sales/team.html", {"section": "sales", "view": view, "owners": owners,
                                                   "status": status, "statuses": STATUS_FILTERS, "tasks": tasks,
                                                   "acts_for": _acts_for(request, manages)})


class _Everyone:
    """`acts_for` of an admin: they may act for every owner."""

    def __contains__(self, user_id) -> bool:
        return True


def _acts_for(request: HttpRequest, manages: list[int] | None):
    """The owners whose tasks the user may mark done (for showing the button; the service checks
    again): themselves and the reps they manage, everyone for an admin, nobody without a sales role."""
    if request.role not in SALES_ROLES:
        return set()
    if manages is None:
        return _Everyone()
    return {request.user.pk, *manages}


def _lead_contact(request: HttpRequest, contact_id: int):
    contact = contact_selectors.contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise Http404("no such contact")
    return contact


@workspace_view()
def lead(request: HttpRequest, contact_id: int) -> HttpResponse:
    contact = _lead_contact(request, contact_id)
    if contact.pk != contact_id:
        return redirect("web:sales-lead", contact.pk)
    assignment = sales_selectors.lead_get(workspace=request.workspace, contact_id=contact.pk)
    alert = (SalesAlert.objects.filter(workspace=request.workspace, contact=contact)
             .order_by("-created_at", "-pk").first())
    if alert and alert.user_id == request.user.pk and alert.read_at is None:
        sales.sales_alert_mark_read(alert=alert, user=request.user)
    context = alert.context if alert else sales.alert_contexts(workspace_id=request.workspace.pk,
                                                               contacts=[contact])[contact.pk]
    return render(request, "web/sales/lead.html", {
        "section": "sales", "contact": contact, "assignment": assignment,
        "row": sales_selectors.lead_row(assignment) if assignment else None,
        "context": context, "alert": alert,
        "history": sales_selectors.stage_history(workspace=request.workspace, contact_id=contact.pk),
        "assignments": sales_selectors.lead_assignments(workspace=request.workspace, contact_id=contact.pk),
        "can_act": request.role in SALES_ROLES, "work_kinds": sales.WORK_KINDS, "advance": ADVANCE,
        "default_return": (dt.date.today() + dt.timedelta(days=30)).isoformat(),
        "tasks": sales_selectors.sales_tasks(workspace=request.workspace, contact_id=contact.pk, status="all",
                                             limit=50),
        "acts_for": _acts_for(request, sales_selectors.managed_user_ids(workspace=request.workspace,
                                                                        manager=request.user)),
    })


@workspace_view()
@require_POST
def lead_action(request: HttpRequest, contact_id: int, action: str) -> HttpResponse:
    contact = _lead_contact(request, contact_id)
    data = request.POST
    try:
        if action == "accept":
            sales.lead_accept(contact=contact, user=request.user)
            done = "Lead accepted: the work SLA has started."
        elif action == "work":
            sales.lead_work_log(contact=contact, user=request.user, kind=data.get("kind", "note"),
                                note=data.get("note", ""))
            done = "Logged."
        elif action == "disqualify":
            sales.lead_disqualify(contact=contact, user=request.user, reason=data.get("reason", ""),
                                  notes=data.get("notes", ""))
            done = "Lead disqualified."
        elif action == "recycle":
            raw = data.get("return_date", "").strip()
            try:
                return_date = dt.date.fromisoformat(raw) if raw else None
            except ValueError:
                raise ServiceError(f"return date {raw!r} is not a date (YYYY-MM-DD)") from None
            sales.lead_recycle(contact=contact, user=request.user, reason=data.get("reason", ""),
                               notes=data.get("notes", ""), return_date=return_date)
            done = "Lead recycled back to marketing."
        elif action == "advance":
            sales.lead_advance(contact=contact, user=request.user, to_stage=data.get("to_stage", ""),
                               reason=data.get("reason", ""))
            done = "Stage updated."
        elif action == "task":
            raw = data.get("due_date", "").strip()
            try:
                # Due by the end of that day (UTC): a task due today is not overdue this afternoon.
                due_at = dt.datetime.combine(dt.date.fromisoformat(raw), dt.time(23, 59), tzinfo=dt.timezone.utc) \
                    if raw else None
            except ValueError:
                raise ServiceError(f"due date {raw!r} is not a date (YYYY-MM-DD)") from None
            sales.task_create(contact=contact, user=request.user, title=data.get("title", ""),
                              note=data.get("note", ""), due_at=due_at)
            done = "Task added."
        else:
            raise Http404("no such action")
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done)
    return redirect("web:sales-lead", contact.pk)


@workspace_view()
@require_POST
def task_action(request: HttpRequest, task_id: int, action: str) -> HttpResponse:
    """Mark a task done or open it again, then back to the page the form was on."""
    task = sales_selectors.task_get(workspace=request.workspace, task_id=task_id)
    if task is None:
        raise Http404("no such task")
    try:
        if action == "done":
            sales.task_complete(task=task, user=request.user)
            messages.success(request, f"Done: {task.title}")
        elif action == "reopen":
            sales.task_reopen(task=task, user=request.user)
            messages.success(request, f"Open again: {task.title}")
        else:
            raise Http404("no such action")
    except ServiceError as exc:
        messages.error(request, str(exc))
    back = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return redirect(back)
    return redirect("web:sales")


@workspace_view()
def alerts(request: HttpRequest) -> HttpResponse:
    items = list(sales_selectors.sales_alerts(workspace=request.workspace, user=request.user)[:100])
    return render(request, "web/sales/alerts.html", {"section": "sales", "alerts": items})


@workspace_view()
@require_POST
def alert_read(request: HttpRequest, alert_id: int) -> HttpResponse:
    alert = SalesAlert.objects.filter(workspace=request.workspace, pk=alert_id).first()
    if alert is None:
        raise Http404("no such alert")
    try:
        sales.sales_alert_mark_read(alert=alert, user=request.user)
    except ServiceError as exc:
        messages.error(request, str(exc))
    return redirect("web:sales-alerts")


def _number(request: HttpRequest, name: str, label: str, kind=float):
    raw = request.POST.get(name, "").strip()
    try:
        return kind(raw)
    except ValueError:
        raise ServiceError(f"{label} must be a {'whole ' if kind is int else ''}number, not {raw!r}") from None


def _words(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


@workspace_view()
def lifecycle_settings(request: HttpRequest) -> HttpResponse:
    workspace = request.workspace
    can_edit = request.role == Role.ADMIN or request.role == Role.MARKETER
    if request.method == "POST":
        if not can_edit:
            return render(request, "web/forbidden.html", {"role": request.role}, status=403)
        form = request.POST.get("form")
        try:
            if form == "settings":
                changes = {
                    "mql_grades": request.POST.getlist("mql_grades"),
                    "mql_engagement_threshold": _number(request, "mql_engagement_threshold", "The engagement threshold"),
                    "hot_events": _words(request.POST.get("hot_events", "")),
                    "inactive_days": _number(request, "inactive_days", "Days without activity", int),
                    "accept_sla_hours": _number(request, "accept_sla_hours", "The accept SLA"),
                    "work_sla_hours": _number(request, "work_sla_hours", "The work SLA"),
                    "on_accept_breach": request.POST.get("on_accept_breach", ""),
                    "recycle_days": _number(request, "recycle_days", "Recycle days", int),
                    "default_pool": request.POST.getlist("default_pool"),
                }
                sales.lifecycle_settings_update(workspace=workspace, changes=changes, actor=_actor(request))
                messages.success(request, "Lifecycle settings saved.")
            elif form == "rule":
                changes = {"name": request.POST.get("name", ""),
                           "priority": int(request.POST.get("priority") or 100),
                           "countries": [c.upper() for c in _words(request.POST.get("countries", ""))],
                           "source_channels": request.POST.getlist("source_channels")}
                for bound in ("employees_min", "employees_max"):
                    value = request.POST.get(bound, "").strip()
                    changes[bound] = int(value) if value else None
                target = request.POST.get("target_user", "")
                pool = request.POST.getlist("pool")
                if target:
                    changes["target_user"] = int(target)
                else:
                    changes["pool"] = [int(p) for p in pool]
                sales.routing_rule_save(workspace=workspace, changes=changes, actor=_actor(request))
                messages.success(request, "Routing rule added.")
            elif form == "rule-delete":
                rule = sales_selectors.routing_rule_get(workspace=workspace,
                                                        rule_id=int(request.POST.get("rule_id", "0")))
                if rule is None:
                    raise Http404("no such rule")
                sales.routing_rule_delete(rule=rule, actor=_actor(request))
                messages.success(request, "Routing rule deleted.")
            elif form == "rep":
                user = get_user_model().objects.filter(pk=int(request.POST.get("user_id", "0"))).first()
                if user is None:
                    raise Http404("no such user")
                manager_id = request.POST.get("manager", "")
                manager = get_user_model().objects.filter(pk=int(manager_id)).first() if manager_id else None
                sales.sales_rep_set(workspace=workspace, user=user,
                                    available=request.POST.get("available") == "on",
                                    manager=manager, clear_manager=not manager, actor=_actor(request))
                messages.success(request, f"{user.get_username()} updated.")
        except (ServiceError, ValueError) as exc:
            messages.error(request, str(exc))
        return redirect("web:sales-settings")
    settings_row = sales.lifecycle_settings_get(workspace_id=workspace.pk)
    from leadflow.tracking.sources import CHANNEL_LABELS

    reps = sales_selectors.sales_reps(workspace=workspace)
    return render(request, "web/sales/settings.html", {
        "section": "sales", "s": settings_row, "reps": reps, "can_edit": can_edit,
        "rules": sales_selectors.routing_rules(workspace=workspace),
        "grades": ["A", "B", "C", "D"], "channels": CHANNEL_LABELS.items(),
        "users_by_id": {r["user"].pk: r["user"] for r in reps},
    })
