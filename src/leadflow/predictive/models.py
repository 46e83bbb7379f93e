"""One row per trained conversion model: its figures, its features and the fitted estimator."""

from __future__ import annotations

from django.db import models

from leadflow.core import clock
from leadflow.core.models import Workspace


class OutcomeKind(models.TextChoices):
    TRAIT = "trait", "Trait"
    EVENT = "event", "Event"


class PredictiveModel(models.Model):
    """A trained model version. Rows are written once and never changed, except `active`.

    `estimator` is the fitted scikit-learn estimator, pickled. Pickle runs code when it loads, so
    LeadFlow only ever unpickles rows that it wrote itself in this table (see
    `services.estimator_load`); never load an estimator from anywhere else into it.
    """

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="predictive_models")
    version = models.PositiveIntegerField()
    outcome_kind = models.CharField(max_length=8, choices=OutcomeKind.choices)
    outcome_name = models.CharField(max_length=255)
    algorithm = models.CharField(max_length=32)
    metrics = models.JSONField(default=dict)
    feature_names = models.JSONField(default=list)
    feature_spec = models.JSONField(default=dict, help_text="how contacts become feature columns")
    top_features = models.JSONField(default=list)
    estimator = models.BinaryField()
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of `estimator`")
    library_version = models.CharField(max_length=32, help_text="scikit-learn version that fitted it")
    active = models.BooleanField(default=False)
    contacts_scored = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "version"], name="predictive_unique_version"),
            models.UniqueConstraint(fields=["workspace"], condition=models.Q(active=True),
                                    name="predictive_one_active"),
            models.CheckConstraint(condition=models.Q(outcome_kind__in=[k.value for k in OutcomeKind]),
                                   name="predictive_outcome_kind_valid"),
        ]

    def __str__(self) -> str:
        return f"v{self.version} ({self.outcome_description})"

    @property
    def outcome_description(self) -> str:
        if self.outcome_kind == OutcomeKind.EVENT:
            return f"event {self.outcome_name!r} happened"
        return f"trait {self.outcome_name!r} is true"

    @property
    def roc_auc(self) -> float | None:
        return self.metrics.get("roc_auc")
