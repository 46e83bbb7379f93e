"""Lifecycle stages and their history, routing, sales assignments, tasks, alerts and the email outbox."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace

# The stage keys the engine itself moves contacts to. A workspace may rename their labels and add
# stages of its own, but these keys must stay in its list (lifecycle.rules.stages_validate).
SUBSCRIBER = "subscriber"
LEAD = "lead"
MQL = "marketing_qualified"
SAL = "sales_accepted"
SQL = "sales_qualified"
OPPORTUNITY = "opportunity"
CUSTOMER = "customer"
EVANGELIST = "evangelist"
RECYCLED = "recycled"
DISQUALIFIED = "disqualified"
CHURNED = "churned"

DEFAULT_STAGES = [
    {"key": SUBSCRIBER, "label": "Subscriber", "kind": "funnel"},
    {"key": LEAD, "label": "Lead", "kind": "funnel"},
    {"key": MQL, "label": "Marketing qualified (MQL)", "kind": "funnel"},
    {"key": SAL, "label": "Sales accepted (SAL)", "kind": "funnel"},
    {"key": SQL, "label": "Sales qualified (SQL)", "kind": "funnel"},
    {"key": OPPORTUNITY, "label": "Opportunity", "kind": "funnel"},
    {"key": CUSTOMER, "label": "Customer", "kind": "funnel"},
    {"key": EVANGELIST, "label": "Evangelist", "kind": "funnel"},
    {"key": RECYCLED, "label": "Recycled", "kind": "exit"},
    {"key": DISQUALIFIED, "label": "Disqualified", "kind": "exit"},
    {"key": CHURNED, "label": "Churned", "kind": "exit"},
]


def _default_stages() -> list:
    return [dict(s) for s in DEFAULT_STAGES]


def _default_grades() -> list:
    return ["A", "B"]


def _default_hot_events() -> list:
    return ["Demo Requested", "Contact Sales"]


def _default_subscriber_events() -> list:
    return ["Newsletter Subscribed"]


class BreachAction(models.TextChoices):
    REASSIGN = "reassign", "Reassign to the next rep"
    ESCALATE = "escalate", "Escalate to the owner's manager"


class LifecycleSettings(models.Model):
    """A workspace's stages, qualification rules, SLAs and default routing pool."""

    workspace = models.OneToOneField(Workspace, on_delete=models.CASCADE, related_name="lifecycle_settings")
    stages = models.JSONField(default=_default_stages,
                              help_text="ordered list of {key, label, kind: funnel|exit}")
    mql_grades = models.JSONField(default=_default_grades, help_text="fit grades that can become MQL")
    mql_engagement_threshold = models.FloatField(default=40.0)
    hot_events = models.JSONField(default=_default_hot_events,
                                  help_text="track events that make a lead MQL at once")
    subscriber_events = models.JSONField(default=_default_subscriber_events,
                                         help_text="events after which a new contact is a subscriber, not a lead")
    inactive_days = models.PositiveIntegerField(default=30)
    accept_sla_hours = models.FloatField(default=24.0)
    work_sla_hours = models.FloatField(default=72.0)
    on_accept_breach = models.CharField(max_length=16, choices=BreachAction.choices,
                                        default=BreachAction.REASSIGN)
    recycle_days = models.PositiveIntegerField(default=30)
    default_pool = models.JSONField(default=list, blank=True, help_text="user ids, in round-robin order")
    default_pool_pointer = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        verbose_name_plural = "lifecycle settings"
        constraints = [
            models.CheckConstraint(condition=models.Q(on_accept_breach__in=BreachAction.values),
                                   name="lifecycle_breach_valid"),
        ]


class StageChange(models.Model):
    """One transition of a contact's lifecycle stage: the history velocity reports read."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="stage_changes")
    from_stage = models.CharField(max_length=32, blank=True, default="")
    to_stage = models.CharField(max_length=32)
    at = models.DateTimeField(default=clock.now)
    reason = models.CharField(max_length=500, blank=True, default="")
    actor = models.CharField(max_length=200, help_text="rule:…, user:ID, system:sla, api:PREFIX")

    class Meta:
        indexes = [
            models.Index(fields=["contact", "at"], name="stagechange_contact_at"),
            models.Index(fields=["workspace", "to_stage", "at"], name="stagechange_stage_at"),
        ]


class SalesRep(models.Model):
    """A user's sales profile in one workspace. A member without one counts as available."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sales_profiles")
    available = models.BooleanField(default=True)
    manager = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="managed_reps")
    max_open_leads = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "user"], name="salesrep_unique_user")]


