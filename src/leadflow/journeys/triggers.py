"""Who enters a journey, who wakes up, who converts: the journeys stage of the pipeline.

Events reach journeys two ways, both inside the transaction that records them:

- the people's own events, as the last stage of every pipeline batch (`process_events`), after
  scoring, lifecycle and segments have updated the profiles the filters read;
- LeadFlow's own events (`Segment Entered`, `Lifecycle Stage Changed`, `Email Clicked`…), which
  are appended already processed and never pass a batch, from `system_events_append`
  (`system_events_seen`). When the engine itself causes them (a stage step), they are handled
  once the engine's pass has written its enrollments.

For each event: waiting enrollments whose `wait_for_event` it matches are woken; event goals and
exit rules take people out, of live journeys and of paused and archived (draining) ones alike;
triggers enter people into live journeys (entry filter and re-entry policy applied, one query each
per journey); then filter goals are checked for the contacts touched, again in every journey
people may be in. Entry is idempotent: an enrollment's `entry_key` says what let it in (the event
id, `once`, the period), and a unique constraint makes a redone batch enter nobody twice.

Score and grade triggers enter people when a value crosses into the threshold. `TriggerState`
records, per journey, who meets it; three places compare it with the contacts' columns, each with
two set-based statements per threshold: the event batch (for its contacts), a journey's `score`
step (for its group, once the pass is written) and a periodic pass (`thresholds_run`, for the
whole workspace: score decay, rescoring after a rule or grade threshold changed, the predictive
model, replays). When a journey goes live or resumes, who already meets a threshold is recorded
without entering anyone (`thresholds_baseline`): only crossings from then on enter.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections import defaultdict

from django.db import connection

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.services import ServiceError
from leadflow.journeys import language as lang
from leadflow.journeys.engine import ARRIVE, EVENT, end, version_definition
from leadflow.journeys.models import (Enrollment, EnrollmentState, EnrollmentStep, Journey, JourneyStatus,
                                      StepKind, TriggerState)

SEGMENT_ENTERED, SEGMENT_EXITED = "Segment Entered", "Segment Exited"
STAGE_CHANGED = "Lifecycle Stage Changed"
FORM_SUBMITTED, FORM_PROPERTY = "Form Submitted", "form_slug"


@dataclasses.dataclass(frozen=True)
class Record:
    """An event as journeys see it."""

    id: int
    contact_id: int
    name: str
    properties: dict
    timestamp: dt.datetime
    type: str = "track"


@dataclasses.dataclass
class Live:
    journey: Journey
    definition: lang.Definition


# Journeys people may be in: live ones, paused ones (held in place) and archived ones (draining).
WITH_PEOPLE = (JourneyStatus.LIVE, JourneyStatus.PAUSED, JourneyStatus.ARCHIVED)


def live_journeys(workspace_id: int, *, statuses=(JourneyStatus.LIVE,)) -> list[Live]:
    """The workspace's journeys in `statuses` (live ones by default) with their published
    definitions (one query)."""
    return [Live(j, version_definition(j.version)) for j in
            Journey.objects.filter(workspace_id=workspace_id, status__in=list(statuses), version__isnull=False)
            .select_related("version").order_by("pk")]


def where_matches(conditions, properties: dict, now: dt.datetime) -> bool:
    """Whether an event's properties meet property conditions (the filter language's semantics)."""
    from leadflow.segments.evaluator import EventFacts, _field_matches

    if not conditions:
        return True
    facts = EventFacts(type="track", event="", properties=properties or {}, context={}, timestamp=now)
    return all(_field_matches(c, facts=None, event=facts, now=now) for c in conditions)


def trigger_matches(trigger, record: Record, now: dt.datetime) -> bool:
    props = record.properties or {}
    if isinstance(trigger, lang.EventTrigger):
        return record.name == trigger.event and where_matches(trigger.where, props, now)
    if isinstance(trigger, lang.FormSubmittedTrigger):
        return record.name == FORM_SUBMITTED and props.get(FORM_PROPERTY) == trigger.form_submitted
    if isinstance(trigger, lang.SegmentEnteredTrigger):
        return record.name == SEGMENT_ENTERED and props.get("segment") == trigger.segment_entered
    if isinstance(trigger, lang.SegmentExitedTrigger):
        return record.name == SEGMENT_EXITED and props.get("segment") == trigger.segment_exited
    if isinstance(trigger, lang.StageTrigger):
        return (record.name == STAGE_CHANGED and (not trigger.to or props.get("to") in trigger.to)
                and (not trigger.from_ or props.get("from") in trigger.from_))
    return False


# --- entering -----------------------------------------------------------------------------------

def period_key(definition: lang.Definition, now: dt.datetime) -> str:
    """The entry key of a `once_per_period` journey at `now`: the number of whole periods since 1970."""
    days = definition.reentry_days or 1
    return f"p{math.floor(now.timestamp() / 86400 / days)}"


def enroll(*, journey: Journey, definition: lang.Definition, entries: list[tuple[Contact, str, dict]],
           now: dt.datetime, check_entry: bool = True) -> list[Enrollment]:
    """Enter people (contact, what let them in, context) into a live journey's published version,
    subject to its entry filter and re-entry policy. Returns the new enrollments."""
    if not entries:
        return []
    first: dict[int, tuple[Contact, str, dict]] = {}
    for contact, key, context in entries:
        first.setdefault(contact.pk, (contact, key, context))  # one entry per person per batch
    ids = sorted(first)
    if check_entry and definition.entry is not None:
        from leadflow.journeys.goals import _filter_hits

        allowed = _filter_hits(journey.workspace_id, definition.entry.flt, ids, now)
        ids = [i for i in ids if i in allowed]
    if not ids:
        return []
    policy = definition.reentry
    if policy in ("not_while_in", "once_per_period"):
        busy = Enrollment.objects.filter(journey=journey, contact_id__in=ids)
        busy = (busy.filter(state=EnrollmentState.ACTIVE) if policy == "not_while_in" else
                busy.filter(entered_at__gt=now - dt.timedelta(days=definition.reentry_days)))
        taken = set(busy.values_list("contact_id", flat=True))
        ids = [i for i in ids if i not in taken]

    def key_of(key: str) -> str:
        if policy == "once":
            return "once"
        if policy == "once_per_period":
            return period_key(definition, now)
        return key[:100]

    rows = [Enrollment(workspace_id=journey.workspace_id, journey=journey, version_id=journey.version_id,
                       contact_id=i, node=definition.start_id, state=EnrollmentState.ACTIVE, due_at=now,
                       resume=ARRIVE, entry_key=key_of(first[i][1]), data=_context(first[i][2]),
                       entered_at=now, updated_at=now) for i in ids]
    Enrollment.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    made = list(Enrollment.objects.filter(journey=journey, contact_id__in=ids, entered_at=now,
                                          entry_key__in={r.entry_key for r in rows}, steps=0))
    EnrollmentStep.objects.bulk_create(
        [EnrollmentStep(workspace_id=e.workspace_id, journey_id=e.journey_id, enrollment_id=e.pk,
                        contact_id=e.contact_id, node=e.node, kind=StepKind.ENTERED, at=now,
                        detail={"entry": e.entry_key, "version": journey.version.number if journey.version else None})
         for e in made], batch_size=1000)
    if made:
        Journey.objects.filter(pk=journey.pk).update(last_entry_at=now)
    return made


def _context(context: dict) -> dict:
    return {k: v for k, v in (context or {}).items() if v is not None}


def journey_by_slug(workspace_id: int, slug: str) -> Journey:
    journey = Journey.objects.filter(workspace_id=workspace_id, slug=slug).select_related("version").first()
    if journey is None:
        raise ServiceError(f"there is no journey {slug!r}")
    return journey


def enroll_by_journey(*, workspace_id: int, slug: str, entries: list[tuple[Contact, str, dict]],
                      now: dt.datetime, check_entry: bool = True) -> list[Enrollment]:
    """Enter people into the journey `slug` (by hand, the API, another journey). A journey that is
    not live takes nobody and says so."""
    journey = journey_by_slug(workspace_id, slug)
    if journey.status != JourneyStatus.LIVE or journey.version is None:
        why = {JourneyStatus.ARCHIVED: " (it is draining: the people in it finish, nobody new enters)",
               JourneyStatus.PAUSED: " (resume it first)", JourneyStatus.DRAFT: " (publish it first)"}
        raise ServiceError(f"journey {slug!r} is {journey.status}: only a live journey takes people in"
                           + why.get(journey.status, ""))
    return enroll(journey=journey, definition=version_definition(journey.version), entries=entries, now=now,
                  check_entry=check_entry)


# --- leaving ------------------------------------------------------------------------------------

def enrollments_close(rows: list[Enrollment], *, now: dt.datetime, state: str, reason: str, kind: str,
                      detail: dict | None = None, credit_last: bool = False) -> int:
    """End active enrollments (loaded by the caller) with their history rows."""
    from leadflow.contacts.processing import rows_update

    rows = [e for e in rows if e.state == EnrollmentState.ACTIVE]
    if not rows:
        return 0
    steps = []
    for e in rows:
        node = (e.last_node or e.node) if credit_last else e.node
        steps.append(EnrollmentStep(workspace_id=e.workspace_id, journey_id=e.journey_id, enrollment_id=e.pk,
                                    contact_id=e.contact_id, node=node, kind=kind, at=now,
                                    detail={**(detail or {}), "at_node": e.node, "group": e.group or "treated"}))
        end(e, state, reason, now)
        e.updated_at = now
    rows_update(Enrollment, rows, ["state", "end_reason", "ended_at", "due_at", "wait_event", "updated_at"])
    EnrollmentStep.objects.bulk_create(steps, batch_size=1000)
    return len(rows)


def enrollments_end(*, workspace_id: int, now: dt.datetime, contact_ids: list[int], state: str, reason: str,
                    journey_slug: str | None = None, journey: Journey | None = None,
                    exclude_ids: list[int] = ()) -> int:
    """Take people out of a journey (every active enrollment of theirs in it)."""
    if journey is None:
        journey = journey_by_slug(workspace_id, journey_slug)
    rows = list(Enrollment.objects.select_for_update().filter(journey=journey, contact_id__in=contact_ids,
                                                              state=EnrollmentState.ACTIVE)
                .exclude(pk__in=list(exclude_ids)))
    kind = StepKind.CONVERTED if state == EnrollmentState.CONVERTED else StepKind.EXITED
    return enrollments_close(rows, now=now, state=state, reason=reason, kind=kind)


# --- the events of a batch ------------------------------------------------------------------------

def process_events(events: list) -> int:
    """The journeys stage: last in every pipeline batch."""
    by_workspace: dict[int, list[Record]] = defaultdict(list)
    for event in events:
        if event.contact_id is None or getattr(event, "error", ""):
            continue
        by_workspace[event.workspace_id].append(
            Record(id=event.pk, contact_id=event.contact_id, name=event.event or "", type=event.type,
                   properties=event.properties if isinstance(event.properties, dict) else {},
                   timestamp=event.timestamp))
    now = clock.now()
    for workspace_id, records in by_workspace.items():
        records_process(workspace_id=workspace_id, records=records, now=now, scores=True)
    return len(events)


def system_events_seen(*, workspace_id: int, appended: list[tuple[int, int, str, dict]], now: dt.datetime) -> None:
    """LeadFlow's own events, just appended: (event id, contact id, name, properties)."""
    from leadflow.journeys.engine import defer, engine_running

    records = [Record(id=i, contact_id=c, name=n, properties=p or {}, timestamp=now) for i, c, n, p in appended]
    if not records:
        return
    if engine_running():
        defer(workspace_id, records)
    else:
        records_process(workspace_id=workspace_id, records=records, now=now)


