"""Sending setup: SMTP servers, sending domains with their DKIM keys and the DNS records to publish,
and a workspace's messaging settings (sender, postal address, quiet hours, caps, soft bounces).

Servers keep their URL (with its password) in the database; nothing here ever returns the password:
`server_out` and the pages show `redact_url`. Domains get a 2048-bit RSA key generated here; the
private half never leaves the database, the public half is the `p=` of the DKIM TXT record.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count

from leadflow.config import ConfigError
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError, audit_record
from leadflow.messaging import mime, smtp
from leadflow.messaging.models import Message, MessageStatus, MessagingSettings, SendingDomain, SendingServer

DEFAULT_SERVER_NAME = "Default"
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$")
_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_EMAIL = re.compile(r"^[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+\.[^@\s<>\"(),;:]+$")
PENDING = (MessageStatus.QUEUED, MessageStatus.DEFERRED, MessageStatus.SENDING)


# --- servers ------------------------------------------------------------------------------------

def _validate_url(url: str) -> str:
    url = url.strip()
    if not url:
        return ""
    try:
        smtp.parse_server_url(url)
    except ConfigError as exc:
        raise ServiceError(f"url: {exc}") from exc
    return url


def _number(name: str, value, *, minimum: float, maximum: float, integer: bool = False):
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError) as exc:
        raise ServiceError(f"{name} must be a number") from exc
    if integer and float(value) != number:
        raise ServiceError(f"{name} must be a whole number")
    if not minimum <= number <= maximum:
        raise ServiceError(f"{name} must be between {minimum:g} and {maximum:g}")
    return number


def _server_fields(fields: dict) -> dict:
    out = {}
    if "name" in fields:
        name = " ".join(str(fields["name"] or "").split())
        if not name:
            raise ServiceError("name is required")
        if len(name) > 200:
            raise ServiceError("name is longer than 200 characters")
        out["name"] = name
    if "url" in fields:
        out["url"] = _validate_url(str(fields["url"] or ""))
    if "rate_per_second" in fields:
        out["rate_per_second"] = _number("rate_per_second", fields["rate_per_second"], minimum=0, maximum=100_000)
    if "pool_size" in fields:
        out["pool_size"] = _number("pool_size", fields["pool_size"], minimum=1, maximum=32, integer=True)
    if "breaker_threshold" in fields:
        out["breaker_threshold"] = _number("breaker_threshold", fields["breaker_threshold"], minimum=1,
                                           maximum=1000, integer=True)
    if "breaker_cooldown_seconds" in fields:
        out["breaker_cooldown_seconds"] = _number("breaker_cooldown_seconds", fields["breaker_cooldown_seconds"],
                                                  minimum=1, maximum=86_400, integer=True)
    if "is_default" in fields:
        out["is_default"] = bool(fields["is_default"])
    return out


def _save_server(server: SendingServer, *, creating: bool) -> SendingServer:
    try:
        with transaction.atomic():
            if server.is_default:
                (SendingServer.objects.filter(workspace_id=server.workspace_id, is_default=True)
                 .exclude(pk=server.pk).update(is_default=False))
            server.save(force_insert=creating)
    except IntegrityError as exc:
        raise ServiceError(f"a server named {server.name!r} already exists in this workspace") from exc
    return server


def sending_server_create(*, workspace: Workspace, name: str, url: str = "", is_default: bool = False,
                          rate_per_second: float = 50.0, pool_size: int = 2, breaker_threshold: int = 5,
                          breaker_cooldown_seconds: int = 300, actor: str = "system") -> SendingServer:
    """A new server. `url` blank means LEADFLOW_SMTP_URL (or the file transport when unset). The
    first server of a workspace becomes its default."""
    values = _server_fields(dict(name=name, url=url, is_default=is_default, rate_per_second=rate_per_second,
                                 pool_size=pool_size, breaker_threshold=breaker_threshold,
                                 breaker_cooldown_seconds=breaker_cooldown_seconds))
    if not SendingServer.objects.filter(workspace=workspace).exists():
        values["is_default"] = True
    server = _save_server(SendingServer(workspace=workspace, **values), creating=True)
    audit_record(workspace=workspace, actor=actor, action="sending_server.create", target=f"server:{server.pk}",
                 data={"name": server.name, "url": smtp.redact_url(server.url)})
    return server


def sending_server_update(*, server: SendingServer, actor: str = "system", **fields) -> SendingServer:
    """Change any of name, url, is_default, rate_per_second, pool_size, breaker_threshold,
    breaker_cooldown_seconds. A URL whose password is the mask keeps the stored password. A new
    URL closes the circuit (the old failures were another server's)."""
    unknown = set(fields) - {"name", "url", "is_default", "rate_per_second", "pool_size", "breaker_threshold",
                             "breaker_cooldown_seconds"}
    if unknown:
        raise ServiceError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "url" in fields and fields["url"] is not None:
        fields["url"] = smtp.url_keep_password(new=str(fields["url"]).strip(), old=server.url)
    values = _server_fields({k: v for k, v in fields.items() if v is not None})
    if values.get("is_default") is False and server.is_default:
        raise ServiceError("make another server the default instead")
    if "url" in values and values["url"] != server.url:
        server.consecutive_failures, server.paused_until, server.last_error = 0, None, ""
    for key, value in values.items():
        setattr(server, key, value)
    _save_server(server, creating=False)
    audit_record(workspace=server.workspace, actor=actor, action="sending_server.update",
                 target=f"server:{server.pk}", data={k: (smtp.redact_url(v) if k == "url" else v)
                                                        for k, v in values.items()})
    return server


def sending_server_delete(*, server: SendingServer, actor: str = "system") -> None:
    """Delete a server no pending message names (they would silently go elsewhere)."""
    pending = Message.objects.filter(workspace_id=server.workspace_id, server=server, status__in=PENDING).count()
    if pending:
        raise ServiceError(f"{pending} pending message(s) are set to go through {server.name!r}; "
                           "wait until they are sent or cancel them first")
    workspace = server.workspace
    target = f"server:{server.pk}"
    with transaction.atomic():
        server.delete()
        if server.is_default:
            successor = SendingServer.objects.filter(workspace=workspace).order_by("pk").first()
            if successor is not None:
                successor.is_default = True
                successor.save(update_fields=["is_default"])
    audit_record(workspace=workspace, actor=actor, action="sending_server.delete", target=target,
                 data={"name": server.name})


def sending_server_get(*, workspace: Workspace, server_id: int) -> SendingServer | None:
    return SendingServer.objects.filter(workspace=workspace, pk=server_id).first()


def sending_servers(*, workspace: Workspace) -> list[SendingServer]:
    return list(SendingServer.objects.filter(workspace=workspace).order_by("-is_default", "name"))


def sending_server_default(*, workspace_id: int) -> SendingServer:
    """The workspace's default server, created (blank URL: LEADFLOW_SMTP_URL) when it has none."""
    server = SendingServer.objects.filter(workspace_id=workspace_id, is_default=True).first()
    if server is not None:
        return server
    try:
        with transaction.atomic():
            server = SendingServer.objects.filter(workspace_id=workspace_id).order_by("pk").first()
            if server is None:
                name = DEFAULT_SERVER_NAME
                return SendingServer.objects.create(workspace_id=workspace_id, name=name, url="", is_default=True)
            server.is_default = True
            server.save(update_fields=["is_default"])
            return server
    except IntegrityError:  # another worker made it at the same moment
        return SendingServer.objects.get(workspace_id=workspace_id, is_default=True)


def server_state(server: SendingServer, *, now: dt.datetime | None = None) -> str:
    """`ok`, `open` (circuit open: paused until `paused_until`) or `half-open` (one message
    will try)."""
    now = now or clock.now()
    if server.paused_until and server.paused_until > now:
        return "open"
    if server.consecutive_failures >= server.breaker_threshold:
        return "half-open"
    return "ok"


def server_out(server: SendingServer) -> dict:
    """What the API and pages show of a server: never the password."""
    try:
        target = smtp.server_config(server.url).label
    except ConfigError as exc:
        target = f"invalid: {exc}"
    return {"id": server.pk, "name": server.name, "url": smtp.redact_url(server.url), "target": target,
            "uses_environment": not server.url, "is_default": server.is_default,
            "rate_per_second": server.rate_per_second, "pool_size": server.pool_size,
            "breaker_threshold": server.breaker_threshold,
            "breaker_cooldown_seconds": server.breaker_cooldown_seconds,
            "consecutive_failures": server.consecutive_failures, "paused_until": server.paused_until,
            "state": server_state(server), "last_error": server.last_error, "created_at": server.created_at}


def sending_server_test(*, server: SendingServer) -> tuple[bool, str]:
    """Connect to the server (TLS and login as configured) and NOOP: (ok, what happened)."""
    try:
        return True, smtp.connection_test(server.url)
    except (smtp.SmtpFailure, ConfigError) as exc:
        return False, str(exc)


# --- domains ------------------------------------------------------------------------------------

def _domain_name(value: str, what: str = "domain") -> str:
    name = (value or "").strip().lower().rstrip(".")
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError as exc:
        raise ServiceError(f"{what}: {value!r} is not a domain name") from exc
    if not _DOMAIN.match(name):
        raise ServiceError(f"{what}: {value!r} is not a domain name (like example.com)")
    return name


def dkim_keypair() -> tuple[str, str]:
    """A new 2048-bit RSA key: (private PEM, base64 DER public key for the `p=` tag)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(public).decode()


def sending_domain_create(*, workspace: Workspace, domain: str, selector: str = "leadflow", bounce_domain: str = "",
                          actor: str = "system") -> SendingDomain:
    """A domain to send from with a fresh DKIM key. `bounce_domain` (blank: the domain itself)
    receives VERP bounces and mailto unsubscribes; a subdomain (bounces.example.com) whose MX
    leads to the mailbox LeadFlow reads keeps them apart from people's mail."""
    name = _domain_name(domain)
    selector = (selector or "").strip().lower()
    if not _SELECTOR.match(selector):
        raise ServiceError(f"selector: {selector!r} must be letters, digits and hyphens (like leadflow)")
    bounce = _domain_name(bounce_domain, "bounce_domain") if (bounce_domain or "").strip() else ""
    if SendingDomain.objects.filter(workspace=workspace, domain=name).exists():
        raise ServiceError(f"{name} is already a sending domain of this workspace")
    private, public = dkim_keypair()
    try:
        with transaction.atomic():
            row = SendingDomain.objects.create(workspace=workspace, domain=name, dkim_selector=selector,
                                               dkim_private_key=private, dkim_public_key=public,
                                               bounce_domain=bounce)
    except IntegrityError as exc:
        raise ServiceError(f"{name} is already a sending domain of this workspace") from exc
    audit_record(workspace=workspace, actor=actor, action="sending_domain.create", target=f"domain:{row.pk}",
                 data={"domain": name, "selector": selector, "bounce_domain": bounce})
    return row


def sending_domain_update(*, domain: SendingDomain, bounce_domain: str, actor: str = "system") -> SendingDomain:
    domain.bounce_domain = _domain_name(bounce_domain, "bounce_domain") if bounce_domain.strip() else ""
    domain.save(update_fields=["bounce_domain"])
    audit_record(workspace=domain.workspace, actor=actor, action="sending_domain.update",
                 target=f"domain:{domain.pk}", data={"bounce_domain": domain.bounce_domain})
    return domain


def sending_domain_delete(*, domain: SendingDomain, actor: str = "system") -> None:
    workspace, target, name = domain.workspace, f"domain:{domain.pk}", domain.domain
    domain.delete()
    audit_record(workspace=workspace, actor=actor, action="sending_domain.delete", target=target,
                 data={"domain": name})


def sending_domain_get(*, workspace: Workspace, domain_id: int) -> SendingDomain | None:
    return SendingDomain.objects.filter(workspace=workspace, pk=domain_id).first()


def sending_domains(*, workspace: Workspace) -> list[SendingDomain]:
    return list(SendingDomain.objects.filter(workspace=workspace).order_by("domain"))


@dataclass
class DnsRecord:
    purpose: str  # spf, dkim, dmarc, mx
    type: str
    name: str
    value: str
    note: str = ""
    status: str = "unchecked"  # unchecked, ok, missing, different, error
    found: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"purpose": self.purpose, "type": self.type, "name": self.name, "value": self.value,
                "note": self.note, "status": self.status, "found": self.found}


