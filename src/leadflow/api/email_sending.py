"""Management API: email sending — SMTP servers (with a connection test), sending domains with the
DNS records to publish (and a live check), the workspace's messaging settings, and an overview
(warnings and the outbox by status). Passwords in server URLs are never returned."""

from __future__ import annotations

import datetime as dt

from ninja import Router, Schema, Status
from ninja.errors import HttpError

from leadflow.api.auth import actor
from leadflow.messaging import sending

router = Router(tags=["email sending"])


# --- schemas ----------------------------------------------------------------------------------

class ServerIn(Schema):
    name: str
    url: str = ""
    is_default: bool = False
    rate_per_second: float = 50.0
    pool_size: int = 2
    breaker_threshold: int = 5
    breaker_cooldown_seconds: int = 300


class ServerPatch(Schema):
    name: str | None = None
    url: str | None = None
    is_default: bool | None = None
    rate_per_second: float | None = None
    pool_size: int | None = None
    breaker_threshold: int | None = None
    breaker_cooldown_seconds: int | None = None


class ServerOut(Schema):
    id: int
    name: str
    url: str
    target: str
    uses_environment: bool
    is_default: bool
    rate_per_second: float
    pool_size: int
    breaker_threshold: int
    breaker_cooldown_seconds: int
    consecutive_failures: int
    paused_until: dt.datetime | None
    state: str
    last_error: str
    created_at: dt.datetime


class ConnectionTestOut(Schema):
    ok: bool
    detail: str


class DomainIn(Schema):
    domain: str
    selector: str = "leadflow"
    bounce_domain: str = ""


class DomainPatch(Schema):
    bounce_domain: str


class RecordOut(Schema):
    purpose: str
    type: str
    name: str
    value: str
    note: str
    status: str
    found: list[str]


class DomainOut(Schema):
    id: int
    domain: str
    selector: str
    bounce_domain: str
    public_key: str
    created_at: dt.datetime
    dns: list[RecordOut]


class SettingsIn(Schema):
    from_name: str | None = None
    from_email: str | None = None
    reply_to: str | None = None
    postal_address: str | None = None
    quiet_start: dt.time | None = None
    quiet_end: dt.time | None = None
    default_timezone: str | None = None
    cap_per_day: int | None = None
    cap_per_week: int | None = None
    soft_bounce_limit: int | None = None
    soft_bounce_days: int | None = None


class SettingsOut(Schema):
    from_name: str
    from_email: str
    reply_to: str
    postal_address: str
    quiet_start: dt.time | None
    quiet_end: dt.time | None
    default_timezone: str
    cap_per_day: int | None
    cap_per_week: int | None
    soft_bounce_limit: int
    soft_bounce_days: int
    updated_at: dt.datetime


class StatusOut(Schema):
    warnings: list[str]
    from_name: str
    from_email: str
    from_domain: str
    outbox: dict[str, int]


# --- helpers ----------------------------------------------------------------------------------

def _server(request, server_id: int):
    server = sending.sending_server_get(workspace=request.workspace, server_id=server_id)
    if server is None:
        raise HttpError(404, f"no sending server {server_id} in this workspace")
    return server


def _domain(request, domain_id: int):
    domain = sending.sending_domain_get(workspace=request.workspace, domain_id=domain_id)
    if domain is None:
        raise HttpError(404, f"no sending domain {domain_id} in this workspace")
    return domain


def _domain_out(domain, records=None) -> dict:
    records = records if records is not None else sending.dns_checklist(domain=domain)
    return {"id": domain.pk, "domain": domain.domain, "selector": domain.dkim_selector,
            "bounce_domain": domain.bounce_domain, "public_key": domain.dkim_public_key,
            "created_at": domain.created_at, "dns": [r.as_dict() for r in records]}


def _settings_out(row) -> dict:
    return {key: getattr(row, key) for key in (*sending.SETTINGS_FIELDS, "updated_at")}


# --- routes -----------------------------------------------------------------------------------

