"""Writes on consent: topics, subscriptions, double opt-in, unsubscribes, pauses, suppressions.

Every change to what a person agreed to is an appended ConsentRecord (the latest per topic wins),
with the wording, source, IP and user agent of the act. A grant that needs double opt-in (the
topic requires it, for everyone or for the person's country) is not recorded at once: an
OptInRequest is stored and a transactional confirmation email is queued; following its signed
link (`/c/TOKEN`) records the grant with the original wording and source.

Suppressions are per address (lower-cased), not per person, one active row per address; lifting
keeps the row for the record.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.utils.text import slugify

from leadflow.consent import selectors
from leadflow.consent.models import (ALL_MARKETING, ConsentRecord, ConsentStatus, MarketingPause, OptInRequest,
                                     Suppression, SuppressionReason, Topic, TopicMode)
from leadflow.core import clock
from leadflow.core.models import AuditEntry
from leadflow.core.services import ServiceError

PREFERENCE_CENTRE = "preference_centre"
MAX_PAUSE_WEEKS = 52
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
OPTIN_TEMPLATE_SLUG = "leadflow-double-opt-in"

# A stronger reason replaces a weaker one on the active row (it stops more kinds of mail).
REASON_STRENGTH = {SuppressionReason.SOFT_BOUNCES: 1, SuppressionReason.MANUAL: 2, SuppressionReason.COMPLAINT: 3,
                   SuppressionReason.HARD_BOUNCE: 3, SuppressionReason.INVALID: 3, SuppressionReason.ERASED: 4}


class NotFound(ServiceError):
    """The thing a link or id names does not exist (any more) in this workspace."""


def _audit(*, workspace_id: int, actor: str, action: str, target: str = "", data: dict | None = None) -> None:
    AuditEntry.objects.create(workspace_id=workspace_id, actor=(actor or "system")[:200], action=action,
                              target=target[:200], data=data or {}, at=clock.now())


# --- topics --------------------------------------------------------------------------------------

def _countries(raw: object) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [p for p in re.split(r"[\s,;]+", raw) if p]
    if not isinstance(raw, (list, tuple, set)):
        raise ServiceError("double_opt_in_countries must be a list of ISO country codes such as DE")
    clean = []
    for item in raw:
        code = str(item).strip().upper()
        if not COUNTRY.match(code):
            raise ServiceError(f"double_opt_in_countries: {item!r} is not a two-letter ISO country code such as DE")
        if code not in clean:
            clean.append(code)
    return sorted(clean)


def _topic_fields(*, name=None, description=None, mode=None, double_opt_in=None, double_opt_in_countries=None,
                  position=None) -> dict:
    fields: dict = {}
    if name is not None:
        name = " ".join(str(name).split())
        if not name:
            raise ServiceError("a topic needs a name")
        if len(name) > 200:
            raise ServiceError("name: at most 200 characters")
        fields["name"] = name
    if description is not None:
        if len(description) > 500:
            raise ServiceError("description: at most 500 characters")
        fields["description"] = description.strip()
    if mode is not None:
        if mode not in TopicMode.values:
            raise ServiceError(f"mode must be one of {', '.join(TopicMode.values)}")
        fields["mode"] = mode
    if double_opt_in is not None:
        fields["double_opt_in"] = bool(double_opt_in)
    if double_opt_in_countries is not None:
        fields["double_opt_in_countries"] = _countries(double_opt_in_countries)
    if position is not None:
        if not isinstance(position, int) or position < 0:
            raise ServiceError("position must be a whole number of at least 0")
        fields["position"] = position
    return fields


OPT_OUT_DOUBLE_OPT_IN = ("an opt-out topic cannot need double opt-in for everyone: nobody would receive it until "
                         "they confirmed by email. Make the topic opt-in (people who say yes, confirmed by email), "
                         "or keep it opt-out and ask for double opt-in only in some countries")


def _topic_rules_check(*, mode: str, double_opt_in: bool) -> None:
    """Refuse opt-out + double opt-in for everyone: the gate (rule 4) would block everybody
    until they confirmed, the opposite of what opt-out means. Double opt-in by country on an
    opt-out topic is fine: everyone else still receives it until they say no."""
    if mode == TopicMode.OPT_OUT and double_opt_in:
        raise ServiceError(OPT_OUT_DOUBLE_OPT_IN)


def topic_create(*, workspace_id: int, name: str, actor: str, slug: str = "", description: str = "",
                 mode: str = TopicMode.OPT_OUT, double_opt_in: bool = False,
                 double_opt_in_countries: list[str] | None = None, position: int | None = None) -> Topic:
    """A new subscription topic. Its slug (from the name when not given) is what templates and
    messages name and never changes; `marketing` is reserved: it stands for all marketing."""
    fields = _topic_fields(name=name, description=description, mode=mode, double_opt_in=double_opt_in,
                           double_opt_in_countries=double_opt_in_countries or [], position=position)
    _topic_rules_check(mode=fields["mode"], double_opt_in=fields["double_opt_in"])
    slug = slugify(slug or name)[:100]
    if not slug:
        raise ServiceError("a topic needs a name or slug with at least one letter or digit")
    if slug == ALL_MARKETING:
        raise ServiceError(f"the slug {ALL_MARKETING!r} is reserved: it stands for all marketing email")
    if Topic.objects.filter(workspace_id=workspace_id, slug=slug).exists():
        raise ServiceError(f"a topic with the slug {slug!r} already exists")
    if position is None:
        last = Topic.objects.filter(workspace_id=workspace_id).order_by("-position").values_list(
            "position", flat=True).first()
        fields["position"] = (last or 0) + 1 if last is not None else 0
    try:
        with transaction.atomic():
            topic = Topic.objects.create(workspace_id=workspace_id, slug=slug, created_at=clock.now(), **fields)
    except IntegrityError:
        raise ServiceError(f"a topic with the slug {slug!r} already exists") from None
    _audit(workspace_id=workspace_id, actor=actor, action="topic.create", target=f"topic:{slug}",
           data={k: v for k, v in fields.items() if k != "description"})
    return topic


def topic_update(*, topic: Topic, actor: str, name: str | None = None, description: str | None = None,
                 mode: str | None = None, double_opt_in: bool | None = None,
                 double_opt_in_countries: list[str] | None = None, position: int | None = None) -> Topic:
    """Change a topic's name, description, mode, double opt-in rules or position (not its slug).
    Rules apply from the next dispatch on: making a topic opt-in or double opt-in stops mail to
    everyone without a (confirmed) grant. An opt-out topic cannot need double opt-in for everyone;
    the check runs when a change names the mode or double opt-in, so a topic saved before the rule
    can still be renamed or archived."""
    fields = _topic_fields(name=name, description=description, mode=mode, double_opt_in=double_opt_in,
                           double_opt_in_countries=double_opt_in_countries, position=position)
    if "mode" in fields or "double_opt_in" in fields:
        _topic_rules_check(mode=fields.get("mode", topic.mode),
                           double_opt_in=fields.get("double_opt_in", topic.double_opt_in))
    changed = {k: v for k, v in fields.items() if getattr(topic, k) != v}
    if not changed:
        return topic
    for key, value in changed.items():
        setattr(topic, key, value)
    topic.save(update_fields=list(changed))
    _audit(workspace_id=topic.workspace_id, actor=actor, action="topic.update", target=f"topic:{topic.slug}",
           data={k: v for k, v in changed.items() if k != "description"})
    return topic


def topic_archive(*, topic: Topic, actor: str) -> Topic:
    """Retire a topic: it leaves the preference centre, and messages on it are blocked at dispatch
    (nobody can manage a subscription they cannot see). Its consent records stay."""
    if topic.archived_at is None:
        topic.archived_at = clock.now()
        topic.save(update_fields=["archived_at"])
        _audit(workspace_id=topic.workspace_id, actor=actor, action="topic.archive", target=f"topic:{topic.slug}")
    return topic


def topic_restore(*, topic: Topic, actor: str) -> Topic:
    if topic.archived_at is not None:
        topic.archived_at = None
        topic.save(update_fields=["archived_at"])
        _audit(workspace_id=topic.workspace_id, actor=actor, action="topic.restore", target=f"topic:{topic.slug}")
    return topic


# --- subscriptions ----------------------------------------------------------------------------------

@dataclass
class SubscriptionResult:
    """What `subscription_set` did: a ConsentRecord written, or a double opt-in requested (the
    confirmation email queued), or nothing (already in that state)."""

    record: ConsentRecord | None = None
    optin: OptInRequest | None = None
    changed: bool = False

    @property
    def pending(self) -> bool:
        return self.optin is not None


def _topic_for(*, workspace_id: int, slug: str, granting: bool) -> Topic | None:
    """The Topic row for `slug` (None for all marketing); NotFound/ServiceError if unusable."""
    if not isinstance(slug, str) or not slug.strip():
        raise ServiceError("topic: name a topic slug, or 'marketing' for all marketing email")
    slug = slug.strip()
    if slug == ALL_MARKETING:
        return None
    topic = selectors.topic_get_by_slug(workspace_id=workspace_id, slug=slug)
    if topic is None:
        raise NotFound(f"no topic {slug!r} in this workspace")
    if topic.archived_at is not None and granting:
        raise ServiceError(f"topic {slug!r} is archived")
    return topic


def _record(*, contact, topic: str, status: str, source: str, wording: str = "", ip: str | None = None,
            user_agent: str = "", event_message_id: str = "", at: dt.datetime | None = None) -> ConsentRecord:
    return ConsentRecord.objects.create(
        workspace_id=contact.workspace_id, contact=contact, topic=topic, status=status, wording=wording or "",
        source=(source or "unknown")[:200], ip=ip or None, user_agent=(user_agent or "")[:500],
        event_message_id=event_message_id[:255], at=at or clock.now())


def _marketing_regrant(*, contact, source: str, wording: str, ip, user_agent: str, event_message_id: str = "") -> None:
    """A person who subscribes to a topic after unsubscribing from everything wants that topic:
    all marketing is granted again with the same evidence."""
    latest = selectors.consent_latest(contact=contact, topics={ALL_MARKETING}).get(ALL_MARKETING)
    if latest is not None and latest.status == ConsentStatus.WITHDRAWN:
        _record(contact=contact, topic=ALL_MARKETING, status=ConsentStatus.GRANTED, source=source, wording=wording,
                ip=ip, user_agent=user_agent, event_message_id=event_message_id)


def subscription_set(*, contact, topic: str, granted: bool, source: str, wording: str = "",
                     ip: str | None = None, user_agent: str = "") -> SubscriptionResult:
    """Record that `contact` subscribes to (or leaves) `topic` (a slug; `marketing` for all
    marketing). A grant that needs double opt-in for this person queues the confirmation email
    instead (none again within 24 hours); a grant on a topic already granted records nothing."""
    if not source:
        raise ServiceError("source: say where the consent came from (api, form:<slug>, import:<label>…)")
    row = _topic_for(workspace_id=contact.workspace_id, slug=topic, granting=granted)
    slug = row.slug if row is not None else ALL_MARKETING
    latest = selectors.consent_latest(contact=contact, topics={slug}).get(slug)
    with transaction.atomic():
        if not granted:
            record = _record(contact=contact, topic=slug, status=ConsentStatus.WITHDRAWN, source=source,
                             wording=wording, ip=ip, user_agent=user_agent)
            return SubscriptionResult(record=record, changed=latest is None or latest.status != ConsentStatus.WITHDRAWN)
        if latest is not None and latest.status == ConsentStatus.GRANTED:
            _marketing_regrant(contact=contact, source=source, wording=wording, ip=ip, user_agent=user_agent)
            return SubscriptionResult(record=latest, changed=False)
        if row is not None and selectors.topic_needs_double_opt_in(topic=row, country=contact.country):
            if not (contact.email or "").strip():
                raise ServiceError(f"{row.slug!r} needs double opt-in and this person has no email address to confirm it")
            return SubscriptionResult(optin=optin_request(contact=contact, topic=row, source=source, wording=wording,
                                                          ip=ip))
        record = _record(contact=contact, topic=slug, status=ConsentStatus.GRANTED, source=source, wording=wording,
                         ip=ip, user_agent=user_agent)
        if row is not None:
            _marketing_regrant(contact=contact, source=source, wording=wording, ip=ip, user_agent=user_agent)
        return SubscriptionResult(record=record, changed=True)


# --- double opt-in -----------------------------------------------------------------------------------

OPTIN_SUBJECT = "Please confirm your subscription{% if topic_name %} to {{ topic_name }}{% endif %}"
OPTIN_HTML = """<p>Hello {{ contact.first_name | default("there") }},</p>
<p>Please confirm that you want to receive {{ topic_name | default("our emails") }}{% if sender_name %} from {{ sender_name }}{% endif %}.</p>
<p><a href="{{ optin_confirm_url }}" style="display:inline-block;padding:10px 18px;background:#2457d6;color:#ffffff;text-decoration:none;border-radius:5px">Yes, subscribe me</a></p>
<p>Or open this link: {{ optin_confirm_url }}</p>
<p>If you did not ask for this, ignore this email: you will not be subscribed and we will not write again.</p>
{% if postal_address %}<p style="color:#667085;font-size:12px">{{ postal_address }}</p>{% endif %}"""
OPTIN_TEXT = """Hello {{ contact.first_name | default("there") }},

