"""Provider notifications about sent mail: Amazon SES (through SNS) and Postmark.

Each is turned into the same `bounces.Report` a DSN becomes, mapped to the message it is about
(the VERP envelope sender, else the Message-ID header, else the address's latest message) and
applied by `bounces.report_apply`, so a bounce means the same whichever way it arrives.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from leadflow.core.services import ServiceError
from leadflow.messaging.bounces import (
    VERP_PREFIX, BounceResult, Failure, Report, hard_or_soft, report_apply,
)
from leadflow.messaging.tokens import BadToken, verp_read

log = logging.getLogger(__name__)

# SES permanent bounce subtypes that are about the address itself.
SES_ADDRESS_SUBTYPES = frozenset({"noemail", "suppressed", "onaccountsuppressionlist"})
SES_CONTENT_SUBTYPES = frozenset({"messagetoolarge", "contentrejected", "attachmentrejected",
                                  "unsupportedsurrounding"})
POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress", "AddressChange"})
POSTMARK_SOFT = frozenset({"Transient", "SoftBounce", "DnsError", "Blocked", "DMARCPolicy"})
POSTMARK_METADATA_KEY = "lf_message"  # X-PM-Metadata-lf_message: the message's VERP token


@dataclass
class HookResult:
    """What a webhook call did: the applied result, or a note (subscription confirmation)."""

    result: BounceResult | None = None
    note: str = ""
    subscribe_url: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        body = self.result.as_dict() if self.result else {"kind": "none", "outcomes": []}
        if self.note:
            body["note"] = self.note
        if self.subscribe_url:
            body["subscribe_url"] = self.subscribe_url
        return body


def _verp_ids(addresses: list[str]) -> list[int]:
    found = []
    for address in addresses:
        local = str(address).strip().strip("<>").split("@", 1)[0]
        head, plus, token = local.partition("+")
        if plus and head.lower() == VERP_PREFIX:
            try:
                found.append(verp_read(token))
            except BadToken:
                continue
    return found


def _header(headers: list, name: str) -> list[str]:
    return [str(h.get("value", "")) for h in headers or [] if isinstance(h, dict)
            and str(h.get("name", "")).lower() == name]


def ses_report(notification: dict) -> Report:
    """A Report from one SES notification (`notificationType`, or `eventType` from event publishing)."""
    kind = str(notification.get("notificationType") or notification.get("eventType") or "")
    mail = notification.get("mail") if isinstance(notification.get("mail"), dict) else {}
    headers = mail.get("headers") if isinstance(mail.get("headers"), list) else []
    common = mail.get("commonHeaders") if isinstance(mail.get("commonHeaders"), dict) else {}
    report = Report(kind="unknown", provider="ses")
    report.verp_ids = _verp_ids([mail.get("source", "")] + _header(headers, "return-path"))
    report.original_message_ids = [v for v in _header(headers, "message-id") + [common.get("messageId") or ""] if v]
    ses_id = str(mail.get("messageId") or "")
    if kind == "Bounce":
        bounce = notification.get("bounce") if isinstance(notification.get("bounce"), dict) else {}
        bounce_type = str(bounce.get("bounceType") or "")
        subtype = str(bounce.get("bounceSubType") or "")
        report.kind = "bounce"
        report.source_id = f"ses:{bounce.get('feedbackId') or ses_id}"
        for recipient in bounce.get("bouncedRecipients") or []:
            if not isinstance(recipient, dict) or not recipient.get("emailAddress"):
                continue
            status = str(recipient.get("status") or "")
            diagnostic = str(recipient.get("diagnosticCode") or "")
            if bounce_type != "Permanent":
                outcome = "soft"
            elif subtype.lower() in SES_ADDRESS_SUBTYPES:
                outcome = "hard"
            elif subtype.lower() in SES_CONTENT_SUBTYPES:
                outcome = "soft"
            elif not status and not diagnostic:
                outcome = "hard"  # SES: "a general hard bounce … remove the address"
            else:
                outcome = hard_or_soft(status=status, diagnostic=diagnostic, permanent=True)
            report.failures.append(Failure(address=str(recipient["emailAddress"]).strip().lower(), outcome=outcome,
                                           status=status, diagnostic=f"{bounce_type}/{subtype}: {diagnostic}".strip()))
    elif kind == "Complaint":
        complaint = notification.get("complaint") if isinstance(notification.get("complaint"), dict) else {}
        feedback_type = str(complaint.get("complaintFeedbackType") or "abuse").lower()
        report.feedback_type = feedback_type
        report.source_id = f"ses:{complaint.get('feedbackId') or ses_id}"
        if feedback_type == "not-spam":
            report.kind = "feedback"
        else:
            report.kind = "complaint"
            report.failures = [Failure(address=str(r["emailAddress"]).strip().lower(), outcome="complaint",
                                       diagnostic=f"feedback-type: {feedback_type}")
                               for r in complaint.get("complainedRecipients") or []
                               if isinstance(r, dict) and r.get("emailAddress")]
    elif kind == "Delivery":
        delivery = notification.get("delivery") if isinstance(notification.get("delivery"), dict) else {}
        report.kind = "delivery"
        report.source_id = f"ses-delivery:{ses_id}"
        report.failures = [Failure(address=str(r).strip().lower(), outcome="delivered",
                                   diagnostic=str(delivery.get("smtpResponse") or ""))
                           for r in delivery.get("recipients") or [] if r]
    else:
        report.kind = "ignored"
    return report


def ses_hook_process(*, workspace_id: int, body: dict) -> HookResult:
    """An SNS HTTP(S) delivery: a Notification carrying an SES notification, or a subscription
    confirmation (answered with its SubscribeURL for the operator to open; LeadFlow fetches nothing)."""
    if not isinstance(body, dict):
        raise ServiceError("the body must be a JSON object")
    sns_type = body.get("Type")
    if sns_type == "SubscriptionConfirmation":
        url = str(body.get("SubscribeURL") or "")
        log.warning("SES/SNS subscription for workspace %s awaits confirmation: open %s", workspace_id, url)
        return HookResult(note="subscription confirmation: open subscribe_url once to confirm it",
                          subscribe_url=url)
    if sns_type == "UnsubscribeConfirmation":
        return HookResult(note="unsubscribe confirmation: nothing to do")
    if sns_type == "Notification":
        message = body.get("Message")
        try:
            notification = json.loads(message) if isinstance(message, str) else message
        except ValueError:
            raise ServiceError("Message is not JSON") from None
    else:
        notification = body  # posted directly, without SNS
    if not isinstance(notification, dict) or not (notification.get("notificationType") or notification.get("eventType")):
        raise ServiceError("not an SES notification: expected notificationType or eventType")
    report = ses_report(notification)
    if body.get("MessageId") and not report.source_id:
        report.source_id = f"sns:{body['MessageId']}"
    return HookResult(result=report_apply(report=report, workspace_id=workspace_id))


def postmark_report(body: dict) -> Report:
    record = str(body.get("RecordType") or "")
    bounce_type = str(body.get("Type") or "")
    metadata = body.get("Metadata") if isinstance(body.get("Metadata"), dict) else {}
    report = Report(kind="unknown", provider="postmark")
    token = metadata.get(POSTMARK_METADATA_KEY)
    if isinstance(token, str) and token:
        report.verp_ids = _verp_ids([f"{VERP_PREFIX}+{token}@x"])
    if record == "Delivery":
        report.kind = "delivery"
        report.source_id = f"postmark-delivery:{body.get('MessageID', '')}"
        address = str(body.get("Recipient") or "").strip().lower()
        if address:
            report.failures = [Failure(address=address, outcome="delivered", diagnostic=str(body.get("Details") or ""))]
        return report
    address = str(body.get("Email") or "").strip().lower()
    report.source_id = f"postmark:{body.get('ID') or body.get('MessageID', '')}"
    details = " ".join(str(body.get(k) or "") for k in ("Description", "Details")).strip()
    if record == "SpamComplaint" or bounce_type == "SpamComplaint":
        report.kind = "complaint"
        report.feedback_type = "abuse"
        outcome = "complaint"
    elif bounce_type in POSTMARK_HARD:
        report.kind, outcome = "bounce", "hard"
    elif bounce_type in POSTMARK_SOFT:
        report.kind, outcome = "bounce", "soft"
    else:
        report.kind = "ignored"
        return report
    if address:
        report.failures = [Failure(address=address, outcome=outcome, diagnostic=f"{bounce_type}: {details}"[:500])]
    content = body.get("Content")
    if isinstance(content, str) and content.strip() and not report.verp_ids:
        import email as email_lib

        from leadflow.messaging.bounces import bounce_classify

        dump = bounce_classify(email_lib.message_from_string(content))
        report.verp_ids, report.original_message_ids = dump.verp_ids, dump.original_message_ids
    return report


def postmark_hook_process(*, workspace_id: int, body: dict) -> HookResult:
    """A Postmark webhook (Bounce with Type HardBounce/SoftBounce/…, SpamComplaint, Delivery)."""
    if not isinstance(body, dict) or not (body.get("RecordType") or body.get("Type")):
        raise ServiceError("not a Postmark webhook: expected RecordType")
    report = postmark_report(body)
    if report.kind == "ignored":
        return HookResult(note=f"Postmark {body.get('RecordType')}/{body.get('Type')} needs no action")
    return HookResult(result=report_apply(report=report, workspace_id=workspace_id))
