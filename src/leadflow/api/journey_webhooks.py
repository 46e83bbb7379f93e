"""Journey webhook endpoints: list (with each one's health), create, get, update, rotate the
signing secret, disable and enable; an endpoint's deliveries (newest first, by status) and
sending a failed one again.

An endpoint's secret is in the answer only when it is made: on create and on rotate. Lists and
gets never show it. Bad input (a URL that is not http(s), a secret that is not `whsec_…`, a
delivery that is not failed) answers 400 with `detail`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ninja import Body, Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.journeys import webhooks as services
from leadflow.journeys.models import WebhookDelivery, WebhookEndpoint

router = Router(tags=["journey webhooks"])


# --- schemas ----------------------------------------------------------------------------------

class EndpointIn(Schema):
    name: str
    url: str = Field(description="http:// or https://; redirects are never followed")
    slug: str | None = Field(None, description="what journeys' webhook steps name; default: made from the name")
    secret: str | None = Field(None, description="whsec_ + base64 of 24 to 64 bytes, to match a receiver's; "
                                                 "default: a new one is generated")


class EndpointPatch(Schema):
    name: str | None = None
    url: str | None = Field(None, description="pending deliveries go to the new URL")
    slug: str | None = Field(None, description="journeys that name the old slug stop finding it")


class EndpointOut(Schema):
    id: int
    slug: str
    name: str
    url: str
    health: str = Field(description="ok (its last attempt succeeded), failing (its last attempt failed), "
                                    "unknown (not tried for a day) or disabled")
    waiting: int = Field(description="deliveries waiting to go out (pending)")
    disabled_at: dt.datetime | None
    disabled_reason: str
    created_at: dt.datetime


class EndpointSecretOut(EndpointOut):
    secret: str = Field(description="the signing secret: shown this once, keep it for the receiver")


class EndpointPage(Schema):
    items: list[EndpointOut]
    next: str | None


class SecretIn(Schema):
    secret: str | None = Field(None, description="the new secret; default: a new one is generated")


class DisableIn(Schema):
    reason: str = Field("", description="shown with the endpoint and on the steps that call it")


class DeliveryOut(Schema):
    id: int
    msg_id: str = Field(description="the webhook-id header: the same on every attempt")
    event_type: str
    status: str = Field(description="pending, sending, delivered, failed or review")
    attempts: int
    last_status: int | None = Field(description="the receiver's HTTP status at the last attempt")
    error: str = Field(description="why the last attempt failed (empty once delivered)")
    next_attempt_at: dt.datetime = Field(description="pending: when it is tried next; otherwise its last attempt")
    delivered_at: dt.datetime | None
    created_at: dt.datetime
    journey: str | None = Field(description="the slug of the journey whose step made it")
    node: str
    enrollment_id: int | None
    contact_id: int | None
    payload: dict[str, Any]


class DeliveryPage(Schema):
    items: list[DeliveryOut]
    next: str | None


# --- helpers ----------------------------------------------------------------------------------

def _get(request, endpoint_id: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(workspace=request.workspace, pk=endpoint_id).first()
    if endpoint is None:
        raise HttpError(404, f"no webhook endpoint {endpoint_id} in this workspace")
    return endpoint


def endpoints_out(endpoints: list[WebhookEndpoint]) -> list[dict]:
    waiting = services.webhook_endpoints_waiting(endpoints=endpoints)
    return [{"id": e.pk, "slug": e.slug, "name": e.name, "url": e.url,
             "health": services.webhook_endpoint_health(endpoint=e), "waiting": waiting.get(e.pk, 0),
             "disabled_at": e.disabled_at, "disabled_reason": e.disabled_reason, "created_at": e.created_at}
            for e in endpoints]


def _with_secret(endpoint: WebhookEndpoint) -> dict:
    return {**endpoints_out([endpoint])[0], "secret": endpoint.secret}


def delivery_out(d: WebhookDelivery) -> dict:
    return {"id": d.pk, "msg_id": d.msg_id, "event_type": d.event_type, "status": d.status, "attempts": d.attempts,
            "last_status": d.last_status, "error": d.error, "next_attempt_at": d.next_attempt_at,
            "delivered_at": d.delivered_at, "created_at": d.created_at,
            "journey": d.journey.slug if d.journey_id else None, "node": d.node, "enrollment_id": d.enrollment_id,
            "contact_id": d.contact_id, "payload": d.payload}


# --- routes -----------------------------------------------------------------------------------

@router.get("", response=EndpointPage, summary="List webhook endpoints (newest first) with their health")
def endpoints_list(request, limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                   next: str | None = Query(None, description="the `next` cursor of the previous page")):
    items, following = cursor.page(services.webhook_endpoints_list(workspace=request.workspace), cursor=next,
                                   limit=limit, order=("-pk",))
    return {"items": endpoints_out(items), "next": following}


@router.post("", response={201: EndpointSecretOut},
             summary="Register an endpoint; the answer holds its signing secret, shown this once")
def endpoints_create(request, payload: EndpointIn):
    endpoint = services.webhook_endpoint_create(workspace=request.workspace, name=payload.name, url=payload.url,
                                                slug=payload.slug, secret=payload.secret, actor=actor(request))
    return Status(201, _with_secret(endpoint))


@router.get("/{endpoint_id}", response=EndpointOut, summary="One endpoint with its health (never its secret)")
def endpoints_get(request, endpoint_id: int):
    return endpoints_out([_get(request, endpoint_id)])[0]


@router.patch("/{endpoint_id}", response=EndpointOut, summary="Rename, move (URL) or re-slug an endpoint")
def endpoints_update(request, endpoint_id: int, payload: EndpointPatch):
    endpoint = services.webhook_endpoint_update(endpoint=_get(request, endpoint_id), name=payload.name,
                                                url=payload.url, slug=payload.slug, actor=actor(request))
    return endpoints_out([endpoint])[0]


@router.post("/{endpoint_id}/rotate-secret", response=EndpointSecretOut,
             summary="A new signing secret, shown this once; everything sent from now on is signed with it")
def endpoints_rotate(request, endpoint_id: int, payload: SecretIn | None = Body(None)):
    endpoint = services.webhook_endpoint_rotate_secret(endpoint=_get(request, endpoint_id), actor=actor(request),
                                                       secret=payload.secret if payload else None)
    return _with_secret(endpoint)


@router.post("/{endpoint_id}/disable", response=EndpointOut,
             summary="Stop delivering: pending deliveries fail, journey steps that call it fail")
def endpoints_disable(request, endpoint_id: int, payload: DisableIn | None = Body(None)):
    reason = (payload.reason.strip() if payload else "") or services.DISABLED_BY_HAND
    endpoint = services.webhook_endpoint_disable(endpoint=_get(request, endpoint_id), reason=reason,
                                                 actor=actor(request))
    return endpoints_out([endpoint])[0]


@router.post("/{endpoint_id}/enable", response=EndpointOut,
             summary="Deliver again; what failed while it was disabled stays failed (retry it)")
def endpoints_enable(request, endpoint_id: int):
    endpoint = services.webhook_endpoint_enable(endpoint=_get(request, endpoint_id), actor=actor(request))
    return endpoints_out([endpoint])[0]


@router.get("/{endpoint_id}/deliveries", response=DeliveryPage,
            summary="An endpoint's deliveries, newest first, optionally of one status")
def endpoints_deliveries(request, endpoint_id: int,
                         status: str | None = Query(None, description="pending, sending, delivered, failed or "
                                                                     "review"),
                         limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                         next: str | None = Query(None, description="the `next` cursor of the previous page")):
    endpoint = _get(request, endpoint_id)
    qs = services.webhook_deliveries_query(workspace=request.workspace, endpoint=endpoint, status=status or None)
    items, following = cursor.page(qs.select_related("journey"), cursor=next, limit=limit, order=("-pk",))
    return {"items": [delivery_out(d) for d in items], "next": following}


@router.post("/{endpoint_id}/deliveries/{delivery_id}/retry", response=DeliveryOut,
             summary="Send a failed delivery again now (same webhook-id, the usual retries)")
def deliveries_retry(request, endpoint_id: int, delivery_id: int):
    endpoint = _get(request, endpoint_id)
    delivery = services.webhook_delivery_get(workspace=request.workspace, delivery_id=delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint.pk:
        raise HttpError(404, f"no delivery {delivery_id} to webhook endpoint {endpoint.slug!r}")
    delivery = services.webhook_delivery_retry(delivery=delivery, actor=actor(request))
    return delivery_out(WebhookDelivery.objects.select_related("journey").get(pk=delivery.pk))
