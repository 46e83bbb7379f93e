"""The consent gate: the one function that decides whether a message may go out now (DESIGN
principle 5). The dispatcher asks it for every message at dispatch time; nothing else decides
whether a person may be contacted.

A decision is `send`, `block` (never send this message) or `defer` (not now; ask again at
`until`). The rules, in order:

marketing
  1. the address is suppressed (any reason)                                   → block
  2. the contact is missing (deleted or erased)                               → block
  3. all marketing (`marketing`) withdrawn: the latest ConsentRecord          → block
  4. the message's topic: unknown or archived, withdrawn, double opt-in
     required (topic-wide or for the contact's country) without a confirmed
     grant, or an opt-in topic without a grant                                → block
  5. paused by the person (MarketingPause until > now)                        → defer to its end
  6. over the frequency cap (marketing messages with `sent_at` in the rolling
     day / week, across all sends)                                            → defer until under
  7. inside quiet hours in the contact's timezone                             → defer to their end
transactional (double opt-in confirmation, magnet delivery)
  blocked only by a suppression for a hard bounce, invalid address, spam complaint, erasure or
  one added by hand; topics, consent, pauses, caps and quiet hours do not apply.
test
  blocked only by a suppression for a hard bounce or an invalid address.

A deferral's `until` is the earliest moment every deferring rule allows: after the pause, under
both caps, outside quiet hours (computed in the contact's timezone with zoneinfo, so DST-correct).

`gate_check_many` decides a batch with a fixed number of queries (at most seven per 500
messages), counting the messages it lets through towards the caps of the ones after them;
`gate_check` is the same for one message. `sendable_contacts` is the set-based form of rules
1-4 and 5 (a queryset) for recipient counts.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db.models import Exists, Max, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Lower, Upper

from leadflow.consent.models import (ALL_MARKETING, ConsentRecord, ConsentStatus, MarketingPause, Suppression,
                                     SuppressionReason, Topic, TopicMode)

UTC = dt.timezone.utc
DAY = dt.timedelta(days=1)
WEEK = dt.timedelta(days=7)
CHUNK = 500

SEND, DEFER, BLOCK = "send", "defer", "block"

# Which suppressions stop which kinds of message (marketing: every one).
BLOCKS_TRANSACTIONAL = frozenset({SuppressionReason.HARD_BOUNCE, SuppressionReason.INVALID,
                                  SuppressionReason.COMPLAINT, SuppressionReason.ERASED, SuppressionReason.MANUAL})
BLOCKS_TEST = frozenset({SuppressionReason.HARD_BOUNCE, SuppressionReason.INVALID})


@dataclass(frozen=True)
class GateDecision:
    action: str  # "send", "defer" or "block"
    reason: str = ""
    until: dt.datetime | None = None

    @property
    def send(self) -> bool:
        return self.action == SEND


@dataclass(frozen=True)
class Rules:
    """A workspace's sending rules from MessagingSettings (defaults when it has none)."""

    quiet_start: dt.time | None = None
    quiet_end: dt.time | None = None
    default_timezone: str = "UTC"
    cap_per_day: int | None = None
    cap_per_week: int | None = None

    @property
    def quiet(self) -> bool:
        return self.quiet_start is not None and self.quiet_end is not None and self.quiet_start != self.quiet_end


# --- time helpers (no database) -----------------------------------------------------------------

@functools.lru_cache(maxsize=512)
def zone_get(name: str) -> zoneinfo.ZoneInfo | None:
    if not name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def contact_zone(timezone: str, rules: Rules) -> tuple[zoneinfo.ZoneInfo | dt.timezone, str]:
    """The zone quiet hours are read in: the contact's, else the workspace default, else UTC."""
    for name in (timezone, rules.default_timezone):
        zone = zone_get(name or "")
        if zone is not None:
            return zone, name
    return UTC, "UTC"


def in_quiet_hours(moment: dt.datetime, start: dt.time, end: dt.time, zone) -> bool:
    """Whether the wall-clock time at `moment` in `zone` is inside [start, end) (spanning
    midnight when start > end)."""
    local = moment.astimezone(zone).time().replace(tzinfo=None)
    if start < end:
        return start <= local < end
    return local >= start or local < end