def records_process(*, workspace_id: int, records: list[Record], now: dt.datetime, scores: bool = False) -> None:
    """Wake the waiting, apply goals and exit rules in every journey people are in (live, paused
    or draining: a person who converts while a journey is paused leaves it then, not at the
    resume), and enter people into live journeys (`scores`: score and grade crossings too).
    Goals and exit rules are those of the version each person is on (people finish on the
    version they entered)."""
    journeys = live_journeys(workspace_id, statuses=WITH_PEOPLE)
    contact_ids = sorted({r.contact_id for r in records})
    _wake(workspace_id, records, now)
    if not journeys:
        return
    goal_versions = _goal_versions(journeys)
    _event_goals(goal_versions, records, now)
    live = [j for j in journeys if j.journey.status == JourneyStatus.LIVE]
    for journey in live:
        entries = []
        for r in records:
            if any(trigger_matches(t, r, now) for t in journey.definition.triggers):
                entries.append((r.contact_id, f"e{r.id}", {"event": {"name": r.name, "properties": r.properties}}))
        if entries:
            contacts = Contact.objects.in_bulk({c for c, _, _ in entries})
            enroll(journey=journey.journey, definition=journey.definition, now=now,
                   entries=[(contacts[c], key, ctx) for c, key, ctx in entries if c in contacts])
    if scores:
        thresholds_cross(live, contact_ids=contact_ids, now=now)
    _filter_goals(goal_versions, contact_ids, now)