class RoutingRule(models.Model):
    """Where a new MQL goes: every condition set must match; the lowest priority number wins."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=200)
    priority = models.IntegerField(default=100)
    countries = models.JSONField(default=list, blank=True, help_text="ISO 3166 alpha-2 codes")
    employees_min = models.PositiveIntegerField(null=True, blank=True)
    employees_max = models.PositiveIntegerField(null=True, blank=True)
    source_channels = models.JSONField(default=list, blank=True)
    target_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    pool = models.JSONField(default=list, blank=True, help_text="user ids, in round-robin order")
    pointer = models.PositiveIntegerField(default=0, help_text="next position in the pool")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        indexes = [models.Index(fields=["workspace", "priority"])]


class AssignmentStatus(models.TextChoices):
    ASSIGNED = "assigned", "Assigned"
    ACCEPTED = "accepted", "Accepted"
    WORKED = "worked", "Worked"
    ESCALATED = "escalated", "Escalated"
    DISQUALIFIED = "disqualified", "Disqualified"
    RECYCLED = "recycled", "Recycled"
    REASSIGNED = "reassigned", "Reassigned"
    CLOSED = "closed", "Closed"


OPEN_STATUSES = (AssignmentStatus.ASSIGNED, AssignmentStatus.ACCEPTED, AssignmentStatus.WORKED,
                 AssignmentStatus.ESCALATED)


class Assignment(models.Model):
    """A lead handed to one salesperson. At most one open assignment per contact."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="assignments")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                              related_name="assignments")
    status = models.CharField(max_length=16, choices=AssignmentStatus.choices, default=AssignmentStatus.ASSIGNED)
    via = models.CharField(max_length=32, blank=True, default="",
                           help_text="account_owner, rule, default_pool, reassign, escalation")
    rule = models.ForeignKey(RoutingRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    assigned_at = models.DateTimeField(default=clock.now)
    accept_due_at = models.DateTimeField(null=True, blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    work_due_at = models.DateTimeField(null=True, blank=True)
    worked_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True, default="")
    notes = models.TextField(blank=True, default="")
    activities = models.JSONField(default=list, blank=True, help_text="logged calls, emails, meetings")
    return_at = models.DateTimeField(null=True, blank=True, help_text="when a recycled lead comes back")
    returned_at = models.DateTimeField(null=True, blank=True, help_text="when the recycled lead came back")
    previous = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "contact"], name="assignment_one_open",
                                    condition=models.Q(status__in=[s.value for s in OPEN_STATUSES])),
            models.CheckConstraint(condition=models.Q(status__in=AssignmentStatus.values),
                                   name="assignment_status_valid"),
        ]
        indexes = [
            models.Index(fields=["workspace", "owner", "status"], name="assignment_inbox"),
            models.Index(fields=["status", "accept_due_at"], name="assignment_accept_due"),
            models.Index(fields=["status", "work_due_at"], name="assignment_work_due"),
            models.Index(fields=["status", "return_at"], name="assignment_return_due"),
        ]

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class SalesTask(models.Model):
    """A to-do for one salesperson about one contact (call them, send the proposal): made by a
    journey step or by hand, open until someone marks it done. `dedupe_key` (a journey step's
    enrollment, node and step count) makes a redone step find its task instead of adding one."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="sales_tasks")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                              related_name="sales_tasks")
    title = models.CharField(max_length=200)
    note = models.TextField(blank=True, default="")
    due_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=clock.now)
    created_by = models.CharField(max_length=200, help_text="journey:SLUG, user:ID, key:PREFIX")
    journey_slug = models.CharField(max_length=100, blank=True, default="", help_text="the journey that made it")
    journey_name = models.CharField(max_length=200, blank=True, default="")
    journey_step = models.CharField(max_length=100, blank=True, default="", help_text="the node id in that journey")
    done_at = models.DateTimeField(null=True, blank=True)
    done_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+")
    dedupe_key = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "dedupe_key"], name="salestask_once_per_key",
                                    condition=~models.Q(dedupe_key="")),
            models.CheckConstraint(condition=models.Q(done_at__isnull=False) | models.Q(done_by__isnull=True),
                                   name="salestask_done_by_needs_done_at"),
            models.CheckConstraint(condition=~models.Q(title=""), name="salestask_has_title"),
        ]
        indexes = [
            models.Index(fields=["workspace", "owner", "done_at", "due_at"], name="salestask_inbox"),
            models.Index(fields=["contact", "done_at"], name="salestask_contact"),
        ]

    @property
    def is_done(self) -> bool:
        return self.done_at is not None

    @property
    def overdue(self) -> bool:
        """Open and past its due time (by the injected clock)."""
        return self.done_at is None and self.due_at is not None and self.due_at < clock.now()


class SalesAlert(models.Model):
    """An in-app item for a salesperson, with a snapshot of what made the lead hot."""

    class Kind(models.TextChoices):
        NEW_LEAD = "new_lead", "New lead"
        ESCALATION = "escalation", "Escalation"
        TASK = "task", "New task"
        NOTE = "journey_note", "Note from a journey"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sales_alerts")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="sales_alerts")
    assignment = models.ForeignKey(Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.NEW_LEAD)
    created_at = models.DateTimeField(default=clock.now)
    read_at = models.DateTimeField(null=True, blank=True)
    context = models.JSONField(default=dict, blank=True)
    task = models.ForeignKey(SalesTask, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    dedupe_key = models.CharField(max_length=255, blank=True, default="",
                                  help_text="a journey step's key: a redone step makes no second alert")

    class Meta:
        indexes = [models.Index(fields=["workspace", "user", "read_at"], name="salesalert_inbox")]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "dedupe_key"], name="salesalert_once_per_key",
                                    condition=~models.Q(dedupe_key="")),
        ]


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    REVIEW = "review", "Needs review (interrupted mid-send)"


class Notification(models.Model):
    """An email LeadFlow sends its own users (sales alerts): the outbox row the dispatcher sends."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    contact = models.ForeignKey(Contact, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="sales_notifications")
    alert = models.ForeignKey(SalesAlert, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    to_address = models.CharField(max_length=320)
    subject = models.CharField(max_length=300)
    text_body = models.TextField()
    html_body = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=clock.now)
    next_attempt_at = models.DateTimeField(default=clock.now)
    sending_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=NotificationStatus.values),
                                   name="notification_status_valid"),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="notification_due")]


class QuietMark(models.Model):
    """A quiet spell already announced with a `Lead Went Quiet` event (one per spell)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="+")
    quiet_since = models.DateTimeField(help_text="the contact's last_seen_at when the spell was marked")
    marked_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["contact", "quiet_since"], name="quietmark_unique_spell")]
