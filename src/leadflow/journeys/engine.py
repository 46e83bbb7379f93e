"""The journey engine: advances, in batches, every enrollment whose timer has come.

`journeys_advance` takes up to `limit` due enrollments with `SELECT … FOR UPDATE SKIP LOCKED`
(on SQLite, where one worker runs, the lock clause is dropped), groups them by version and node,
and runs each group's node once for the whole group: one query to evaluate a branch for a thousand
people, one insert for a thousand messages. People move on through instant nodes (branches,
actions, sends) in the same pass until they reach a wait or the end. Everything a pass does (the
enrollments' new positions, their history, queued messages and webhooks, profile changes) is
written in one transaction: a crash redoes the pass, and dedupe keys built from the enrollment,
the node and the step count make every effect happen once.

Goals and exit rules are checked for the whole batch before anyone moves, so a person who has
converted since their last step is taken out instead of being sent the next email.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import operator
import threading
from collections import defaultdict
from collections.abc import MutableMapping
from typing import NamedTuple

import orjson
from django.db import connection, transaction

from leadflow.contacts.models import Contact
from leadflow.contacts.processing import rows_insert_pg, rows_update
from leadflow.core import clock
from leadflow.journeys import language as lang
from leadflow.journeys.models import (Enrollment, EnrollmentState, EnrollmentStep, Journey, JourneyStatus,
                                      JourneyVersion, StepKind)

log = logging.getLogger(__name__)

BATCH = 1000
MAX_HOPS = 100  # nodes one person may pass in one pass: a loop without a wait stops here
# Where `resume` says an enrollment stands at its node.
ARRIVE, WAITING, EVENT, TIMEOUT = "arrive", "wait", "event", "timeout"
ENROLLMENT_FIELDS = ["node", "state", "due_at", "wait_event", "resume", "group", "steps", "last_node", "data",
                     "updated_at", "ended_at", "end_reason", "version"]

_local = threading.local()


# --- parsed definitions ---------------------------------------------------------------------------

# Parsed definitions by their JSON text (a stored version never changes; keying by the text and
# not the id keeps the cache right when ids are reused, as after a rolled-back transaction).
_DEFINITIONS: dict[bytes, lang.Definition] = {}


def version_definition(version: JourneyVersion) -> lang.Definition:
    """The parsed definition of a stored version (parsed once per process)."""
    key = orjson.dumps(version.definition, option=orjson.OPT_SORT_KEYS)
    found = _DEFINITIONS.get(key)
    if found is None:
        found = lang.journey_parse(version.definition)
        if len(_DEFINITIONS) > 2000:
            _DEFINITIONS.clear()
        _DEFINITIONS[key] = found
    return found


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by `parts`: random splits and holdouts put a person on the same
    side however often the step is redone."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64


# --- one pass -----------------------------------------------------------------------------------

class BatchContacts(MutableMapping):
    """The contacts of a pass's enrollments (with their companies) by id, read in one query the
    first time a step asks for one: a pass that only waits, branches in SQL or sends (which needs
    just the addresses, `addresses`) never builds them. Steps that lock and reread contacts put
    the fresh copies back (`update`)."""

    def __init__(self, ids: set[int]):
        self._ids = ids
        self._rows: dict[int, Contact] | None = None

    def _all(self) -> dict[int, Contact]:
        if self._rows is None:
            self._rows = Contact.objects.select_related("company").in_bulk(self._ids)
        return self._rows

    def __getitem__(self, pk: int) -> Contact:
        return self._all()[pk]

    def __setitem__(self, pk: int, contact: Contact) -> None:
        self._all()[pk] = contact

    def __delitem__(self, pk: int) -> None:
        del self._all()[pk]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def addresses(self, ids: list[int]) -> dict[int, Contact | Address]:
        """The id and email address of each of `ids`: the loaded contacts, or, when none are
        loaded yet, just those two columns (one light query: a send needs no more)."""
        if self._rows is not None:
            return self._rows
        return {pk: Address(pk, email) for pk, email in Contact.objects.filter(pk__in=set(ids))
                .values_list("pk", "email")}


class Address(NamedTuple):
    """What the outbox needs of a contact (`messages_queue_many`)."""

    pk: int
    email: str


@dataclasses.dataclass
class Pass:
    """What one group of enrollments at one node shares, and where a pass collects its writes."""

    now: dt.datetime
    journey: Journey
    version: JourneyVersion
    definition: lang.Definition
    contacts: BatchContacts  # the batch's contacts by id (a mapping, read on first use)
    steps: list[tuple]  # history rows, values in STEP_COLUMNS order (written by `steps_write`)
    after: list  # callables run once the batch's enrollments are written (same transaction)
    batch: list = dataclasses.field(default_factory=list)  # every enrollment of the pass (locked)
    journeys: dict = dataclasses.field(default_factory=dict)  # their journeys by id

    def step(self, e: Enrollment, kind: str, node: str | None = None, **detail) -> None:
        self.steps.append((e.workspace_id, e.journey_id, e.pk, e.contact_id, node or e.node, kind, self.now, detail))

    def go(self, e: Enrollment, target: str | None, kind: str = StepKind.PASSED, **detail) -> None:
        """`e` is done with its node: record it and move to `target` (None: the journey ends)."""
        self.step(e, kind, **detail)
        e.last_node = e.node
        e.steps += 1
        e.wait_event = ""
        if target is None:
            end(e, EnrollmentState.COMPLETED, "reached the end of the journey", self.now)
            self.step(e, StepKind.COMPLETED)
            return
        e.node = target
        e.resume = ARRIVE
        e.due_at = self.now

    def wait(self, e: Enrollment, until: dt.datetime, *, event: str = "") -> None:
        e.resume = WAITING
        e.wait_event = event
        e.due_at = until

    def end(self, e: Enrollment, state: str, reason: str, kind: str, **detail) -> None:
        end(e, state, reason, self.now)
        self.step(e, kind, **detail)


def end(e: Enrollment, state: str, reason: str, now: dt.datetime) -> None:
    e.state = state
    e.end_reason = reason[:300]
    e.ended_at = now
    e.due_at = None
    e.wait_event = ""


STEP_COLUMNS = ("workspace_id", "journey_id", "enrollment_id", "contact_id", "node", "kind", "at", "detail")


def steps_write(steps: list[tuple]) -> None:
    """Insert history rows (values in STEP_COLUMNS order): on PostgreSQL as one JSON parameter
    per 1,000 rows (`rows_insert_pg`: no model instance built, no value prepared one by one),
    elsewhere with `bulk_create`."""
    if not steps:
        return
    if connection.vendor == "postgresql":
        rows_insert_pg(EnrollmentStep, STEP_COLUMNS, [dict(zip(STEP_COLUMNS, row)) for row in steps])
        return
    EnrollmentStep.objects.bulk_create([EnrollmentStep(**dict(zip(STEP_COLUMNS, row))) for row in steps],
                                       batch_size=BATCH)


def dedupe_key(e: Enrollment, node_id: str) -> str:
    return f"journey:{e.pk}:{node_id}:{e.steps}"


def _due(now: dt.datetime, limit: int, journey_ids: list[int] | None):
    query = (Enrollment.objects.filter(state=EnrollmentState.ACTIVE, due_at__lte=now)
             .filter(journey__status__in=[JourneyStatus.LIVE, JourneyStatus.ARCHIVED])
             .order_by("due_at", "id"))
    if journey_ids is not None:
        query = query.filter(journey_id__in=journey_ids)
    if connection.vendor == "postgresql":
        query = query.select_for_update(skip_locked=True, of=("self",))
    return list(query[:limit])


def journeys_advance(*, now: dt.datetime | None = None, limit: int = BATCH,
                     journey_ids: list[int] | None = None) -> int:
    """Advance up to `limit` due enrollments by one pass (in one transaction); returns how many."""
    now = now or clock.now()
    with transaction.atomic():
        batch = _due(now, limit, journey_ids)
        if not batch:
            return 0
        _local.active = True
        try:
            batch_advance(batch, now=now)
        finally:
            _local.active = False
        deferred = getattr(_local, "deferred", None)
        _local.deferred = []
        if deferred:
            from leadflow.journeys.triggers import records_process

            for workspace_id, records in deferred:
                records_process(workspace_id=workspace_id, records=records, now=now)
    return len(batch)


def engine_running() -> bool:
    """Whether this thread is inside a pass: events the pass causes (a stage change, a segment
    entry) are then handled after the pass has written its enrollments."""
    return getattr(_local, "active", False)


def defer(workspace_id: int, records: list) -> None:
    if not hasattr(_local, "deferred"):
        _local.deferred = []
    _local.deferred.append((workspace_id, records))


def journeys_run_due(*, now: dt.datetime | None = None, limit: int = BATCH, max_passes: int | None = None) -> int:
    """Advance passes until nothing is due at `now` (or `max_passes` ran)."""
    total = passes = 0
    while max_passes is None or passes < max_passes:
        done = journeys_advance(now=now, limit=limit)
        total += done
        passes += 1
        if not done:
            break
    return total


def batch_advance(batch: list[Enrollment], *, now: dt.datetime) -> None:
    """Move every enrollment of `batch` (locked by the caller) as far as it goes at `now`."""
    journeys = Journey.objects.in_bulk({e.journey_id for e in batch})
    versions = JourneyVersion.objects.in_bulk({e.version_id for e in batch})
    contacts = BatchContacts({e.contact_id for e in batch})
    steps: list[EnrollmentStep] = []
    after: list = []
    by_version: dict[int, list[Enrollment]] = defaultdict(list)
    for e in batch:
        by_version[e.version_id].append(e)
    for version_id, group in by_version.items():
        version = versions[version_id]
        journey = journeys[group[0].journey_id]
        p = Pass(now=now, journey=journey, version=version, definition=version_definition(version),
                 contacts=contacts, steps=steps, after=after, batch=batch, journeys=journeys)
        from leadflow.journeys.goals import goals_check

        moving = goals_check(p, group)
        for _ in range(MAX_HOPS):
            ready = [e for e in moving if e.state == EnrollmentState.ACTIVE and e.due_at is not None
                     and e.due_at <= now]
            if not ready:
                break
            by_node: dict[str, list[Enrollment]] = defaultdict(list)
            for e in ready:
                by_node[e.node].append(e)
            before = {e.pk: (e.node, e.steps, e.due_at, e.resume) for e in ready}
            for node_id, at_node in by_node.items():
                node = p.definition.node(node_id)
                if node is None:
                    for e in at_node:
                        p.end(e, EnrollmentState.FAILED, f"node {node_id!r} is not in version "
                              f"{version.number}", StepKind.FAILED)
                    continue
                node_run(p, node, at_node)
            moving = [e for e in ready if before[e.pk] != (e.node, e.steps, e.due_at, e.resume)]
        else:
            for e in moving:
                if e.state == EnrollmentState.ACTIVE and e.due_at is not None and e.due_at <= now:
                    p.end(e, EnrollmentState.FAILED, f"passed {MAX_HOPS} steps without a wait: a loop?",
                          StepKind.FAILED)
    for e in batch:
        e.updated_at = now
    rows_update(Enrollment, batch, ENROLLMENT_FIELDS)
    steps_write(steps)
    for function in after:
        function()


# What a failing step puts back (with a copy of `data`) before it fails the group.
POSITION_FIELDS = ("node", "state", "due_at", "wait_event", "resume", "group", "steps", "last_node", "ended_at",
                   "end_reason")
_position = operator.attrgetter(*POSITION_FIELDS)


def node_run(p: Pass, node, enrollments: list[Enrollment]) -> None:
    from leadflow.journeys import nodes

    handler = nodes.HANDLERS[node.type]
    saved = [(e, _position(e), dict(e.data)) for e in enrollments]
    steps_before, after_before = len(p.steps), len(p.after)
    try:
        with transaction.atomic():
            handler(p, node, enrollments)
    except Exception as exc:  # a failing step fails those people, not the batch
        log.exception("journey %s node %s failed", p.journey.slug, node.id)
        del p.steps[steps_before:]
        del p.after[after_before:]
        for e, values, data in saved:
            for name, value in zip(POSITION_FIELDS, values):
                setattr(e, name, value)
            e.data = data
        for e in enrollments:
            p.end(e, EnrollmentState.FAILED, f"{type(exc).__name__}: {exc}", StepKind.FAILED)


# --- local times --------------------------------------------------------------------------------

def contact_zone_of(contact: Contact, rules):
    from leadflow.consent.gate import contact_zone

    return contact_zone(contact.timezone, rules)[0]


def next_local(after: dt.datetime, at: dt.time, weekdays: set[int] | None, zone) -> dt.datetime:
    """The first moment strictly after `after` when the wall clock in `zone` shows `at` on one of
    `weekdays` (0 = Monday; None: any day). A time skipped by a DST change falls on the first
    valid minute after it."""
    local = after.astimezone(zone)
    day = local.date()
    for offset in range(0, 15):
        candidate_day = day + dt.timedelta(days=offset)
        if weekdays is not None and candidate_day.weekday() not in weekdays:
            continue
        naive = dt.datetime.combine(candidate_day, at)
        moment = naive.replace(tzinfo=zone)
        # Round-trip through UTC to normalise a non-existent local time (spring forward).
        moment = moment.astimezone(dt.timezone.utc)
        if moment > after:
            return moment
    raise ValueError("no weekday given")  # unreachable: validation requires known weekdays