Please confirm that you want to receive {{ topic_name | default("our emails") }}{% if sender_name %} from {{ sender_name }}{% endif %}:

{{ optin_confirm_url }}

If you did not ask for this, ignore this email: you will not be subscribed and we will not write again.
{% if postal_address %}
{{ postal_address }}{% endif %}
"""


def optin_template_get(*, workspace_id: int):
    """The workspace's double opt-in confirmation template, created (approved, transactional) on
    first use. Marketers may edit it in the content UI; sends use its approved version, whose
    body must keep `{{ optin_confirm_url }}`."""
    from leadflow.messaging.content import BuiltIn, template_builtin_get

    return template_builtin_get(workspace_id=workspace_id, builtin=BuiltIn(
        slug=OPTIN_TEMPLATE_SLUG, name="Double opt-in confirmation", subject=OPTIN_SUBJECT, html=OPTIN_HTML,
        text=OPTIN_TEXT))


def sender_get(*, workspace_id: int) -> tuple[str, str]:
    """The sender name (MessagingSettings.from_name, else the workspace name) and postal address."""
    from leadflow.core.models import Workspace
    from leadflow.messaging.models import MessagingSettings

    found = MessagingSettings.objects.filter(workspace_id=workspace_id).values_list("from_name", "postal_address").first()
    name, address = found or ("", "")
    if not name:
        name = Workspace.objects.filter(pk=workspace_id).values_list("name", flat=True).first() or ""
    return name, address


def optin_request(*, contact, topic: Topic, source: str, wording: str = "", ip: str | None = None,
                  dedupe_key: str = "") -> OptInRequest | None:
    """Store a pending double opt-in and queue its confirmation email (transactional), in the
    caller's transaction. Within 24 hours of an unconfirmed request for the same topic, that one
    is returned and nothing is sent again. None when the person has no address to confirm."""
    from leadflow.consent.links import optin_confirm_url
    from leadflow.messaging.models import MessageKind
    from leadflow.messaging.outbox import message_queue

    if not (contact.email or "").strip():
        return None
    now = clock.now()
    recent = selectors.optin_pending_recent(contact=contact, topic=topic.slug, now=now)
    if recent is not None:
        return recent
    request = OptInRequest.objects.create(workspace_id=contact.workspace_id, contact=contact, topic=topic.slug,
                                          wording=wording or "", source=(source or "")[:200], ip=ip or None,
                                          requested_at=now)
    sender_name, postal_address = sender_get(workspace_id=contact.workspace_id)
    template = optin_template_get(workspace_id=contact.workspace_id)
    message = message_queue(
        workspace_id=contact.workspace_id, contact=contact, template=template, kind=MessageKind.TRANSACTIONAL,
        topic="", source=f"optin:{topic.slug}", campaign=OPTIN_TEMPLATE_SLUG,
        context={"optin_confirm_url": optin_confirm_url(request), "topic": topic.slug, "topic_name": topic.name,
                 "sender_name": sender_name, "postal_address": postal_address},
        dedupe_key=dedupe_key or f"optin:{request.pk}")
    request.message_id = message.pk
    request.save(update_fields=["message_id"])
    return request


def _optin_read(token: str) -> OptInRequest:
    from leadflow.messaging.tokens import BadToken, token_read

    try:
        payload = token_read("optin", token)
    except BadToken as exc:
        raise ServiceError(str(exc)) from None
    request = (OptInRequest.objects.select_related("contact")
               .filter(pk=payload.get("r"), workspace_id=payload.get("w")).first())
    if request is None:
        raise NotFound("this confirmation link is no longer valid: subscribe again to get a new one")
    return request


def optin_lookup(*, token: str) -> OptInRequest:
    """The request a confirmation link stands for (ServiceError if altered, NotFound if gone)."""
    return _optin_read(token)


def optin_confirm(*, token: str, ip: str | None = None, user_agent: str = "") -> ConsentRecord:
    """Follow a confirmation link: record the grant with the request's wording and source (the
    confirming click's IP and user agent). Idempotent: a second call returns the same record."""
    request = _optin_read(token)
    key = f"optin:{request.pk}"
    done = ConsentRecord.objects.filter(workspace_id=request.workspace_id, event_message_id=key,
                                        topic=request.topic).first()
    if done is not None:
        return done
    now = clock.now()
    if request.requested_at < now - selectors.OPTIN_VALID_FOR:
        raise ServiceError("this confirmation link has expired: subscribe again to get a new one")
    try:
        with transaction.atomic():
            locked = OptInRequest.objects.select_for_update().get(pk=request.pk)
            record = _record(contact=request.contact, topic=request.topic, status=ConsentStatus.GRANTED,
                             source=request.source or "double_opt_in", wording=request.wording, ip=ip,
                             user_agent=user_agent, event_message_id=key, at=now)
            if locked.confirmed_at is None:
                locked.confirmed_at = now
                locked.save(update_fields=["confirmed_at"])
            _marketing_regrant(contact=request.contact, source=request.source or "double_opt_in",
                               wording=request.wording, ip=ip, user_agent=user_agent)
    except IntegrityError:
        return ConsentRecord.objects.get(workspace_id=request.workspace_id, event_message_id=key, topic=request.topic)
    return record


