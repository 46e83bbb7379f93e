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


# The topic every marketing message also depends on: withdrawing it unsubscribes from everything.
ALL_MARKETING = "marketing"


class TopicMode(models.TextChoices):
    OPT_IN = "opt_in", "Opt-in (only people who said yes)"
    OPT_OUT = "opt_out", "Opt-out (everyone who has not said no)"


class Topic(models.Model):
    """A subscription topic (newsletter, product updates, events, offers…). Whether a person is
    subscribed is the latest ConsentRecord for the topic, else the topic's mode; every marketing
    message also needs `marketing` not withdrawn."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="topics")
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    description = models.CharField(max_length=500, blank=True, default="")
    mode = models.CharField(max_length=8, choices=TopicMode.choices, default=TopicMode.OPT_OUT)
    # Double opt-in: for every subscriber, or for those in these ISO countries (e.g. ["DE", "AT"]).
    double_opt_in = models.BooleanField(default=False)
    double_opt_in_countries = models.JSONField(default=list, blank=True)
    position = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=clock.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "slug"], name="topic_unique_slug"),
            models.CheckConstraint(condition=models.Q(mode__in=["opt_in", "opt_out"]), name="topic_mode_valid"),
        ]
        ordering = ["position", "pk"]

    def __str__(self) -> str:
        return self.name


class SuppressionReason(models.TextChoices):
    HARD_BOUNCE = "hard_bounce", "Hard bounce"
    SOFT_BOUNCES = "soft_bounces", "Repeated soft bounces"
    COMPLAINT = "complaint", "Spam complaint"
    MANUAL = "manual", "Added by hand"
    INVALID = "invalid", "Invalid address"
    ERASED = "erased", "Erased (privacy request)"


class Suppression(models.Model):
    """An address nothing marketing goes to (and, for bounces, invalid or erased addresses,
    nothing transactional either). Keyed by the lower-cased address, not the contact: a merged,
    deleted or re-imported profile with the same address stays suppressed. Lifting keeps the row."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="suppressions")
    email = models.CharField(max_length=320)
    reason = models.CharField(max_length=16, choices=SuppressionReason.choices)
    detail = models.CharField(max_length=500, blank=True, default="")
    message_id = models.BigIntegerField(null=True, blank=True, help_text="the messaging.Message that caused it")
    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "email"], condition=models.Q(lifted_at__isnull=True),
                                    name="suppression_one_active"),
            models.CheckConstraint(condition=models.Q(reason__in=SuppressionReason.values),
                                   name="suppression_reason_valid"),
        ]
        indexes = [models.Index(fields=["workspace", "email"], name="suppression_email")]


class MarketingPause(models.Model):
    """"Pause my emails for N weeks" from the preference centre: no marketing until `until`."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="marketing_pauses")
    until = models.DateTimeField()
    at = models.DateTimeField(default=clock.now)

    class Meta:
        indexes = [models.Index(fields=["contact", "until"])]


class OptInRequest(models.Model):
    """A pending double opt-in: the confirmation email was queued; consent is recorded only when
    the signed link is followed (`confirmed_at`)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="optin_requests")
    topic = models.CharField(max_length=100)
    wording = models.TextField(blank=True, default="")
    source = models.CharField(max_length=200, blank=True, default="")
    ip = models.GenericIPAddressField(null=True, blank=True)
    requested_at = models.DateTimeField(default=clock.now)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    message_id = models.BigIntegerField(null=True, blank=True, help_text="the confirmation messaging.Message")

    class Meta:
        indexes = [models.Index(fields=["contact", "topic"])]
