"""People, companies, the identities that point at them, and the record of every merge."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from leadflow.core import clock
from leadflow.core.models import Workspace


class Company(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="companies")
    group_id = models.CharField(max_length=255, null=True, blank=True)
    name = models.CharField(max_length=255, blank=True)
    domain = models.CharField(max_length=255, blank=True, db_index=True)
    traits = models.JSONField(default=dict, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="owned_companies", help_text="the account owner in sales")
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "group_id"], name="company_unique_group",
                                    condition=models.Q(group_id__isnull=False)),
        ]
        indexes = [models.Index(fields=["workspace", "name"])]
        verbose_name_plural = "companies"

    def __str__(self) -> str:
        return self.name or self.group_id or f"company {self.pk}"


class Contact(models.Model):
    """One profile per person. Primary identity fields are mirrored from `Identity` rows."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="contacts")
    email = models.CharField(max_length=320, blank=True, default="")
    user_id = models.CharField(max_length=255, blank=True, default="")
    first_name = models.CharField(max_length=200, blank=True, default="")
    last_name = models.CharField(max_length=200, blank=True, default="")
    phone = models.CharField(max_length=32, blank=True, default="")
    title = models.CharField(max_length=200, blank=True, default="")
    country = models.CharField(max_length=2, blank=True, default="")
    timezone = models.CharField(max_length=64, blank=True, default="")
    traits = models.JSONField(default=dict, blank=True)
    # trait name -> ISO time of the event that last set it; decides "newest non-empty wins".
    trait_times = models.JSONField(default=dict, blank=True)
    company = models.ForeignKey(Company, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="contacts")
    first_touch = models.JSONField(default=dict, blank=True)
    latest_touch = models.JSONField(default=dict, blank=True)
    source_channel = models.CharField(max_length=32, blank=True, default="", db_index=True)
    # Derived by the scoring stage (leadflow.scoring).
    fit_score = models.IntegerField(default=0)
    fit_grade = models.CharField(max_length=1, blank=True, default="")
    engagement_score = models.FloatField(default=0.0)
    conversion_probability = models.FloatField(null=True, blank=True)
    # Kept by the lifecycle stage (leadflow.lifecycle); every change is a StageChange row.
    lifecycle_stage = models.CharField(max_length=32, blank=True, default="")
    stage_changed_at = models.DateTimeField(null=True, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="owned_contacts")
    first_seen_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        indexes = [
            models.Index(fields=["workspace", "email"]),
            models.Index(fields=["workspace", "user_id"]),
            models.Index(fields=["workspace", "created_at"]),
            models.Index(fields=["workspace", "lifecycle_stage"]),
            models.Index(fields=["workspace", "owner"]),
        ]

    def __str__(self) -> str:
        return self.email or self.user_id or f"anonymous {self.pk}"

    @property
    def name(self) -> str:
        return " ".join(p for p in (self.first_name, self.last_name) if p)


class IdentityKind(models.TextChoices):
    USER_ID = "user_id", "User id"
    EMAIL = "email", "Email"
    ANONYMOUS_ID = "anonymous_id", "Anonymous id"


class Identity(models.Model):
    """An identifier that belongs to exactly one contact in a workspace."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="identities")
    kind = models.CharField(max_length=16, choices=IdentityKind.choices)
    value = models.CharField(max_length=320)
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "kind", "value"], name="identity_unique"),
            models.CheckConstraint(condition=models.Q(kind__in=[k.value for k in IdentityKind]),
                                   name="identity_kind_valid"),
        ]
        verbose_name_plural = "identities"


class ContactMerge(models.Model):
    """One merge: `loser_id` was folded into `winner`. The loser's state before is kept."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    winner = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="merges")
    loser_id = models.BigIntegerField(db_index=True)
    reason = models.CharField(max_length=200)
    loser_snapshot = models.JSONField(default=dict)
    moved = models.JSONField(default=dict, help_text="rows moved per table")
    at = models.DateTimeField(default=clock.now)