def form_consents_record(*, records: list[ConsentRecord]) -> None:
    """The consent boxes of processed form submissions (unsaved ConsentRecords built by the
    profile processor, each with its contact in its final state). A grant on a topic that needs
    double opt-in for that person becomes an OptInRequest and a confirmation email. A box left
    unticked is "not given", not an unsubscribe: it is stored only when the person has not
    granted that topic already (a subscriber filling in another form without ticking the box
    stays subscribed; withdrawing takes the unsubscribe link or the preference centre, whose
    signed links a form post cannot forge). Everything else is stored as is (once per event and
    topic)."""
    slugs = {r.topic for r in records if r.status == ConsentStatus.GRANTED and r.topic != ALL_MARKETING}
    topics = {}
    if slugs:
        workspace_ids = {r.workspace_id for r in records}
        topics = {(t.workspace_id, t.slug): t for t in Topic.objects.filter(workspace_id__in=workspace_ids,
                                                                             slug__in=slugs)}
    direct = []
    from leadflow.messaging.models import Message

    for record in records:
        if record.status != ConsentStatus.GRANTED:
            latest = selectors.consent_latest(contact=record.contact, topics={record.topic}).get(record.topic)
            if latest is not None and latest.status == ConsentStatus.GRANTED:
                continue  # an unticked box on another form does not take back a consent given
            direct.append(record)
            continue
        topic = topics.get((record.workspace_id, record.topic))
        if (topic is None or topic.archived_at is not None
                or not selectors.topic_needs_double_opt_in(topic=topic, country=record.contact.country)):
            direct.append(record)
            continue
        latest = selectors.consent_latest(contact=record.contact, topics={topic.slug}).get(topic.slug)
        if latest is not None and latest.status == ConsentStatus.GRANTED:
            direct.append(record)  # already confirmed: this submission is more evidence, not a new subscription
            continue
        key = f"optin:event:{record.event_message_id}:{topic.slug}"[:255]
        if Message.objects.filter(workspace_id=record.workspace_id, dedupe_key=key).exists():
            continue
        optin_request(contact=record.contact, topic=topic, source=record.source, wording=record.wording,
                      ip=record.ip, dedupe_key=key)
    if direct:
        ConsentRecord.objects.bulk_create(direct, ignore_conflicts=True)


