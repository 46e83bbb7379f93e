"""Keeping segment membership current: the one place that changes who is in a segment.

Every change goes through `changes_apply`: SegmentMember rows inserted or deleted, one
SegmentChange row per entry or exit, and a `Segment Entered` / `Segment Exited` event in the log
for each, all in the caller's transaction. Evaluation is set-based: `segment_reevaluate` compares
the contacts a segment's compiled filter matches with its member rows over a *scope* (every
contact, the contacts a batch touched, the contacts changed since a time) and applies the
difference; `contacts_reevaluate` does that for every dynamic segment of a workspace in
dependency order (a segment that references another is evaluated after it), and a change to a
segment is carried on to the segments that reference it.

Concurrency: the pipeline re-evaluates only contacts its batch holds locked, so two workers never
decide about the same person at once. Full and time-driven evaluations run beside the pipeline,
so before writing they lock the contacts whose membership they would change and decide again
from what is committed then (`verify=True`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable

import orjson

from django.db import transaction
from django.db.models import Q

from leadflow.contacts.models import Contact
from leadflow.core.services import ServiceError
from leadflow.segments.models import Segment, SegmentChange, SegmentMember

log = logging.getLogger(__name__)

ENTERED_EVENT = "Segment Entered"
EXITED_EVENT = "Segment Exited"
BATCH = 1000
DYNAMIC = "dynamic"
STATIC = "static"


# --- the filter of a stored segment -----------------------------------------------------------

# Parsed filters by their JSON text: a batch asks for each segment's filter several times, and a
# stored definition was validated when it was saved.
_PARSED: dict[bytes, object] = {}
_PARSED_MAX = 512


def segment_filter(segment: Segment):
    """The parsed filter of a stored dynamic segment (validated when it was saved)."""
    from leadflow.segments.language import filter_parse

    key = orjson.dumps(segment.definition, option=orjson.OPT_SORT_KEYS)
    flt = _PARSED.get(key)
    if flt is None:
        flt = filter_parse(segment.definition)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = flt
    return flt


def segment_q(segment: Segment, *, now: dt.datetime) -> Q:
    from leadflow.segments.compiler import filter_q

    return filter_q(segment_filter(segment), workspace_id=segment.workspace_id, now=now)


def segment_references(segment: Segment) -> set[str]:
    """Slugs of the segments a dynamic segment's filter refers to (in_segment / not_in_segment)."""
    from leadflow.segments.language import filter_segment_refs

    if segment.kind != DYNAMIC or not segment.definition:
        return set()
    return filter_segment_refs(segment_filter(segment))


def segments_ordered(segments: list[Segment]) -> list[Segment]:
    """`segments` with every segment after the segments (of the list) it references."""
    by_slug = {s.slug: s for s in segments}
    refs = {s.pk: [by_slug[r].pk for r in sorted(segment_references(s)) if r in by_slug] for s in segments}
    by_id = {s.pk: s for s in segments}
    ordered: list[Segment] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done

    def visit(pk: int) -> None:
        if state.get(pk):
            return  # done, or a cycle (which cannot be saved): never loop
        state[pk] = 1
        for other in refs[pk]:
            visit(other)
        state[pk] = 2
        ordered.append(by_id[pk])

    for s in sorted(segments, key=lambda s: s.pk):
        visit(s.pk)
    return ordered


def dependents_of(*, workspace_id: int, segment_ids: Iterable[int]) -> list[Segment]:
    """The active dynamic segments that reference any of `segment_ids`, directly or through
    others, in dependency order."""
    slugs = set(Segment.objects.filter(workspace_id=workspace_id, pk__in=list(segment_ids))
                .values_list("slug", flat=True))
    candidates = list(_dynamic_segments(workspace_id))
    refs = {s.pk: segment_references(s) for s in candidates}
    found: dict[int, Segment] = {}
    frontier = slugs
    while frontier:
        step = [s for s in candidates if refs[s.pk] & frontier and s.pk not in found]
        for s in step:
            found[s.pk] = s
        frontier = {s.slug for s in step}
    return segments_ordered(list(found.values()))


def _dynamic_segments(workspace_id: int):
    return Segment.objects.filter(workspace_id=workspace_id, kind=DYNAMIC, archived_at__isnull=True).order_by("pk")


# --- applying changes -------------------------------------------------------------------------