def _server_hosts(workspace_id: int) -> list[str]:
    hosts = []
    for url in SendingServer.objects.filter(workspace_id=workspace_id).values_list("url", flat=True):
        try:
            config = smtp.server_config(url)
        except ConfigError:
            continue
        host = config.host
        if host and host not in hosts and host not in {"localhost"} and not host.startswith("127."):
            hosts.append(host)
    return hosts


def dns_checklist(*, domain: SendingDomain) -> list[DnsRecord]:
    """The DNS records that make mail from `domain` authenticate (SPF, DKIM, DMARC) and lets
    bounces come back (MX of the bounce domain)."""
    bounce = domain.bounce_domain or domain.domain
    hosts = _server_hosts(domain.workspace_id)
    mechanisms = " ".join(f"a:{h}" for h in hosts) or "mx"
    spf_note = ("The envelope sender (Return-Path) is bounces+…@" + bounce + ", so SPF is checked on " + bounce
                + ". If your SMTP provider publishes an SPF include (for example include:amazonses.com, "
                  "include:spf.mtasv.net, include:sendgrid.net), use it instead of or beside the a: terms; "
                  "if the name already has an SPF record, merge into it: there must be only one.")
    dkim_value = f"v=DKIM1; k=rsa; p={domain.dkim_public_key}"
    records = [
        DnsRecord("spf", "TXT", bounce, f"v=spf1 {mechanisms} ~all", spf_note),
        DnsRecord("dkim", "TXT", f"{domain.dkim_selector}._domainkey.{domain.domain}", dkim_value,
                  "The value is longer than 255 characters: most DNS hosts split it into several quoted "
                  "strings for you; if yours does not, split it yourself (the strings are joined back)."),
        DnsRecord("dmarc", "TXT", f"_dmarc.{domain.domain}", f"v=DMARC1; p=none; rua=mailto:dmarc@{domain.domain}",
                  "A start: p=none only reports. Once the reports show your mail passing, move to "
                  "p=quarantine, then p=reject. Gmail and Yahoo require a DMARC record for bulk senders."),
        DnsRecord("mx", "MX", bounce, "10 <the mail server of the mailbox LeadFlow reads bounces from>",
                  "Bounces and mailto unsubscribes are addressed to " + bounce + "; its MX must lead to the "
                  "mailbox configured for bounce processing."
                  + (" A subdomain of " + domain.domain + " keeps DMARC alignment (relaxed)." if bounce != domain.domain
                     else " Consider a subdomain such as bounces." + domain.domain + " so they do not mix with "
                     "people's mail.")),
    ]
    return records


