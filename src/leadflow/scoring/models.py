"""Scoring rules, the engagement ledger and per-workspace scoring settings.

A contact carries two scores (on `contacts.Contact`): fit (who they are, recomputed from the fit
rules whenever the profile or a rule changes) and engagement (what they did: the sum of this
ledger's points, decayed by age). The ledger is keyed on (rule, event) so processing an event
twice can never grant its points twice.
"""

from __future__ import annotations

from django.db import models

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace


class RuleKind(models.TextChoices):
    FIT = "fit", "Fit"
    ENGAGEMENT = "engagement", "Engagement"


class ScoringRule(models.Model):
    """Points for contacts (fit) or events (engagement) that match `condition` (scoring.conditions)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="scoring_rules")
    kind = models.CharField(max_length=16, choices=RuleKind.choices)
    name = models.CharField(max_length=200)
    condition = models.JSONField()
    points = models.IntegerField(help_text="may be negative")
    daily_cap = models.PositiveIntegerField(null=True, blank=True,
                                            help_text="most points per contact per UTC day from this rule")
    expires_after_days = models.PositiveIntegerField(null=True, blank=True,
                                                     help_text="engagement points stop counting after this")
    active = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=1, help_text="bumped on every change")
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(kind__in=[k.value for k in RuleKind]),
                                   name="scoring_rule_kind_valid"),
        ]
        indexes = [models.Index(fields=["workspace", "kind", "active"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.points:+d})"


class ScoreEntry(models.Model):
    """Engagement points one event earned a contact through one rule."""

    id = models.BigAutoField(primary_key=True)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="score_entries")
    rule = models.ForeignKey(ScoringRule, on_delete=models.CASCADE, related_name="entries")
    event_id = models.BigIntegerField(help_text="the tracking.Event row that earned the points")
    points = models.IntegerField()
    at = models.DateTimeField(help_text="when the event happened")
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "event_id"], name="score_entry_once_per_event")]
        indexes = [
            models.Index(fields=["workspace", "contact"], name="score_entry_contact"),
            models.Index(fields=["contact", "rule", "at"], name="score_entry_cap"),
        ]
        verbose_name_plural = "score entries"


class ScoringSettings(models.Model):
    """Grade thresholds and engagement half-life of one workspace (created with the default rules)."""

    workspace = models.OneToOneField(Workspace, on_delete=models.CASCADE, related_name="scoring_settings")
    grade_a = models.IntegerField(default=60, help_text="fit score for grade A (at least)")
    grade_b = models.IntegerField(default=40)
    grade_c = models.IntegerField(default=20)
    half_life_days = models.FloatField(default=30.0, help_text="engagement halves every N days; 0 = no decay")
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(grade_a__gte=models.F("grade_b"),
                                                      grade_b__gte=models.F("grade_c")),
                                   name="scoring_grades_ordered"),
            models.CheckConstraint(condition=models.Q(half_life_days__gte=0), name="scoring_half_life_positive"),
        ]
        verbose_name_plural = "scoring settings"