# --- unsubscribing and pausing ------------------------------------------------------------------------

def unsubscribe_from_message(*, message, source: str, ip: str | None = None,
                             user_agent: str = "") -> ConsentRecord | None:
    """Unsubscribe the message's person from the message's topic (all marketing when it has
    none): a withdrawn ConsentRecord and an `unsubscribed` message event. Idempotent: when the
    person is already unsubscribed and the event recorded, nothing new is written. A message
    whose person is gone suppresses its address instead.

    A test send changes nothing and returns None: it went to a tester, not to the person it was
    personalised for, and its missing contact does not mean a person is gone (suppressing the
    tester's address by hand would also stop their transactional mail)."""
    from leadflow.messaging.events import message_event_record
    from leadflow.messaging.models import Message, MessageEventKind, MessageKind

    if message.kind == MessageKind.TEST:
        return None
    topic = (message.topic or "").strip() or ALL_MARKETING
    with transaction.atomic():
        locked = Message.objects.select_for_update(of=("self",)).select_related("contact").get(pk=message.pk)
        record = None
        if locked.contact is None:
            suppression_add(workspace_id=locked.workspace_id, email=locked.to_email, reason=SuppressionReason.MANUAL,
                            detail="unsubscribe link followed; the person's profile no longer exists",
                            message_id=locked.pk, actor=source)
        else:
            latest = selectors.consent_latest(contact=locked.contact, topics={topic}).get(topic)
            if latest is None or latest.status != ConsentStatus.WITHDRAWN:
                record = _record(contact=locked.contact, topic=topic, status=ConsentStatus.WITHDRAWN, source=source,
                                 wording=f"unsubscribe link in email {locked.pk}", ip=ip, user_agent=user_agent)
            else:
                record = latest
        if locked.unsubscribed_at is None:
            message_event_record(message=locked, kind=MessageEventKind.UNSUBSCRIBED,
                                 detail={"topic": topic, "source": source})
        message.unsubscribed_at = locked.unsubscribed_at
    return record


