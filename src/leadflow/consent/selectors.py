"""Reads on consent: topics, a person's subscriptions as the preference centre shows them, and the
suppression list. Every read is scoped to a workspace."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from leadflow.consent.models import (ALL_MARKETING, ConsentRecord, ConsentStatus, MarketingPause, OptInRequest,
                                     Suppression, Topic, TopicMode)
from leadflow.core import clock

OPTIN_RESEND_AFTER = dt.timedelta(hours=24)
OPTIN_VALID_FOR = dt.timedelta(days=30)


def topic_list(*, workspace_id: int, archived: bool | None = False) -> QuerySet:
    """The workspace's topics in their display order; `archived=None` lists all."""
    qs = Topic.objects.filter(workspace_id=workspace_id)
    if archived is not None:
        qs = qs.filter(archived_at__isnull=not archived)
    return qs.order_by("position", "pk")


def topic_get(*, workspace_id: int, topic_id: int) -> Topic | None:
    return Topic.objects.filter(workspace_id=workspace_id, pk=topic_id).first()


def topic_get_by_slug(*, workspace_id: int, slug: str) -> Topic | None:
    return Topic.objects.filter(workspace_id=workspace_id, slug=slug).first()


def topic_needs_double_opt_in(*, topic: Topic, country: str) -> bool:
    """Whether a grant on `topic` must be confirmed by email for a person in `country`."""
    if topic.double_opt_in:
        return True
    countries = {str(c).upper() for c in (topic.double_opt_in_countries or [])}
    return bool(country) and country.upper() in countries


def consent_latest(*, contact, topics: list[str] | set[str]) -> dict[str, ConsentRecord]:
    """The latest ConsentRecord per topic slug (one query)."""
    latest: dict[str, ConsentRecord] = {}
    for record in ConsentRecord.objects.filter(workspace_id=contact.workspace_id, contact_id=contact.pk,
                                               topic__in=list(topics)).order_by("at", "pk"):
        latest[record.topic] = record
    return latest


@dataclass
class TopicState:
    """A topic as one person sees it: `subscribed` is the topic's own state (its latest record,
    else its mode and double opt-in rules); `receiving` also needs all marketing not withdrawn."""

    slug: str
    name: str
    description: str
    mode: str
    double_opt_in: bool
    subscribed: bool
    status: str  # "granted", "withdrawn" or "none"
    at: dt.datetime | None
    pending_optin: bool
    receiving: bool
    topic: Topic | None = None


@dataclass
class Subscriptions:
    marketing: bool  # all marketing not withdrawn
    marketing_at: dt.datetime | None
    paused_until: dt.datetime | None
    topics: list[TopicState]

    def topic(self, slug: str) -> TopicState | None:
        return next((t for t in self.topics if t.slug == slug), None)


def _topic_subscribed(topic: Topic, record: ConsentRecord | None, country: str) -> bool:
    if record is not None:
        return record.status == ConsentStatus.GRANTED
    if topic.mode == TopicMode.OPT_IN or topic_needs_double_opt_in(topic=topic, country=country):
        return False
    return True


def subscriptions_get(*, contact, now: dt.datetime | None = None) -> Subscriptions:
    """Everything the preference centre shows for a person, in four queries."""
    now = now or clock.now()
    topics = list(topic_list(workspace_id=contact.workspace_id))
    latest = consent_latest(contact=contact, topics={t.slug for t in topics} | {ALL_MARKETING})
    pending = set(OptInRequest.objects.filter(
        workspace_id=contact.workspace_id, contact_id=contact.pk, confirmed_at__isnull=True,
        requested_at__gt=now - OPTIN_VALID_FOR).values_list("topic", flat=True))
    paused = (MarketingPause.objects.filter(workspace_id=contact.workspace_id, contact_id=contact.pk,
                                            until__gt=now).order_by("-until").values_list("until", flat=True).first())
    marketing_record = latest.get(ALL_MARKETING)
    marketing = marketing_record is None or marketing_record.status == ConsentStatus.GRANTED
    states = []
    for topic in topics:
        record = latest.get(topic.slug)
        subscribed = _topic_subscribed(topic, record, contact.country)
        states.append(TopicState(
            slug=topic.slug, name=topic.name, description=topic.description, mode=topic.mode,
            double_opt_in=topic_needs_double_opt_in(topic=topic, country=contact.country), subscribed=subscribed,
            status=record.status if record else "none", at=record.at if record else None,
            pending_optin=topic.slug in pending and not subscribed, receiving=subscribed and marketing, topic=topic))
    return Subscriptions(marketing=marketing, marketing_at=marketing_record.at if marketing_record else None,
                         paused_until=paused, topics=states)


def optin_pending_recent(*, contact, topic: str, now: dt.datetime) -> OptInRequest | None:
    """An unconfirmed request for the same topic made in the last 24 hours (no second email)."""
    return (OptInRequest.objects.filter(workspace_id=contact.workspace_id, contact_id=contact.pk, topic=topic,
                                        confirmed_at__isnull=True, requested_at__gt=now - OPTIN_RESEND_AFTER)
            .order_by("-requested_at", "-pk").first())


def suppression_active(*, workspace_id: int, email: str) -> Suppression | None:
    return Suppression.objects.filter(workspace_id=workspace_id, email=email.strip().lower(),
                                      lifted_at__isnull=True).first()


def suppression_search(*, workspace_id: int, q: str = "", reason: str = "", lifted: bool = False) -> QuerySet:
    """Active suppressions (or, with `lifted`, the lifted ones) whose address contains `q`."""
    qs = Suppression.objects.filter(workspace_id=workspace_id, lifted_at__isnull=not lifted)
    if q.strip():
        qs = qs.filter(email__contains=q.strip().lower())
    if reason:
        qs = qs.filter(reason=reason)
    return qs


def suppression_counts(*, workspace_id: int) -> dict[str, int]:
    from django.db.models import Count

    rows = (Suppression.objects.filter(workspace_id=workspace_id, lifted_at__isnull=True)
            .values("reason").annotate(n=Count("pk")))
    return {r["reason"]: r["n"] for r in rows}


def messages_on_topic(*, workspace_id: int, slug: str) -> int:
    """Queued or deferred messages on a topic (archiving it blocks them at dispatch)."""
    from leadflow.messaging.models import Message

    return Message.objects.filter(workspace_id=workspace_id, topic=slug).filter(
        Q(status="queued") | Q(status="deferred")).count()
