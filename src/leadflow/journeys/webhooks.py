"""Outgoing webhooks: endpoints, the outbox of deliveries, and the dispatcher that sends them.

A journey's `webhook` step writes one `WebhookDelivery` per person in the pass's own transaction
(`deliveries_queue`), keyed like every other effect of a step, so a redone pass finds its
deliveries already there. `webhooks_dispatch`, called by the worker loop outside any transaction,
then does, by the injected clock:

1. **Recover.** A delivery left in `sending` past its lease (the process that claimed it died,
   maybe after the receiver got it) goes back to `pending` and is sent again with the same
   `webhook-id`: webhooks are delivered at least once and receivers deduplicate on that id
   (docs/decisions.md, "Webhooks: at least once, deduplicated by webhook-id").
2. **Claim.** Due `pending` rows are locked (`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL;
   SQLite runs one writer) and moved to `sending` in a committed transaction before any HTTP.
3. **Send.** A POST of the JSON payload, signed with Standard Webhooks (`webhook-id`,
   `webhook-timestamp`, `webhook-signature`); redirects are never followed. 2xx → `delivered`;
   410 Gone → the endpoint is disabled and its pending deliveries fail; 408, 429, 5xx, refused
   connections and timeouts → tried again with exponential backoff, or when `Retry-After` says,
   and `failed` after the last attempt; any other answer (3xx, 4xx) → `failed`.

A finished delivery's `next_attempt_at` is the time of its last attempt, so "what finished in the
last minutes" is a range on the `(status, next_attempt_at)` index (`journeys.health` reads it).

A webhook step with a `topic` reaches a person (SMS, ads audiences, direct mail): people the
consent gate would not let a marketing message on that topic reach get no delivery and move on,
skipped with the reason (`deliveries_queue`). A step without one (CRM sync, internal tools) is
not filtered.

The services below write endpoints (create, update, rotate the secret, disable, enable) and send a
failed delivery again (`webhook_delivery_retry`), with an audit entry each; the selectors list
endpoints and deliveries.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import logging
import math
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, QuerySet
from django.utils.text import slugify

from leadflow.config import env_int
from leadflow.contacts.models import Company, Contact
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError, audit_record, name_clean, slug_unique
from leadflow.journeys.models import (DeliveryStatus, Enrollment, Journey, StepKind, WebhookDelivery,
                                      WebhookEndpoint)

log = logging.getLogger(__name__)
# httpx logs every request at INFO with its full URL, which may carry a receiver's token.
logging.getLogger("httpx").setLevel(logging.WARNING)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # generated secrets; Standard Webhooks asks for 24 to 64
CLAIM_CHUNK = 20  # deliveries claimed per transaction (a dead process leaves at most these)
RETRY_AFTER_MAX = dt.timedelta(hours=24)  # a longer Retry-After is taken as this
PROBE_EVENT = "leadflow.ping"
PROBE_KEY = "probe:"
DISABLED_BY_HAND = "disabled by hand"  # the reason of a disable that gives none
USER_AGENT = "LeadFlow-Webhooks/1"


def _setting(name: str, default: int) -> int:
    value = getattr(settings, name, None)
    return int(value) if value is not None else env_int(name, default)


def max_attempts() -> int:
    """Attempts before a delivery fails for good (default 8: about 12 hours of retrying)."""
    return max(1, _setting("LEADFLOW_WEBHOOK_MAX_ATTEMPTS", 8))


def timeout_seconds() -> int:
    return max(1, _setting("LEADFLOW_WEBHOOK_TIMEOUT_SECONDS", 10))


def lease_seconds() -> int:
    """How long a delivery may stay in `sending` before it is taken for interrupted (default
    600 s; must exceed a chunk's worst case, CLAIM_CHUNK requests against a slow receiver)."""
    return _setting("LEADFLOW_WEBHOOK_LEASE_SECONDS", 600)


def retry_delay(attempts: int) -> dt.timedelta:
    """Backoff after the `attempts`-th failed try: 1, 3, 9, 27, 81, 243 minutes, then 6 hours."""
    base = _setting("LEADFLOW_WEBHOOK_RETRY_BASE_SECONDS", 60)
    return dt.timedelta(seconds=min(6 * 3600, base * 3 ** max(0, attempts - 1)))


# --- endpoints ----------------------------------------------------------------------------------

def secret_generate() -> str:
    """A new Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _secret_clean(secret: object) -> str:
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ServiceError("secret: a Standard Webhooks secret is 'whsec_' followed by base64 "
                           "(leave it out to have one generated)")
    body = secret[len(SECRET_PREFIX):].strip()
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError("secret: what follows 'whsec_' is not base64") from None
    if not 24 <= len(raw) <= 64:
        raise ServiceError(f"secret: must hold 24 to 64 bytes (this one holds {len(raw)})")
    return SECRET_PREFIX + body


def _url_clean(url: object) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ServiceError("url: an http:// or https:// address is required")
    url = url.strip()
    if len(url) > 1000:
        raise ServiceError("url: at most 1000 characters")
    if any(ch.isspace() for ch in url):
        raise ServiceError("url: must not contain spaces")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ServiceError(f"url: must start with http:// or https://, not {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ServiceError(f"url: the port in {url!r} is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ServiceError(f"url: {url!r} names no host")
    return url


def url_shown(url: str) -> str:
    """The URL without credentials or query (which may carry tokens), for audit entries."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _slug_clean(workspace: Workspace, slug: str | None, name: str, exclude: int | None = None) -> str:
    if slug is None:
        return slug_unique(model=WebhookEndpoint, workspace_id=workspace.pk, name=name, fallback="endpoint")
    if not isinstance(slug, str) or slugify(slug) != slug or not slug or len(slug) > 100:
        raise ServiceError(f"slug: lower-case letters, digits and hyphens, not {slug!r}")
    taken = WebhookEndpoint.objects.filter(workspace=workspace, slug=slug)
    if exclude is not None:
        taken = taken.exclude(pk=exclude)
    if taken.exists():
        raise ServiceError(f"slug: a webhook endpoint {slug!r} already exists")
    return slug


def _target(endpoint: WebhookEndpoint) -> str:
    return f"webhook_endpoint:{endpoint.pk}"


def webhook_endpoint_create(*, workspace: Workspace, name: str, url: str, actor: str, secret: str | None = None,
                            slug: str | None = None) -> WebhookEndpoint:
    """A new endpoint; its secret is generated unless one is given (to match a receiver's)."""
    name = name_clean(name, what="webhook endpoint")
    url = _url_clean(url)
    secret = _secret_clean(secret) if secret is not None else secret_generate()
    try:
        with transaction.atomic():
            endpoint = WebhookEndpoint.objects.create(workspace=workspace, slug=_slug_clean(workspace, slug, name),
                                                      name=name, url=url, secret=secret, created_at=clock.now())
            audit_record(workspace=workspace, actor=actor, action="webhook_endpoint.create", target=_target(endpoint),
                         data={"slug": endpoint.slug, "name": name, "url": url_shown(url)})
    except IntegrityError:  # the same slug made at the same moment
        raise ServiceError(f"slug: a webhook endpoint {slug or name!r} already exists") from None
    return endpoint


def webhook_endpoint_update(*, endpoint: WebhookEndpoint, actor: str, name: str | None = None,
                            url: str | None = None, slug: str | None = None) -> WebhookEndpoint:
    """Rename, move or re-slug an endpoint. Pending deliveries go to the new URL."""
    changed: dict = {}
    if name is not None:
        name = name_clean(name, what="webhook endpoint")
        if name != endpoint.name:
            endpoint.name = changed["name"] = name
    if url is not None:
        url = _url_clean(url)
        if url != endpoint.url:
            endpoint.url = url
            changed["url"] = url_shown(url)
    if slug is not None and slug != endpoint.slug:
        endpoint.slug = changed["slug"] = _slug_clean(endpoint.workspace, slug, endpoint.name, exclude=endpoint.pk)
    if changed:
        with transaction.atomic():
            endpoint.save(update_fields=["name", "url", "slug"])
            audit_record(workspace=endpoint.workspace, actor=actor, action="webhook_endpoint.update",
                         target=_target(endpoint), data=changed)
    return endpoint


def webhook_endpoint_rotate_secret(*, endpoint: WebhookEndpoint, actor: str,
                                   secret: str | None = None) -> WebhookEndpoint:
    """A new signing secret (generated unless given). Everything sent from now on, retries of
    older deliveries included, is signed with it: give the receiver the new secret first."""
    endpoint.secret = _secret_clean(secret) if secret is not None else secret_generate()
    with transaction.atomic():
        endpoint.save(update_fields=["secret"])
        audit_record(workspace=endpoint.workspace, actor=actor, action="webhook_endpoint.rotate_secret",
                     target=_target(endpoint), data={"slug": endpoint.slug})
    return endpoint


def webhook_endpoint_disable(*, endpoint: WebhookEndpoint, actor: str, reason: str) -> WebhookEndpoint:
    """Stop delivering to an endpoint: its pending deliveries fail, and journey steps that call
    it fail (with the reason) until it is enabled again."""
    now = clock.now()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        if endpoint.disabled_at is not None:
            return endpoint
        endpoint.disabled_at, endpoint.disabled_reason = now, reason[:300]
        endpoint.save(update_fields=["disabled_at", "disabled_reason"])
        failed = (WebhookDelivery.objects.filter(endpoint=endpoint, status=DeliveryStatus.PENDING)
                  .update(status=DeliveryStatus.FAILED, error=f"not sent: the endpoint was disabled: {reason}"[:500],
                          next_attempt_at=now))
        audit_record(workspace=endpoint.workspace, actor=actor, action="webhook_endpoint.disable",
                     target=_target(endpoint), data={"slug": endpoint.slug, "reason": reason, "failed": failed})
    return endpoint


def webhook_endpoint_enable(*, endpoint: WebhookEndpoint, actor: str) -> WebhookEndpoint:
    """Deliver to an endpoint again (after a 410 Gone or a disable by hand). Deliveries that
    failed while it was disabled stay failed."""
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        if endpoint.disabled_at is None:
            return endpoint
        previous = endpoint.disabled_reason
        endpoint.disabled_at, endpoint.disabled_reason = None, ""
        endpoint.save(update_fields=["disabled_at", "disabled_reason"])
        audit_record(workspace=endpoint.workspace, actor=actor, action="webhook_endpoint.enable",
                     target=_target(endpoint), data={"slug": endpoint.slug, "was": previous})
    return endpoint


RETRYABLE = (DeliveryStatus.FAILED, DeliveryStatus.REVIEW)


def webhook_delivery_retry(*, delivery: WebhookDelivery, actor: str) -> WebhookDelivery:
    """Send a failed (or held for review) delivery again, now, with the usual retries. It keeps its
    `webhook-id` and payload, so a receiver that did get it after all deduplicates it. Refused
    while its endpoint is disabled (enable it first) and for a delivery that is not failed."""
    now = clock.now()
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().select_related("endpoint").get(pk=delivery.pk)
        if delivery.status not in RETRYABLE:
            raise ServiceError(f"delivery {delivery.pk} is {delivery.status}: only a failed delivery (or one held "
                               "for review) can be sent again")
        endpoint = delivery.endpoint
        if endpoint.disabled_at is not None:
            raise ServiceError(f"webhook endpoint {endpoint.slug!r} is disabled"
                               + (f" ({endpoint.disabled_reason})" if endpoint.disabled_reason else "")
                               + ": enable it before sending its deliveries again")
        previous = {"was": delivery.status, "attempts": delivery.attempts, "error": delivery.error}
        delivery.status, delivery.attempts, delivery.next_attempt_at = DeliveryStatus.PENDING, 0, now
        delivery.sending_at, delivery.error = None, ""
        delivery.save(update_fields=["status", "attempts", "next_attempt_at", "sending_at", "error"])
        audit_record(workspace=endpoint.workspace, actor=actor, action="webhook_delivery.retry",
                     target=f"webhook_delivery:{delivery.pk}",
                     data={"endpoint": endpoint.slug, "msg_id": delivery.msg_id, **previous})
    return delivery


# --- selectors ----------------------------------------------------------------------------------

def webhook_endpoint_get_by_slug(*, workspace: Workspace, slug: str) -> WebhookEndpoint | None:
    return WebhookEndpoint.objects.filter(workspace=workspace, slug=slug).first()


def webhook_endpoints_list(*, workspace: Workspace) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(workspace=workspace).order_by("name", "pk")


def webhook_deliveries_query(*, workspace: Workspace, endpoint: WebhookEndpoint | None = None,
                             journey: Journey | None = None, contact: Contact | None = None,
                             status: str | None = None) -> QuerySet[WebhookDelivery]:
    """Deliveries narrowed to an endpoint, journey, person or status (unordered: pages order
    them, newest first)."""
    if status is not None and status not in DeliveryStatus.values:
        raise ServiceError(f"status: one of {', '.join(DeliveryStatus.values)}, not {status!r}")
    query = WebhookDelivery.objects.filter(workspace=workspace).select_related("endpoint")
    if endpoint is not None:
        query = query.filter(endpoint=endpoint)
    if journey is not None:
        query = query.filter(journey=journey)
    if contact is not None:
        query = query.filter(contact=contact)
    if status is not None:
        query = query.filter(status=status)
    return query


def webhook_deliveries_list(*, workspace: Workspace, endpoint: WebhookEndpoint | None = None,
                            journey: Journey | None = None, contact: Contact | None = None,
                            status: str | None = None, limit: int = 100) -> list[WebhookDelivery]:
    """The newest deliveries first, narrowed to an endpoint, journey, person or status."""
    query = webhook_deliveries_query(workspace=workspace, endpoint=endpoint, journey=journey, contact=contact,
                                     status=status)
    return list(query.order_by("-pk")[:max(1, min(limit, 1000))])


def webhook_delivery_get(*, workspace: Workspace, delivery_id: int) -> WebhookDelivery | None:
    return WebhookDelivery.objects.filter(workspace=workspace, pk=delivery_id).select_related("endpoint").first()


def webhook_endpoints_waiting(*, endpoints: list[WebhookEndpoint]) -> dict[int, int]:
    """Endpoint id → its deliveries waiting to go out (pending), in one query."""
    return dict(WebhookDelivery.objects.filter(endpoint__in=endpoints, status=DeliveryStatus.PENDING).order_by()
                .values("endpoint_id").annotate(n=Count("pk")).values_list("endpoint_id", "n"))


def webhook_endpoint_health(*, endpoint: WebhookEndpoint, now: dt.datetime | None = None) -> str:
    """`disabled`, `failing` (its last attempt failed), `ok` (its last attempt succeeded) or
    `unknown` (not tried for a day). Reads the index ranges the dispatcher keeps small: rows
    waiting for a retry, and rows finished in the last day."""
    if endpoint.disabled_at is not None:
        return "disabled"
    now = now or clock.now()
    finished = (WebhookDelivery.objects.filter(endpoint=endpoint, attempts__gt=0,
                                               status__in=[DeliveryStatus.DELIVERED, DeliveryStatus.FAILED],
                                               next_attempt_at__gte=now - dt.timedelta(days=1))
                .order_by("-next_attempt_at", "-pk").values_list("status", "next_attempt_at").first())
    retrying = (WebhookDelivery.objects.filter(endpoint=endpoint, status=DeliveryStatus.PENDING, attempts__gt=0,
                                               sending_at__isnull=False)
                .order_by("-sending_at", "-pk").values_list("sending_at", flat=True).first())
    if retrying is not None and (finished is None or retrying >= finished[1]):
        return "failing"
    if finished is None:
        return "unknown"
    return "ok" if finished[0] == DeliveryStatus.DELIVERED else "failing"


# --- queueing (inside a journey pass) -----------------------------------------------------------

def msg_id_for(workspace_id: int, dedupe_key: str) -> str:
    """The `webhook-id` of a delivery: fixed by its dedupe key (so a redone step keeps it), keyed
    with the installation's secret so two installations never share ids at one receiver."""
    digest = hashlib.blake2b(f"{workspace_id}:{dedupe_key}".encode(), digest_size=16,
                             key=settings.SECRET_KEY.encode()[:64]).hexdigest()
    return f"msg_{digest}"


def contact_payload(contact: Contact, company: Company | None) -> dict:
    """The profile a webhook carries about its person."""
    return {"id": contact.pk, "email": contact.email, "user_id": contact.user_id, "first_name": contact.first_name,
            "last_name": contact.last_name, "phone": contact.phone, "title": contact.title,
            "country": contact.country, "timezone": contact.timezone, "traits": contact.traits or {},
            "lifecycle_stage": contact.lifecycle_stage, "fit_score": contact.fit_score,
            "fit_grade": contact.fit_grade, "engagement_score": contact.engagement_score,
            "conversion_probability": contact.conversion_probability, "owner_id": contact.owner_id,
            "company": ({"id": company.pk, "name": company.name, "domain": company.domain,
                         "traits": company.traits or {}} if company is not None else None)}


def _companies(contacts: list[Contact]) -> dict[int, Company]:
    """The companies of `contacts` (already loaded by the pass; the rest in one query)."""
    found, missing = {}, set()
    for c in contacts:
        if c.company_id is None:
            continue
        if "company" in c._state.fields_cache:
            found[c.company_id] = c.company
        else:
            missing.add(c.company_id)
    if missing:
        found.update(Company.objects.in_bulk(missing))
    return found


def _endpoint_for(workspace_id: int, slug: str) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(workspace_id=workspace_id, slug=slug).first()
    if endpoint is None:
        raise ServiceError(f"there is no webhook endpoint {slug!r}")
    if endpoint.disabled_at is not None:
        raise ServiceError(f"webhook endpoint {slug!r} is disabled"
                           + (f" ({endpoint.disabled_reason})" if endpoint.disabled_reason else "")
                           + "; enable it to deliver again")
    return endpoint


@dataclass(frozen=True)
class _Asked:
    """What the consent gate reads of a message: a marketing message on a topic to a person."""

    workspace_id: int
    contact_id: int
    to_email: str
    topic: str
    kind: str = "marketing"


def consent_blocked(*, workspace_id: int, topic: str, contacts: list[Contact], now: dt.datetime) -> dict[int, str]:
    """Which of `contacts` the consent gate would not let a marketing message on `topic` reach
    now (contact id → why): unsubscribed from the topic or from all marketing, without a required
    opt-in, paused, suppressed or erased; an unknown or archived topic reaches nobody. The
    decision is the gate's set-based form (`sendable_contacts`, one query for the group) without
    the need for an email address; the reasons are the gate's own words, asked only about the
    people it stops. Caps and quiet hours count emails and are left out."""
    from leadflow.consent.gate import SEND, gate_check_many, sendable_contacts

    ids = {c.pk for c in contacts}
    if not ids:
        return {}
    allowed = set(sendable_contacts(workspace_id=workspace_id, topic=topic, now=now, require_email=False)
                  .filter(pk__in=ids).values_list("pk", flat=True))
    stopped = [c for c in contacts if c.pk not in allowed]
    if not stopped:
        return {}
    asked = [_Asked(workspace_id, c.pk, c.email or "", topic) for c in stopped]
    decisions = gate_check_many(messages=asked, now=now)
    return {c.pk: (d.reason if d.action != SEND and d.reason else f"no consent to be reached on topic {topic!r}")
            for c, d in zip(stopped, decisions)}


def deliveries_queue(p, node, enrollments: list[Enrollment]) -> list[int | None]:
    """One delivery per enrollment for a journey's `webhook` node (inside the pass's
    transaction), in one insert; returns their ids in the order of `enrollments`. A step redone
    after a crash finds its deliveries by their dedupe key and returns those.

    With a `topic` on the node, the people the consent gate stops (`consent_blocked`) get no
    delivery: they move on here, as skipped with the reason, and their place in the result is
    None."""
    from leadflow.journeys.engine import dedupe_key

    if not enrollments:
        return []
    workspace_id = p.journey.workspace_id
    endpoint = _endpoint_for(workspace_id, node.endpoint)
    blocked: dict[int, str] = {}
    if node.topic is not None:
        people = {e.contact_id: p.contacts[e.contact_id] for e in enrollments}
        blocked = consent_blocked(workspace_id=workspace_id, topic=node.topic, contacts=list(people.values()),
                                  now=p.now)
    for e in enrollments:
        if e.contact_id in blocked:
            p.go(e, node.next, kind=StepKind.SKIPPED, reason=blocked[e.contact_id], topic=node.topic)
    sending = [e for e in enrollments if e.contact_id not in blocked]
    contacts = [p.contacts[e.contact_id] for e in sending]
    companies = _companies(contacts)
    stamp = p.now.isoformat().replace("+00:00", "Z")
    keys, rows = [], []
    for e, contact in zip(sending, contacts):
        key = dedupe_key(e, node.id)
        keys.append(key)
        data = {**node.data, "journey": p.journey.slug, "node": node.id, "enrollment": e.pk,
                "contact": contact_payload(contact, companies.get(contact.company_id))}
        rows.append(WebhookDelivery(workspace_id=workspace_id, endpoint=endpoint, journey_id=p.journey.pk,
                                    enrollment_id=e.pk, contact_id=contact.pk, node=node.id,
                                    event_type=node.event_type, msg_id=msg_id_for(workspace_id, key),
                                    payload={"type": node.event_type, "timestamp": stamp, "data": data},
                                    dedupe_key=key, next_attempt_at=p.now, created_at=p.now))
    if rows:
        WebhookDelivery.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    ids = dict(WebhookDelivery.objects.filter(workspace_id=workspace_id, dedupe_key__in=keys)
               .values_list("dedupe_key", "pk")) if keys else {}
    made = iter(ids[key] for key in keys)
    return [None if e.contact_id in blocked else next(made) for e in enrollments]


def webhook_probe_queue(*, endpoint: WebhookEndpoint, now: dt.datetime | None = None) -> WebhookDelivery | None:
    """A `leadflow.ping` delivery to find out whether a failing endpoint is back (the journey
    circuit breaker asks for one before it resumes a journey). None when a probe to the
    endpoint is already waiting to go out."""
    now = now or clock.now()
    waiting = WebhookDelivery.objects.filter(endpoint=endpoint, dedupe_key__startswith=PROBE_KEY,
                                             status__in=[DeliveryStatus.PENDING, DeliveryStatus.SENDING])
    if waiting.exists():
        return None
    key = f"{PROBE_KEY}{endpoint.pk}:{now.strftime('%Y%m%dT%H%M%S%f')}"
    stamp = now.isoformat().replace("+00:00", "Z")
    return WebhookDelivery.objects.create(
        workspace_id=endpoint.workspace_id, endpoint=endpoint, event_type=PROBE_EVENT,
        payload={"type": PROBE_EVENT, "timestamp": stamp,
                 "data": {"endpoint": endpoint.slug, "reason": "LeadFlow checks that the endpoint answers again "
                                                               "before it resumes the journeys that call it"}},
        msg_id=msg_id_for(endpoint.workspace_id, key), dedupe_key=key, next_attempt_at=now, created_at=now)


# --- dispatch -----------------------------------------------------------------------------------

@dataclass
class Result:
    """What became of one claimed delivery."""

    status: str  # delivered | pending (retry) | failed
    attempted: bool = True
    code: int | None = None
    error: str = ""
    retry_at: dt.datetime | None = None
    gone: bool = False  # 410: disable the endpoint
    unreachable: bool = False  # no answer at all: skip the endpoint's other rows this run


def retry_after(value: str | None, now: dt.datetime) -> dt.timedelta | None:
    """A `Retry-After` header (seconds or an HTTP date) as a delay from `now`; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return dt.timedelta(seconds=min(int(value), 10 ** 8))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(dt.timedelta(0), when - now)


def _retry(delivery: WebhookDelivery, now: dt.datetime, error: str, *, code: int | None = None,
           after: dt.timedelta | None = None, unreachable: bool = False) -> Result:
    attempts = delivery.attempts + 1
    if attempts >= max_attempts():
        return Result(DeliveryStatus.FAILED, code=code, error=f"gave up after {attempts} attempts: {error}",
                      unreachable=unreachable)
    delay = retry_delay(attempts) if after is None else min(max(after, dt.timedelta(seconds=1)), RETRY_AFTER_MAX)
    return Result(DeliveryStatus.PENDING, code=code, error=error, retry_at=now + delay, unreachable=unreachable)


def _headers(delivery: WebhookDelivery, body: str, now: dt.datetime) -> dict[str, str]:
    from standardwebhooks import Webhook

    return {"webhook-id": delivery.msg_id, "webhook-timestamp": str(math.floor(now.timestamp())),
            "webhook-signature": Webhook(delivery.endpoint.secret).sign(delivery.msg_id, now, body),
            "content-type": "application/json", "user-agent": USER_AGENT}


def _post(client, delivery: WebhookDelivery, now: dt.datetime) -> Result:
    import httpx

    body = orjson.dumps(delivery.payload).decode()
    try:
        headers = _headers(delivery, body, now)
    except Exception as exc:  # a secret the library refuses
        return Result(DeliveryStatus.FAILED, attempted=False, error=f"cannot sign with the endpoint's secret: {exc}")
    try:
        with client.stream("POST", delivery.endpoint.url, content=body.encode(), headers=headers) as response:
            code = response.status_code
            snippet = b""
            try:
                for chunk in response.iter_bytes():
                    snippet += chunk
                    if len(snippet) >= 300:
                        break
            except httpx.HTTPError:
                pass  # the status is what counts
            location = response.headers.get("location", "")
            wait = retry_after(response.headers.get("retry-after"), now)
    except httpx.TimeoutException:
        return _retry(delivery, now, f"no answer within {timeout_seconds()} s", unreachable=True)
    except httpx.TransportError as exc:
        return _retry(delivery, now, f"could not reach the endpoint: {type(exc).__name__}: {exc}"[:400],
                      unreachable=True)
    except Exception as exc:  # a URL httpx will not send to, and the like: trying again will not help
        log.exception("webhook %s: could not be sent", delivery.msg_id)
        return Result(DeliveryStatus.FAILED, error=f"could not send: {type(exc).__name__}: {exc}"[:400])
    text = snippet[:300].decode("utf-8", "replace").strip()
    said = f"HTTP {code}" + (f": {text}" if text else "")
    if 200 <= code < 300:
        return Result(DeliveryStatus.DELIVERED, code=code)
    if code == 410:
        return Result(DeliveryStatus.FAILED, code=code, error="HTTP 410 Gone: the receiver asked to stop; "
                                                              "the endpoint is disabled", gone=True)
    if 300 <= code < 400:
        return Result(DeliveryStatus.FAILED, code=code,
                      error=f"HTTP {code}: redirects are not followed; set the endpoint's URL to the address "
                            f"it redirects to" + (f" ({location[:200]})" if location else ""))
    if code in (408, 429) or code >= 500:
        return _retry(delivery, now, said, code=code, after=wait)
    return Result(DeliveryStatus.FAILED, code=code, error=said)


def _record(delivery: WebhookDelivery, result: Result, now: dt.datetime) -> None:
    """Store one result (only if the row is still the one this run claimed)."""
    fields = {"status": result.status, "error": result.error[:500], "last_status": result.code,
              "next_attempt_at": result.retry_at if result.status == DeliveryStatus.PENDING else now}
    if result.attempted:
        fields["attempts"] = F("attempts") + 1
    if result.status == DeliveryStatus.DELIVERED:
        fields["delivered_at"] = now
    WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING,
                                   sending_at=delivery.sending_at).update(**fields)


def _recover(now: dt.datetime) -> int:
    """Deliveries left in `sending` past the lease go back to `pending` (or fail, if that was
    their last attempt): the request may have reached the receiver, which deduplicates on the
    unchanged `webhook-id`."""
    cutoff = now - dt.timedelta(seconds=lease_seconds())
    stale = WebhookDelivery.objects.filter(status=DeliveryStatus.SENDING, sending_at__lt=cutoff)
    if not stale.exists():  # the usual case: a read, so an idle worker takes no write lock
        return 0
    reason = "interrupted while sending (the sending process stopped)"
    with transaction.atomic():
        failed = stale.filter(attempts__gte=max_attempts() - 1).update(
            status=DeliveryStatus.FAILED, attempts=F("attempts") + 1, next_attempt_at=now,
            error=f"gave up: {reason} on the last attempt")
        again = stale.update(status=DeliveryStatus.PENDING, attempts=F("attempts") + 1, next_attempt_at=now,
                             error=f"{reason}; sent again with the same webhook-id")
    if failed or again:
        log.warning("%d webhook delivery(ies) were left in sending past the lease: %d sent again, %d failed",
                    failed + again, again, failed)
    return failed + again


def _claim(*, due_by: dt.datetime, now: dt.datetime, limit: int) -> list[WebhookDelivery]:
    query = (WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=due_by)
             .order_by("next_attempt_at", "pk"))
    if connection.vendor == "postgresql":
        query = query.select_for_update(skip_locked=True)
    with transaction.atomic():
        ids = list(query.values_list("pk", flat=True)[:limit])
        if not ids:
            return []
        WebhookDelivery.objects.filter(pk__in=ids).update(status=DeliveryStatus.SENDING, sending_at=now)
    return list(WebhookDelivery.objects.filter(pk__in=ids, status=DeliveryStatus.SENDING, sending_at=now)
                .select_related("endpoint").order_by("next_attempt_at", "pk"))


def _client():
    import httpx

    return httpx.Client(timeout=timeout_seconds(), follow_redirects=False)


def webhooks_dispatch(*, limit: int = 100, now: dt.datetime | None = None) -> int:
    """Send the deliveries due (see the module docstring), up to `limit`, claimed CLAIM_CHUNK at
    a time; returns how many were dealt with (delivered, rescheduled, failed or recovered)."""
    due_by = now or clock.now()  # rows rescheduled during this run are not taken again by it
    done = _recover(due_by)
    remaining, client = limit, None
    try:
        while remaining > 0:
            batch = _claim(due_by=due_by, now=now or clock.now(), limit=min(CLAIM_CHUNK, remaining))
            if not batch:
                break
            remaining -= len(batch)
            client = client or _client()
            done += _send_batch(client, batch, now)
    finally:
        if client is not None:
            client.close()
    return done


def _send_batch(client, batch: list[WebhookDelivery], fixed_now: dt.datetime | None) -> int:
    unreachable: dict[int, Result] = {}
    gone: set[int] = set()
    for done, delivery in enumerate(batch):
        try:
            now = fixed_now or clock.now()
            result = _outcome(client, delivery, now, unreachable, gone)
        except BaseException:
            # Stopped mid-batch (an error, SIGTERM…): what never went out goes back as it was; the
            # one in flight stays `sending` and goes out again after the lease.
            WebhookDelivery.objects.filter(pk__in=[d.pk for d in batch[done + 1:]], status=DeliveryStatus.SENDING) \
                .update(status=DeliveryStatus.PENDING)
            raise
        _record(delivery, result, now)
        if result.gone:
            gone.add(delivery.endpoint_id)
            webhook_endpoint_disable(endpoint=delivery.endpoint, actor="webhooks",
                                     reason=f"the receiver answered 410 Gone on {now:%Y-%m-%d %H:%M} UTC")
        if result.status == DeliveryStatus.FAILED and result.attempted:
            log.warning("webhook %s to %s failed: %s", delivery.msg_id, delivery.endpoint.slug, result.error)
    return len(batch)


def _outcome(client, delivery: WebhookDelivery, now: dt.datetime, unreachable: dict[int, Result],
             gone: set[int]) -> Result:
    endpoint = delivery.endpoint
    if endpoint.pk in gone or endpoint.disabled_at is not None:
        return Result(DeliveryStatus.FAILED, attempted=False,
                      error="not sent: the endpoint is disabled"
                            + (f" ({endpoint.disabled_reason})" if endpoint.disabled_reason else ""))
    if endpoint.pk in unreachable:
        # It did not answer a moment ago: do not spend another timeout on it in this run.
        retry_at = unreachable[endpoint.pk].retry_at or now + retry_delay(delivery.attempts + 1)
        return Result(DeliveryStatus.PENDING, attempted=False, retry_at=retry_at,
                      error="not tried yet: the endpoint did not answer another delivery just before")
    result = _post(client, delivery, now)
    if result.unreachable:
        unreachable[endpoint.pk] = result
    return result
