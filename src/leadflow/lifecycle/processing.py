"""The lifecycle stage of the pipeline: runs after identity and scoring on every batch.

For the contacts the batch touched (loaded fresh, in one query, after scoring wrote their
scores) it gives new identified contacts their first stage, promotes subscribers that show lead
intent, qualifies leads as MQL (fit grade and engagement threshold, or a hot event) and
requalifies recycled leads that came back to activity; every new MQL is routed to an owner and
alerted. All in the batch's transaction, so a crash redoes the batch and nothing is half-done;
redoing it finds the stages already set and does nothing twice.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.lifecycle import rules
from leadflow.lifecycle.models import LEAD, MQL, RECYCLED, SUBSCRIBER, Assignment, AssignmentStatus
from leadflow.lifecycle.services import (
    Transition, leads_route, lifecycle_settings_get, transitions_apply,
)

# Track events that show a subscriber is now a lead (beyond reading newsletters).
LEAD_EVENTS = frozenset({"Form Submitted", "Asset Downloaded", "Signed Up", "Trial Started",
                         "Webinar Registered", "Webinar Attended"})


def process_events(events: list) -> int:
    by_workspace: dict[int, list] = defaultdict(list)
    for event in events:
        if event.contact_id is not None:
            by_workspace[event.workspace_id].append(event)
    now = clock.now()
    for workspace_id, group in by_workspace.items():
        _process_workspace(workspace_id, group, now)
    return len(events)


def _process_workspace(workspace_id: int, events: list, now: dt.datetime) -> None:
    settings = lifecycle_settings_get(workspace_id=workspace_id)
    order = rules.StageOrder.of(settings.stages)
    qualification = rules.Qualification(frozenset(settings.mql_grades), settings.mql_engagement_threshold,
                                        frozenset(settings.hot_events))
    subscriber_events = frozenset(settings.subscriber_events)
    names: dict[int, set[str]] = defaultdict(set)
    latest: dict[int, dt.datetime] = {}
    for event in events:
        if event.type == "track" and event.event:
            names[event.contact_id].add(event.event)
        if event.contact_id not in latest or event.timestamp > latest[event.contact_id]:
            latest[event.contact_id] = event.timestamp
    contacts = list(Contact.objects.select_for_update(of=("self",)).select_related("company")
                    .filter(workspace_id=workspace_id, pk__in=list(latest)).order_by("pk"))

    transitions: list[Transition] = []
    qualified: list[tuple[Contact, str]] = []
    returning: list[int] = []
    mql_at = order.position(MQL)
    for contact in contacts:
        stage = contact.lifecycle_stage
        seen = names[contact.pk]
        if not stage:
            if not contact.email:
                continue  # anonymous visitors have no stage until they identify
            stage = SUBSCRIBER if seen & subscriber_events and not seen & LEAD_EVENTS else LEAD
            transitions.append(Transition(contact, stage, "identified" if stage == LEAD else
                                          f"subscribed: {sorted(seen & subscriber_events)[0]}", "rule:new-contact"))
        elif stage == SUBSCRIBER and seen & LEAD_EVENTS:
            stage = LEAD
            transitions.append(Transition(contact, LEAD, f"lead intent: {sorted(seen & LEAD_EVENTS)[0]}",
                                          "rule:lead-intent"))
        if stage == RECYCLED:
            # Qualifies again only on activity after it was recycled.
            if contact.stage_changed_at and latest[contact.pk] < contact.stage_changed_at:
                continue
        elif not (stage in order.funnel and order.position(stage) < mql_at):
            continue
        reason = rules.qualification_reason(qualification, fit_grade=contact.fit_grade,
                                            engagement_score=contact.engagement_score, event_names=seen)
        if reason and rules.automatic_move_allowed(order, stage, MQL):
            actor = "rule:hot-event" if reason.startswith("hot:") else "rule:mql"
            if stage == RECYCLED:
                reason = f"requalified after recycling: {reason}"
                returning.append(contact.pk)
            transitions.append(Transition(contact, MQL, reason, actor))
            qualified.append((contact, reason))
    if not transitions:
        return
    if returning:  # the return date no longer applies: it came back by itself
        Assignment.objects.filter(contact_id__in=returning, status=AssignmentStatus.RECYCLED,
                                  returned_at__isnull=True).update(returned_at=now)
    transitions_apply(workspace_id=workspace_id, transitions=transitions, now=now)
    leads_route(workspace_id=workspace_id, leads=qualified, now=now)
    # Later stages of the same batch see the new stage and owner on the events' contacts.
    fresh = {c.pk: c for c in contacts}
    for event in events:
        contact = fresh.get(event.contact_id)
        if contact is not None and event.contact is not contact:
            event.contact.lifecycle_stage = contact.lifecycle_stage
            event.contact.stage_changed_at = contact.stage_changed_at
            event.contact.owner_id = contact.owner_id
