"""Public pages: the tracking script, hosted forms and lead magnet downloads."""

from __future__ import annotations

import uuid
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlencode

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.csrf import csrf_exempt

from leadflow.core.services import ServiceError, rate_limit_hit
from leadflow.tracking import forms as form_service
from leadflow.tracking.models import Form

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
AID_COOKIE = "lf_aid"


@lru_cache(maxsize=1)
def _script() -> bytes:
    return (Path(__file__).parent / "static" / "leadflow" / "lf.js").read_bytes()


def tracking_script(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(_script(), content_type="application/javascript; charset=utf-8")
    response["Cache-Control"] = "public, max-age=300"
    response["Access-Control-Allow-Origin"] = "*"
    return response


def _client_ip(request: HttpRequest) -> str | None:
    if settings.LEADFLOW_TRUST_X_FORWARDED_FOR and request.META.get("HTTP_X_FORWARDED_FOR"):
        return request.META["HTTP_X_FORWARDED_FOR"].split(",")[0].strip()
    return request.META.get("REMOTE_ADDR")


def _valid_aid(value: str) -> str:
    value = (value or "").strip()
    return value if 0 < len(value) <= 255 else ""


# The hosted form is meant to be framed by the customer's site; CSRF protection is replaced by
# the honeypot and the per-IP rate limit (a form anyone may post to has nothing to forge).
@csrf_exempt
@xframe_options_exempt
def hosted_form(request: HttpRequest, workspace_slug: str, form_slug: str) -> HttpResponse:
    form = (Form.objects.select_related("workspace", "lead_magnet")
            .filter(workspace__slug=workspace_slug, slug=form_slug, archived_at__isnull=True).first())
    if form is None:
        raise Http404("no such form")
    source = request.POST if request.method == "POST" else request.GET
    aid = _valid_aid(source.get("lf_aid") or source.get("aid") or request.COOKIES.get(AID_COOKIE, "")) \
        or str(uuid.uuid4())
    tracking = {
        "lf_aid": aid,
        "lf_page": (source.get("lf_page") or source.get("page") or request.build_absolute_uri())[:1000],
        "lf_referrer": (source.get("lf_referrer") or source.get("referrer")
                        or request.META.get("HTTP_REFERER", ""))[:1000],
        **{name: source.get(name, "")[:200] for name in UTM_FIELDS},
    }
    embed = source.get("embed") == "1"
    context = {"form": form, "tracking": tracking, "embed": embed, "honeypot": form_service.HONEYPOT}
    if request.method == "POST":
        django_form = form_service.django_form_for(form, data=request.POST)
        if request.POST.get(form_service.HONEYPOT):
            # A bot filled the invisible field: look successful, store nothing.
            return _respond(request, "leadflow/form_done.html", {**context, "delivery": {}}, aid)
        ip = _client_ip(request)
        if not rate_limit_hit(key=f"form:{form.pk}:{ip}", limit=settings.LEADFLOW_FORM_RATE_LIMIT,
                              window_seconds=settings.LEADFLOW_FORM_RATE_WINDOW):
            response = _respond(request, "leadflow/form_page.html",
                                {**context, "django_form": django_form,
                                 "error": "Too many submissions from your network. Please try again later."},
                                aid, status=429)
            response["Retry-After"] = str(settings.LEADFLOW_FORM_RATE_WINDOW)
            return response
        if django_form.is_valid():
            try:
                delivery = form_service.form_submit(
                    form=form, cleaned=django_form.cleaned_data, anonymous_id=aid,
                    page_url=tracking["lf_page"], referrer=tracking["lf_referrer"],
                    campaign={k.removeprefix("utm_").replace("campaign", "name"): tracking[k] for k in UTM_FIELDS},
                    ip=ip, user_agent=request.META.get("HTTP_USER_AGENT", "")[:500])
            except ServiceError as exc:
                context["error"] = str(exc)
            else:
                if form.redirect_url and not form.lead_magnet_id:
                    response = HttpResponseRedirect(form.redirect_url)
                    response.set_cookie(AID_COOKIE, aid, max_age=365 * 86400, samesite="Lax")
                    return response
                return _respond(request, "leadflow/form_done.html", {**context, "delivery": delivery}, aid)
        return _respond(request, "leadflow/form_page.html", {**context, "django_form": django_form}, aid,
                        status=400)
    django_form = form_service.django_form_for(form)
    return _respond(request, "leadflow/form_page.html", {**context, "django_form": django_form}, aid)


def _respond(request, template: str, context: dict, aid: str, status: int = 200) -> HttpResponse:
    response = render(request, template, context, status=status)
    response.set_cookie(AID_COOKIE, aid, max_age=365 * 86400, samesite="Lax")
    return response


def magnet_download(request: HttpRequest, token: str) -> HttpResponse:
    if request.method == "HEAD":
        # Link scanners probe with HEAD; only a real GET counts as a download.
        return HttpResponse(status=200)
    try:
        magnet = form_service.magnet_download(token=token, ip=_client_ip(request),
                                              user_agent=request.META.get("HTTP_USER_AGENT", "")[:500])
    except ServiceError as exc:
        return render(request, "leadflow/message.html", {"title": "Download unavailable", "message": str(exc)},
                      status=404)
    return HttpResponseRedirect(magnet.delivery_url)


def embed_snippet(*, base_url: str, workspace_slug: str, form_slug: str) -> str:
    return (f'<div data-leadflow-form="{workspace_slug}/{form_slug}"></div>\n'
            f'<script src="{base_url}/t/lf.js" async></script>')


def hosted_url(*, base_url: str, workspace_slug: str, form_slug: str, **params: str) -> str:
    query = f"?{urlencode(params)}" if params else ""
    return f"{base_url}/f/{workspace_slug}/{form_slug}/{query}"
