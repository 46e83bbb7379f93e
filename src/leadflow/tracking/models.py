"""The append-only event log, lead magnets and hosted forms."""

from __future__ import annotations

from django.db import models

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace


class EventType(models.TextChoices):
    IDENTIFY = "identify"
    TRACK = "track"
    PAGE = "page"
    SCREEN = "screen"
    GROUP = "group"
    ALIAS = "alias"


class Event(models.Model):
    """One Segment-compatible call as received. The payload columns never change.

    `contact` and `processed_at` are derived: the identity processor fills them, and a merge
    re-points `contact` to the surviving profile.
    """

    id = models.BigAutoField(primary_key=True)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    message_id = models.CharField(max_length=255)
    type = models.CharField(max_length=16, choices=EventType.choices)
    event = models.CharField(max_length=255, blank=True, default="")
    anonymous_id = models.CharField(max_length=255, blank=True, default="")
    user_id = models.CharField(max_length=255, blank=True, default="")
    group_id = models.CharField(max_length=255, blank=True, default="")
    previous_id = models.CharField(max_length=255, blank=True, default="")
    properties = models.JSONField(default=dict, blank=True)
    traits = models.JSONField(default=dict, blank=True)
    context = models.JSONField(default=dict, blank=True)
    integrations = models.JSONField(default=dict, blank=True)
    timestamp = models.DateTimeField(help_text="when it happened, corrected for client clock skew")
    original_timestamp = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()
    shard = models.SmallIntegerField()
    # No index of its own: `event_contact_time` starts with the contact and serves every lookup by
    # contact (merges, deletions, timelines) at no extra write cost.
    contact = models.ForeignKey(Contact, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="events", db_constraint=False, db_index=False)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="",
                             help_text="why processing this event failed, if it did")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "message_id"], name="event_unique_message"),
            models.CheckConstraint(condition=models.Q(type__in=[t.value for t in EventType]),
                                   name="event_type_valid"),
        ]
        indexes = [
            models.Index(fields=["shard", "id"], name="event_pending",
                         condition=models.Q(processed_at__isnull=True)),
            models.Index(fields=["contact", "timestamp"], name="event_contact_time"),
            models.Index(fields=["workspace", "event", "timestamp"], name="event_name_time"),
            # Named-event tests per person (segment filters); see migration 0002.
            models.Index(fields=["contact", "event", "timestamp"], name="event_contact_name_time",
                         condition=models.Q(contact__isnull=False) & ~models.Q(event="")),
        ]


class ProcessingShard(models.Model):
    """A slice of the event log that one worker at a time processes (row-locked on PostgreSQL)."""

    shard = models.SmallIntegerField(primary_key=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    processed = models.BigIntegerField(default=0)


class MagnetKind(models.TextChoices):
    EBOOK = "ebook", "Ebook"
    WHITEPAPER = "whitepaper", "Whitepaper"
    WEBINAR = "webinar", "Webinar"
    TRIAL = "trial", "Free trial"
    CASE_STUDY = "case_study", "Case study"
    TEMPLATE = "template", "Template"
    CHECKLIST = "checklist", "Checklist"
    REPORT = "report", "Report"
    OTHER = "other", "Other"


class LeadMagnet(models.Model):
    """A tracked asset offered in exchange for contact details."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="lead_magnets")
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=MagnetKind.choices, default=MagnetKind.EBOOK)
    delivery_url = models.URLField(max_length=1000)
    description = models.TextField(blank=True)
    email_delivery = models.BooleanField(
        default=True, help_text="email the download link to whoever asks for it (a transactional message)")
    delivery_template = models.ForeignKey(
        "messaging.Template", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="transactional template of the delivery email; blank: the built-in one")
    created_at = models.DateTimeField(default=clock.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "slug"], name="magnet_unique_slug")]

    def __str__(self) -> str:
        return self.name


class Form(models.Model):
    """A hosted form. `fields` is a list of {name, label, type, required, options}."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="forms")
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    fields = models.JSONField(default=list)
    submit_label = models.CharField(max_length=100, default="Submit")
    consent_text = models.TextField(blank=True, help_text="exact wording of the consent checkbox")
    consent_required = models.BooleanField(default=False)
    consent_topic = models.CharField(max_length=100, blank=True, default="marketing")
    lead_magnet = models.ForeignKey(LeadMagnet, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="forms")
    success_message = models.TextField(blank=True, default="Thank you!")
    redirect_url = models.URLField(max_length=1000, blank=True)
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "slug"], name="form_unique_slug")]

    def __str__(self) -> str:
        return self.name