def unsubscribe_all(*, contact, source: str, ip: str | None = None, user_agent: str = "",
                    wording: str = "unsubscribe from all marketing email") -> ConsentRecord:
    """Withdraw all marketing (`marketing`); nothing new when already withdrawn."""
    latest = selectors.consent_latest(contact=contact, topics={ALL_MARKETING}).get(ALL_MARKETING)
    if latest is not None and latest.status == ConsentStatus.WITHDRAWN:
        return latest
    return _record(contact=contact, topic=ALL_MARKETING, status=ConsentStatus.WITHDRAWN, source=source,
                   wording=wording, ip=ip, user_agent=user_agent)


def marketing_pause(*, contact, weeks: int) -> MarketingPause:
    """No marketing to the person for `weeks` (1-52) from now; replaces an earlier pause."""
    if isinstance(weeks, bool) or not isinstance(weeks, int) or not 1 <= weeks <= MAX_PAUSE_WEEKS:
        raise ServiceError(f"weeks must be a whole number from 1 to {MAX_PAUSE_WEEKS}")
    now = clock.now()
    with transaction.atomic():
        MarketingPause.objects.filter(workspace_id=contact.workspace_id, contact_id=contact.pk,
                                      until__gt=now).update(until=now)
        return MarketingPause.objects.create(workspace_id=contact.workspace_id, contact=contact,
                                             until=now + dt.timedelta(weeks=weeks), at=now)


