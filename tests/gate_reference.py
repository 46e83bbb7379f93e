"""A plain reference for the consent gate, written independently of `leadflow.consent.gate`.

It loads what one message's decision depends on with simple queries (one message at a time, no
batching, no cleverness) and decides with the rules as DESIGN principle 5 and docs/consent.md
state them. Tests compare the real gate against it; the dispatcher's end-to-end property test
can reuse it: for every message the dispatcher sent at time T, `reference_decide(...)` must not
be "block" and `reference_allowed_at(facts, T)` must hold.

    facts = reference_facts(message, now)
    reference_decide(facts, now)          # "send" | "defer" | "block"
    reference_allowed_at(facts, moment)   # may a (non-blocked) marketing message go at `moment`?
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field

UTC = dt.timezone.utc

TRANSACTIONAL_STOPPERS = {"hard_bounce", "invalid", "complaint", "erased", "manual"}
TEST_STOPPERS = {"hard_bounce", "invalid"}


@dataclass
class Facts:
    kind: str
    suppression: str | None  # the active suppression's reason for the address, if any
    contact_found: bool
    country: str = ""
    timezone: str = ""
    marketing: str | None = None  # latest status of `marketing`
    topic_slug: str = ""  # "" = all marketing only
    topic_exists: bool = True
    topic_archived: bool = False
    topic_mode: str = "opt_out"
    topic_doi_everyone: bool = False
    topic_doi_countries: list[str] = field(default_factory=list)
    topic_status: str | None = None  # latest status of the topic
    pauses: list[dt.datetime] = field(default_factory=list)  # every pause's end
    sent: list[dt.datetime] = field(default_factory=list)  # this person's marketing sends
    quiet: tuple[dt.time, dt.time] | None = None
    default_timezone: str = "UTC"
    cap_day: int | None = None
    cap_week: int | None = None


def _latest(records) -> str | None:
    """The status of the record written last: greatest time, then greatest id."""
    best = None
    for record in records:
        if best is None or (record.at, record.pk) > (best.at, best.pk):
            best = record
    return best.status if best is not None else None


def reference_facts(message, now: dt.datetime, *, extra_sent: list[dt.datetime] | None = None) -> Facts:
    from leadflow.consent.models import ConsentRecord, MarketingPause, Suppression, Topic
    from leadflow.contacts.models import Contact
    from leadflow.messaging.models import Message, MessagingSettings

    address = message.to_email.strip().lower()
    suppression = None
    for row in Suppression.objects.filter(workspace_id=message.workspace_id):
        if row.email.lower() == address and row.lifted_at is None:
            suppression = row.reason
    contact = Contact.objects.filter(pk=message.contact_id).first() if message.contact_id else None
    if contact is not None and contact.workspace_id != message.workspace_id:
        contact = None
    facts = Facts(kind=message.kind, suppression=suppression, contact_found=contact is not None)
    settings = MessagingSettings.objects.filter(workspace_id=message.workspace_id).first()
    if settings is not None:
        if settings.quiet_start is not None and settings.quiet_end is not None \
                and settings.quiet_start != settings.quiet_end:
            facts.quiet = (settings.quiet_start, settings.quiet_end)
        facts.default_timezone = settings.default_timezone
        facts.cap_day = settings.cap_per_day if settings.cap_per_day else None
        facts.cap_week = settings.cap_per_week if settings.cap_per_week else None
    if contact is None:
        return facts
    facts.country = (contact.country or "").upper()
    facts.timezone = contact.timezone or ""
    records = list(ConsentRecord.objects.filter(contact=contact))
    facts.marketing = _latest(r for r in records if r.topic == "marketing")
    slug = (message.topic or "").strip()
    facts.topic_slug = "" if slug == "marketing" else slug
    if facts.topic_slug:
        topic = Topic.objects.filter(workspace_id=message.workspace_id, slug=facts.topic_slug).first()
        facts.topic_exists = topic is not None
        if topic is not None:
            facts.topic_archived = topic.archived_at is not None
            facts.topic_mode = topic.mode
            facts.topic_doi_everyone = topic.double_opt_in
            facts.topic_doi_countries = [c.upper() for c in topic.double_opt_in_countries]
        facts.topic_status = _latest(r for r in records if r.topic == facts.topic_slug)
    facts.pauses = [p.until for p in MarketingPause.objects.filter(contact=contact)]
    facts.sent = [m.sent_at for m in Message.objects.filter(contact=contact, kind="marketing")
                  if m.sent_at is not None and m.sent_at <= now] + list(extra_sent or [])
    return facts


def reference_blocked(facts: Facts) -> bool:
    if facts.kind == "test":
        return facts.suppression in TEST_STOPPERS
    if facts.kind == "transactional":
        return facts.suppression in TRANSACTIONAL_STOPPERS
    if facts.kind != "marketing":
        return True
    if facts.suppression is not None or not facts.contact_found:
        return True
    if facts.marketing == "withdrawn":
        return True
    if facts.topic_slug:
        if not facts.topic_exists or facts.topic_archived:
            return True
        if facts.topic_status == "withdrawn":
            return True
        needs_doi = facts.topic_doi_everyone or (facts.country != "" and facts.country in facts.topic_doi_countries)
        if (needs_doi or facts.topic_mode == "opt_in") and facts.topic_status != "granted":
            return True
    return False


def _zone(facts: Facts):
    for name in (facts.timezone, facts.default_timezone):
        if name:
            try:
                return zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                pass
    return UTC


def _quiet_at(facts: Facts, moment: dt.datetime) -> bool:
    if facts.quiet is None:
        return False
    start, end = facts.quiet
    local = moment.astimezone(_zone(facts))
    now_s = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
    start_s = start.hour * 3600 + start.minute * 60 + start.second
    end_s = end.hour * 3600 + end.minute * 60 + end.second
    if start_s <= end_s:
        return start_s <= now_s < end_s
    return now_s >= start_s or now_s < end_s


def _sends_between(facts: Facts, after: dt.datetime, upto: dt.datetime) -> int:
    return sum(1 for s in facts.sent if after < s <= upto)


def reference_allowed_at(facts: Facts, moment: dt.datetime) -> bool:
    """May this (not blocked) marketing message go out at `moment`: no pause covers it, both
    caps have room, and it is not quiet time where the person lives."""
    if facts.kind != "marketing":
        return True
    if any(until > moment for until in facts.pauses if until is not None):
        return False
    if facts.cap_day and _sends_between(facts, moment - dt.timedelta(days=1), moment) >= facts.cap_day:
        return False
    if facts.cap_week and _sends_between(facts, moment - dt.timedelta(days=7), moment) >= facts.cap_week:
        return False
    return not _quiet_at(facts, moment)


def reference_decide(facts: Facts, now: dt.datetime) -> str:
    if reference_blocked(facts):
        return "block"
    return "send" if reference_allowed_at(facts, now) else "defer"


def reference_paused_at(facts: Facts, moment: dt.datetime) -> bool:
    return any(until > moment for until in facts.pauses if until is not None)
