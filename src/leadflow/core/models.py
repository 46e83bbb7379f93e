"""Workspaces, memberships with roles, API keys and the audit log."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from leadflow.core import clock


class Workspace(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=clock.now)

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    MARKETER = "marketer", "Marketer"
    SALES = "sales", "Sales"
    ANALYST = "analyst", "Analyst"
    COMPLIANCE = "compliance", "Compliance"


class Membership(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MARKETER)
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "user"], name="membership_unique_user"),
            models.CheckConstraint(
                condition=models.Q(role__in=[r.value for r in Role]), name="membership_role_valid"
            ),
        ]


class KeyKind(models.TextChoices):
    WRITE = "write", "Write key (ingestion only)"
    SECRET = "secret", "Secret key (management API)"
    HOOK = "hook", "Hook key (inbound bounce and complaint notifications only)"


class ApiKey(models.Model):
    """A workspace credential. Only the SHA-256 of the key is stored."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="api_keys")
    kind = models.CharField(max_length=8, choices=KeyKind.choices)
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=clock.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=[k.value for k in KeyKind]), name="apikey_kind_valid"
            ),
        ]

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class AuditEntry(models.Model):
    """Who did what to which object, for operators and compliance."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="audit_entries")
    actor = models.CharField(max_length=200, help_text="user:<id>, key:<prefix>, system or worker")
    action = models.CharField(max_length=100)
    target = models.CharField(max_length=200, blank=True)
    data = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(default=clock.now, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["workspace", "at"])]


class RateHit(models.Model):
    """One use of a rate-limited action (form posts per IP); shared by every web process."""

    key = models.CharField(max_length=200)
    at = models.DateTimeField(default=clock.now)

    class Meta:
        indexes = [models.Index(fields=["key", "at"])]


class PeriodicRun(models.Model):
    """When a periodic pass (score decay, SLA timers…) last ran; row-locked so one worker runs it."""

    name = models.CharField(max_length=100, primary_key=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