def marketing_resume(*, contact) -> int:
    """End the person's pause now; returns how many pauses were ended."""
    now = clock.now()
    return MarketingPause.objects.filter(workspace_id=contact.workspace_id, contact_id=contact.pk,
                                         until__gt=now).update(until=now)


@dataclass
class PreferencesResult:
    changed: list[str] = field(default_factory=list)  # topics whose state changed
    pending: list[str] = field(default_factory=list)  # topics awaiting email confirmation


def preferences_save(*, contact, topics: set[str], source: str = PREFERENCE_CENTRE, ip: str | None = None,
                     user_agent: str = "") -> PreferencesResult:
    """The preference centre's form: receive exactly the ticked topics. Each topic whose state
    changes is a ConsentRecord (or a double opt-in request); ticking a topic after unsubscribing
    from everything grants all marketing again, and the topics left unticked are withdrawn so
    that they do not come back with it."""
    state = selectors.subscriptions_get(contact=contact)
    known = {t.slug for t in state.topics}
    unknown = set(topics) - known
    if unknown:
        raise ServiceError(f"unknown topic {sorted(unknown)[0]!r}")
    result = PreferencesResult()
    wording = "preference centre"
    with transaction.atomic():
        live = False  # some ticked topic is subscribed now, without waiting for a confirmation
        for t in state.topics:
            if t.slug not in topics:
                continue
            if not t.subscribed:
                done = subscription_set(contact=contact, topic=t.slug, granted=True, source=source, wording=wording,
                                        ip=ip, user_agent=user_agent)
                if done.pending:
                    result.pending.append(t.slug)
                    continue
                result.changed.append(t.slug)
            elif not state.marketing:
                result.changed.append(t.slug)
            live = True
        regrant = live and not state.marketing
        for t in state.topics:
            if t.slug not in topics and t.subscribed and (state.marketing or regrant):
                subscription_set(contact=contact, topic=t.slug, granted=False, source=source, wording=wording,
                                 ip=ip, user_agent=user_agent)
                result.changed.append(t.slug)
        if regrant:
            _marketing_regrant(contact=contact, source=source, wording=wording, ip=ip, user_agent=user_agent)
    return result


