"""Email: layouts, templates and their versions, sending servers and domains, broadcasts and A/B
tests, the outbox of messages and what happened to each of them.

Every message is a row (`Message`) written in the transaction that decided to send it; the
dispatcher renders, gates, signs and sends it (DESIGN principles 4 and 5). What happens afterwards
(sent, delivered, opened, clicked, bounced, unsubscribed, complained) is a `MessageEvent` row and,
for the person's own actions, an event in the log.
"""

from __future__ import annotations

from django.db import models

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace


class MessagingSettings(models.Model):
    """A workspace's sending rules: the sender, the postal address every marketing email carries
    (CAN-SPAM), quiet hours in the contact's timezone, frequency caps across all sends, and when
    soft bounces suppress."""

    workspace = models.OneToOneField(Workspace, on_delete=models.CASCADE, related_name="messaging_settings")
    from_name = models.CharField(max_length=200, blank=True, default="")
    from_email = models.CharField(max_length=320, blank=True, default="")
    reply_to = models.CharField(max_length=320, blank=True, default="")
    postal_address = models.TextField(blank=True, default="")
    # Quiet hours as local times of day; start > end spans midnight (21:00–08:00). Null: none.
    quiet_start = models.TimeField(null=True, blank=True)
    quiet_end = models.TimeField(null=True, blank=True)
    default_timezone = models.CharField(max_length=64, default="UTC")
    cap_per_day = models.PositiveIntegerField(null=True, blank=True)
    cap_per_week = models.PositiveIntegerField(null=True, blank=True)
    soft_bounce_limit = models.PositiveIntegerField(default=3)
    soft_bounce_days = models.PositiveIntegerField(default=30)
    updated_at = models.DateTimeField(default=clock.now)


class SendingServer(models.Model):
    """An SMTP server or provider relay. `url` is `smtp://user:pass@host:port` (STARTTLS when
    offered) or `smtps://…` (implicit TLS); blank means `LEADFLOW_SMTP_URL`. Its circuit opens
    (`paused_until`) after `breaker_threshold` failures in a row and closes on its own."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="sending_servers")
    name = models.CharField(max_length=200)
    url = models.CharField(max_length=500, blank=True, default="")
    is_default = models.BooleanField(default=False)
    rate_per_second = models.FloatField(default=50.0)
    pool_size = models.PositiveIntegerField(default=2)
    breaker_threshold = models.PositiveIntegerField(default=5)
    breaker_cooldown_seconds = models.PositiveIntegerField(default=300)
    consecutive_failures = models.PositiveIntegerField(default=0)
    paused_until = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "name"], name="sendingserver_unique_name"),
            models.UniqueConstraint(fields=["workspace"], condition=models.Q(is_default=True),
                                    name="sendingserver_one_default"),
        ]

    def __str__(self) -> str:
        return self.name


class SendingDomain(models.Model):
    """A domain mail is sent from: its DKIM key (generated here, the public half published in DNS)
    and the bounce domain for VERP envelope senders (`bounces+TOKEN@bounce_domain`)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="sending_domains")
    domain = models.CharField(max_length=253)
    dkim_selector = models.CharField(max_length=63, default="leadflow")
    dkim_private_key = models.TextField(help_text="PEM; never shown after creation")
    dkim_public_key = models.TextField(help_text="the base64 p= value for the DNS TXT record")
    bounce_domain = models.CharField(max_length=253, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "domain"], name="sendingdomain_unique")]

    def __str__(self) -> str:
        return self.domain


