"""The journey circuit breaker: a journey whose steps or downstream systems keep failing pauses
itself, tells its owner, and resumes by itself once the downstream is healthy again.

`journeys_health_run` runs every minute (the worker timer `journeys.health`). For every live
journey it reads three signals over the last WINDOW (counted from the journey's last change of
status or version when that is more recent, so failures from before a resume or a fix never
count again), each judged on its own:

- **steps**: node outcomes that failed (`EnrollmentStep` kind `failed`: an unknown template or
  endpoint, a disabled endpoint, a loop…) out of all node outcomes;
- **email**: the journey's messages whose SMTP attempt failed (`failed`, or `deferred` for a
  retry) out of all its SMTP attempts (`sent` too), from the message events;
- **webhooks**: the journey's deliveries whose last attempt failed (`failed`, or pending a retry)
  out of all those attempted (`delivered` too).

A signal trips the breaker when it has at least MIN_FAILURES failures *and* an error rate of at
least ERROR_RATE. The journey is then paused (`journey_status_set`, with a reason that says what
failed), `breaker_tripped_at` is set, an audit entry is written and the owner, if they have an
email address, gets an email through the notification outbox. Everyone stays where they are.

A journey the breaker paused resumes by itself when its cool-down is over (COOLDOWN, doubled for
every further trip within a day, at most MAX_COOLDOWN) and none of its downstream systems is
known to be failing: no sending server it uses has its circuit open (or half-open with mail
waiting to test it), no webhook endpoint it calls is disabled or had its last attempt fail. A
failing endpoint gets a `leadflow.ping` probe so that a fixed receiver is noticed without waiting
for the retries' backoff. Resuming sets the journey live; the engine then advances, once, every
enrollment that fell due meanwhile (from the rows: nothing runs twice). A journey paused by a
person (`breaker_tripped_at` empty) is never resumed here.

Thresholds are module constants, overridable with Django settings or environment variables
`LEADFLOW_JOURNEY_BREAKER_{WINDOW_SECONDS,MIN_FAILURES,ERROR_RATE,COOLDOWN_SECONDS}`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import defaultdict
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q

from leadflow.config import ConfigError
from leadflow.core import clock
from leadflow.core.models import AuditEntry
from leadflow.core.services import audit_record
from leadflow.journeys.selectors import journey_id_of_source
from leadflow.journeys.services import BREAKER
from leadflow.journeys.models import (DeliveryStatus, EnrollmentStep, Journey, JourneyStatus, StepKind,
                                      WebhookDelivery, WebhookEndpoint)

log = logging.getLogger(__name__)

ACTOR = BREAKER  # the actor journey services recognise as the breaker

WINDOW_SECONDS = 15 * 60
MIN_FAILURES = 10
ERROR_RATE = 0.5
COOLDOWN_SECONDS = 15 * 60
MAX_COOLDOWN_SECONDS = 6 * 3600
# Node outcomes: what a step at a node ends in (entries, waits, goals and migrations are not).
OUTCOMES = (StepKind.PASSED, StepKind.SENT, StepKind.WEBHOOK, StepKind.SKIPPED, StepKind.EXITED, StepKind.FAILED)


def _number(name: str, default: float) -> float:
    value = getattr(settings, f"LEADFLOW_JOURNEY_BREAKER_{name}", None)
    if value is None:
        raw = os.environ.get(f"LEADFLOW_JOURNEY_BREAKER_{name}", "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"LEADFLOW_JOURNEY_BREAKER_{name} must be a number, not {raw!r}") from None
    return float(value)


@dataclass(frozen=True)
class Limits:
    window: dt.timedelta
    min_failures: int
    error_rate: float
    cooldown: dt.timedelta


def limits() -> Limits:
    return Limits(window=dt.timedelta(seconds=_number("WINDOW_SECONDS", WINDOW_SECONDS)),
                  min_failures=max(1, int(_number("MIN_FAILURES", MIN_FAILURES))),
                  error_rate=min(1.0, max(0.0, _number("ERROR_RATE", ERROR_RATE))),
                  cooldown=dt.timedelta(seconds=_number("COOLDOWN_SECONDS", COOLDOWN_SECONDS)))


@dataclass
class Signal:
    """One kind of failure of one journey over the window."""

    kind: str  # steps | email | webhooks
    failed: int = 0
    total: int = 0
    where: str = ""  # the downstream that failed most (server or endpoint name)

    def trips(self, limits: Limits) -> bool:
        return self.failed >= limits.min_failures and self.failed >= limits.error_rate * self.total

    def describe(self, window: dt.timedelta) -> str:
        minutes = round(window.total_seconds() / 60)
        noun = {"steps": "steps", "email": "emails", "webhooks": "webhook deliveries"}[self.kind]
        verb = "could not be sent" if self.kind == "email" else "failed"
        where = f" ({self.where})" if self.where else ""
        return f"{self.failed} of {self.total} {noun} {verb} in the last {minutes} minutes{where}"


# --- the run ------------------------------------------------------------------------------------

def journeys_health_run(*, now: dt.datetime | None = None) -> dict:
    """Trip the breaker of the live journeys that fail past the limits, and resume those it
    paused whose downstream is healthy again. Returns what it did, by journey slug."""
    now = now or clock.now()
    conf = limits()
    report: dict = {"checked": 0, "tripped": [], "resumed": [], "held": {}, "probes": 0}
    live = list(Journey.objects.filter(status=JourneyStatus.LIVE).select_related("owner", "workspace"))
    report["checked"] = len(live)
    if live:
        signals = journey_signals(journeys=live, now=now, window=conf.window)
        for journey in live:
            tripping = [s for s in signals.get(journey.pk, []) if s.trips(conf)]
            if tripping and _trip(journey, tripping, conf, now):
                report["tripped"].append(journey.slug)
    paused = list(Journey.objects.filter(status=JourneyStatus.PAUSED, breaker_tripped_at__isnull=False)
                  .select_related("owner", "workspace", "version"))
    for journey in paused:
        outcome, probes = _maybe_resume(journey, conf, now)
        report["probes"] += probes
        if outcome is None:
            report["resumed"].append(journey.slug)
        else:
            report["held"][journey.slug] = outcome
    return report


# --- signals --------------------------------------------------------------------------------------

def _boundary(model, since: dt.datetime) -> int:
    """The id of the newest row older than `since`: rows are appended in time order, so the
    window is the id range above it. Walking the primary key down from the newest row reads
    only the window, where a range on the unindexed time column would read the whole table."""
    return model.objects.filter(at__lt=since).order_by("-pk").values_list("pk", flat=True).first() or 0


def journey_signals(*, journeys: list[Journey], now: dt.datetime, window: dt.timedelta) -> dict[int, list[Signal]]:
    """The steps, email and webhook signals of each journey over the window (a few grouped
    queries for all of them)."""
    since = now - window
    ids = [j.pk for j in journeys]
    found: dict[int, dict[str, Signal]] = defaultdict(dict)

    def signal(journey_id: int, kind: str) -> Signal:
        return found[journey_id].setdefault(kind, Signal(kind))

    steps = (EnrollmentStep.objects.filter(pk__gt=_boundary(EnrollmentStep, since), journey_id__in=ids,
                                           at__gte=since, kind__in=OUTCOMES)
             .filter(at__gte=F("journey__updated_at"))
             .values("journey_id").annotate(failed=Count("pk", filter=Q(kind=StepKind.FAILED)), total=Count("pk")))
    for row in steps:
        s = signal(row["journey_id"], "steps")
        s.failed, s.total = row["failed"], row["total"]

    for journey_id, by_endpoint in _webhook_counts(ids, since).items():
        s = signal(journey_id, "webhooks")
        s.failed = sum(f for f, _ in by_endpoint.values())
        s.total = sum(t for _, t in by_endpoint.values())
        s.where = _endpoint_where(by_endpoint)

    workspace_of = {j.pk: j.workspace_id for j in journeys}
    for journey_id, by_server in _email_counts({j.pk: max(since, j.updated_at) for j in journeys}, since).items():
        s = signal(journey_id, "email")
        s.failed = sum(f for f, _ in by_server.values())
        s.total = sum(t for _, t in by_server.values())
        s.where = _server_where(workspace_of[journey_id], by_server)

    for journey_id, kinds in found.items():
        step = kinds.get("steps")
        if step is not None and step.failed:
            step.where = _last_step_failure(journey_id, since)
    return {journey_id: list(kinds.values()) for journey_id, kinds in found.items()}


def _webhook_counts(ids: list[int], since: dt.datetime) -> dict[int, dict[int, tuple[int, int]]]:
    """journey → endpoint → (failed, attempted) over the window. A finished delivery's
    `next_attempt_at` is when it was last tried (`journeys.webhooks`); a pending one's last try
    is `sending_at`."""
    finished = (Q(status__in=[DeliveryStatus.DELIVERED, DeliveryStatus.FAILED], next_attempt_at__gte=since)
                & Q(next_attempt_at__gte=F("journey__updated_at")))
    retrying = (Q(status=DeliveryStatus.PENDING, attempts__gt=0, sending_at__gte=since)
                & Q(sending_at__gte=F("journey__updated_at")))
    rows = (WebhookDelivery.objects.filter(journey_id__in=ids).filter(finished | retrying)
            .values("journey_id", "endpoint_id")
            .annotate(failed=Count("pk", filter=~Q(status=DeliveryStatus.DELIVERED)), total=Count("pk")))
    counts: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)
    for row in rows:
        counts[row["journey_id"]][row["endpoint_id"]] = (row["failed"], row["total"])
    return counts


def _email_counts(starts: dict[int, dt.datetime], since: dt.datetime) -> dict[int, dict[int | None, tuple[int, int]]]:
    """journey → server id (None: the workspace's default) → (failed, attempted), from the
    message events of the window (one grouped query per distinct start; nearly every journey
    starts at `since`)."""
    from leadflow.messaging.models import MessageEvent, MessageEventKind

    by_start: dict[dt.datetime, list[int]] = defaultdict(list)
    for journey_id, start in starts.items():
        by_start[start].append(journey_id)
    boundary = _boundary(MessageEvent, since)
    attempts = (Q(kind=MessageEventKind.SENT) | Q(kind=MessageEventKind.FAILED)
                | Q(kind=MessageEventKind.DEFERRED, detail__retry=True))
    counts: dict[int, dict[int | None, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for start, journey_ids in by_start.items():
        query = MessageEvent.objects.filter(pk__gt=boundary, at__gte=start).filter(attempts)
        if start == since:
            query = query.filter(message__source__startswith="journey:")
        else:
            match = Q()
            for journey_id in journey_ids:
                match |= Q(message__source__startswith=f"journey:{journey_id}:")
            query = query.filter(match)
        wanted = set(journey_ids)
        for row in query.values("message__source", "message__server_id", "kind").annotate(n=Count("pk")):
            journey_id = journey_id_of_source(row["message__source"])
            if journey_id not in wanted:
                continue
            pair = counts[journey_id][row["message__server_id"]]
            pair[1] += row["n"]
            if row["kind"] != MessageEventKind.SENT:
                pair[0] += row["n"]
    return {j: {server: (f, t) for server, (f, t) in servers.items()} for j, servers in counts.items()}


def _endpoint_where(by_endpoint: dict[int, tuple[int, int]]) -> str:
    """`endpoint crm: HTTP 500 …` for the endpoint with the most failures, with its last error."""
    endpoint_id, (failed, _) = max(by_endpoint.items(), key=lambda item: item[1][0])
    if not failed:
        return ""
    slug = WebhookEndpoint.objects.filter(pk=endpoint_id).values_list("slug", flat=True).first() or f"#{endpoint_id}"
    error = (WebhookDelivery.objects.filter(endpoint_id=endpoint_id).exclude(status=DeliveryStatus.DELIVERED)
             .exclude(error="").order_by("-sending_at", "-pk").values_list("error", flat=True).first() or "")
    return f"endpoint {slug}" + (f": {error[:200]}" if error else "")


def _server_where(workspace_id: int, by_server: dict[int | None, tuple[int, int]]) -> str:
    """`server Relay: 451 …` for the sending server with the most failures, with its last error."""
    server_id, (failed, _) = max(by_server.items(), key=lambda item: item[1][0])
    server = _server(workspace_id, server_id) if failed else None
    if server is None:
        return ""
    return f"server {server.name}" + (f": {server.last_error[:200]}" if server.last_error else "")


def _server(workspace_id: int, server_id: int | None):
    from leadflow.messaging.models import SendingServer

    if server_id is not None:
        return SendingServer.objects.filter(pk=server_id).first()
    return SendingServer.objects.filter(workspace_id=workspace_id, is_default=True).first()


def _last_step_failure(journey_id: int, since: dt.datetime) -> str:
    step = (EnrollmentStep.objects.filter(journey_id=journey_id, kind=StepKind.FAILED, at__gte=since)
            .select_related("enrollment").order_by("-at", "-pk").first())
    if step is None:
        return ""
    return f"at {step.node}: {step.enrollment.end_reason[:200]}" if step.enrollment.end_reason else f"at {step.node}"


# --- tripping -------------------------------------------------------------------------------------

def _trip(journey: Journey, tripping: list[Signal], conf: Limits, now: dt.datetime) -> bool:
    from leadflow.journeys.services import journey_status_set

    why = "; ".join(s.describe(conf.window) for s in tripping)
    reason = f"paused by the circuit breaker: {why}"
    with transaction.atomic():
        locked = Journey.objects.select_for_update().get(pk=journey.pk)
        if locked.status != JourneyStatus.LIVE:  # a person (or another worker) got there first
            return False
        journey_status_set(journey=locked, status=JourneyStatus.PAUSED, actor=ACTOR, reason=reason)
        Journey.objects.filter(pk=journey.pk).update(breaker_tripped_at=now)
        audit_record(workspace=journey.workspace, actor=ACTOR, action="journey.breaker_trip",
                     target=f"journey:{journey.pk}",
                     data={"signals": [{"kind": s.kind, "failed": s.failed, "total": s.total, "where": s.where}
                                       for s in tripping],
                           "window_seconds": int(conf.window.total_seconds())})
        _tell_owner(journey, now, subject=f"Journey paused: {journey.name}", lines=[
            f"LeadFlow paused the journey \u201c{journey.name}\u201d ({journey.slug}) on "
            f"{now:%Y-%m-%d %H:%M} UTC because it kept failing:", "", why, "",
            "Everyone in it stays where they are and nobody new enters while it is paused.",
            "It resumes by itself once the failing system answers again (checked every minute after a "
            f"cool-down of {_minutes(_cooldown(journey, conf, now))}), and then carries on "
            "with everything that fell due in the meantime, once.",
            "To keep it paused, pause it yourself; to resume it now, set it live."])
    log.warning("journey %s paused by the circuit breaker: %s", journey.slug, why)
    return True


def _minutes(delta: dt.timedelta) -> str:
    minutes = round(delta.total_seconds() / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _tell_owner(journey: Journey, now: dt.datetime, *, subject: str, lines: list[str]) -> bool:
    """An email to the journey's owner through the notification outbox (as sales alerts go)."""
    from django.utils.html import escape

    from leadflow.lifecycle.models import Notification

    owner = journey.owner
    if owner is None or not owner.email:
        return False
    base = getattr(settings, "PUBLIC_URL", "")
    if base:
        lines = [*lines, "", f"{base}/journeys/{journey.pk}/"]
    text = "\n".join(lines) + "\n"
    html = "<html><body>" + "".join(f"<p>{escape(line)}</p>" for line in lines if line) + "</body></html>"
    Notification.objects.create(workspace_id=journey.workspace_id, user=owner, to_address=owner.email,
                                subject=subject[:300], text_body=text, html_body=html, created_at=now,
                                next_attempt_at=now)
    return True


# --- resuming -------------------------------------------------------------------------------------

def _cooldown(journey: Journey, conf: Limits, now: dt.datetime) -> dt.timedelta:
    """COOLDOWN, doubled for each further trip of the journey within a day (at most MAX_COOLDOWN):
    a journey that fails again right after resuming waits longer each time instead of flapping."""
    trips = AuditEntry.objects.filter(workspace_id=journey.workspace_id, action="journey.breaker_trip",
                                      target=f"journey:{journey.pk}", at__gte=now - dt.timedelta(days=1)).count()
    seconds = conf.cooldown.total_seconds() * 2 ** max(0, trips - 1)
    return dt.timedelta(seconds=max(conf.cooldown.total_seconds(), min(MAX_COOLDOWN_SECONDS, seconds)))


def _maybe_resume(journey: Journey, conf: Limits, now: dt.datetime) -> tuple[str | None, int]:
    """(None when resumed, else why it stays paused; probes queued)."""
    from leadflow.journeys.services import journey_status_set

    ready_at = journey.breaker_tripped_at + _cooldown(journey, conf, now)
    if now < ready_at:
        return f"cooling down until {ready_at:%Y-%m-%d %H:%M} UTC", 0
    failing, probes = _downstream_failing(journey, conf, now)
    if failing:
        return "; ".join(failing), probes
    with transaction.atomic():
        locked = Journey.objects.select_for_update().get(pk=journey.pk)
        if locked.status != JourneyStatus.PAUSED or locked.breaker_tripped_at is None:
            return "changed by someone else meanwhile", probes
        tripped_at = locked.breaker_tripped_at
        journey_status_set(journey=locked, status=JourneyStatus.LIVE, actor=ACTOR,
                           reason="the circuit breaker found its downstream healthy again")
        audit_record(workspace=journey.workspace, actor=ACTOR, action="journey.breaker_resume",
                     target=f"journey:{journey.pk}", data={"tripped_at": tripped_at.isoformat()})
        _tell_owner(journey, now, subject=f"Journey resumed: {journey.name}", lines=[
            f"LeadFlow resumed the journey \u201c{journey.name}\u201d ({journey.slug}) on {now:%Y-%m-%d %H:%M} UTC: "
            f"what failed answers again. It had been paused since {tripped_at:%Y-%m-%d %H:%M} UTC "
            f"({journey.paused_reason}).",
            "", "Everything that fell due while it was paused now happens, once."])
    log.info("journey %s resumed by the circuit breaker", journey.slug)
    return None, probes


def _downstream_failing(journey: Journey, conf: Limits, now: dt.datetime) -> tuple[list[str], int]:
    """What the journey depends on that still fails, and how many probes were queued to find out
    whether a failing webhook endpoint is back."""
    from leadflow.journeys.webhooks import webhook_endpoint_health, webhook_probe_queue

    since = journey.breaker_tripped_at - conf.window
    endpoint_slugs, server_names = _named_downstream(journey)
    endpoints = list(WebhookEndpoint.objects.filter(workspace_id=journey.workspace_id).filter(
        Q(slug__in=endpoint_slugs) | Q(pk__in=WebhookDelivery.objects.filter(
            journey=journey, next_attempt_at__gte=since).exclude(status=DeliveryStatus.DELIVERED)
            .values("endpoint_id"))))
    failing, probes = [], 0
    for endpoint in endpoints:
        health = webhook_endpoint_health(endpoint=endpoint, now=now)
        if health == "disabled":
            failing.append(f"webhook endpoint {endpoint.slug} is disabled ({endpoint.disabled_reason or 'by hand'}); "
                           "enable it")
        elif health == "failing":
            failing.append(f"webhook endpoint {endpoint.slug} failed its last attempt")
            if webhook_probe_queue(endpoint=endpoint, now=now) is not None:
                probes += 1
    for server in _servers(journey, server_names):
        problem = _server_failing(server, now)
        if problem:
            failing.append(problem)
    return failing, probes


def _named_downstream(journey: Journey) -> tuple[set[str], set[str | None]]:
    """Endpoint slugs and sending server names (None: the default) the published version uses."""
    from leadflow.journeys.engine import version_definition

    if journey.version is None:
        return set(), set()
    endpoints, servers = set(), set()
    for node in version_definition(journey.version).nodes:
        if node.type == "webhook":
            endpoints.add(node.endpoint)
        elif node.type in ("send_email", "stream"):
            servers.add(getattr(node, "server", None))  # a stream sends through the default
    return endpoints, servers


def _servers(journey: Journey, names: set[str | None]) -> list:
    """The sending servers the journey's mail goes through: named by its version (None: the
    workspace default) or used by its messages waiting for a retry."""
    from leadflow.messaging.models import Message, MessageStatus, SendingServer

    used = set(Message.objects.filter(workspace_id=journey.workspace_id, status=MessageStatus.DEFERRED,
                                      attempts__gt=0, source__startswith=f"journey:{journey.pk}:")
               .values_list("server_id", flat=True).distinct())
    wants_default = None in names or None in used
    query = Q(name__in=[n for n in names if n]) | Q(pk__in=[s for s in used if s])
    if wants_default:
        query |= Q(is_default=True)
    return list(SendingServer.objects.filter(workspace_id=journey.workspace_id).filter(query))


def _server_failing(server, now: dt.datetime) -> str:
    from leadflow.messaging.models import Message, MessageStatus
    from leadflow.messaging.sending import server_state

    state = server_state(server, now=now)
    if state == "open":
        return (f"sending server {server.name} is paused after {server.consecutive_failures} failures until "
                f"{server.paused_until:%Y-%m-%d %H:%M} UTC ({server.last_error[:200]})")
    if state == "half-open":
        mine = Q(server=server) | (Q(server__isnull=True) if server.is_default else Q(pk__in=[]))
        waiting = Message.objects.filter(mine, workspace_id=server.workspace_id,
                                         status__in=[MessageStatus.QUEUED, MessageStatus.DEFERRED],
                                         not_before__lte=now).exists()
        if waiting:  # the dispatcher is about to try one: wait for its answer
            return f"sending server {server.name} is being tested after {server.consecutive_failures} failures"
    return ""
