"""Simulated time: the dry run of one person through a journey, and `leadflow tick`.

Dry run: the path one person would take through a journey and the emails they would get, with
their dates and subjects, without sending or keeping anything.

`journey_simulate` runs the real thing, not a model of it: inside one transaction it makes a
throwaway live copy of the journey, takes the given contact (or makes a hypothetical one from
traits, through the pipeline like any identify call), feeds the given events through the
pipeline at their times on an injected frozen clock, lets the engine advance the copy from one
due time to the next up to the horizon, reads the history and the queued messages, and rolls the
transaction back. Messages are only queued, never dispatched (the dispatcher is not called, and
other connections never see uncommitted rows), and nothing the run wrote survives it.

Only the copy is advanced: other journeys the person's events would start are left where they
are, and so are everyone else's enrollments. What the consent gate would do at send time
(quiet hours, caps, unsubscribes) is not part of the path; each email is shown when the journey
queues it.

`tick_run` (`leadflow tick --until`) is the opposite: real work on simulated time. It runs what a
worker runs (pipeline, journey engine, periodic passes, email dispatcher, webhook deliveries) on a
frozen clock that jumps from one moment something is due to the next (an enrollment's timer, a
queued email, a webhook retry, a sales deadline, a scheduled broadcast, and at least every `step`
for the periodic passes), so a 90-day nurture plays out in seconds. Emails and webhooks go out and everything is kept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shlex
import uuid

from django.db import transaction
from django.db.models import Max, Min

from leadflow.contacts.models import Contact, Identity
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError
from leadflow.journeys import language as lang
from leadflow.journeys.engine import WAITING, journeys_advance, version_definition
from leadflow.journeys.models import Enrollment, EnrollmentState, EnrollmentStep, Journey, JourneyStatus, JourneyVersion

MAX_DAYS = 3650
MAX_MOMENTS = 20_000  # due times visited in one run: a guard, far above any real journey
SIMULATED_EMAIL = "simulated.person@example.com"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.I)
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


class _Rollback(Exception):
    """Carries the result out of the transaction it rolls back."""

    def __init__(self, result: list[dict]):
        self.result = result


def duration_parse(text: str) -> dt.timedelta:
    """`90d`, `2w`, `1d12h`, `30m`, `45s` (a leading `+` is allowed) as a timedelta."""
    value = str(text).strip().lstrip("+").replace(" ", "")
    if not value or _DURATION.sub("", value):
        raise ServiceError(f"{text!r} is not a duration: write it like 2d, 12h, 1d12h, 30m or 2w")
    total = dt.timedelta()
    for amount, unit in _DURATION.findall(value):
        total += dt.timedelta(**{_UNITS[unit.lower()]: float(amount)})
    return total


def moment_parse(value, *, start: dt.datetime) -> dt.datetime:
    """When something happens: a datetime, an offset from `start` (timedelta, a number of days, a
    duration such as `2d`), or an ISO 8601 date-time."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ServiceError(f"{value!r} has no timezone; give an aware datetime or an offset")
        return value.astimezone(dt.timezone.utc)
    if isinstance(value, dt.timedelta):
        return start + value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return start + dt.timedelta(days=value)
    if isinstance(value, str):
        try:
            return start + duration_parse(value)
        except ServiceError:
            try:
                return clock.parse_iso(value)
            except ValueError:
                raise ServiceError(f"{value!r} is neither an offset (2d, 12h) nor an ISO date-time") from None
    raise ServiceError(f"{value!r} is neither an offset (2d, 12h) nor a date-time")