def _goal_versions(journeys: list[Live]) -> dict[int, tuple[int, lang.Definition]]:
    """Version id → (journey id, definition), for every version of these journeys that was ever
    published (the only ones people can be on) and has a goal or an exit rule: one query."""
    from leadflow.journeys.models import JourneyVersion

    found = {}
    for version in JourneyVersion.objects.filter(journey_id__in=[j.journey.pk for j in journeys],
                                                 published_at__isnull=False).only("pk", "journey_id", "definition"):
        definition = version_definition(version)
        if definition.goals or definition.exit_when:
            found[version.pk] = (version.journey_id, definition)
    return found


def _active_on(versions: dict[int, tuple[int, lang.Definition]], wanted: set[int], contact_ids) -> list[Enrollment]:
    """The active enrollments of these contacts on the `wanted` versions, locked."""
    if not wanted or not contact_ids:
        return []
    return list(Enrollment.objects.select_for_update().filter(
        journey_id__in={versions[v][0] for v in wanted}, version_id__in=wanted, contact_id__in=list(contact_ids),
        state=EnrollmentState.ACTIVE).order_by("pk"))


def _wake(workspace_id: int, records: list[Record], now: dt.datetime) -> None:
    """Wake enrollments waiting for one of these events (their node's conditions met)."""
    from leadflow.contacts.processing import rows_update
    from leadflow.journeys.models import JourneyVersion

    names = {r.name for r in records if r.name}
    if not names:
        return
    waiting = list(Enrollment.objects.filter(workspace_id=workspace_id, state=EnrollmentState.ACTIVE,
                                             contact_id__in={r.contact_id for r in records},
                                             wait_event__in=names))
    if not waiting:
        return
    versions = JourneyVersion.objects.in_bulk({e.version_id for e in waiting})
    by_contact: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_contact[r.contact_id].append(r)
    woken = []
    for e in waiting:
        node = version_definition(versions[e.version_id]).node(e.node)
        if not isinstance(node, lang.WaitForEventNode):
            continue
        if any(r.name == node.event and where_matches(node.where, r.properties, now) for r in by_contact[e.contact_id]):
            e.resume, e.wait_event, e.due_at, e.updated_at = EVENT, "", now, now
            woken.append(e)
    rows_update(Enrollment, woken, ["resume", "wait_event", "due_at", "updated_at"])


