"""Bounces, complaints and mailto unsubscribes arriving by email, and what they do.

`bounce_classify` reads one inbound message (no database): who failed and how, with
**flufl.bounce** deciding which recipients failed temporarily or permanently, the delivery-status
fields (RFC 3464) giving the status code and diagnostic, ARF reports (RFC 5965) recognised as spam
complaints, and Amazon SES notifications delivered by email read like the SES webhook.

A permanent failure is a **hard** bounce only when it says the address itself is bad (enhanced
status 5.1.x: unknown user, unknown domain, moved; or a diagnostic saying so). Every other
failure (mailbox full, blocked as spam, policy, message too big, expired after retries) is
**soft**: the address exists, so it is suppressed only after `soft_bounce_limit` soft bounces in
`soft_bounce_days` (docs/email-tracking.md explains why).

`bounce_process` maps the report to the Message it is about (the VERP envelope sender
`bounces+TOKEN@…`, else the original Message-ID, else the failed address's latest message) and
applies it through `outcome_apply`, which the provider webhooks (`webhooks_in`) share.

`mailbox_poll_run` reads a bounce mailbox (`LEADFLOW_BOUNCE_MAILBOX`: Maildir, IMAP or POP3).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import json
import logging
import mailbox
import os
import re
from dataclasses import dataclass, field
from email.message import Message as MimeMessage
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.db import transaction
from flufl.bounce import all_failures

from leadflow.core import clock
from leadflow.messaging.models import Message, MessageEvent, MessageEventKind, MessageStatus, MessagingSettings
from leadflow.messaging.tokens import BadToken, verp_read

log = logging.getLogger(__name__)
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)  # it logs every detector it runs at INFO

VERP_PREFIX = "bounces"
UNSUBSCRIBE_PREFIX = "unsubscribe"
# Headers of the bounce itself that name the address it was sent to (our VERP address).
ENVELOPE_HEADERS = ("to", "delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "x-rcpt-to", "cc")
# Headers of the original message (attached to the bounce) that carry our envelope sender.
ORIGINAL_SENDER_HEADERS = ("return-path", "sender", "errors-to", "x-envelope-from")
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})
# How a diagnostic says the address itself does not exist (lower case). The status code decides
# first; these cover the MTAs that give none (5.0.0) or a vague one.
ADDRESS_GONE = (
    "user unknown", "unknown user", "no such user", "no such recipient", "no such mailbox",
    "unknown recipient", "recipient unknown", "unknown address", "address unknown", "unknown local part",
    "does not exist", "doesn't exist", "not exist", "mailbox not found", "user not found",
    "recipient not found", "invalid recipient", "invalid mailbox", "not a valid mailbox", "no mailbox here",
    "unrouteable address", "no such person", "user doesn't have", "is not a known user",
    "host unknown", "unknown host", "host not found", "domain not found", "no such domain",
    "domain does not exist", "name service error", "nxdomain", "no mx", "null mx",
    "address has changed", "has moved", "no longer", "not our customer", "account has been deleted",
    "address rejected: undeliverable", "bad destination mailbox", "bad destination system",
    "mailbox unavailable", "recipient address rejected", "couldn't find a mail exchanger",
)
# …unless it also says the mailbox exists but is full, or the failure may pass ("try again").
ADDRESS_EXISTS = ("mailbox full", "mailbox is full", "over quota", "quota exceeded", "exceeded storage",
                  "insufficient storage", "try again")
# 5.1.0 is "some address problem": the recipient's unless the words point at our sender address.
SENDER_WORDS = ("mail from", "sender")
# Status codes about the sender's own address (5.1.7, 5.1.8), not the recipient's.
SENDER_STATUSES = frozenset({"5.1.7", "5.1.8"})
STATUS_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
SMTP_REPLY = re.compile(r"(?<!\d)([45])\d\d(?=[ -])")
TOKEN_IN_TEXT = re.compile(r"\b(bounces|unsubscribe)\+([a-z2-7]{8,40})@", re.IGNORECASE)
TEXT_LIMIT = 8000


@dataclass
class Failure:
    """One recipient a report is about."""

    address: str
    outcome: str  # "hard", "soft", "complaint", "delivered", "delayed"
    status: str = ""
    diagnostic: str = ""


@dataclass
class Report:
    """What an inbound message (or provider notification) says, before it is mapped to a message."""

    kind: str  # "bounce", "complaint", "delivery", "delay", "unsubscribe", "auto_reply", "feedback", "unknown"
    failures: list[Failure] = field(default_factory=list)
    feedback_type: str = ""
    verp_ids: list[int] = field(default_factory=list)  # message ids from bounces+TOKEN addresses
    unsubscribe_ids: list[int] = field(default_factory=list)  # message ids from unsubscribe+TOKEN
    original_message_ids: list[str] = field(default_factory=list)
    source_id: str = ""  # identifies the report itself, so applying it twice changes nothing
    provider: str = "email"
    extra: dict = field(default_factory=dict)


@dataclass
class Outcome:
    address: str
    outcome: str
    message_id: int | None = None
    suppressed: bool = False
    status: str = ""
    detail: str = ""
    duplicate: bool = False


@dataclass
class BounceResult:
    kind: str
    outcomes: list[Outcome] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict:
        return {"kind": self.kind, "note": self.note,
                "outcomes": [vars(outcome) for outcome in self.outcomes]}


# --- reading a message -------------------------------------------------------------------------------

def _addresses(values: list[str]) -> list[str]:
    return [address.strip().strip("<>").lower() for _, address in getaddresses([str(v) for v in values]) if address]


def _tokens(addresses: list[str], prefix: str) -> list[int]:
    found = []
    for address in addresses:
        local = address.split("@", 1)[0]
        head, plus, token = local.partition("+")
        if plus and head.lower() == prefix:
            try:
                found.append(verp_read(token))
            except BadToken:
                continue
    return found


def _inline_original(msg: MimeMessage) -> MimeMessage | None:
    """The headers of the original message quoted inline in a plain-text bounce (Exim, qmail…)."""
    if msg.is_multipart() or msg.get_content_maintype() != "text":
        return None
    lines = _part_text(msg).splitlines()
    for index, line in enumerate(lines):
        if line.lower().startswith(("received: ", "return-path: ")):
            return HeaderParser().parsestr("\n".join(lines[index:]))
    return None


def _original_headers(msg: MimeMessage) -> list[MimeMessage]:
    """The headers of the message that bounced, as a MIME part or quoted inline."""
    inline = _inline_original(msg)
    found = [inline] if inline is not None else []
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822" or kind == "message/global":
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                found.append(payload[0])
        elif kind in ("text/rfc822-headers", "text/global-headers"):
            text = _part_text(part)
            if text:
                found.append(HeaderParser().parsestr(text.lstrip()))
    return found


def _part_text(part: MimeMessage) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - a broken transfer encoding: read what is there
        payload = None
    if payload is None:
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _cut_quoted_original(text: str) -> str:
    """Plain-text bounces quote the original message inline: stop where its headers start."""
    out = []
    for line in text.splitlines():
        if line.lower().startswith(("received: ", "return-path: ")):
            break
        out.append(line)
    return "\n".join(out)


def _readable_text(msg: MimeMessage) -> str:
    """The human-readable part of a report (not the attached original message)."""
    if not msg.is_multipart():
        return _cut_quoted_original(_part_text(msg))[:TEXT_LIMIT]
    texts = []
    for part in msg.get_payload():
        if not isinstance(part, MimeMessage):
            continue
        kind = part.get_content_type()
        if kind.startswith("message/") or kind in ("text/rfc822-headers",):
            continue
        if part.is_multipart():
            texts.append(_readable_text(part))
        elif part.get_content_maintype() == "text":
            texts.append(_cut_quoted_original(_part_text(part)))
    return "\n".join(texts)[:TEXT_LIMIT]


def _status_blocks(msg: MimeMessage) -> list[MimeMessage]:
    """The per-recipient field blocks of every message/delivery-status part."""
    blocks = []
    for part in msg.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            payload = part.get_payload()
            if isinstance(payload, list):
                blocks.extend(b for b in payload if b.get("final-recipient") or b.get("original-recipient"))
            elif isinstance(payload, str):
                for chunk in payload.replace("\r\n", "\n").split("\n\n"):
                    block = HeaderParser().parsestr(chunk.strip())
                    if block.get("final-recipient") or block.get("original-recipient"):
                        blocks.append(block)
    return blocks


def _field_address(value: str | None) -> str:
    if not value:
        return ""
    kind, _, address = str(value).partition(";")
    address = (address or kind).strip()
    return parseaddr(address)[1].lower() or address.strip("<> ").lower()


def _status_from(text: str) -> str:
    match = STATUS_CODE.search(text or "")
    return ".".join(match.groups()) if match else ""


def _says(text: str, phrases: tuple[str, ...]) -> bool:
    lowered = " ".join((text or "").lower().split())
    return any(phrase in lowered for phrase in phrases)


def hard_or_soft(*, status: str, diagnostic: str, permanent: bool) -> str:
    """"hard" when a failure says the address itself is bad, else "soft".

    The enhanced status code decides when it is specific: 5.1.x (bad mailbox, bad domain, moved)
    and 5.4.4 (no route to the domain) are hard; 5.2.x, 5.3.x, 5.6.x, 5.7.x (full, system,
    content, policy) are soft. Generic codes (5.0.0, 5.5.x, 5.1.0, none) leave it to the words.
    A temporary failure is never hard."""
    if status.startswith("4") or not permanent:
        return "soft"
    if _says(diagnostic, ADDRESS_EXISTS):
        return "soft"
    if status == "5.1.0":
        return "soft" if _says(diagnostic, SENDER_WORDS) else "hard"
    if (status.startswith("5.1.") and status not in SENDER_STATUSES) or status == "5.4.4":
        return "hard"
    if status and not status.startswith(("5.0.", "5.5.", "5.2.1", "5.4.0")):
        return "soft"  # a specific non-address status: trust the code over the words around it
    return "hard" if _says(diagnostic, ADDRESS_GONE) else "soft"


def _segment_for(text: str, address: str, others: list[str]) -> str:
    """The part of the readable text about `address`: from where it is named to where the next
    failed address is, or the whole text when it is not named."""
    lowered = text.lower()
    start = lowered.find(address)
    if start < 0:
        return text
    ends = [lowered.find(other, start + len(address)) for other in others if other != address]
    ends = [e for e in ends if e > start]
    return text[start:min(ends)] if ends else text[start:]


def _ses_json(msg: MimeMessage) -> dict | None:
    """An Amazon SES notification delivered by email (an SNS email subscription)."""
    if msg.is_multipart() or msg.get_content_type() != "text/plain":
        return None
    text = _part_text(msg).strip()
    if not text.startswith("{"):
        return None
    end = text.rfind("}")
    candidate = text[:end + 1]
    # SNS email wraps long lines with "!\n " (a soft break); undo it.
    candidate = candidate.replace("!\r\n ", "").replace("!\n ", "")
    try:
        data = json.loads(candidate)
    except ValueError:
        return None
    if isinstance(data, dict) and (data.get("notificationType") or data.get("eventType")):
        return data
    return None


def _report_id(msg: MimeMessage, raw: bytes | None) -> str:
    own = (msg.get("message-id") or "").strip()
    if own:
        return "mid:" + own[:200]
    body = raw if raw is not None else msg.as_bytes()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def bounce_classify(msg: MimeMessage, *, raw: bytes | None = None) -> Report:
    """What an inbound message says (see the module doc). Never touches the database."""
    envelope = _addresses([v for name in ENVELOPE_HEADERS for v in msg.get_all(name, [])])
    originals = _original_headers(msg)
    original_senders = _addresses([v for o in originals for name in ORIGINAL_SENDER_HEADERS
                                   for v in o.get_all(name, [])])
    readable = _readable_text(msg)
    report = Report(kind="unknown", source_id=_report_id(msg, raw))
    report.unsubscribe_ids = _tokens(envelope, UNSUBSCRIBE_PREFIX)
    report.verp_ids = _tokens(envelope + original_senders, VERP_PREFIX)
    report.original_message_ids = [mid.strip() for o in originals for mid in o.get_all("message-id", []) if mid]
    if not report.verp_ids:  # MTAs that quote the original inline, not as a MIME part
        for prefix, token in TOKEN_IN_TEXT.findall(readable):
            if prefix.lower() == VERP_PREFIX:
                report.verp_ids.extend(_tokens([f"{VERP_PREFIX}+{token}@x"], VERP_PREFIX))

    ses = _ses_json(msg)
    if ses is not None:
        from leadflow.messaging.webhooks_in import ses_report

        notification = ses_report(ses)
        notification.unsubscribe_ids = report.unsubscribe_ids
        return notification

    feedback = [p for p in msg.walk() if p.get_content_type() == "message/feedback-report"]
    is_arf = bool(feedback) or (msg.get_content_type() == "multipart/report" and
                                (msg.get_param("report-type") or "").lower() == "feedback-report")
    if is_arf:
        return _arf_report(report, feedback, originals)

    failures = _failures(msg, readable)
    if failures:
        report.failures = failures
        outcomes = {f.outcome for f in failures}
        report.kind = "bounce" if outcomes & {"hard", "soft"} else ("delay" if "delayed" in outcomes else "delivery")
        return report
    if report.unsubscribe_ids:
        report.kind = "unsubscribe"
        return report
    auto = (msg.get("auto-submitted") or "").strip().lower()
    if auto.startswith("auto-replied") or msg.get("x-autoreply") or msg.get("x-autorespond"):
        report.kind = "auto_reply"
    return report


def _arf_report(report: Report, feedback: list[MimeMessage], originals: list[MimeMessage]) -> Report:
    fields: dict[str, list[str]] = {}
    for part in feedback:
        payload = part.get_payload()
        blocks = payload if isinstance(payload, list) else [HeaderParser().parsestr(_part_text(part))]
        for block in blocks:
            for name, value in block.items():
                fields.setdefault(name.lower(), []).append(str(value).strip())
    feedback_type = (fields.get("feedback-type") or ["abuse"])[0].lower()
    report.feedback_type = feedback_type
    report.kind = "complaint" if feedback_type in COMPLAINT_TYPES else "feedback"
    recipients = _addresses(fields.get("original-rcpt-to", []) + fields.get("removal-recipient", []))
    if not recipients:
        recipients = _addresses([v for o in originals for v in o.get_all("to", [])])
    if report.kind == "complaint":
        report.failures = [Failure(address=a, outcome="complaint", diagnostic=f"feedback-type: {feedback_type}")
                           for a in dict.fromkeys(recipients)]
    report.verp_ids.extend(_tokens(_addresses(fields.get("original-mail-from", [])), VERP_PREFIX))
    return report


def _failures(msg: MimeMessage, readable: str) -> list[Failure]:
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # noqa: BLE001 - a detector choking on a malformed message
        log.warning("flufl.bounce could not read a report", exc_info=True)
        temporary, permanent = frozenset(), frozenset()
    found: dict[str, Failure] = {}
    blocks = _status_blocks(msg)
    for block in blocks:
        final = _field_address(block.get("final-recipient"))
        original = _field_address(block.get("original-recipient"))
        address = original or final
        if not address:
            continue
        action = (block.get("action") or "").strip().lower()
        diagnostic = " ".join(str(block.get("diagnostic-code") or "").split())
        # The remote server's own code (in its reply) over the reporting MTA's summary of it.
        status = _status_from(diagnostic) or _status_from(str(block.get("status") or ""))
        if action in ("delivered", "relayed", "expanded"):
            found.setdefault(address, Failure(address, "delivered", status, diagnostic))
            continue
        if action == "delayed":
            found.setdefault(address, Failure(address, "delayed", status, diagnostic))
            continue
        permanent_here = status.startswith("5") or (not status and action == "failed")
        outcome = hard_or_soft(status=status, diagnostic=diagnostic or _segment_for(readable, address, []),
                               permanent=permanent_here)
        found[address] = Failure(address, outcome, status, diagnostic[:500])
        if final and final != address:
            found.setdefault(final, found[address])
    flagged = [(a.decode("ascii", "replace").lower(), True) for a in sorted(permanent)] + \
              [(a.decode("ascii", "replace").lower(), False) for a in sorted(temporary)]
    names = [a for a, _ in flagged]
    for address, is_permanent in flagged:
        if address in found and found[address].outcome not in ("delivered", "delayed"):
            continue
        if address in found and found[address].outcome == "delayed" and not is_permanent:
            continue
        segment = _segment_for(readable, address, names)
        status = _status_from(segment)
        if not status and is_permanent:
            reply = SMTP_REPLY.search(segment)
            status = "5.0.0" if reply and reply.group(1) == "5" else ""
        outcome = hard_or_soft(status=status, diagnostic=segment, permanent=is_permanent)
        found[address] = Failure(address, outcome, status, " ".join(segment.split())[:500])
    if not found and _looks_like_bounce(msg):
        found[""] = _fallback_failure(msg, readable)
    # One Failure per address, even when it was listed under two names.
    unique: dict[int, Failure] = {}
    for failure in found.values():
        unique.setdefault(id(failure), failure)
    return list(unique.values())


BOUNCE_SENDERS = ("mailer-daemon", "postmaster", "post_master", "mail-daemon", "mailerdaemon")
EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def _looks_like_bounce(msg: MimeMessage) -> bool:
    """A report flufl.bounce could not read, but which is a bounce all the same: a delivery
    report, or mail from a mailer daemon or postmaster (a null envelope sender alone is not
    enough: out-of-office replies have one too)."""
    if msg.get_content_type() == "multipart/report":
        return True
    name, sender = parseaddr(str(msg.get("from") or ""))
    return (sender or name).lower().split("@", 1)[0] in BOUNCE_SENDERS


def _fallback_failure(msg: MimeMessage, readable: str) -> Failure:
    """The failure of a bounce no detector read: the one address the report names (besides the
    sender's), else none (the VERP address then says whose it is), classified from its text."""
    own = set(_addresses([v for name in ("from", "to", "reply-to", "sender") for v in msg.get_all(name, [])]))
    candidates = list(dict.fromkeys(a.lower().strip(".") for a in EMAIL_IN_TEXT.findall(readable)))
    candidates = [a for a in candidates if a not in own and a.split("@", 1)[0] not in BOUNCE_SENDERS]
    if len(candidates) > 1:  # several named: the one the original message was addressed to
        originals = set(_addresses([v for o in _original_headers(msg) for v in o.get_all("to", [])]))
        candidates = [a for a in candidates if a in originals]
    address = candidates[0] if len(candidates) == 1 else ""
    status = _status_from(readable)
    reply = SMTP_REPLY.search(readable)
    permanent = status.startswith("5") or (not status and bool(reply) and reply.group(1) == "5")
    if not status and permanent:
        status = "5.0.0"
    return Failure(address, hard_or_soft(status=status, diagnostic=readable, permanent=permanent), status,
                   " ".join(readable.split())[:500])


# --- applying a report -------------------------------------------------------------------------------

def _message_by_ids(ids: list[int], workspace_id: int | None) -> list[Message]:
    if not ids:
        return []
    query = Message.objects.filter(pk__in=ids).select_related("template", "version")
    if workspace_id is not None:
        query = query.filter(workspace_id=workspace_id)
    return list(query)


def _message_by_header(values: list[str], workspace_id: int | None) -> Message | None:
    wanted = set()
    for value in values:
        bare = value.strip().strip("<>")
        if bare:
            wanted |= {bare, f"<{bare}>"}
    if not wanted:
        return None
    query = Message.objects.filter(header_message_id__in=wanted).select_related("template", "version")
    if workspace_id is not None:
        query = query.filter(workspace_id=workspace_id)
    return query.order_by("-pk").first()


def _message_by_address(address: str, workspace_id: int | None) -> Message | None:
    if not address:
        return None
    query = (Message.objects.filter(to_email__iexact=address, sent_at__isnull=False)
             .select_related("template", "version"))
    if workspace_id is not None:
        query = query.filter(workspace_id=workspace_id)
    return query.order_by("-sent_at", "-pk").first()


def message_for_report(*, report: Report, failure: Failure | None, workspace_id: int | None) -> Message | None:
    """The message a report (or one failure in it) is about: VERP, then Message-ID, then — for a
    report that came with a workspace's hook key (`workspace_id` given) — the failed address's
    latest sent message. A report read from the bounce mailbox (`workspace_id` None: anyone can
    write to it) must name its message by the signed VERP address or the Message-ID of the mail
    it is about; an address alone would let a forged report suppress anyone."""
    by_verp = _message_by_ids(report.verp_ids, workspace_id)
    if by_verp:
        if failure is not None and len(by_verp) > 1:
            same = [m for m in by_verp if m.to_email.lower() == failure.address]
            if same:
                return same[0]
        return by_verp[0]
    found = _message_by_header(report.original_message_ids, workspace_id)
    if found is not None or workspace_id is None:
        return found
    return _message_by_address(failure.address if failure else "", workspace_id)


def _already(message: Message, kind: str, source_id: str) -> bool:
    return bool(source_id) and MessageEvent.objects.filter(message=message, kind=kind,
                                                           detail__source_id=source_id).exists()


def _settings(workspace_id: int) -> tuple[int, int]:
    row = MessagingSettings.objects.filter(workspace_id=workspace_id).values_list(
        "soft_bounce_limit", "soft_bounce_days").first()
    return row if row else (3, 30)


def _withdraw_marketing(message: Message) -> None:
    """A spam complaint withdraws every marketing consent (`marketing`, a ConsentRecord)."""
    from leadflow.consent.services import unsubscribe_all
    from leadflow.contacts.models import Contact

    contact = Contact.objects.filter(pk=message.contact_id, workspace_id=message.workspace_id).first()
    if contact is not None:
        unsubscribe_all(contact=contact, source="complaint",
                        wording=f"marked email {message.pk} as spam (feedback loop report)")


def outcome_apply(*, message: Message, outcome: str, address: str = "", status: str = "", diagnostic: str = "",
                  source_id: str = "", provider: str = "email", at: dt.datetime | None = None) -> Outcome:
    """Apply one outcome ("hard", "soft", "complaint", "delivered") to a message: its event, its
    status, and suppression. Applying the same `source_id` twice changes nothing."""
    from leadflow.consent.services import suppression_add
    from leadflow.messaging.events import message_event_record

    at = at or clock.now()
    address = (address or message.to_email).strip().lower()
    kind = {"hard": MessageEventKind.BOUNCED, "soft": MessageEventKind.SOFT_BOUNCED,
            "complaint": MessageEventKind.COMPLAINED, "delivered": MessageEventKind.DELIVERED}[outcome]
    result = Outcome(address=address, outcome=outcome, message_id=message.pk, status=status,
                     detail=diagnostic[:300])
    if _already(message, kind, source_id):
        result.duplicate = True
        return result
    detail = {"source_id": source_id, "provider": provider, "address": address}
    if status:
        detail["status"] = status
    if diagnostic:
        detail["diagnostic"] = diagnostic[:500]
    with transaction.atomic():
        message_event_record(message=message, kind=kind, at=at, detail=detail)
        reason_text = f"{status} {diagnostic}".strip()[:500]
        if outcome == "hard":
            Message.objects.filter(pk=message.pk).exclude(
                status__in=[MessageStatus.CANCELLED, MessageStatus.BLOCKED, MessageStatus.QUEUED,
                            MessageStatus.DEFERRED]).update(status=MessageStatus.BOUNCED)
            suppression_add(workspace_id=message.workspace_id, email=address, reason="hard_bounce",
                            detail=reason_text, message_id=message.pk, actor=f"bounce:{provider}")
            result.suppressed = True
        elif outcome == "soft":
            limit, days = _settings(message.workspace_id)
            recent = (MessageEvent.objects.filter(workspace_id=message.workspace_id,
                                                  kind=MessageEventKind.SOFT_BOUNCED,
                                                  at__gt=at - dt.timedelta(days=days),
                                                  message__to_email__iexact=address)
                      .values("message_id").distinct().count())
            if limit and recent >= limit:
                suppression_add(workspace_id=message.workspace_id, email=address, reason="soft_bounces",
                                detail=f"{recent} soft bounces in {days} days; last: {reason_text}"[:500],
                                message_id=message.pk, actor=f"bounce:{provider}")
                result.suppressed = True
        elif outcome == "complaint":
            suppression_add(workspace_id=message.workspace_id, email=address, reason="complaint",
                            detail=reason_text or "spam complaint", message_id=message.pk,
                            actor=f"complaint:{provider}")
            _withdraw_marketing(message)
            result.suppressed = True
        elif outcome == "delivered":
            Message.objects.filter(pk=message.pk, status=MessageStatus.SENT).update(status=MessageStatus.DELIVERED)
    return result


def report_apply(*, report: Report, workspace_id: int | None, at: dt.datetime | None = None) -> BounceResult:
    """Map a report to its message(s) and apply it."""
    result = BounceResult(kind=report.kind)
    at = at or clock.now()
    if report.kind == "unsubscribe" or (report.unsubscribe_ids and not report.failures):
        result.kind = "unsubscribe"
        from leadflow.consent.services import unsubscribe_from_message

        for message in _message_by_ids(report.unsubscribe_ids, workspace_id):
            unsubscribe_from_message(message=message, source="mailto")
            result.outcomes.append(Outcome(address=message.to_email.lower(), outcome="unsubscribed",
                                           message_id=message.pk))
        if not result.outcomes:
            result.note = "the unsubscribe address names no message of this workspace"
        return result
    applicable = [f for f in report.failures if f.outcome in ("hard", "soft", "complaint", "delivered")]
    if not applicable:
        result.note = {"delay": "a delay warning: the server is still trying",
                       "auto_reply": "an automatic reply, not a bounce",
                       "feedback": f"a feedback report of type {report.feedback_type!r}, not a complaint",
                       }.get(report.kind, "no failed recipient found")
        return result
    if report.verp_ids and len(applicable) > 1:
        # Our mail has one recipient per message: keep the failures about it (a DSN may list
        # the forwarding targets or other recipients of a relayed copy too).
        ours = {m.to_email.lower() for m in _message_by_ids(report.verp_ids, workspace_id)}
        applicable = [f for f in applicable if f.address in ours] or applicable[:1]
    only = len(applicable) == 1
    for failure in applicable:
        message = message_for_report(report=report, failure=failure, workspace_id=workspace_id)
        if message is None:
            result.outcomes.append(Outcome(address=failure.address, outcome=failure.outcome, status=failure.status,
                                           detail="no message of this workspace matches"))
            continue
        # A single failure in a report addressed to our VERP address is that message's recipient,
        # whatever name the remote server gave it (aliases, forwarding).
        address = message.to_email if only and report.verp_ids else failure.address
        result.outcomes.append(outcome_apply(
            message=message, outcome=failure.outcome, address=address, status=failure.status,
            diagnostic=failure.diagnostic, source_id=f"{report.source_id}|{failure.address}"[:250],
            provider=report.provider, at=at))
    return result


def bounce_process(*, workspace_id: int | None, raw: bytes) -> BounceResult:
    """Read one inbound message (a DSN, an ARF complaint, an SES notification by email or a mailto
    unsubscribe) and apply it. `workspace_id` None (the installation's bounce mailbox) lets the
    signed VERP address or the Message-ID decide the workspace."""
    if not isinstance(raw, (bytes, bytearray)) or not raw.strip():
        from leadflow.core.services import ServiceError

        raise ServiceError("the message is empty")
    msg = email.message_from_bytes(bytes(raw), policy=email.policy.compat32)
    report = bounce_classify(msg, raw=bytes(raw))
    return report_apply(report=report, workspace_id=workspace_id)


# --- the bounce mailbox ------------------------------------------------------------------------------

def _mailbox_url() -> str:
    """`LEADFLOW_BOUNCE_MAILBOX` from settings when they define it, else from the environment."""
    if hasattr(settings, "LEADFLOW_BOUNCE_MAILBOX"):
        return settings.LEADFLOW_BOUNCE_MAILBOX or ""
    return os.environ.get("LEADFLOW_BOUNCE_MAILBOX", "")


def _process_quietly(raw: bytes) -> bool:
    """Process one fetched message; False when it failed (it stays in the mailbox for next time)."""
    try:
        with transaction.atomic():
            bounce_process(workspace_id=None, raw=raw)
        return True
    except Exception:  # noqa: BLE001 - one bad message must not stop the mailbox
        log.exception("could not process a message from the bounce mailbox")
        return False


def _maildir_poll(path: str, limit: int) -> int:
    box = mailbox.Maildir(path, factory=None, create=False)
    done = []
    for key in box.iterkeys():
        if len(done) >= limit:
            break
        message = box.get_message(key)
        if message.get_subdir() == "cur" and "S" in message.get_flags():
            continue  # processed before
        if _process_quietly(box.get_bytes(key)):
            done.append(key)

    def move() -> None:
        for key in done:
            try:
                message = box.get_message(key)
            except KeyError:
                continue
            message.set_subdir("cur")
            message.add_flag("S")
            box[key] = message

    transaction.on_commit(move)
    return len(done)


def _imap_poll(url, limit: int) -> int:
    import imaplib

    port = url.port or (993 if url.scheme == "imaps" else 143)
    client = (imaplib.IMAP4_SSL if url.scheme == "imaps" else imaplib.IMAP4)(url.hostname, port, timeout=30)
    try:
        if url.scheme == "imap" and "STARTTLS" in client.capabilities:
            client.starttls()
        client.login(unquote(url.username or ""), unquote(url.password or ""))
        folder = unquote(url.path.lstrip("/")) or "INBOX"
        client.select(folder)
        _, data = client.uid("SEARCH", None, "UNSEEN")
        uids = (data[0] or b"").split()[:limit]
        done = []
        for uid in uids:
            _, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((p[1] for p in parts if isinstance(p, tuple)), None)
            if raw and _process_quietly(raw):
                done.append(uid)

        def flag() -> None:
            for uid in done:
                client.uid("STORE", uid, "+FLAGS", "(\\Seen)")
            client.logout()

        if done:
            transaction.on_commit(lambda: _safely(flag))
        else:
            client.logout()
        return len(done)
    except Exception:
        _safely(client.logout)
        raise


def _pop3_poll(url, limit: int) -> int:
    import poplib

    port = url.port or (995 if url.scheme == "pop3s" else 110)
    client = (poplib.POP3_SSL if url.scheme == "pop3s" else poplib.POP3)(url.hostname, port, timeout=30)
    try:
        client.user(unquote(url.username or ""))
        client.pass_(unquote(url.password or ""))
        count, _ = client.stat()
        done = []
        for number in range(1, min(count, limit) + 1):
            _, lines, _ = client.retr(number)
            if _process_quietly(b"\r\n".join(lines) + b"\r\n"):
                done.append(number)

        def delete() -> None:
            for number in done:
                client.dele(number)
            client.quit()  # deletions take effect here

        if done:
            transaction.on_commit(lambda: _safely(delete))
        else:
            client.quit()
        return len(done)
    except Exception:
        _safely(client.quit)
        raise


def _safely(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001
        log.warning("bounce mailbox clean-up failed; processed messages may be read again (harmless)",
                    exc_info=True)


def mailbox_poll_run(*, now: dt.datetime, limit: int = 500) -> int:
    """Read new messages from `LEADFLOW_BOUNCE_MAILBOX` and process each (a no-op when unset).

    `maildir:///path` (processed messages move to `cur` with the Seen flag), `imap://` /
    `imaps://user:pass@host[:port]/FOLDER` (unseen messages; processed ones flagged Seen) or
    `pop3://` / `pop3s://user:pass@host[:port]` (processed ones deleted). The mailbox is changed
    only after the timer's transaction commits, so a crash leaves messages to be read again;
    reading one again changes nothing (each report applies once).
    """
    target = _mailbox_url()
    if not target:
        return 0
    url = urlsplit(target)
    if url.scheme == "maildir":
        return _maildir_poll(unquote(url.netloc + url.path), limit)
    if url.scheme in ("imap", "imaps"):
        return _imap_poll(url, limit)
    if url.scheme in ("pop3", "pop3s"):
        return _pop3_poll(url, limit)
    log.error("LEADFLOW_BOUNCE_MAILBOX has an unknown scheme %r (maildir, imap, imaps, pop3, pop3s)", url.scheme)
    return 0
