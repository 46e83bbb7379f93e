"""Segments, their definition history, current members and the record of entries and exits."""

from __future__ import annotations

from django.db import models

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace


class SegmentKind(models.TextChoices):
    DYNAMIC = "dynamic", "Dynamic"
    STATIC = "static", "Static list"


class Segment(models.Model):
    """An audience. A dynamic segment's members follow `definition` (the filter language, see
    `leadflow.segments.language`); a static list's members are added and removed by hand."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="segments")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100)
    kind = models.CharField(max_length=8, choices=SegmentKind.choices, default=SegmentKind.DYNAMIC)
    definition = models.JSONField(null=True, blank=True, help_text="the current filter; null for a static list")
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "slug"], name="segment_unique_slug"),
            models.CheckConstraint(condition=models.Q(kind__in=["dynamic", "static"]), name="segment_kind_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class SegmentVersion(models.Model):
    """One immutable definition of a segment, written each time it is created or edited."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    definition = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=clock.now)
    actor = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["segment", "version"], name="segment_version_unique"),
        ]


class SegmentMember(models.Model):
    """A contact currently in a segment."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="members")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="segment_memberships")
    since = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["segment", "contact"], name="segment_member_unique"),
        ]
        indexes = [models.Index(fields=["workspace", "contact"], name="segment_member_contact")]


class ChangeKind(models.TextChoices):
    ENTERED = "entered", "Entered"
    EXITED = "exited", "Exited"


class SegmentChange(models.Model):
    """One entry into or exit from a segment: the history of membership."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="changes")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="segment_changes")
    kind = models.CharField(max_length=8, choices=ChangeKind.choices)
    at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(kind__in=["entered", "exited"]),
                                   name="segment_change_kind_valid"),
        ]
        indexes = [models.Index(fields=["segment", "at"], name="segment_change_time")]