def _event_goals(versions: dict[int, tuple[int, lang.Definition]], records: list[Record],
                 now: dt.datetime) -> None:
    names = {r.name for r in records}
    with_events = {version_id for version_id, (_, definition) in versions.items()
                   if any(g.event in names for g in (*definition.goals, *definition.exit_when))}
    if not with_events:
        return
    by_contact: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_contact[r.contact_id].append(r)
    for e in _active_on(versions, with_events, by_contact):
        definition = versions[e.version_id][1]
        for key, state, kind in (("goals", EnrollmentState.CONVERTED, StepKind.CONVERTED),
                                 ("exit_when", EnrollmentState.EXITED, StepKind.EXITED)):
            goal = next((g for g in getattr(definition, key) if g.event and any(
                r.name == g.event and where_matches(g.where, r.properties, now) for r in by_contact[e.contact_id])),
                None)
            if goal is not None:
                label = "goal" if kind == StepKind.CONVERTED else "exit rule"
                enrollments_close([e], now=now, state=state, reason=f"{label}: {goal.name}", kind=kind,
                                  detail={"goal": goal.name}, credit_last=True)
                break


def _filter_goals(versions: dict[int, tuple[int, lang.Definition]], contact_ids: list[int],
                  now: dt.datetime) -> None:
    from leadflow.journeys.goals import filter_outcomes

    with_filters = {version_id for version_id, (_, definition) in versions.items()
                    if any(g.filter for g in (*definition.goals, *definition.exit_when))}
    by_version: dict[int, list[Enrollment]] = defaultdict(list)
    for e in _active_on(versions, with_filters, contact_ids):
        by_version[e.version_id].append(e)
    for version_id, rows in by_version.items():
        outcomes = filter_outcomes(versions[version_id][1], workspace_id=rows[0].workspace_id,
                                   contact_ids=sorted({e.contact_id for e in rows}), now=now)
        for state in (EnrollmentState.CONVERTED, EnrollmentState.EXITED):
            ending = [e for e in rows if outcomes.get(e.contact_id, ("",))[0] == state]
            for name in {outcomes[e.contact_id][1] for e in ending}:
                named = [e for e in ending if outcomes[e.contact_id][1] == name]
                kind = StepKind.CONVERTED if state == EnrollmentState.CONVERTED else StepKind.EXITED
                label = "goal" if kind == StepKind.CONVERTED else "exit rule"
                enrollments_close(named, now=now, state=state, reason=f"{label}: {name}", kind=kind,
                                  detail={"goal": name}, credit_last=True)