def _default_lookup(name: str, rdtype: str) -> list[str]:
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver()
    resolver.lifetime = 5.0
    try:
        answer = resolver.resolve(name, rdtype)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise LookupError(str(exc) or type(exc).__name__) from exc
    values = []
    for record in answer:
        if rdtype == "TXT":
            values.append(b"".join(record.strings).decode("utf-8", "replace"))
        else:
            values.append(record.to_text())
    return values


def dns_check(*, domain: SendingDomain, lookup: Callable[[str, str], list[str]] | None = None) -> list[DnsRecord]:
    """The checklist with what DNS answers for each record (`lookup(name, type)` returns the
    values; by default dnspython's resolver, when it is installed)."""
    records = dns_checklist(domain=domain)
    if lookup is None:
        try:
            import dns.resolver  # noqa: F401
        except ImportError:
            for record in records:
                record.status, record.found = "error", ["dnspython is not installed: no live check"]
            return records
        lookup = _default_lookup
    for record in records:
        try:
            found = lookup(record.name, record.type)
        except LookupError as exc:
            record.status, record.found = "error", [str(exc)]
            continue
        record.found = list(found)
        if record.purpose == "spf":
            spf = [v for v in found if v.lower().startswith("v=spf1")]
            record.status = "missing" if not spf else ("ok" if len(spf) == 1 else "different")
        elif record.purpose == "dkim":
            wanted = domain.dkim_public_key
            have = ["".join(v.split()) for v in found]
            record.status = ("missing" if not found else
                             "ok" if any(f"p={wanted}" in v for v in have) else "different")
        elif record.purpose == "dmarc":
            dmarc = [v for v in found if v.lower().startswith("v=dmarc1")]
            record.status = "missing" if not dmarc else ("ok" if len(dmarc) == 1 else "different")
        else:
            record.status = "ok" if found else "missing"
    return records