def quiet_hours_end(moment: dt.datetime, start: dt.time, end: dt.time, zone) -> dt.datetime:
    """The first instant at or after `moment` outside quiet hours, in UTC.

    The end is a wall-clock time: on a day it does not exist (a DST gap) the first instant after
    the gap; on a day it happens twice (DST fall-back) the first of them after `moment`.
    """
    t = moment
    for _ in range(4):
        if not in_quiet_hours(t, start, end, zone):
            return t
        local = t.astimezone(zone)
        day = local.date()
        if start > end and local.time().replace(tzinfo=None) >= start:
            day += DAY
        wall = dt.datetime.combine(day, end)
        first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
        good = [c for c in (first, second) if c > t and not in_quiet_hours(c, start, end, zone)]
        if not good:
            t = max(first, second, t + dt.timedelta(minutes=1))
            continue
        best = min(good)
        if best.astimezone(zone).replace(tzinfo=None) != wall:
            # `end` fell in a DST gap: the quiet hours end with the jump, somewhere before `best`.
            lo, hi = max(t, min(first, second)), best
            while (hi - lo) > dt.timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0) if mid.replace(microsecond=0) > lo else mid
                if in_quiet_hours(mid, start, end, zone):
                    lo = mid
                else:
                    hi = mid
            best = hi
        return best
    return t


def cap_free_at(sent: Sequence[dt.datetime], cap: int, window: dt.timedelta, at: dt.datetime) -> dt.datetime:
    """The first instant at or after `at` when fewer than `cap` of `sent` (all at or before `at`)
    lie in the rolling window (t - window, t]."""
    recent = sorted(s for s in sent if at - window < s <= at)
    if len(recent) < cap:
        return at
    return recent[len(recent) - cap] + window