# --- score and grade crossings ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Threshold:
    """A score or grade trigger as a condition on the contact row. `TriggerState` keeps, per
    journey and `key`, the contacts for whom it holds, so that only a crossing enters them."""

    key: str
    column: str  # the contacts' column it reads (a fixed name, never user text)
    sql: str  # the condition on `c`, the contacts table, with %s placeholders
    params: tuple
    context: str  # what an enrollment's data calls the value that let the person in


def threshold_of(trigger) -> Threshold | None:
    if isinstance(trigger, lang.ScoreTrigger):
        return Threshold(f"{trigger.score}>={trigger.at_least:g}", trigger.score, f"c.{trigger.score} >= %s",
                         (trigger.at_least,), "score")
    if isinstance(trigger, lang.GradeTrigger):
        grades = trigger.grades
        return Threshold(f"fit_grade{'=' if trigger.exactly else '>='}{trigger.grade}", "fit_grade",
                         f"c.fit_grade IN ({', '.join(['%s'] * len(grades))})", grades, "grade")
    return None


def thresholds_of(definition: lang.Definition) -> list[Threshold]:
    found = {}
    for trigger in definition.triggers:
        threshold = threshold_of(trigger)
        if threshold is not None:
            found.setdefault(threshold.key, threshold)
    return list(found.values())


CHUNK = 900  # contact ids per statement (SQLite's parameter limit)


def _among(column: str, chunk: list[int] | None) -> str:
    return "" if chunk is None else f" AND {column} IN ({', '.join(['%s'] * len(chunk))})"


