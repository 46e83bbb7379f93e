"""The segments stage of the pipeline: last in every batch, after lifecycle.

Only the contacts the batch touched are re-evaluated, and only for the dynamic segments the batch
can have changed: a segment whose filter reads nothing but named events, positively
(`skippable`), is skipped when none of those events is in the batch and none of its contacts
merged; every other segment (profile fields, scores, stage, pages…) is re-evaluated for the
touched contacts, one query per segment per workspace in the batch. Segments that reference other segments come after them, and
a segment whose membership changed carries the change on to the segments referencing it.

Running last matters: identity, profile, scoring and lifecycle have written the contacts the
filters read (a `Lifecycle Stage Changed` is appended already processed and never comes through
here, but the stage it records is on the contact by now). Entries and exits are written in the
batch's transaction, so a crash redoes the batch and nothing is recorded twice.
"""

from __future__ import annotations

from collections import defaultdict

from leadflow.core import clock
from leadflow.segments.membership import _dynamic_segments, contacts_reevaluate, merged_take, segment_filter


# LeadFlow's own events are appended already processed and never come through a batch: a filter
# that reads them cannot be skipped on the names of a batch's events.
SYSTEM_EVENTS = frozenset({"Lifecycle Stage Changed", "Lead Went Quiet", "Segment Entered", "Segment Exited"})


def batch_event_names(events: list) -> set[str]:
    """The track event names of a batch."""
    return {event.event for event in events if event.type == "track" and event.event}


def skippable(flt) -> bool:
    """Can a batch without any of the filter's named events leave its result alone, for every
    contact, new ones included? Only when the filter reads nothing but events and segment
    membership, and only positively: no profile field, score, stage or consent (they change with
    almost any event), no `not`, `not_performed` or `not_in_segment`, no count a contact with no
    such event meets (`lte`, `eq 0`). Then a contact matches only through one of the named events
    or through a segment it is in, and a change to a segment's members is carried on to the
    segments that reference it."""
    from leadflow.segments import language as lang

    for _, cond in lang.walk(flt.root):
        if isinstance(cond, (lang.AllGroup, lang.AnyGroup, lang.InSegment)):
            continue
        if not isinstance(cond, lang.BEHAVIOUR_KINDS) or isinstance(cond, lang.NotPerformed):
            return False
        count = getattr(cond, "count", None)
        if count is not None and not (count.op == "gte" and count.value >= 1):
            return False
    return True


def segment_relevant(segment, names: set[str]) -> bool:
    """Could a batch whose track events are `names` change who is in `segment` (for contacts that
    did not merge)? Yes, unless the filter is `skippable` and none of its events, nor any of
    LeadFlow's own (which never come through a batch), is in the batch."""
    from leadflow.segments.language import filter_event_names

    flt = segment_filter(segment)
    if not skippable(flt):
        return True
    wanted = filter_event_names(flt)
    return wanted is None or bool(wanted & (names | SYSTEM_EVENTS))


def process_events(events: list) -> int:
    by_workspace: dict[int, list] = defaultdict(list)
    for event in events:
        if event.contact_id is not None:
            by_workspace[event.workspace_id].append(event)
    now = clock.now()
    merged_ids = merged_take()
    for workspace_id, group in by_workspace.items():
        segments = list(_dynamic_segments(workspace_id))
        if not segments:
            continue
        touched = {e.contact_id for e in group}
        names = batch_event_names(group)
        relevant = [s for s in segments if segment_relevant(s, names)]
        if relevant:
            contacts_reevaluate(workspace_id=workspace_id, contact_ids=touched, now=now, segments=relevant)
        merged = touched & merged_ids
        skipped = [s for s in segments if s not in relevant]
        if merged and skipped:
            contacts_reevaluate(workspace_id=workspace_id, contact_ids=merged, now=now, segments=skipped)
    return len(events)