def _day(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def _minute(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- facts for a batch ---------------------------------------------------------------------------

@dataclass
class _Facts:
    rules: dict[int, Rules] = field(default_factory=dict)
    suppressed: dict[tuple[int, str], tuple[str, dt.datetime]] = field(default_factory=dict)
    contacts: dict[int, tuple[int, str, str]] = field(default_factory=dict)  # pk -> (workspace, country, tz)
    latest: dict[tuple[int, str], tuple[str, dt.datetime]] = field(default_factory=dict)
    topics: dict[tuple[int, str], Topic] = field(default_factory=dict)
    paused: dict[int, dt.datetime] = field(default_factory=dict)
    sent: dict[int, list[dt.datetime]] = field(default_factory=lambda: defaultdict(list))


def _rules_load(workspace_ids: set[int]) -> dict[int, Rules]:
    from leadflow.messaging.models import MessagingSettings

    rows = MessagingSettings.objects.filter(workspace_id__in=workspace_ids).values(
        "workspace_id", "quiet_start", "quiet_end", "default_timezone", "cap_per_day", "cap_per_week")
    found = {r.pop("workspace_id"): Rules(**{**r, "cap_per_day": r["cap_per_day"] or None,
                                             "cap_per_week": r["cap_per_week"] or None}) for r in rows}
    return {w: found.get(w, Rules()) for w in workspace_ids}


def _topic_slug(message) -> str:
    topic = (message.topic or "").strip()
    return "" if topic == ALL_MARKETING else topic


def _facts_load(messages: Sequence, now: dt.datetime) -> _Facts:
    from leadflow.messaging.models import Message, MessageKind

    facts = _Facts()
    workspace_ids = {m.workspace_id for m in messages}
    facts.rules = _rules_load(workspace_ids)
    emails = {m.to_email.strip().lower() for m in messages}
    for workspace_id, email, reason, created_at in Suppression.objects.filter(
            workspace_id__in=workspace_ids, email__in=emails, lifted_at__isnull=True).values_list(
            "workspace_id", "email", "reason", "created_at"):
        facts.suppressed[(workspace_id, email)] = (reason, created_at)
    marketing = [m for m in messages if m.kind == MessageKind.MARKETING and m.contact_id]
    if not marketing:
        return facts
    contact_ids = {m.contact_id for m in marketing}
    from leadflow.contacts.models import Contact

    for pk, workspace_id, country, timezone in Contact.objects.filter(workspace_id__in=workspace_ids, pk__in=contact_ids).values_list(
            "pk", "workspace_id", "country", "timezone"):
        facts.contacts[pk] = (workspace_id, (country or "").upper(), timezone or "")
    slugs = {_topic_slug(m) for m in marketing} - {""}
    for topic in Topic.objects.filter(workspace_id__in=workspace_ids, slug__in=slugs):
        facts.topics[(topic.workspace_id, topic.slug)] = topic
    for contact_id, topic, status, at in ConsentRecord.objects.filter(
            workspace_id__in=workspace_ids, contact_id__in=contact_ids, topic__in=slugs | {ALL_MARKETING}).order_by("at", "pk").values_list(
            "contact_id", "topic", "status", "at"):
        facts.latest[(contact_id, topic)] = (status, at)
    for row in MarketingPause.objects.filter(workspace_id__in=workspace_ids, contact_id__in=contact_ids,
                                              until__gt=now).values(
            "contact_id").annotate(until_max=Max("until")):
        facts.paused[row["contact_id"]] = row["until_max"]
    capped = [r for r in facts.rules.values() if r.cap_per_day or r.cap_per_week]
    if capped:
        window = WEEK if any(r.cap_per_week for r in capped) else DAY
        for contact_id, sent_at in Message.objects.filter(
                workspace_id__in=workspace_ids, contact_id__in=contact_ids, kind=MessageKind.MARKETING, sent_at__gt=now - window,
                sent_at__lte=now).values_list("contact_id", "sent_at"):
            facts.sent[contact_id].append(sent_at)
    return facts


# --- the decision ----------------------------------------------------------------------------------

def _suppression_reason(reason: str, since: dt.datetime) -> str:
    if reason == SuppressionReason.ERASED:
        return f"the person was erased (privacy request) on {_day(since)}"
    return f"address suppressed ({SuppressionReason(reason).label.lower()}) since {_day(since)}"


def _topic_block(message, contact_id: int, country: str, facts: _Facts) -> str | None:
    slug = _topic_slug(message)
    if not slug:
        return None
    topic = facts.topics.get((message.workspace_id, slug))
    if topic is None:
        return f"unknown topic {slug!r}: no such subscription topic in this workspace"
    if topic.archived_at is not None:
        return f"topic {slug!r} is archived"
    status, at = facts.latest.get((contact_id, slug), (None, None))
    if status == ConsentStatus.WITHDRAWN:
        return f"unsubscribed from {slug} on {_day(at)}"
    if status == ConsentStatus.GRANTED:
        return None
    countries = {str(c).upper() for c in (topic.double_opt_in_countries or [])}
    if topic.double_opt_in:
        return f"{slug} needs double opt-in and it has not been confirmed"
    if country and country in countries:
        return f"{slug} needs double opt-in in {country} and it has not been confirmed"
    if topic.mode == TopicMode.OPT_IN:
        return f"no opt-in for {slug} (an opt-in topic)"
    return None


def _defer_until(message, contact_id: int, timezone: str, facts: _Facts, now: dt.datetime
                 ) -> tuple[dt.datetime, list[str]]:
    rules = facts.rules[message.workspace_id]
    t, reasons = now, []
    paused = facts.paused.get(contact_id)
    if paused is not None and paused > t:
        t = paused
        reasons.append(f"paused by the person until {_minute(paused)}")
    sent = facts.sent.get(contact_id, [])
    zone, zone_name = contact_zone(timezone, rules)
    for _ in range(3):
        moved = False
        for cap, window, per in ((rules.cap_per_day, DAY, "day"), (rules.cap_per_week, WEEK, "week")):
            if cap:
                free = cap_free_at(sent, cap, window, t)
                if free > t:
                    t, moved = free, True
                    reasons.append(f"frequency cap of {cap} marketing email{'s' if cap != 1 else ''} "
                                   f"per {per} reached")
        if rules.quiet:
            end = quiet_hours_end(t, rules.quiet_start, rules.quiet_end, zone)
            if end > t:
                t, moved = end, True
                reasons.append(f"quiet hours {rules.quiet_start:%H:%M}–{rules.quiet_end:%H:%M} {zone_name}")
        if not moved:
            break
    return t, list(dict.fromkeys(reasons))


def _decide(message, facts: _Facts, now: dt.datetime) -> GateDecision:
    from leadflow.messaging.models import MessageKind

    email = message.to_email.strip().lower()
    suppression = facts.suppressed.get((message.workspace_id, email))
    if message.kind == MessageKind.TEST:
        if suppression and suppression[0] in BLOCKS_TEST:
            return GateDecision(BLOCK, _suppression_reason(*suppression))
        return GateDecision(SEND, "test send")
    if message.kind == MessageKind.TRANSACTIONAL:
        if suppression and suppression[0] in BLOCKS_TRANSACTIONAL:
            return GateDecision(BLOCK, _suppression_reason(*suppression))
        return GateDecision(SEND, "transactional")
    if message.kind != MessageKind.MARKETING:
        return GateDecision(BLOCK, f"unknown message kind {message.kind!r}")
    if suppression:
        return GateDecision(BLOCK, _suppression_reason(*suppression))
    contact = facts.contacts.get(message.contact_id) if message.contact_id else None
    if contact is None or contact[0] != message.workspace_id:
        return GateDecision(BLOCK, "the person no longer exists (deleted or erased)")
    _, country, timezone = contact
    status, at = facts.latest.get((message.contact_id, ALL_MARKETING), (None, None))
    if status == ConsentStatus.WITHDRAWN:
        return GateDecision(BLOCK, f"unsubscribed from all marketing on {_day(at)}")
    blocked = _topic_block(message, message.contact_id, country, facts)
    if blocked:
        return GateDecision(BLOCK, blocked)
    until, reasons = _defer_until(message, message.contact_id, timezone, facts, now)
    if until > now:
        return GateDecision(DEFER, "; ".join(reasons), until)
    facts.sent[message.contact_id].append(now)  # counts towards the caps of the rest of the batch
    return GateDecision(SEND, "allowed")


def gate_check_many(*, messages: Sequence, now: dt.datetime) -> list[GateDecision]:
    """The decision for each message, in the order given, with a fixed number of queries per
    500 messages. A message let through counts (at `now`) towards the frequency caps of the
    messages after it, so a batch never overshoots a cap."""
    decisions: list[GateDecision] = []
    carried: dict[int, list[dt.datetime]] = defaultdict(list)
    for start in range(0, len(messages), CHUNK):
        chunk = messages[start:start + CHUNK]
        facts = _facts_load(chunk, now)
        for contact_id, times in carried.items():
            if contact_id in facts.contacts:
                facts.sent[contact_id].extend(times)
        for message in chunk:
            before = len(facts.sent.get(message.contact_id, [])) if message.contact_id else 0
            decision = _decide(message, facts, now)
            decisions.append(decision)
            if decision.send and message.contact_id and len(facts.sent.get(message.contact_id, [])) > before:
                carried[message.contact_id].append(now)
    return decisions


def gate_check(*, message, now: dt.datetime) -> GateDecision:
    """The decision for one message (a handful of queries)."""
    return gate_check_many(messages=[message], now=now)[0]


# --- set-based: who may a marketing message on a topic reach ------------------------------------

def _latest_status(topic: str) -> Subquery:
    return Subquery(ConsentRecord.objects.filter(contact_id=OuterRef("pk"), topic=topic)
                    .order_by("-at", "-pk").values("status")[:1])


def sendable_contacts(*, workspace_id: int, topic: str, now: dt.datetime, require_email: bool = True) -> QuerySet:
    """The contacts (with an address) a marketing message on `topic` (blank: all marketing) may
    reach now, ignoring caps and quiet hours (they defer, they do not stop): not suppressed, all
    marketing not withdrawn, the topic's opt-in or double opt-in present where required, not
    paused. Two queries (the topic, then the people); an unknown or archived topic reaches
    nobody. `require_email=False` keeps people without an address, for other channels (a
    journey's webhook step on a topic: SMS, ads audiences, direct mail)."""
    from leadflow.contacts.models import Contact

    slug = (topic or "").strip()
    slug = "" if slug == ALL_MARKETING else slug
    qs = Contact.objects.filter(workspace_id=workspace_id)
    if require_email:
        qs = qs.exclude(email="")
    suppressed = Suppression.objects.filter(workspace_id=workspace_id, lifted_at__isnull=True,
                                            email=Lower(OuterRef("email")))
    paused = MarketingPause.objects.filter(contact_id=OuterRef("pk"), until__gt=now)
    qs = (qs.annotate(lf_marketing=_latest_status(ALL_MARKETING))
          .filter(~Exists(suppressed), ~Exists(paused))
          .filter(Q(lf_marketing__isnull=True) | Q(lf_marketing=ConsentStatus.GRANTED)))
    if not slug:
        return qs
    found = Topic.objects.filter(workspace_id=workspace_id, slug=slug, archived_at__isnull=True).first()
    if found is None:
        return qs.none()
    qs = qs.annotate(lf_topic=_latest_status(slug))
    granted = Q(lf_topic=ConsentStatus.GRANTED)
    countries = sorted({str(c).upper() for c in (found.double_opt_in_countries or [])})
    if found.double_opt_in or found.mode == TopicMode.OPT_IN:
        return qs.filter(granted)
    not_withdrawn = Q(lf_topic__isnull=True) | granted
    if countries:
        qs = qs.annotate(lf_country=Upper("country"))
        return qs.filter(granted | (not_withdrawn & ~Q(lf_country__in=countries)))
    return qs.filter(not_withdrawn)