def _state_sync(journey: Journey, threshold: Threshold, *, now: dt.datetime,
                contact_ids: list[int] | None) -> list[int]:
    """Bring the journey's record of who meets `threshold` up to date for `contact_ids` (None:
    the whole workspace) in two statements per chunk: forget those who no longer meet it (so a
    later rise is a crossing again) and record those who newly do. Returns the latter: the
    contacts whose row this call inserted (`ON CONFLICT DO NOTHING RETURNING`), so two workers
    meeting the same crossing enter the person once."""
    ops = connection.ops
    states, contacts = ops.quote_name(TriggerState._meta.db_table), ops.quote_name(Contact._meta.db_table)
    at, key = ops.adapt_datetimefield_value(now), ops.quote_name("key")
    chunks = [None] if contact_ids is None else [contact_ids[i:i + CHUNK] for i in range(0, len(contact_ids), CHUNK)]
    crossed: list[int] = []
    with connection.cursor() as cursor:
        for chunk in chunks:
            ids = () if chunk is None else tuple(chunk)
            cursor.execute(
                f"DELETE FROM {states} WHERE journey_id = %s AND {key} = %s{_among(f'{states}.contact_id', chunk)} "
                f"AND NOT EXISTS (SELECT 1 FROM {contacts} c WHERE c.id = {states}.contact_id AND {threshold.sql})",
                (journey.pk, threshold.key, *ids, *threshold.params))
            cursor.execute(
                f"INSERT INTO {states} (workspace_id, journey_id, contact_id, {key}, {ops.quote_name('at')}) "
                f"SELECT %s, %s, c.id, %s, %s FROM {contacts} c WHERE c.workspace_id = %s{_among('c.id', chunk)} "
                f"AND {threshold.sql} AND NOT EXISTS (SELECT 1 FROM {states} s WHERE s.journey_id = %s "
                f"AND s.{key} = %s AND s.contact_id = c.id) "
                f"ON CONFLICT (journey_id, contact_id, {key}) DO NOTHING RETURNING contact_id",
                (journey.workspace_id, journey.pk, threshold.key, at, journey.workspace_id, *ids, *threshold.params,
                 journey.pk, threshold.key))
            crossed += [row[0] for row in cursor.fetchall()]
    return sorted(crossed)


def _cross_one(live: Live, threshold: Threshold, *, now: dt.datetime, contact_ids: list[int] | None) -> int:
    """Enter the contacts that crossed `threshold` of a live journey; returns how many entered."""
    crossed = _state_sync(live.journey, threshold, now=now, contact_ids=contact_ids)
    stamp = now.strftime("%Y%m%d%H%M%S%f")
    entered = 0
    for start in range(0, len(crossed), 1000):  # a rule change may move a whole workspace at once
        contacts = Contact.objects.in_bulk(crossed[start:start + 1000])
        entered += len(enroll(journey=live.journey, definition=live.definition, now=now, entries=[
            (c, f"s{stamp}", {threshold.context: {threshold.column: getattr(c, threshold.column)}})
            for c in contacts.values()]))
    return entered


def thresholds_cross(journeys: list[Live], *, contact_ids: list[int] | None, now: dt.datetime) -> int:
    """Score and grade triggers: enter the contacts (of `contact_ids`, or everyone in the
    journeys' workspace for None) who crossed from not meeting a live journey's threshold to
    meeting it. Returns how many entered."""
    if contact_ids is not None and not contact_ids:
        return 0
    entered = 0
    for live in journeys:
        for threshold in thresholds_of(live.definition):
            entered += _cross_one(live, threshold, now=now, contact_ids=contact_ids)
    return entered


def thresholds_follow(*, workspace_id: int, contact_ids: list[int], now: dt.datetime) -> int:
    """After scores changed outside an event batch for a few contacts (a journey's score step),
    enter those who crossed a live journey's threshold."""
    journeys = [j for j in live_journeys(workspace_id) if thresholds_of(j.definition)]
    return thresholds_cross(journeys, contact_ids=sorted(set(contact_ids)), now=now) if journeys else 0


