"""The consent gate. SCAFFOLD: replaced by the consent work."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from leadflow.consent.models import Suppression


@dataclass(frozen=True)
class GateDecision:
    action: str  # "send", "defer" or "block"
    reason: str = ""
    until: dt.datetime | None = None


def gate_check(*, message, now: dt.datetime) -> GateDecision:
    if Suppression.objects.filter(workspace_id=message.workspace_id, email=message.to_email.lower(),
                                  lifted_at__isnull=True).exists():
        return GateDecision("block", "suppressed")
    return GateDecision("send")