class Layout(models.Model):
    """A shared frame for templates: header and footer around `{{ content }}`. The footer carries
    the sender's postal address and the unsubscribe link; a marketing template whose layout lacks
    them cannot be approved."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="email_layouts")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100)
    html = models.TextField()
    text = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "slug"], name="layout_unique_slug")]

    def __str__(self) -> str:
        return self.name


class TemplateKind(models.TextChoices):
    MARKETING = "marketing", "Marketing"
    TRANSACTIONAL = "transactional", "Transactional (double opt-in, magnet delivery)"


class Template(models.Model):
    """An email a marketer authors. Its content lives in versions; `approved_version` is the one
    sends use. `high_risk` (pricing, claims, legal) needs a compliance approver."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="email_templates")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100)
    kind = models.CharField(max_length=16, choices=TemplateKind.choices, default=TemplateKind.MARKETING)
    topic = models.CharField(max_length=100, blank=True, default="",
                             help_text="subscription topic slug (marketing); blank: all-marketing only")
    high_risk = models.BooleanField(default=False)
    approved_version = models.ForeignKey("TemplateVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                         related_name="+")
    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "slug"], name="template_unique_slug"),
            models.CheckConstraint(condition=models.Q(kind__in=TemplateKind.values), name="template_kind_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class VersionStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    PENDING = "pending", "Awaiting approval"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    SUPERSEDED = "superseded", "Superseded"


class TemplateVersion(models.Model):
    """One immutable edit of a template (a draft may be edited in place until it is submitted).
    `blocks` are the dynamic content blocks: {name: {"by": "segment"|"stage"|"role",
    "variants": [{"when": value, "html": …, "text": …}], "default": {"html": …, "text": …}}}.
    The layout's HTML and text are copied in when the version is submitted, so what was approved is
    exactly what is sent."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    subject = models.CharField(max_length=500)
    preheader = models.CharField(max_length=500, blank=True, default="")
    html = models.TextField()
    text = models.TextField(blank=True, default="", help_text="blank: generated from the HTML")
    blocks = models.JSONField(default=dict, blank=True)
    layout = models.ForeignKey(Layout, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    layout_html = models.TextField(blank=True, default="")
    layout_text = models.TextField(blank=True, default="")
    status = models.CharField(max_length=12, choices=VersionStatus.choices, default=VersionStatus.DRAFT)
    note = models.CharField(max_length=500, blank=True, default="")
    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)
    submitted_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.CharField(max_length=200, blank=True, default="")
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["template", "number"], name="templateversion_unique_number"),
            models.CheckConstraint(condition=models.Q(status__in=VersionStatus.values),
                                   name="templateversion_status_valid"),
        ]


class BroadcastStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SCHEDULED = "scheduled", "Scheduled"
    SENDING = "sending", "Sending"
    TESTING = "testing", "A/B test running"
    PAUSED = "paused", "Paused"
    CANCELLED = "cancelled", "Cancelled"
    DONE = "done", "Done"


class Broadcast(models.Model):
    """A one-off send of a template to a segment, now or at `scheduled_at`. With variants it is an
    A/B test: `test_share` of the audience is split over the variants, the winner by
    `winner_metric` is chosen at `decide_at` (or by hand) and sent to the rest."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="broadcasts")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100)
    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="broadcasts")
    version = models.ForeignKey(TemplateVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                help_text="pinned when sending starts")
    segment = models.ForeignKey("segments.Segment", on_delete=models.PROTECT, related_name="broadcasts")
    server = models.ForeignKey(SendingServer, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=12, choices=BroadcastStatus.choices, default=BroadcastStatus.DRAFT)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    test_share = models.FloatField(default=0.2)
    winner_metric = models.CharField(max_length=16, default="click_rate")
    decide_at = models.DateTimeField(null=True, blank=True)
    winner = models.ForeignKey("BroadcastVariant", null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+")
    result = models.JSONField(default=dict, blank=True, help_text="A/B outcome: rates, p-value, decision")
    audience_count = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=clock.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "slug"], name="broadcast_unique_slug"),
            models.CheckConstraint(condition=models.Q(status__in=BroadcastStatus.values),
                                   name="broadcast_status_valid"),
        ]


