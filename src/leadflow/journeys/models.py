"""Journeys: definitions and their versions, the people in them (enrollments, with their timers),
what happened at every step, stay-in-touch content streams, and webhook endpoints with their
outbox of deliveries.

An enrollment is one person's walk through one version of a journey. Its `node` and `due_at` are
its timer: the engine (`leadflow.journeys.engine`) advances, in batches, every active enrollment
whose `due_at` has come, locking rows with `SELECT … FOR UPDATE SKIP LOCKED` so any number of
workers share the work. Every effect of a step (a message in the outbox, a webhook delivery, a
trait change) is written in the transaction that moves the enrollment on, so a crash redoes the
step whole and nothing happens twice (DESIGN principles 1 and 4).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace


class JourneyStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    LIVE = "live", "Live"
    PAUSED = "paused", "Paused"
    ARCHIVED = "archived", "Archived"


class Journey(models.Model):
    """A nurture program. `version` is the published version new people enter; people already in
    finish on the version they entered (or are migrated node by node when a version says so)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="journeys")
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    status = models.CharField(max_length=10, choices=JourneyStatus.choices, default=JourneyStatus.DRAFT)
    version = models.ForeignKey("JourneyVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+", help_text="the published version people enter")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+", help_text="alerted when the journey pauses itself")
    paused_reason = models.CharField(max_length=500, blank=True, default="")
    paused_at = models.DateTimeField(null=True, blank=True)
    breaker_tripped_at = models.DateTimeField(null=True, blank=True,
                                              help_text="set when the circuit breaker paused it; it resumes itself")
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)
    last_entry_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "slug"], name="journey_unique_slug"),
            models.CheckConstraint(condition=models.Q(status__in=JourneyStatus.values), name="journey_status_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class JourneyVersion(models.Model):
    """One immutable definition of a journey (`leadflow.journeys.language`). `migrate` maps nodes
    of the previous published version to nodes of this one: people waiting at a mapped node move
    here when this version is published; everyone else finishes on their own version."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    definition = models.JSONField()
    migrate = models.JSONField(default=dict, blank=True, help_text="old node id → new node id")
    created_at = models.DateTimeField(default=clock.now)
    actor = models.CharField(max_length=200, blank=True, default="")
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["journey", "number"], name="journey_version_unique")]


class EnrollmentState(models.TextChoices):
    ACTIVE = "active", "In the journey"
    COMPLETED = "completed", "Completed"
    CONVERTED = "converted", "Converted"
    EXITED = "exited", "Exited"
    FAILED = "failed", "Failed"


ENDED_STATES = ("completed", "converted", "exited", "failed")


class Enrollment(models.Model):
    """One person's walk through one version of a journey; the row is also its timer.

    Active rows wait at `node` until `due_at`; a row waiting for an event has `wait_event` set
    (the pipeline wakes it when the event arrives, `resume` then says which way it goes on).
    `steps` counts the nodes passed: with the enrollment and node it makes the dedupe key of
    every effect, so a step redone after a crash finds its message already queued.
    `group` is `holdout` for the control group of a holdout node (they receive nothing)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="enrollments", db_index=False)
    version = models.ForeignKey(JourneyVersion, on_delete=models.PROTECT, related_name="enrollments")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="enrollments", db_index=False)
    node = models.CharField(max_length=64)
    state = models.CharField(max_length=10, choices=EnrollmentState.choices, default=EnrollmentState.ACTIVE)
    due_at = models.DateTimeField(null=True, blank=True)
    wait_event = models.CharField(max_length=255, blank=True, default="")
    resume = models.CharField(max_length=16, blank=True, default="", help_text="event | timeout, after a wait")
    group = models.CharField(max_length=10, blank=True, default="", help_text="holdout for the control group")
    entry_key = models.CharField(max_length=100, help_text="what let them in: makes entry idempotent")
    steps = models.PositiveIntegerField(default=0)
    last_node = models.CharField(max_length=64, blank=True, default="", help_text="the node passed before `node`")
    data = models.JSONField(default=dict, blank=True, help_text="the triggering event's properties and step state")
    entered_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["journey", "contact", "entry_key"], name="enrollment_once_per_entry"),
            models.CheckConstraint(condition=models.Q(state__in=EnrollmentState.values), name="enrollment_state_valid"),
        ]
        # `journey` and `contact` have no index of their own: the unique constraint and
        # `enrollment_contact` lead with them, and every advanced enrollment writes each index.
        indexes = [
            models.Index(fields=["due_at", "id"], name="enrollment_due", condition=models.Q(state="active")),
            models.Index(fields=["journey", "node", "state"], name="enrollment_node"),
            models.Index(fields=["contact", "journey"], name="enrollment_contact"),
            models.Index(fields=["contact", "wait_event"], name="enrollment_waiting_event",
                         condition=models.Q(state="active") & ~models.Q(wait_event="")),
        ]


