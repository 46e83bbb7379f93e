"""Email sending pages: servers (admins add, edit, test and delete them), sending domains with the DNS
records to publish and a live check, and the workspace's messaging settings (editors change them).
Thin: the services in `leadflow.messaging.sending` validate and do the work."""

from __future__ import annotations

from functools import wraps

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from leadflow.core.models import Role
from leadflow.core.services import ServiceError
from leadflow.messaging import sending
from leadflow.web.views import _actor, _forbidden, workspace_view

SERVER_FIELDS = ("name", "url", "rate_per_second", "pool_size", "breaker_threshold", "breaker_cooldown_seconds")


def admin_only(view):
    """Inside `workspace_view`: only the workspace's admins may go on."""
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if request.role != Role.ADMIN:
            return _forbidden(request)
        return view(request, *args, **kwargs)
    return wrapper


def _server(request: HttpRequest, server_id: int):
    server = sending.sending_server_get(workspace=request.workspace, server_id=server_id)
    if server is None:
        raise Http404("no such server")
    return server


def _domain(request: HttpRequest, domain_id: int):
    domain = sending.sending_domain_get(workspace=request.workspace, domain_id=domain_id)
    if domain is None:
        raise Http404("no such domain")
    return domain


@workspace_view()
def sending_overview(request: HttpRequest) -> HttpResponse:
    servers = [sending.server_out(s) for s in sending.sending_servers(workspace=request.workspace)]
    return render(request, "web/email/sending/overview.html", {
        "section": "email", "subnav": "sending", "servers": servers,
        "domains": sending.sending_domains(workspace=request.workspace),
        "status": sending.sending_status(workspace=request.workspace), "is_admin": request.role == Role.ADMIN,
    })


@workspace_view()
@admin_only
def server_edit(request: HttpRequest, server_id: int | None = None) -> HttpResponse:
    server = _server(request, server_id) if server_id else None
    error = None
    if request.method == "POST":
        fields = {key: request.POST.get(key, "") for key in SERVER_FIELDS}
        fields["is_default"] = request.POST.get("is_default") == "on"
        try:
            if server is None:
                server = sending.sending_server_create(workspace=request.workspace, actor=_actor(request), **fields)
                messages.success(request, f"Server “{server.name}” added. Test its connection before sending.")
            else:
                if server.is_default and not fields["is_default"]:
                    fields.pop("is_default")  # the default stays until another is made default
                sending.sending_server_update(server=server, actor=_actor(request), **fields)
                messages.success(request, f"Server “{server.name}” saved.")
            return redirect("web:email-sending")
        except ServiceError as exc:
            error = str(exc)
        initial = {**fields, "url": fields["url"]}
    elif server is not None:
        initial = sending.server_out(server)
    else:
        initial = {"name": "", "url": "", "rate_per_second": 50, "pool_size": 2, "breaker_threshold": 5,
                   "breaker_cooldown_seconds": 300, "is_default": False}
    return render(request, "web/email/sending/server_edit.html", {
        "section": "email", "subnav": "sending", "server": server, "initial": initial, "error": error,
        "mask": sending.smtp.PASSWORD_MASK,
    })


@workspace_view()
@admin_only
@require_POST
def server_test(request: HttpRequest, server_id: int) -> HttpResponse:
    server = _server(request, server_id)
    ok, detail = sending.sending_server_test(server=server)
    (messages.success if ok else messages.error)(request, f"{server.name}: {'connected' if ok else 'failed'} — {detail}")
    return redirect("web:email-sending")


@workspace_view()
@admin_only
@require_POST
def server_delete(request: HttpRequest, server_id: int) -> HttpResponse:
    server = _server(request, server_id)
    try:
        sending.sending_server_delete(server=server, actor=_actor(request))
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Server “{server.name}” deleted.")
    return redirect("web:email-sending")


@workspace_view()
@admin_only
def domain_new(request: HttpRequest) -> HttpResponse:
    error = None
    initial = {"domain": "", "selector": "leadflow", "bounce_domain": ""}
    if request.method == "POST":
        initial = {key: request.POST.get(key, "") for key in initial}
        try:
            domain = sending.sending_domain_create(workspace=request.workspace, actor=_actor(request), **initial)
        except ServiceError as exc:
            error = str(exc)
        else:
            messages.success(request, f"{domain.domain} added with a new DKIM key. Publish the records below.")
            return redirect("web:email-domain", domain.pk)
    return render(request, "web/email/sending/domain_new.html", {"section": "email", "subnav": "sending",
                                                                  "initial": initial, "error": error})


@workspace_view()
def domain_detail(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = _domain(request, domain_id)
    return render(request, "web/email/sending/domain.html", {
        "section": "email", "subnav": "sending", "domain": domain, "records": sending.dns_checklist(domain=domain),
        "checked": False,
        "is_admin": request.role == Role.ADMIN,
    })


@workspace_view()
@require_POST
def domain_check(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = _domain(request, domain_id)
    return render(request, "web/email/sending/domain.html", {
        "section": "email", "subnav": "sending", "domain": domain, "records": sending.dns_check(domain=domain),
        "checked": True,
        "is_admin": request.role == Role.ADMIN,
    })


@workspace_view()
@admin_only
@require_POST
def domain_delete(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = _domain(request, domain_id)
    sending.sending_domain_delete(domain=domain, actor=_actor(request))
    messages.success(request, f"{domain.domain} deleted: mail from it now goes out unsigned.")
    return redirect("web:email-sending")


@workspace_view()
def settings_page(request: HttpRequest) -> HttpResponse:
    row = sending.messaging_settings_get(workspace_id=request.workspace.pk)
    error = None
    values = {key: getattr(row, key) for key in sending.SETTINGS_FIELDS}
    if request.method == "POST":
        if not request.can_edit:
            return _forbidden(request)
        values = {key: request.POST.get(key, "") for key in sending.SETTINGS_FIELDS}
        try:
            sending.messaging_settings_update(workspace_id=request.workspace.pk, actor=_actor(request), **values)
        except ServiceError as exc:
            error = str(exc)
        else:
            messages.success(request, "Messaging settings saved.")
            return redirect("web:email-settings")
    for key in ("quiet_start", "quiet_end"):
        if hasattr(values[key], "strftime"):
            values[key] = values[key].strftime("%H:%M")
    return render(request, "web/email/sending/settings.html", {"section": "email", "subnav": "settings",
                                                                "values": values, "error": error})