def changes_apply(*, segment: Segment, entered: Iterable[int], exited: Iterable[int],
                  now: dt.datetime) -> list[SegmentChange]:
    """Record entries and exits of `segment` (contact ids): member rows, history rows, events."""
    entered, exited = sorted(set(entered)), sorted(set(exited))
    if not entered and not exited:
        return []
    if exited:
        for start in range(0, len(exited), BATCH):
            SegmentMember.objects.filter(segment=segment, contact_id__in=exited[start:start + BATCH]).delete()
    if entered:
        SegmentMember.objects.bulk_create(
            [SegmentMember(workspace_id=segment.workspace_id, segment=segment, contact_id=pk, since=now)
             for pk in entered], batch_size=BATCH)
    changes = [SegmentChange(workspace_id=segment.workspace_id, segment=segment, contact_id=pk,
                             kind="entered", at=now) for pk in entered]
    changes += [SegmentChange(workspace_id=segment.workspace_id, segment=segment, contact_id=pk,
                              kind="exited", at=now) for pk in exited]
    changes = SegmentChange.objects.bulk_create(changes, batch_size=BATCH)
    properties = {"segment_id": segment.pk, "segment": segment.slug, "segment_name": segment.name,
                  "segment_version": segment.version, "segment_kind": segment.kind}
    for start in range(0, len(changes), BATCH):
        chunk = changes[start:start + BATCH]
        contacts = {c.pk: c for c in Contact.objects.filter(pk__in=[c.contact_id for c in chunk])
                    .only("pk", "user_id", "workspace_id")}
        segment_events_append(workspace_id=segment.workspace_id, now=now, items=[
            (contacts[c.contact_id], f"lf-segment-{c.pk}",
             ENTERED_EVENT if c.kind == "entered" else EXITED_EVENT, properties)
            for c in chunk if c.contact_id in contacts])
    return changes


def segment_events_append(*, workspace_id: int, now: dt.datetime, items: list[tuple]) -> None:
    """Append `Segment Entered`/`Segment Exited` (contact, message id, name, properties), resolved
    and processed: they are facts about the person, not the person's activity. Message ids come
    from the SegmentChange row, so appending again stores nothing twice."""
    from leadflow.tracking.system_events import system_events_append

    system_events_append(workspace_id=workspace_id, now=now, items=items, system="segments")


# --- evaluating -------------------------------------------------------------------------------

def _diff(segment: Segment, condition: Q, scope: Q | None, ids: list[int] | None) -> tuple[set[int], set[int]]:
    contacts = Contact.objects.filter(workspace_id=segment.workspace_id)
    members = SegmentMember.objects.filter(segment=segment)
    if ids is not None:
        contacts = contacts.filter(pk__in=ids)
        members = members.filter(contact_id__in=ids)
    elif scope is not None:
        contacts = contacts.filter(scope)
        members = members.filter(contact__in=Contact.objects.filter(workspace_id=segment.workspace_id)
                                 .filter(scope).values("pk"))
    matching = set(contacts.filter(condition).values_list("pk", flat=True).distinct())
    current = set(members.values_list("contact_id", flat=True))
    return matching - current, current - matching


def segment_reevaluate(*, segment: Segment, now: dt.datetime, ids: list[int] | None = None,
                       scope: Q | None = None, verify: bool = False) -> tuple[list[int], list[int]]:
    """Bring `segment`'s members in line with its filter for the contacts `ids` (or `scope`, a Q
    over Contact; neither: every contact of the workspace). Returns (entered, exited) ids.

    With `verify`, the contacts about to change are locked and decided again from the committed
    rows before anything is written (for passes that run beside the pipeline)."""
    if segment.kind != DYNAMIC or segment.archived_at is not None:
        return [], []
    from leadflow.segments.compiler import per_row

    condition = per_row(segment_q(segment, now=now))
    entered, exited = _diff(segment, condition, scope, ids)
    if verify and (entered or exited):
        changed = sorted(entered | exited)
        entered, exited = set(), set()
        for start in range(0, len(changed), BATCH):
            chunk = changed[start:start + BATCH]
            locked = list(Contact.objects.select_for_update().filter(pk__in=chunk).order_by("pk")
                          .values_list("pk", flat=True))
            e, x = _diff(segment, condition, None, locked)
            entered |= e
            exited |= x
    changes_apply(segment=segment, entered=entered, exited=exited, now=now)
    return sorted(entered), sorted(exited)


def segment_evaluate(*, segment: Segment, now: dt.datetime) -> tuple[list[int], list[int]]:
    """Full evaluation of one dynamic segment over every contact of its workspace, then of the
    segments that reference it, for the contacts that changed. Returns (entered, exited)."""
    with transaction.atomic():
        entered, exited = segment_reevaluate(segment=segment, now=now, verify=True)
        if entered or exited:
            _propagate(segment.workspace_id, [segment.pk], sorted(set(entered) | set(exited)), now)
    return entered, exited


