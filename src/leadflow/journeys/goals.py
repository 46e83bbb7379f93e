"""Goals and exit rules: whenever one becomes true, the person leaves the journey at once.

A goal met is a conversion, credited to the journey and to the node the person had passed last
(`last_node`); an exit rule met is a plain exit. Filter goals are checked for a whole batch in
one query per filter: by the engine before anyone moves, and by the pipeline for the contacts an
event batch touched. Event goals are matched as events arrive (`triggers.records_process`). The
pipeline's checks cover paused and archived journeys too: a goal met while a journey is paused
ends the enrollment then, so the resume sends that person nothing.
"""

from __future__ import annotations

import datetime as dt

from leadflow.contacts.models import Contact
from leadflow.journeys import language as lang
from leadflow.journeys.models import Enrollment, EnrollmentState, StepKind


def _filter_hits(workspace_id: int, flt, contact_ids: list[int], now: dt.datetime) -> set[int]:
    from leadflow.segments.compiler import filter_q

    if not contact_ids:
        return set()
    return set(Contact.objects.filter(workspace_id=workspace_id, pk__in=contact_ids)
               .filter(filter_q(flt, workspace_id=workspace_id, now=now)).values_list("pk", flat=True))


def filter_outcomes(definition: lang.Definition, *, workspace_id: int, contact_ids: list[int],
                    now: dt.datetime) -> dict[int, tuple[str, str]]:
    """Contacts for whom a filter goal or exit rule holds now: contact id → (state, reason)."""
    found: dict[int, tuple[str, str]] = {}
    remaining = list(contact_ids)
    for key, state in (("goals", EnrollmentState.CONVERTED), ("exit_when", EnrollmentState.EXITED)):
        for goal in getattr(definition, key):
            if goal.filter is None or not remaining:
                continue
            for contact_id in _filter_hits(workspace_id, goal.filter.flt, remaining, now):
                found[contact_id] = (state, goal.name)
            remaining = [c for c in remaining if c not in found]
    return found


def goal_end(p, e: Enrollment, state: str, name: str) -> None:
    """End `e` for a goal (conversion, credited to the node passed last) or an exit rule."""
    from leadflow.journeys.engine import end

    kind = StepKind.CONVERTED if state == EnrollmentState.CONVERTED else StepKind.EXITED
    credited = e.last_node or e.node
    end(e, state, f"goal: {name}" if kind == StepKind.CONVERTED else f"exit rule: {name}", p.now)
    p.step(e, kind, node=credited, goal=name, at_node=e.node, group=e.group or "treated")


def goals_check(p, group: list[Enrollment]) -> list[Enrollment]:
    """Take out of `group` (one version's due enrollments) those a filter goal or exit rule now
    holds for; returns those still in."""
    if not (p.definition.goals or p.definition.exit_when):
        return group
    outcomes = filter_outcomes(p.definition, workspace_id=p.journey.workspace_id,
                               contact_ids=sorted({e.contact_id for e in group}), now=p.now)
    still = []
    for e in group:
        outcome = outcomes.get(e.contact_id)
        if outcome is None:
            still.append(e)
        else:
            goal_end(p, e, *outcome)
    return still