# --- messaging settings -------------------------------------------------------------------------

SETTINGS_FIELDS = ("from_name", "from_email", "reply_to", "postal_address", "quiet_start", "quiet_end",
                   "default_timezone", "cap_per_day", "cap_per_week", "soft_bounce_limit", "soft_bounce_days")


def messaging_settings_get(*, workspace_id: int) -> MessagingSettings:
    row = MessagingSettings.objects.filter(workspace_id=workspace_id).first()
    if row is not None:
        return row
    try:
        with transaction.atomic():
            return MessagingSettings.objects.create(workspace_id=workspace_id)
    except IntegrityError:
        return MessagingSettings.objects.get(workspace_id=workspace_id)


def _email_or_blank(name: str, value) -> str:
    value = (value or "").strip()
    if value and (len(value) > 320 or not _EMAIL.match(value)):
        raise ServiceError(f"{name}: {value!r} is not an email address")
    return value


def _time_or_none(name: str, value) -> dt.time | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.time):
        return value.replace(second=0, microsecond=0, tzinfo=None)
    try:
        return dt.time.fromisoformat(str(value).strip()).replace(second=0, microsecond=0, tzinfo=None)
    except ValueError as exc:
        raise ServiceError(f"{name}: {value!r} is not a time of day (HH:MM)") from exc