def marketing_resubscribe(*, contact, source: str = PREFERENCE_CENTRE, ip: str | None = None,
                          user_agent: str = "") -> ConsentRecord | None:
    """Grant all marketing again (the preference centre's "subscribe again")."""
    result = subscription_set(contact=contact, topic=ALL_MARKETING, granted=True, source=source,
                              wording="subscribe again to marketing email", ip=ip, user_agent=user_agent)
    return result.record


# --- suppressions ------------------------------------------------------------------------------------

def _address(email: object) -> str:
    if not isinstance(email, str):
        raise ServiceError("email must be text")
    address = email.strip().lower()
    if address.startswith("mailto:"):
        address = address[7:]
    if not address or len(address) > 320 or not EMAIL.match(address):
        raise ServiceError(f"{email!r} is not an email address")
    return address


def suppression_add(*, workspace_id: int, email: str, reason: str, detail: str = "", message_id: int | None = None,
                    actor: str = "") -> Suppression:
    """Stop mail to an address (idempotent: one active row per lower-cased address; a stronger
    reason, one that stops more kinds of mail, replaces a weaker one). `was_created` on the
    returned row says whether it is new."""
    address = _address(email)
    if reason not in SuppressionReason.values:
        raise ServiceError(f"reason must be one of {', '.join(SuppressionReason.values)}")
    detail = (detail or "")[:500]
    existing = selectors.suppression_active(workspace_id=workspace_id, email=address)
    if existing is None:
        try:
            with transaction.atomic():
                row = Suppression.objects.create(workspace_id=workspace_id, email=address, reason=reason, detail=detail,
                                                 message_id=message_id, created_by=(actor or "")[:200],
                                                 created_at=clock.now())
        except IntegrityError:
            existing = Suppression.objects.get(workspace_id=workspace_id, email=address, lifted_at__isnull=True)
        else:
            row.was_created = True
            if actor:
                _audit(workspace_id=workspace_id, actor=actor, action="suppression.add", target=address,
                       data={"reason": reason})
            return row
    if REASON_STRENGTH[SuppressionReason(reason)] > REASON_STRENGTH[SuppressionReason(existing.reason)]:
        existing.reason, existing.detail = reason, detail or existing.detail
        if message_id is not None:
            existing.message_id = message_id
        existing.save(update_fields=["reason", "detail", "message_id"])
    existing.was_created = False
    return existing