class StepKind(models.TextChoices):
    ENTERED = "entered", "Entered"
    PASSED = "passed", "Passed"
    SENT = "sent", "Message queued"
    WEBHOOK = "webhook", "Webhook queued"
    WAITING = "waiting", "Waiting"
    SKIPPED = "skipped", "Skipped"
    CONVERTED = "converted", "Converted"
    EXITED = "exited", "Exited"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    MIGRATED = "migrated", "Migrated"


class EnrollmentStep(models.Model):
    """What happened to an enrollment at a node: the journey page's figures per node and a
    contact's journey history are read from these rows."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="+", db_index=False)
    enrollment = models.ForeignKey(Enrollment, on_delete=models.CASCADE, related_name="history", db_index=False)
    contact_id = models.BigIntegerField()
    node = models.CharField(max_length=64)
    kind = models.CharField(max_length=10, choices=StepKind.choices)
    at = models.DateTimeField(default=clock.now)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        # The foreign keys' own indexes would repeat the first column of these two.
        indexes = [
            models.Index(fields=["journey", "node", "kind"], name="enrollment_step_node"),
            models.Index(fields=["enrollment", "at"], name="enrollment_step_enrollment"),
        ]


class TriggerState(models.Model):
    """Which contacts meet a journey's score or grade threshold (`key`, e.g. `engagement_score>=40`,
    `fit_grade>=B`), so that only a crossing (from not meeting it to meeting it) enters them, not
    every batch they stay above it (`leadflow.journeys.triggers`)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=100)
    at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["journey", "contact", "key"], name="trigger_state_unique")]


class Stream(models.Model):
    """A stay-in-touch content stream (an ordered pool of emails). Content added later reaches
    people who had everything (they were `exhausted`) at their next cadence."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "slug"], name="stream_unique_slug")]


class StreamItem(models.Model):
    """One piece of a stream: a template, for everyone or for one role (the contact's role trait)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField()
    template = models.ForeignKey("messaging.Template", on_delete=models.PROTECT, related_name="+")
    role = models.CharField(max_length=64, blank=True, default="", help_text="empty: every role")
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["position", "pk"]
        constraints = [models.UniqueConstraint(fields=["stream", "template", "role"], name="stream_item_unique")]


class WebhookEndpoint(models.Model):
    """Where a journey's webhook steps deliver (SMS, ads audiences, direct mail, CRM, chat…).
    Signed with Standard Webhooks; disabled when the receiver answers 410 Gone."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    url = models.URLField(max_length=1000)
    secret = models.CharField(max_length=200, help_text="whsec_ + base64")
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "slug"], name="webhook_endpoint_unique_slug")]


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"
    REVIEW = "review", "Needs review"


class WebhookDelivery(models.Model):
    """One webhook to deliver: the outbox row, written in the step's transaction. `msg_id` is the
    Standard Webhooks `webhook-id` (the same on every retry, so receivers can deduplicate)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    journey = models.ForeignKey(Journey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    enrollment = models.ForeignKey(Enrollment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    contact = models.ForeignKey(Contact, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    node = models.CharField(max_length=64, blank=True, default="")
    event_type = models.CharField(max_length=100)
    payload = models.JSONField(default=dict)
    msg_id = models.CharField(max_length=64)
    dedupe_key = models.CharField(max_length=255)
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=clock.now)
    sending_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "dedupe_key"], name="webhook_delivery_once_per_key"),
            models.CheckConstraint(condition=models.Q(status__in=DeliveryStatus.values), name="webhook_delivery_status_valid"),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_delivery_due")]