def _cap(name: str, value) -> int | None:
    if value in (None, ""):
        return None
    return _number(name, value, minimum=1, maximum=1000, integer=True)


def messaging_settings_update(*, workspace_id: int, actor: str = "system", **fields) -> MessagingSettings:
    """Change any of SETTINGS_FIELDS. Quiet hours need both ends (start after end spans midnight);
    the weekly cap cannot be below the daily one."""
    unknown = set(fields) - set(SETTINGS_FIELDS)
    if unknown:
        raise ServiceError(f"unknown field(s): {', '.join(sorted(unknown))}")
    row = messaging_settings_get(workspace_id=workspace_id)
    values: dict = {}
    if "from_name" in fields:
        values["from_name"] = " ".join(str(fields["from_name"] or "").split())[:200]
    for key in ("from_email", "reply_to"):
        if key in fields:
            values[key] = _email_or_blank(key, fields[key])
    if "postal_address" in fields:
        values["postal_address"] = str(fields["postal_address"] or "").strip()
        if len(values["postal_address"]) > 1000:
            raise ServiceError("postal_address is longer than 1000 characters")
    for key in ("quiet_start", "quiet_end"):
        if key in fields:
            values[key] = _time_or_none(key, fields[key])
    if "default_timezone" in fields:
        name = str(fields["default_timezone"] or "UTC").strip()
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ServiceError(f"default_timezone: {name!r} is not a time zone (like Europe/Berlin)") from exc
        values["default_timezone"] = name
    for key in ("cap_per_day", "cap_per_week"):
        if key in fields:
            values[key] = _cap(key, fields[key])
    if "soft_bounce_limit" in fields:
        values["soft_bounce_limit"] = _number("soft_bounce_limit", fields["soft_bounce_limit"], minimum=1,
                                              maximum=100, integer=True)
    if "soft_bounce_days" in fields:
        values["soft_bounce_days"] = _number("soft_bounce_days", fields["soft_bounce_days"], minimum=1,
                                             maximum=365, integer=True)
    merged = {key: values.get(key, getattr(row, key)) for key in SETTINGS_FIELDS}
    if (merged["quiet_start"] is None) != (merged["quiet_end"] is None):
        raise ServiceError("quiet hours need both a start and an end (or neither)")
    if merged["quiet_start"] is not None and merged["quiet_start"] == merged["quiet_end"]:
        raise ServiceError("quiet hours cannot start and end at the same time")
    if merged["cap_per_day"] and merged["cap_per_week"] and merged["cap_per_week"] < merged["cap_per_day"]:
        raise ServiceError("cap_per_week cannot be lower than cap_per_day")
    for key, value in values.items():
        setattr(row, key, value)
    row.updated_at = clock.now()
    row.save()
    audit_record(workspace=row.workspace, actor=actor, action="messaging_settings.update",
                 target=f"workspace:{workspace_id}", data={k: str(v) if v is not None else None
                                                             for k, v in values.items()})
    return row