def thresholds_run(*, now: dt.datetime, workspace_ids: list[int] | None = None) -> int:
    """The periodic pass: crossings caused by whatever changes scores in bulk without an event
    (the hourly score decay, a scoring rule or grade threshold edited, the predictive model
    trained, a replay, a manual edit), found over each workspace with set-based statements."""
    query = Journey.objects.filter(status=JourneyStatus.LIVE, version__isnull=False).select_related("version")
    if workspace_ids is not None:
        query = query.filter(workspace_id__in=workspace_ids)
    entered = 0
    for journey in query.order_by("pk"):
        live = Live(journey, version_definition(journey.version))
        if thresholds_of(live.definition):
            entered += thresholds_cross([live], contact_ids=None, now=now)
    return entered


def thresholds_baseline(*, journey: Journey, definition: lang.Definition, now: dt.datetime,
                        keys: set[str] | None = None) -> None:
    """Record who meets the journey's thresholds now without entering anyone (all of them, or
    those in `keys`): when a journey goes live or resumes, or a version adds a threshold, only
    people who cross from then on enter, not everyone who was already above."""
    for threshold in thresholds_of(definition):
        if keys is None or threshold.key in keys:
            _state_sync(journey, threshold, now=now, contact_ids=None)


# --- dates ------------------------------------------------------------------------------------------

def date_triggers_run(*, now: dt.datetime, workspace_ids: list[int] | None = None) -> int:
    """Date triggers: enter the people whose date trait, moved by the offset, is today (UTC) or a
    day since the last pass. Entry keys name the date, so a day is never entered twice."""
    from leadflow.core.models import PeriodicRun

    last = PeriodicRun.objects.filter(name="journeys.dates").values_list("last_run_at", flat=True).first()
    today = now.date()
    start = max((last.date() if last else today), today - dt.timedelta(days=7))
    days = [start + dt.timedelta(days=i) for i in range((today - start).days + 1)]
    query = Journey.objects.filter(status=JourneyStatus.LIVE, version__isnull=False).select_related("version")
    if workspace_ids is not None:
        query = query.filter(workspace_id__in=workspace_ids)
    entered = 0
    for journey in query:
        definition = version_definition(journey.version)
        for trigger in definition.triggers:
            if not isinstance(trigger, lang.DateTrigger):
                continue
            for day in days:
                wanted = (day - dt.timedelta(days=trigger.offset_days)).isoformat()
                contacts = list(Contact.objects.filter(workspace_id=journey.workspace_id).filter(
                    **{f"traits__{trigger.date_trait}__startswith": wanted}))
                entered += len(enroll(journey=journey, definition=definition, now=now,
                                      entries=[(c, f"d{wanted}", {"date": wanted}) for c in contacts]))
    return entered


# --- merges -------------------------------------------------------------------------------------

def merge_before(winner: Contact, loser: Contact) -> None:
    """Before a merge moves the loser's enrollments to the winner: where both are active in the
    same journey, the loser's ends (the person is already in it); entry keys both hold are kept
    apart so the move breaks no uniqueness."""
    now = clock.now()
    winner_rows = list(Enrollment.objects.filter(contact=winner).values_list("journey_id", "entry_key", "state"))
    winner_keys = {(j, k) for j, k, _ in winner_rows}
    winner_active = {j for j, _, s in winner_rows if s == EnrollmentState.ACTIVE}
    mine = list(Enrollment.objects.select_for_update().filter(contact=loser))
    duplicate = [e for e in mine if e.state == EnrollmentState.ACTIVE and e.journey_id in winner_active]
    enrollments_close(duplicate, now=now, state=EnrollmentState.EXITED,
                      reason=f"merged into contact {winner.pk}, who is already in the journey", kind=StepKind.EXITED)
    for e in mine:
        if (e.journey_id, e.entry_key) in winner_keys:
            Enrollment.objects.filter(pk=e.pk).update(entry_key=f"{e.entry_key}~{loser.pk}"[:100])
    TriggerState.objects.filter(contact=loser, journey__in=TriggerState.objects.filter(contact=winner)
                                .values("journey")).delete()