class BroadcastVariant(models.Model):
    """An A/B variant: its own approved template version (subject or content differ)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    broadcast = models.ForeignKey(Broadcast, on_delete=models.CASCADE, related_name="variants")
    label = models.CharField(max_length=1)
    version = models.ForeignKey(TemplateVersion, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["broadcast", "label"], name="variant_unique_label")]


class MessageKind(models.TextChoices):
    MARKETING = "marketing", "Marketing"
    TRANSACTIONAL = "transactional", "Transactional"
    TEST = "test", "Test send"


class MessageStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    DEFERRED = "deferred", "Deferred (quiet hours, cap, retry)"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    DELIVERED = "delivered", "Delivered"
    BOUNCED = "bounced", "Bounced"
    BLOCKED = "blocked", "Stopped by the consent gate"
    FAILED = "failed", "Failed"
    REVIEW = "review", "Needs review (interrupted mid-send)"
    CANCELLED = "cancelled", "Cancelled"


class Message(models.Model):
    """One email to one person: the outbox row. Written by whatever decided to send (a broadcast,
    a journey step, a test send, a double opt-in) in its own transaction; `dedupe_key` makes that
    idempotent. The dispatcher claims due rows, passes each through the consent gate, renders the
    pinned version, signs and sends it. A row left in `sending` past its lease goes to `review`:
    never resent silently."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages",
                                db_index=False)
    to_email = models.CharField(max_length=320)
    kind = models.CharField(max_length=16, choices=MessageKind.choices, default=MessageKind.MARKETING)
    topic = models.CharField(max_length=100, blank=True, default="")
    template = models.ForeignKey(Template, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages",
                                 db_index=False)
    version = models.ForeignKey(TemplateVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    broadcast = models.ForeignKey(Broadcast, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages",
                                  db_index=False)
    variant = models.ForeignKey(BroadcastVariant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    server = models.ForeignKey(SendingServer, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    source = models.CharField(max_length=200, blank=True, default="",
                             help_text="what queued it: broadcast:<slug>, journey:<id>:<node>, test, optin…")
    campaign = models.CharField(max_length=200, blank=True, default="",
                                help_text="the `campaign` property of its events (broadcast or template slug)")
    context = models.JSONField(default=dict, blank=True, help_text="the triggering event and extra variables")
    dedupe_key = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(max_length=12, choices=MessageStatus.choices, default=MessageStatus.QUEUED)
    not_before = models.DateTimeField(default=clock.now)
    attempts = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True, default="")
    subject = models.CharField(max_length=500, blank=True, default="", help_text="as sent")
    header_message_id = models.CharField(max_length=255, blank=True, default="")
    queued_at = models.DateTimeField(default=clock.now)
    sending_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # The first time each happened; MessageEvent rows keep every occurrence.
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    bounced_at = models.DateTimeField(null=True, blank=True)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    complained_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=MessageStatus.values), name="message_status_valid"),
            models.CheckConstraint(condition=models.Q(kind__in=MessageKind.values), name="message_kind_valid"),
            models.UniqueConstraint(fields=["workspace", "dedupe_key"], condition=~models.Q(dedupe_key=""),
                                    name="message_once_per_key"),
        ]
        # `contact`, `template` and `broadcast` have no index of their own: these lead with them.
        indexes = [
            models.Index(fields=["status", "not_before"], name="message_due"),
            models.Index(fields=["contact", "sent_at"], name="message_contact_sent"),
            models.Index(fields=["broadcast", "status"], name="message_broadcast"),
            models.Index(fields=["template", "status"], name="message_template"),
            # Magnet deliveries and opt-in confirmations by source; marketing sends pay nothing for it.
            models.Index(fields=["workspace", "source", "status"], condition=models.Q(kind="transactional"),
                         name="message_transactional_source"),
        ]


class MessageEventKind(models.TextChoices):
    QUEUED = "queued"
    DEFERRED = "deferred"
    BLOCKED = "blocked"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    SOFT_BOUNCED = "soft_bounced"
    OPENED = "opened"
    CLICKED = "clicked"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"
    FAILED = "failed"
    REVIEW = "review"
    REQUEUED = "requeued"  # a person chose to send a message in review again (messaging.review)


class MessageEvent(models.Model):
    """Something that happened to a message. `machine` marks opens by privacy proxies and clicks
    by link scanners: kept, but left out of scoring and statistics by default."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="events", db_index=False)
    contact = models.ForeignKey(Contact, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                db_index=False)
    kind = models.CharField(max_length=16, choices=MessageEventKind.choices)
    at = models.DateTimeField(default=clock.now)
    machine = models.BooleanField(default=False)
    url = models.CharField(max_length=2000, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        # The foreign keys' own indexes would repeat the first column of these two.
        indexes = [
            models.Index(fields=["message", "kind"], name="messageevent_message"),
            models.Index(fields=["contact", "at"], name="messageevent_contact"),
        ]