@router.get("/status", response=StatusOut, summary="Warnings about the sending setup and the outbox by status")
def status(request):
    return sending.sending_status(workspace=request.workspace)


@router.get("/servers", response=list[ServerOut], summary="SMTP servers (default first); passwords masked")
def servers_list(request):
    return [sending.server_out(s) for s in sending.sending_servers(workspace=request.workspace)]


@router.post("/servers", response={201: ServerOut}, summary="Add an SMTP server (blank url: LEADFLOW_SMTP_URL)")
def servers_create(request, payload: ServerIn):
    server = sending.sending_server_create(workspace=request.workspace, actor=actor(request), **payload.dict())
    return Status(201, sending.server_out(server))


@router.get("/servers/{server_id}", response=ServerOut, summary="One server; its password masked")
def servers_get(request, server_id: int):
    return sending.server_out(_server(request, server_id))


@router.patch("/servers/{server_id}", response=ServerOut,
              summary="Change a server; a url whose password is ******** keeps the stored password")
def servers_update(request, server_id: int, payload: ServerPatch):
    fields = {k: v for k, v in payload.dict(exclude_unset=True).items() if v is not None}
    server = sending.sending_server_update(server=_server(request, server_id), actor=actor(request), **fields)
    return sending.server_out(server)


@router.delete("/servers/{server_id}", response={204: None},
               summary="Delete a server no pending message is set to go through")
def servers_delete(request, server_id: int):
    sending.sending_server_delete(server=_server(request, server_id), actor=actor(request))
    return Status(204, None)


@router.post("/servers/{server_id}/test", response=ConnectionTestOut,
             summary="Connect (TLS and login as configured) and send NOOP")
def servers_test(request, server_id: int):
    ok, detail = sending.sending_server_test(server=_server(request, server_id))
    return {"ok": ok, "detail": detail}


@router.get("/domains", response=list[DomainOut], summary="Sending domains with the DNS records to publish")
def domains_list(request):
    return [_domain_out(d) for d in sending.sending_domains(workspace=request.workspace)]


@router.post("/domains", response={201: DomainOut},
             summary="Add a sending domain: a 2048-bit DKIM key is generated; publish the records listed")
def domains_create(request, payload: DomainIn):
    domain = sending.sending_domain_create(workspace=request.workspace, domain=payload.domain,
                                           selector=payload.selector, bounce_domain=payload.bounce_domain,
                                           actor=actor(request))
    return Status(201, _domain_out(domain))


@router.get("/domains/{domain_id}", response=DomainOut, summary="One domain with its DNS checklist")
def domains_get(request, domain_id: int):
    return _domain_out(_domain(request, domain_id))


@router.patch("/domains/{domain_id}", response=DomainOut, summary="Change the bounce domain")
def domains_update(request, domain_id: int, payload: DomainPatch):
    domain = sending.sending_domain_update(domain=_domain(request, domain_id), bounce_domain=payload.bounce_domain,
                                           actor=actor(request))
    return _domain_out(domain)


@router.delete("/domains/{domain_id}", response={204: None},
               summary="Delete a domain (mail from it goes out unsigned afterwards)")
def domains_delete(request, domain_id: int):
    sending.sending_domain_delete(domain=_domain(request, domain_id), actor=actor(request))
    return Status(204, None)


@router.post("/domains/{domain_id}/check", response=DomainOut,
             summary="Look the records up in DNS now and say which are published")
def domains_check(request, domain_id: int):
    domain = _domain(request, domain_id)
    return _domain_out(domain, sending.dns_check(domain=domain))


@router.get("/settings", response=SettingsOut, summary="The workspace's messaging settings")
def settings_get(request):
    return _settings_out(sending.messaging_settings_get(workspace_id=request.workspace.pk))


@router.patch("/settings", response=SettingsOut,
              summary="Change the sender, postal address, quiet hours, caps or the soft-bounce rule")
def settings_update(request, payload: SettingsIn):
    fields = payload.dict(exclude_unset=True)
    row = sending.messaging_settings_update(workspace_id=request.workspace.pk, actor=actor(request), **fields)
    return _settings_out(row)