def suppression_lift(*, workspace_id: int, email: str, actor: str) -> Suppression:
    """Allow mail to an address again; the row stays, with who lifted it and when."""
    address = _address(email)
    row = selectors.suppression_active(workspace_id=workspace_id, email=address)
    if row is None:
        raise NotFound(f"{address} is not suppressed")
    row.lifted_at = clock.now()
    row.lifted_by = (actor or "")[:200]
    row.save(update_fields=["lifted_at", "lifted_by"])
    _audit(workspace_id=workspace_id, actor=actor, action="suppression.lift", target=address,
           data={"reason": row.reason})
    return row


@dataclass
class SuppressionImport:
    rows: int = 0
    added: int = 0
    already: int = 0
    invalid: list[dict] = field(default_factory=list)  # {"row": line, "reason": …}

    def as_dict(self) -> dict:
        return {"rows": self.rows, "added": self.added, "already": self.already, "invalid": self.invalid}


EMAIL_COLUMNS = ("email", "e_mail", "email_address", "e_mail_address", "address")
IMPORT_BATCH = 1000


def suppressions_import(*, workspace_id: int, file, actor: str, reason: str = SuppressionReason.MANUAL,
                        detail: str = "") -> SuppressionImport:
    """Suppress every address in a CSV file: an `email` column, or a file of bare addresses one
    per line. Bad rows are reported with their line number; the rest are added (addresses
    already suppressed are counted, not changed)."""
    from leadflow.contacts.imports import ImportFileError, _CsvRows, _Source, normalize_header

    if reason not in SuppressionReason.values:
        raise ServiceError(f"reason must be one of {', '.join(SuppressionReason.values)}")
    source = _Source(file)
    try:
        csv_rows = _CsvRows(source.text)
        header = csv_rows.header
        if not header:
            raise ImportFileError("the file is empty")
        names = [normalize_header(h) for h in header]
        headerless = not any(n in EMAIL_COLUMNS for n in names)
        if headerless and not (len(header) >= 1 and "@" in header[0]):
            raise ImportFileError("the file needs an email column (columns: "
                                  + ", ".join(h.strip() for h in header) + ")")
        targets = ["email" if (i == 0 if headerless else n in EMAIL_COLUMNS) else None for i, n in enumerate(names)]
        raw_rows = [(r.line, r.values.get("email"), r.error) for r in csv_rows.rows(targets)]
        if headerless:
            raw_rows.insert(0, (1, header[0].strip(), ""))
    finally:
        source.close()
    report = SuppressionImport(rows=len(raw_rows))
    if not raw_rows:
        raise ImportFileError("the file has no data rows")
    good: dict[str, int] = {}
    for line, value, error in raw_rows:
        if error:
            report.invalid.append({"row": line, "reason": error})
            continue
        try:
            address = _address(value or "")
        except ServiceError:
            report.invalid.append({"row": line, "reason": f"{value!r} is not an email address" if value
                                   else "no email address"})
            continue
        good.setdefault(address, line)
    now = clock.now()
    addresses = list(good)
    with transaction.atomic():
        for start in range(0, len(addresses), IMPORT_BATCH):
            chunk = addresses[start:start + IMPORT_BATCH]
            have = set(Suppression.objects.filter(workspace_id=workspace_id, email__in=chunk, lifted_at__isnull=True)
                       .values_list("email", flat=True))
            new = [Suppression(workspace_id=workspace_id, email=a, reason=reason, detail=(detail or "")[:500],
                               created_by=(actor or "")[:200], created_at=now) for a in chunk if a not in have]
            Suppression.objects.bulk_create(new, ignore_conflicts=True)
            report.already += len(have)
            report.added += len(new)
        report.already += len(raw_rows) - len(report.invalid) - len(addresses)  # repeated in the file
        _audit(workspace_id=workspace_id, actor=actor, action="suppression.import",
               data={"added": report.added, "already": report.already, "invalid": len(report.invalid),
                     "reason": reason})
    return report
