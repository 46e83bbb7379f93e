"""Consent records: what a person agreed to (or withdrew), the exact wording, when and from where."""

from __future__ import annotations

from django.db import models

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace


class ConsentStatus(models.TextChoices):
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"


class ConsentRecord(models.Model):
    """Append-only: a later record supersedes an earlier one for the same topic."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="consents")
    topic = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=ConsentStatus.choices)
    wording = models.TextField(blank=True)
    source = models.CharField(max_length=200, help_text="form:<slug>, api, import:<label>…")
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    event_message_id = models.CharField(max_length=255, blank=True)
    at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=["granted", "withdrawn"]),
                                   name="consent_status_valid"),
            models.UniqueConstraint(fields=["workspace", "event_message_id", "topic"],
                                    name="consent_once_per_event",
                                    condition=~models.Q(event_message_id="")),
        ]
        indexes = [models.Index(fields=["contact", "topic", "at"])]
