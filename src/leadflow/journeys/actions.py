"""Journey steps that reach sales: hand a lead over with an alert, or tell its owner.

They use the sales side's own machinery (`leadflow.lifecycle.services`): routing rules and
round-robin pools choose an owner, and every alert is an in-app item with the context that made
the lead hot plus an email through the notification outbox.
"""

from __future__ import annotations

from leadflow.journeys import language as lang
from leadflow.journeys.models import Enrollment


def _reason(p, note: str) -> str:
    return f"journey {p.journey.name}" + (f": {note}" if note else "")


def sales_alerts_send(p, node: lang.SalesAlertNode, enrollments: list[Enrollment]) -> None:
    """Route each lead to an owner and alert them; a lead that already has an open assignment
    keeps its owner, who is alerted again with the journey's context."""
    from leadflow.lifecycle.models import Assignment, SalesAlert
    from leadflow.lifecycle.services import OPEN_STATUSES, alerts_create, leads_route

    contacts = [p.contacts[e.contact_id] for e in enrollments]
    made = leads_route(workspace_id=p.journey.workspace_id, now=p.now,
                       leads=[(c, _reason(p, node.note)) for c in contacts])
    routed = {a.contact_id for a in made}
    open_ones = list(Assignment.objects.filter(contact_id__in=[c.pk for c in contacts if c.pk not in routed],
                                               status__in=OPEN_STATUSES).select_related("contact"))
    if open_ones:
        alerts_create(workspace_id=p.journey.workspace_id, assignments=open_ones, now=p.now,
                      kind=SalesAlert.Kind.NEW_LEAD)
    _annotate(p, node.note, "", {c.pk for c in contacts})


def owners_notify(p, node: lang.NotifyOwnerNode, enrollments: list[Enrollment]) -> set[int]:
    """Alert each person's owner (or `node.user`), as a sales task when `node.task` is set.
    Returns the contacts whose owner was told (those without an owner are skipped)."""
    from leadflow.lifecycle.models import Assignment, SalesAlert
    from leadflow.lifecycle.services import OPEN_STATUSES, alerts_create, user_resolve

    contacts = {e.contact_id: p.contacts[e.contact_id] for e in enrollments}
    fixed = user_resolve(workspace=p.journey.workspace_id, ref=node.user).pk if node.user else None
    open_by_contact = {a.contact_id: a for a in Assignment.objects.filter(contact_id__in=list(contacts),
                                                                          status__in=OPEN_STATUSES)}
    assignments, recipients, direct = [], {}, []
    for contact_id, contact in contacts.items():
        user_id = fixed or contact.owner_id
        if not user_id:
            continue
        assignment = open_by_contact.get(contact_id)
        if assignment is None:
            direct.append(SalesAlert(workspace_id=p.journey.workspace_id, user_id=user_id, contact=contact,
                                     kind=SalesAlert.Kind.NEW_LEAD, created_at=p.now, context={}))
            continue
        assignments.append(assignment)
        recipients[assignment.pk] = user_id
    alerts_create(workspace_id=p.journey.workspace_id, assignments=assignments, now=p.now,
                  kind=SalesAlert.Kind.NEW_LEAD, recipients=recipients)
    SalesAlert.objects.bulk_create(direct)  # an owner without an open assignment: the in-app alert
    told = {a.contact_id for a in assignments} | {a.contact_id for a in direct}
    _annotate(p, node.note, node.task, told)
    return told


def _annotate(p, note: str, task: str, contact_ids: set[int]) -> None:
    """Add the journey, the step and the note/task to the alerts just made for these contacts."""
    from leadflow.lifecycle.models import SalesAlert

    alerts = list(SalesAlert.objects.filter(workspace_id=p.journey.workspace_id, contact_id__in=list(contact_ids),
                                            created_at=p.now))
    for alert in alerts:
        alert.context = {**alert.context, "journey": {"slug": p.journey.slug, "name": p.journey.name,
                                                      "note": note, "task": task}}
    SalesAlert.objects.bulk_update(alerts, ["context"])
