"""Journey steps that reach sales: hand a lead over with an alert, or tell its owner and give them
a task.

They use the sales side's own machinery (`leadflow.lifecycle.services`): routing rules and
round-robin pools choose an owner, every alert is an in-app item with the context that made the
lead hot plus an email through the notification outbox, and a task is a `SalesTask` in the rep's
inbox. The journey, the step, its note and its task are in the alert before its email is written,
so the rep reads them in the email too. Tasks and alerts carry the step's dedupe key
(`engine.dedupe_key`): a pass redone after a crash finds them and adds nothing.

A lead nobody can take (the routing pool is empty, or nobody in it is available) is treated as an
MQL is outside journeys: it keeps no owner and routing is tried again later. The person waits at
the alert step meanwhile (`nodes.sales_alert`), and the step's history says why
(`routing_gap`).
"""

from __future__ import annotations

import datetime as dt

from leadflow.journeys import language as lang
from leadflow.journeys.engine import dedupe_key
from leadflow.journeys.models import Enrollment


def _reason(p, note: str) -> str:
    return f"journey {p.journey.name}" + (f": {note}" if note else "")


def _journey_context(p, node, task: str = "") -> dict:
    """What an alert from this step adds to the lead's snapshot."""
    return {"journey": {"slug": p.journey.slug, "name": p.journey.name, "note": node.note, "task": task},
            "journey_step": node.id}


def _candidates(router) -> tuple[list[int], list[int]]:
    """(the default pool, everyone routing may give a lead to: that pool and every rule's target)."""
    default = [int(u) for u in router.settings.default_pool or []]
    listed = list(default)
    for rule in router.rules:
        listed += [rule.target_user_id] if rule.target_user_id else [int(u) for u in rule.pool or []]
    return default, listed


def routing_gap(router) -> str:
    """Why routing found nobody for a lead: the words the step's history, the journey page and
    the linter show."""
    default, listed = _candidates(router)
    if not listed:
        return "no sales rep to route to: the routing pool is empty"
    if not any(router.available(u) for u in listed):
        return ("no sales rep to route to: nobody in the routing pool is available (away, at their limit of "
                "open leads, or no longer a sales member)")
    if not default:
        return "no sales rep to route to: no routing rule matched the lead and the default pool is empty"
    return "no sales rep to route to: no routing rule matched the lead and nobody in the default pool is available"


def sales_reps_missing(*, workspace_id: int, now: dt.datetime) -> str | None:
    """Why no lead at all can be routed in the workspace now (nobody in the default pool or in a
    routing rule can take one), or None when someone can. Leads of companies with an account
    owner still go to that owner."""
    from leadflow.lifecycle.services import Router

    router = Router(workspace_id, now)
    if any(router.available(u) for u in _candidates(router)[1]):
        return None
    return routing_gap(router)


def sales_alerts_send(p, node: lang.SalesAlertNode, enrollments: list[Enrollment]) -> tuple[dict[int, int], str]:
    """Route each lead to an owner and alert them; a lead that already has an open assignment
    keeps its owner, who is alerted again with the journey's context. Returns the owner of each
    lead handed over (by contact id) and, when some could not be, why (`routing_gap`)."""
    from leadflow.lifecycle.models import Assignment, SalesAlert
    from leadflow.lifecycle.services import OPEN_STATUSES, Router, alerts_create, leads_route

    workspace_id = p.journey.workspace_id
    contacts, keys = {}, {}
    for e in enrollments:
        contacts.setdefault(e.contact_id, p.contacts[e.contact_id])
        keys.setdefault(e.contact_id, dedupe_key(e, node.id))
    extra = {contact_id: _journey_context(p, node) for contact_id in contacts}
    router = Router(workspace_id, p.now)
    made = leads_route(workspace_id=workspace_id, now=p.now, alert_extra=extra, alert_keys=keys, router=router,
                       leads=[(c, _reason(p, node.note)) for c in contacts.values()])
    owners = {a.contact_id: a.owner_id for a in made}
    open_ones = list(Assignment.objects.filter(workspace_id=workspace_id, status__in=OPEN_STATUSES,
                                               contact_id__in=[pk for pk in contacts if pk not in owners])
                     .select_related("contact"))
    if open_ones:
        alerts_create(workspace_id=workspace_id, assignments=open_ones, now=p.now, kind=SalesAlert.Kind.NEW_LEAD,
                      extra=extra, keys=keys)
        owners.update({a.contact_id: a.owner_id for a in open_ones})
    return owners, (routing_gap(router) if len(owners) < len(contacts) else "")


def owners_notify(p, node: lang.NotifyOwnerNode, enrollments: list[Enrollment]) -> set[int]:
    """Alert each person's owner (or `node.user`) with the step's note, and with `node.task` give
    them a sales task (due `node.due_days` later when set), for the whole group at once. Returns
    the contacts whose owner was told (those without an owner are skipped)."""
    from leadflow.lifecycle.models import Assignment, SalesAlert, SalesTask
    from leadflow.lifecycle.services import OPEN_STATUSES, AlertItem, alerts_write, tasks_create, user_resolve

    workspace_id = p.journey.workspace_id
    fixed = user_resolve(workspace=workspace_id, ref=node.user).pk if node.user else None
    telling = [(e, fixed or p.contacts[e.contact_id].owner_id) for e in enrollments]
    telling = [(e, user_id) for e, user_id in telling if user_id]
    if not telling:
        return set()
    open_by_contact = {a.contact_id: a for a in Assignment.objects.filter(
        workspace_id=workspace_id, contact_id__in={e.contact_id for e, _ in telling}, status__in=OPEN_STATUSES)}
    title = node.task.strip()
    tasks: dict[int, SalesTask] = {}
    if title:
        due = p.now + dt.timedelta(days=node.due_days) if node.due_days is not None else None
        rows = [SalesTask(contact_id=e.contact_id, owner_id=user_id, title=title, note=node.note, due_at=due,
                          created_at=p.now, created_by=f"journey:{p.journey.slug}", journey_slug=p.journey.slug,
                          journey_name=p.journey.name[:200], journey_step=node.id, dedupe_key=dedupe_key(e, node.id))
                for e, user_id in telling]
        made = tasks_create(workspace_id=workspace_id, tasks=rows)
        tasks = {e.pk: task for (e, _), task in zip(telling, made)}
    items = []
    for e, user_id in telling:
        extra = _journey_context(p, node, title)
        task = tasks.get(e.pk)
        if task is not None:
            extra["sales_task"] = {"id": task.pk, "title": task.title,
                                   "due_at": task.due_at.isoformat() if task.due_at else None}
        items.append(AlertItem(user_id=user_id, contact=p.contacts[e.contact_id], extra=extra, task=task,
                               assignment=open_by_contact.get(e.contact_id), dedupe_key=dedupe_key(e, node.id)))
    alerts_write(workspace_id=workspace_id, items=items, now=p.now,
                 kind=SalesAlert.Kind.TASK if title else SalesAlert.Kind.NOTE)
    return {e.contact_id for e, _ in telling}