def _propagate(workspace_id: int, segment_ids: list[int], contact_ids: list[int], now: dt.datetime) -> None:
    """Re-evaluate the segments referencing `segment_ids` for the contacts whose membership changed."""
    if not contact_ids:
        return
    for dependent in dependents_of(workspace_id=workspace_id, segment_ids=segment_ids):
        segment_reevaluate(segment=dependent, now=now, ids=contact_ids, verify=True)


def contacts_reevaluate(*, workspace_id: int, contact_ids: Iterable[int], now: dt.datetime,
                        segments: list[Segment] | None = None, verify: bool = False) -> dict[int, tuple]:
    """Re-evaluate `contact_ids` for `segments` (default: every active dynamic segment of the
    workspace), in dependency order; any segment whose membership changed carries the change on to
    the segments that reference it. Returns {segment id: (entered, exited)} for the changes."""
    ids = sorted(set(contact_ids))
    if not ids:
        return {}
    todo = segments_ordered(list(segments) if segments is not None else list(_dynamic_segments(workspace_id)))
    done: dict[int, tuple] = {}
    changed_segments: set[int] = set()
    queue = list(todo)
    seen: set[int] = set()
    while queue:
        segment = queue.pop(0)
        if segment.pk in seen:
            continue
        seen.add(segment.pk)
        entered, exited = segment_reevaluate(segment=segment, now=now, ids=ids, verify=verify)
        if entered or exited:
            done[segment.pk] = (entered, exited)
            changed_segments.add(segment.pk)
            # segments referencing this one, not already scheduled, come next (in order)
            scheduled = {s.pk for s in queue} | seen
            extra = [s for s in dependents_of(workspace_id=workspace_id, segment_ids=[segment.pk])
                     if s.pk not in scheduled]
            queue = segments_ordered(queue + extra)
    return done


def members_change_by_hand(*, segment: Segment, add: Iterable[int] = (), remove: Iterable[int] = (),
                           now: dt.datetime) -> tuple[list[int], list[int]]:
    """Add and remove contacts of a static list (ids already checked to be of its workspace).
    Contacts already in (for add) or not in (for remove) are left alone. Returns (added, removed)."""
    if segment.kind != STATIC:
        raise ServiceError("only static lists take members by hand; a dynamic segment's members "
                           "follow its filter")
    if segment.archived_at is not None:
        raise ServiceError("the list is archived")
    add, remove = set(add), set(remove)
    both = add & remove
    if both:
        raise ServiceError(f"contacts both added and removed: {sorted(both)[:10]}")
    current = set(SegmentMember.objects.filter(segment=segment, contact_id__in=sorted(add | remove))
                  .values_list("contact_id", flat=True))
    # Lock the contacts, so a concurrent change to the same person waits for this one.
    list(Contact.objects.select_for_update().filter(pk__in=sorted(add | remove)).values_list("pk", flat=True))
    entered, exited = sorted(add - current), sorted(remove & current)
    changes_apply(segment=segment, entered=entered, exited=exited, now=now)
    _propagate(segment.workspace_id, [segment.pk], entered + exited, now)
    return entered, exited


# --- merges -----------------------------------------------------------------------------------

_merged = threading.local()


def merged_take() -> set[int]:
    """Survivors of the merges made in this thread since the last call (the segments stage reads
    them: a survivor's history grew, whatever its batch's event names say)."""
    ids = getattr(_merged, "ids", set())
    _merged.ids = set()
    return ids


def merge_before(winner: Contact, loser: Contact) -> None:
    """Before a merge re-points the loser's rows: where both are members of a segment, the loser's
    row goes (the winner's `since` stays) with an exit in the history, so that entries minus exits
    still count the members once the loser's history moves to the winner. No event: the person
    did not leave, a duplicate profile did."""
    from leadflow.core import clock

    if not hasattr(_merged, "ids"):
        _merged.ids = set()
    _merged.ids.add(winner.pk)
    both = list(SegmentMember.objects.filter(contact=loser, segment__in=SegmentMember.objects.filter(
        contact=winner).values("segment")).select_related("segment"))
    if not both:
        return
    now = clock.now()
    SegmentChange.objects.bulk_create([SegmentChange(workspace_id=m.workspace_id, segment_id=m.segment_id,
                                                     contact=loser, kind="exited", at=now) for m in both])
    SegmentMember.objects.filter(pk__in=[m.pk for m in both]).delete()


def merge_after(winner: Contact) -> None:
    """After a merge the winner's dynamic memberships are decided again, once the merge commits
    (inside the pipeline the segments stage has already done it by then, and this finds nothing)."""
    workspace_id, pk = winner.workspace_id, winner.pk

    def reevaluate() -> None:
        from leadflow.core import clock

        with transaction.atomic():
            contacts_reevaluate(workspace_id=workspace_id, contact_ids=[pk], now=clock.now(), verify=True)

    transaction.on_commit(reevaluate, robust=True)