def sender_address(row: MessagingSettings) -> tuple[str, str]:
    """(display name, address) mail is from: the workspace's, else LEADFLOW_EMAIL_FROM."""
    if row.from_email:
        return row.from_name, row.from_email
    from email.utils import parseaddr

    name, address = parseaddr(settings.EMAIL_FROM)
    return row.from_name or name, address


# --- overview -----------------------------------------------------------------------------------

def sending_status(*, workspace: Workspace) -> dict:
    """Warnings about the setup and the outbox by status (for the sending page and API)."""
    row = messaging_settings_get(workspace_id=workspace.pk)
    name, address = sender_address(row)
    from_domain = address.rpartition("@")[2].lower()
    warnings = []
    try:
        mime.address_check(address)
    except mime.MimeError:
        warnings.append(f"No sender address is usable: {address or '(none)'} cannot be a From address, so mail "
                        "waits in the outbox. Set the From address in the messaging settings.")
    else:
        if not row.from_email:
            warnings.append(f"No sender address is set: mail goes out from {address} (LEADFLOW_EMAIL_FROM). "
                            "Set the From address in the messaging settings.")
    if from_domain and not SendingDomain.objects.filter(workspace=workspace, domain=from_domain).exists():
        warnings.append(f"The From domain {from_domain} has no sending domain: mail goes out without a DKIM "
                        "signature and will fail DMARC. Add the domain and publish its DNS records.")
    if not row.postal_address:
        warnings.append("No postal address is set: every marketing email must carry one (CAN-SPAM).")
    public = getattr(settings, "PUBLIC_URL", "")
    if not public.startswith("https://"):
        warnings.append("LEADFLOW_PUBLIC_URL is not an https:// address: marketing mail cannot carry RFC 8058 "
                        "one-click unsubscribe (List-Unsubscribe-Post), which Gmail and Yahoo require.")
    servers = sending_servers(workspace=workspace)
    if not servers or any(not s.url for s in servers):
        try:
            config = smtp.default_config()
        except ConfigError as exc:
            warnings.append(f"LEADFLOW_SMTP_URL cannot be used: {exc}")
        else:
            if config.file_path:
                warnings.append(f"No SMTP server is configured (LEADFLOW_SMTP_URL is not set): mail to the default "
                                f"server is written to {config.file_path} instead of being sent.")
    now = clock.now()
    for server in servers:
        if server_state(server, now=now) == "open":
            warnings.append(f"Server {server.name!r} failed {server.consecutive_failures} times in a row and is "
                            f"paused until {server.paused_until:%Y-%m-%d %H:%M} UTC: {server.last_error}")
    counts = dict(Message.objects.filter(workspace=workspace).values_list("status").annotate(n=Count("pk"))
                  .values_list("status", "n"))
    return {"warnings": warnings, "from_name": name, "from_email": address, "from_domain": from_domain,
            "outbox": {status: counts.get(status, 0) for status in MessageStatus.values}}