def _typed(text: str):
    """A value as typed on a line: JSON when it reads as JSON (numbers, true, null, lists), else text
    (as the command line's NAME=VALUE)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def simulation_traits_parse(text: str) -> dict:
    """Traits written one a line, `name = value` (`plan = pro`, `seats = 5`, `timezone = Europe/Paris`)."""
    out = {}
    for number, line in enumerate(str(text).splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ServiceError(f"traits, line {number}: write name = value, such as plan = pro")
        out[name.strip()] = _typed(value.strip())
    return out


def _offset_or_moment(text: str, where: str) -> str:
    try:
        duration_parse(text)
        return text
    except ServiceError:
        pass
    try:
        clock.parse_iso(text)
    except ValueError:
        raise ServiceError(f"{where}: {text!r} is neither an offset from the start (0d, 2d, 36h, 1d12h) nor an "
                           "ISO date-time (2026-03-04T10:00Z)") from None
    return text


def _properties(pairs: list[str], where: str) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ServiceError(f"{where}: {pair!r} is not a property; write key=value, such as magnet_slug=guide")
        out[key.strip()] = _typed(value.strip())
    return out


def simulation_event_parse(line: str, *, where: str = "event") -> tuple[str, str, dict]:
    """One event of a dry run as (when, name, properties) from `WHEN NAME [key=value …]`
    (`2d Asset Downloaded magnet_slug=retirement-guide`; quote what has spaces:
    `0d "Form Submitted" form="contact us"`) or the command line's `WHEN:NAME[:key=value,…]`.
    WHEN is an offset from the start (`0d`, `2d`, `36h`) or an ISO date-time."""
    text = line.strip()
    colon = re.fullmatch(r"([^\s:]+):([^:]+)(?::(.*))?", text)
    if colon is not None and not _DURATION.sub("", colon.group(1).lstrip("+")):
        name = colon.group(2).strip()
        if not name:
            raise ServiceError(f"{where}: the event needs a name")
        pairs = [p for p in (colon.group(3) or "").split(",") if p.strip()]
        return colon.group(1), name, _properties(pairs, where)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ServiceError(f"{where}: {exc}") from None
    if len(words) < 2:
        raise ServiceError(f"{where}: write when, the event's name and its properties, such as "
                           "2d Asset Downloaded magnet_slug=retirement-guide")
    when = _offset_or_moment(words[0], where)
    name_words = []
    for i, word in enumerate(words[1:], 1):
        if "=" in word:
            if not name_words:
                raise ServiceError(f"{where}: the event's name comes before its properties")
            return when, " ".join(name_words), _properties(words[i:], where)
        name_words.append(word)
    return when, " ".join(name_words), {}


def simulation_events_parse(text: str) -> list[tuple[str, str, dict]]:
    """Events one a line (`simulation_event_parse`); empty lines and `#` comments are skipped."""
    out = []
    for number, line in enumerate(str(text).splitlines(), 1):
        if line.strip() and not line.strip().startswith("#"):
            out.append(simulation_event_parse(line, where=f"events, line {number}"))
    return out


def _definition_of(journey_or_definition, workspace: Workspace) -> tuple[lang.Definition, str]:
    """(definition, name) of a Journey (its published, else latest, version), a slug, a parsed
    definition or its JSON."""
    journey = journey_or_definition
    if isinstance(journey, str):
        journey = Journey.objects.filter(workspace=workspace, slug=journey).select_related("version").first()
        if journey is None:
            raise ServiceError(f"there is no journey {journey_or_definition!r}")
    if isinstance(journey, Journey):
        if journey.workspace_id != workspace.pk:
            raise ServiceError("the journey belongs to another workspace")
        version = journey.version or journey.versions.order_by("-number").first()
        if version is None:
            raise ServiceError(f"journey {journey.slug!r} has no version to simulate")
        return version_definition(version), journey.name
    definition = lang.journey_parse(journey)
    return definition, definition.name


def _events_of(events, start: dt.datetime, horizon: dt.datetime) -> list[tuple[dt.datetime, str, dict]]:
    out = []
    for i, item in enumerate(events or ()):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ServiceError(f"events[{i}]: an event is (when, name) or (when, name, properties)")
        when, name = item[0], item[1]
        properties = item[2] if len(item) == 3 else {}
        if not isinstance(name, str) or not name.strip():
            raise ServiceError(f"events[{i}]: the event needs a name")
        if not isinstance(properties, dict):
            raise ServiceError(f"events[{i}]: properties are an object")
        at = moment_parse(when, start=start)
        if at < start:
            raise ServiceError(f"events[{i}]: {name!r} happens before the simulation starts")
        if at <= horizon:
            out.append((at, name.strip(), properties))
    return sorted(out, key=lambda e: e[0])


def _ident(contact: Contact | None, person: str) -> dict:
    """How the simulated calls name the person (the pipeline resolves it to the contact)."""
    if contact is None:
        return {"userId": person}
    if contact.user_id:
        return {"userId": contact.user_id}
    anonymous = (Identity.objects.filter(workspace_id=contact.workspace_id, contact=contact, kind="anonymous_id")
                 .order_by("pk").values_list("value", flat=True).first())
    if anonymous:
        return {"anonymousId": anonymous}
    if contact.email:
        return {"anonymousId": person, "context": {"traits": {"email": contact.email}}}
    raise ServiceError(f"contact {contact.pk} has no user id, anonymous id or email to send events as")


def _feed(workspace: Workspace, ident: dict, calls: list[dict]) -> None:
    """Append calls at the clock's time and run them through the pipeline's stages."""
    from leadflow.core.pipeline import events_process
    from leadflow.tracking.ingest import events_append
    from leadflow.tracking.models import Event

    now = clock.now()
    messages = [{"messageId": f"simulation-{uuid.uuid4().hex}", "timestamp": now.isoformat(), **ident, **call}
                for call in calls]
    if "context" in ident:
        for m in messages:
            m["context"] = {**ident["context"], **(m.get("context") or {})}
    result = events_append(workspace=workspace, messages=messages)
    if result.rejected:
        raise ServiceError(f"a simulated event was rejected: {result.rejected[0]['reason']}")
    events = list(Event.objects.filter(workspace=workspace, message_id__in=[m["messageId"] for m in messages])
                  .order_by("id"))
    events_process(events)


def _triggered_by(definition: lang.Definition, events: list[tuple[dt.datetime, str, dict]]) -> bool:
    from leadflow.journeys.triggers import Record, trigger_matches

    return any(trigger_matches(t, Record(id=0, contact_id=0, name=name, properties=props, timestamp=at), at)
               for at, name, props in events for t in definition.triggers)


def _subject(message, contact: Contact) -> str:
    from leadflow.messaging.rendering import version_render

    try:
        return version_render(version=message.version, contact=contact, context=message.context).subject
    except Exception:  # a template that does not render still shows what would be sent
        return message.version.subject if message.version else ""


def _timeline(journey: Journey, definition: lang.Definition, contact: Contact, fed: list,
              horizon: dt.datetime) -> list[dict]:
    from leadflow.messaging.models import Message

    messages = {m.pk: m for m in Message.objects.filter(workspace_id=journey.workspace_id,
                                                        source__startswith=f"journey:{journey.pk}:")
                .select_related("template", "version")}
    rows: list[tuple[dt.datetime, int, dict]] = []
    for at, name, properties in fed:
        rows.append((at, 0, {"at": at, "kind": "event", "event": name, "properties": properties}))
    for step in EnrollmentStep.objects.filter(journey=journey, contact_id=contact.pk).order_by("at", "pk"):
        node = definition.node(step.node)
        entry = {"at": step.at, "kind": step.kind, "node": step.node, "type": node.type if node else "",
                 "name": node.name if node else "", "detail": step.detail}
        message = messages.get(step.detail.get("message")) if step.kind == "sent" else None
        if message is not None:
            entry["email"] = {"template": message.template.slug if message.template else "",
                              "subject": _subject(message, contact), "to": message.to_email,
                              "topic": message.topic, "not_before": message.not_before}
        rows.append((step.at, 1, entry))
    enrollments = list(Enrollment.objects.filter(journey=journey, contact=contact).order_by("pk"))
    if not enrollments:
        rows.append((horizon, 2, {"at": horizon, "kind": "not_entered",
                                  "detail": {"reason": "no trigger fired or the entry filter kept them out"}}))
    for e in enrollments:
        if e.state == EnrollmentState.ACTIVE:
            detail = {"due_at": e.due_at, "waiting_for": e.wait_event}
            if e.data.get("waiting_for"):  # a sales alert nobody can take: no retry helps in a dry run
                detail = {"due_at": None, "waiting_for": "", "reason": e.data["waiting_for"]}
            rows.append((horizon, 2, {"at": horizon, "kind": "horizon", "node": e.node,
                                      "type": getattr(definition.node(e.node), "type", ""), "detail": detail}))
    return [entry for _, _, entry in sorted(rows, key=lambda r: (r[0], r[1]))]


def journey_simulate(*, journey_or_definition, workspace: Workspace, contact: Contact | None = None,
                     traits: dict | None = None, events=(), start: dt.datetime | None = None,
                     days: float = 90) -> list[dict]:
    """The timeline of one person in a journey over `days` from `start` (default: now): the
    events fed, every step (`at`, `kind`, `node`, `type`, `detail`; a `sent` step carries the
    `email` with its subject), then `horizon` if they are still in it (with where they wait) or
    `not_entered`. `events` are (when, name[, properties]) with `when` an offset from `start`
    (timedelta, days, "2d") or a datetime. Without `contact`, a hypothetical person with
    `traits` is made for the run; with one, `traits` are laid over theirs for the run only.

    The person enters when one of the events fires a trigger of the journey, else at `start`
    (the entry filter applies). Nothing is sent and nothing is kept."""
    if not 0 < days <= MAX_DAYS:
        raise ServiceError(f"days: between 0 and {MAX_DAYS}")
    if contact is not None and contact.workspace_id != workspace.pk:
        raise ServiceError("the contact belongs to another workspace")
    if traits is not None and not isinstance(traits, dict):
        raise ServiceError("traits: an object of trait names and values")
    definition, name = _definition_of(journey_or_definition, workspace)
    start = (start or clock.now()).astimezone(dt.timezone.utc)
    horizon = start + dt.timedelta(days=days)
    timed = _events_of(events, start, horizon)
    frozen = clock.FrozenClock(start)
    try:
        with clock.use(frozen), transaction.atomic():
            _run(definition, name, workspace, contact, traits, timed, frozen, horizon)
    except _Rollback as done:
        return done.result
    raise AssertionError("unreachable: the run always rolls back")  # pragma: no cover


def _run(definition: lang.Definition, name: str, workspace: Workspace, contact: Contact | None,
         traits: dict | None, timed: list, frozen: clock.FrozenClock, horizon: dt.datetime) -> None:
    from leadflow.journeys.triggers import enroll

    now = frozen.current
    stored = lang.journey_dump(definition)
    stored["slug"] = f"simulation-{uuid.uuid4().hex[:12]}"
    journey = Journey.objects.create(workspace=workspace, slug=stored["slug"], name=name[:200],
                                     status=JourneyStatus.LIVE, created_at=now, updated_at=now)
    version = JourneyVersion.objects.create(workspace=workspace, journey=journey, number=1, definition=stored,
                                            actor="simulation", created_at=now, published_at=now)
    journey.version = version
    journey.save(update_fields=["version"])
    definition = version_definition(version)

    person = f"simulation-{uuid.uuid4().hex[:12]}"
    ident = _ident(contact, person)
    if contact is None or traits:
        given = dict(traits or {})
        if contact is None:
            given.setdefault("email", SIMULATED_EMAIL)
        _feed(workspace, ident, [{"type": "identify", "traits": given}])
    contact = (Contact.objects.get(pk=contact.pk) if contact is not None else
               Contact.objects.get(workspace=workspace, user_id=person))
    if not _triggered_by(definition, timed):
        enroll(journey=journey, definition=definition, entries=[(contact, "simulation", {"manual": "simulation"})],
               now=now)

    rep_waits = [n.id for n in definition.nodes if n.type == "sales_alert"]
    pending = list(timed)
    fed = []
    for _ in range(MAX_MOMENTS):
        while True:
            due = [e for e in pending if e[0] <= now]
            if due:
                pending = pending[len(due):]
                fed += due
                _feed(workspace, ident, [{"type": "track", "event": n, "properties": p} for _, n, p in due])
            if not journeys_advance(now=now, journey_ids=[journey.pk]):
                break
        # A lead waiting at a sales alert for a rep is left there: nothing in a dry run adds one.
        next_due = (Enrollment.objects.filter(journey=journey, state=EnrollmentState.ACTIVE, due_at__isnull=False)
                    .exclude(node__in=rep_waits, resume=WAITING)
                    .order_by("due_at").values_list("due_at", flat=True).first())
        moments = [m for m in (next_due, pending[0][0] if pending else None) if m is not None]
        if not moments or min(moments) > horizon or min(moments) <= now:
            break  # (the last: due but not taken by the engine; never spin on it)
        now = min(moments)
        frozen.set(now)
    raise _Rollback(_timeline(journey, definition, contact, fed, horizon))


# --- `leadflow tick`: everything due, up to a simulated time --------------------------------------

MAX_ROUNDS = 20  # passes at one moment while each pass makes more work due at that moment
DISPATCH_LIMIT = 500


@dataclasses.dataclass
class TickReport:
    start: dt.datetime
    until: dt.datetime
    moments: int = 0  # the times the clock stopped at
    events: int = 0  # events processed by the pipeline
    advanced: int = 0  # enrollments taken by the journey engine (one count per pass)
    dispatched: int = 0  # messages the dispatcher dealt with (sent, deferred, blocked, failed)
    webhooks: int = 0  # webhook deliveries dealt with
    sent: int = 0  # emails sent between start and until


def tick_start() -> dt.datetime:
    """Where `tick` starts by default: now, or where the last tick left the clock when that is
    later (the latest periodic pass it ran), so successive ticks carry on."""
    from leadflow.core.models import PeriodicRun

    last = PeriodicRun.objects.aggregate(at=Max("last_run_at"))["at"]
    now = clock.now()
    return max(now, last) if last else now


def _next_due(after: dt.datetime) -> dt.datetime | None:
    """The first moment after `after` when something is due: an enrollment (of a journey the
    engine advances; a sales alert trying again to find a rep is left to the `step` stops), a
    queued or deferred email, a webhook delivery, a sales deadline (accept or work SLA, a recycled
    lead's return), a scheduled broadcast or an A/B decision."""
    from leadflow.journeys.models import WebhookDelivery
    from leadflow.lifecycle.models import Assignment, AssignmentStatus
    from leadflow.messaging.models import Broadcast, Message

    def first(query, field):
        return query.filter(**{f"{field}__gt": after}).aggregate(at=Min(field))["at"]

    times = [
        # (not the retries of a sales alert waiting for a rep: the clock's daily stops run them)
        first(Enrollment.objects.filter(state=EnrollmentState.ACTIVE,
                                        journey__status__in=[JourneyStatus.LIVE, JourneyStatus.ARCHIVED])
              .exclude(data__has_key="waiting_for"), "due_at"),
        first(Message.objects.filter(status__in=["queued", "deferred"]), "not_before"),
        first(WebhookDelivery.objects.filter(status="pending"), "next_attempt_at"),
        first(Assignment.objects.filter(status=AssignmentStatus.ASSIGNED), "accept_due_at"),
        first(Assignment.objects.filter(status=AssignmentStatus.ACCEPTED), "work_due_at"),
        first(Assignment.objects.filter(status=AssignmentStatus.RECYCLED, returned_at__isnull=True), "return_at"),
        first(Broadcast.objects.filter(status="scheduled"), "scheduled_at"),
        first(Broadcast.objects.filter(status="testing", winner__isnull=True), "decide_at"),
    ]
    return min((t for t in times if t is not None), default=None)


def _events_pending() -> bool:
    """Whether the pipeline has anything to do (one query, not one per shard)."""
    from leadflow.tracking.models import Event

    return Event.objects.filter(processed_at__isnull=True).exists()


def _dispatch_all() -> int:
    from leadflow.messaging.dispatch import dispatch_run

    total = 0
    while True:
        done = dispatch_run(limit=DISPATCH_LIMIT)
        total += done
        if done < DISPATCH_LIMIT:
            return total


def tick_run(*, until: dt.datetime, start: dt.datetime | None = None, step: dt.timedelta = dt.timedelta(days=1),
             on_moment=None) -> TickReport:
    """Run everything a worker would, on a clock jumping from one due moment to the next, up to
    `until`: the pipeline, the journey engine, the periodic passes, the email dispatcher and the
    webhook deliveries. The clock stops at every due time `_next_due` knows and at least every
    `step` (for the periodic passes with no due time of their own: date triggers, score decay,
    segment time windows, quiet leads). Emails and webhooks really go out.

    `on_moment(moment, counts)` is told what happened at each stop (for `-v 2`)."""
    from leadflow.core.pipeline import process_pending, timers_run
    from leadflow.journeys.engine import journeys_run_due
    from leadflow.journeys.webhooks import webhooks_dispatch
    from leadflow.messaging.models import Message

    start = (start or tick_start()).astimezone(dt.timezone.utc)
    until = until.astimezone(dt.timezone.utc)
    if until <= start:
        raise ServiceError(f"--until {until.isoformat()} is not after the start, {start.isoformat()}")
    if step <= dt.timedelta(0):
        raise ServiceError("the step must be longer than 0")
    report = TickReport(start=start, until=until)
    frozen = clock.FrozenClock(start)
    with clock.use(frozen):
        moment = start
        while True:
            frozen.set(moment)
            report.moments += 1
            counts = {"events": 0, "advanced": 0, "dispatched": 0, "webhooks": 0, "timers": []}
            for round_ in range(MAX_ROUNDS):
                work = {"events": process_pending() if _events_pending() else 0,
                        "advanced": journeys_run_due(now=moment)}
                ran = timers_run() if round_ == 0 else []
                work["dispatched"] = _dispatch_all()
                work["webhooks"] = webhooks_dispatch(now=moment)
                for key, value in work.items():
                    counts[key] += value
                counts["timers"] += ran
                if not (ran or any(work.values())):
                    break
            for key in ("events", "advanced", "dispatched", "webhooks"):
                setattr(report, key, getattr(report, key) + counts[key])
            if on_moment is not None:
                on_moment(moment, counts)
            if moment >= until:
                break
            moment = min(_next_due(moment) or until, moment + step, until)
    report.sent = Message.objects.filter(sent_at__gt=start, sent_at__lte=until).count()
    return report
