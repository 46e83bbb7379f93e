"""Journey webhook pages: the endpoints with their health and the deliveries waiting for each;
registering one (its signing secret is shown on that page only, once); an endpoint's page with
its deliveries (status, attempts, last error), sending a failed one again, renaming or moving it,
rotating its secret (shown once), disabling and enabling it. Marketers and admins change things;
everyone else reads."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from leadflow.core.services import ServiceError
from leadflow.journeys import webhooks as services
from leadflow.journeys.models import DeliveryStatus, WebhookEndpoint
from leadflow.web.views import _actor, _page, workspace_view

DELIVERIES_PER_PAGE = 50
HEALTH_LABELS = {"ok": "OK", "failing": "Failing", "unknown": "Not tried lately", "disabled": "Disabled"}


def _endpoint(request: HttpRequest, endpoint_id: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(workspace=request.workspace, pk=endpoint_id).first()
    if endpoint is None:
        raise Http404("no such webhook endpoint")
    return endpoint


def _rows(endpoints: list[WebhookEndpoint]) -> list[dict]:
    waiting = services.webhook_endpoints_waiting(endpoints=endpoints)
    rows = []
    for e in endpoints:
        health = services.webhook_endpoint_health(endpoint=e)
        rows.append({"endpoint": e, "url": services.url_shown(e.url), "health": health,
                     "health_label": HEALTH_LABELS[health], "waiting": waiting.get(e.pk, 0)})
    return rows


def _list_page(request: HttpRequest, *, created: WebhookEndpoint | None = None, error: str = "",
               form: dict | None = None, status: int = 200) -> HttpResponse:
    endpoints = list(services.webhook_endpoints_list(workspace=request.workspace))
    response = render(request, "web/journeys/webhooks.html", {
        "section": "journeys", "rows": _rows(endpoints), "created": created, "error": error,
        "form": form or {}}, status=status)
    if created is not None:
        response["Cache-Control"] = "no-store"  # the page holds a secret
    return response


@workspace_view()
def webhooks_list(request: HttpRequest) -> HttpResponse:
    return _list_page(request)


@workspace_view(edit=True)
@require_POST
def webhook_create(request: HttpRequest) -> HttpResponse:
    form = {key: request.POST.get(key, "").strip() for key in ("name", "url", "slug", "secret")}
    try:
        endpoint = services.webhook_endpoint_create(workspace=request.workspace, name=form["name"], url=form["url"],
                                                    slug=form["slug"] or None, secret=form["secret"] or None,
                                                    actor=_actor(request))
    except ServiceError as exc:
        return _list_page(request, error=str(exc), form=form, status=400)
    return _list_page(request, created=endpoint)


def _detail_page(request: HttpRequest, endpoint: WebhookEndpoint, *, secret: str = "", error: str = "",
                 form: dict | None = None, status: int = 200) -> HttpResponse:
    shown = request.GET.get("status", "")
    if shown not in DeliveryStatus.values:
        shown = ""
    deliveries = (services.webhook_deliveries_query(workspace=request.workspace, endpoint=endpoint,
                                                    status=shown or None)
                  .select_related("journey").order_by("-pk"))
    page = _page(request, deliveries, DELIVERIES_PER_PAGE)
    response = render(request, "web/journeys/webhooks_detail.html", {
        "section": "journeys", "endpoint": endpoint, "row": _rows([endpoint])[0], "page": page,
        "status": shown, "statuses": DeliveryStatus.choices, "retryable": services.RETRYABLE,
        "status_query": urlencode({"status": shown}) + "&" if shown else "", "secret": secret, "error": error,
        "form": form or {"name": endpoint.name, "url": endpoint.url, "slug": endpoint.slug}}, status=status)
    if secret:
        response["Cache-Control"] = "no-store"
    return response


@workspace_view()
def webhook_detail(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    return _detail_page(request, _endpoint(request, endpoint_id))


@workspace_view(edit=True)
@require_POST
def webhook_update(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    endpoint = _endpoint(request, endpoint_id)
    form = {key: request.POST.get(key, "").strip() for key in ("name", "url", "slug")}
    try:
        services.webhook_endpoint_update(endpoint=endpoint, name=form["name"], url=form["url"],
                                         slug=form["slug"] or None, actor=_actor(request))
    except ServiceError as exc:
        endpoint.refresh_from_db()
        return _detail_page(request, endpoint, error=str(exc), form=form, status=400)
    messages.success(request, "Saved.")
    return redirect("web:journey-webhook", endpoint.pk)


@workspace_view(edit=True)
@require_POST
def webhook_rotate(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    endpoint = services.webhook_endpoint_rotate_secret(endpoint=_endpoint(request, endpoint_id),
                                                       actor=_actor(request))
    return _detail_page(request, endpoint, secret=endpoint.secret)


@workspace_view(edit=True)
@require_POST
def webhook_disable(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    reason = request.POST.get("reason", "").strip() or services.DISABLED_BY_HAND
    endpoint = services.webhook_endpoint_disable(endpoint=_endpoint(request, endpoint_id), reason=reason,
                                                 actor=_actor(request))
    messages.success(request, f"Disabled “{endpoint.name}”: its waiting deliveries failed, and journey steps that "
                              "call it fail until you enable it again.")
    return redirect("web:journey-webhook", endpoint.pk)


@workspace_view(edit=True)
@require_POST
def webhook_enable(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    endpoint = services.webhook_endpoint_enable(endpoint=_endpoint(request, endpoint_id), actor=_actor(request))
    messages.success(request, f"Enabled “{endpoint.name}”. Deliveries that failed while it was disabled stay "
                              "failed: send them again from the list below.")
    return redirect("web:journey-webhook", endpoint.pk)


@workspace_view(edit=True)
@require_POST
def webhook_delivery_retry(request: HttpRequest, endpoint_id: int, delivery_id: int) -> HttpResponse:
    endpoint = _endpoint(request, endpoint_id)
    delivery = services.webhook_delivery_get(workspace=request.workspace, delivery_id=delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint.pk:
        raise Http404("no such delivery")
    try:
        services.webhook_delivery_retry(delivery=delivery, actor=_actor(request))
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Delivery {delivery.pk} goes out again in a moment (same webhook-id).")
    shown = request.POST.get("status", "")
    query = "?" + urlencode({"status": shown}) if shown in DeliveryStatus.values else ""
    return redirect(reverse("web:journey-webhook", args=[endpoint.pk]) + query)
