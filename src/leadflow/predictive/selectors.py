"""Reads for predictive scoring: contacts and their behaviour in batches, models for the UI.

Every read is set-based: contacts stream in id order in batches, and a batch's behaviour is one
grouped query over the event log (never a query per contact).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Iterator

from django.db.models import Count, Exists, Max, Min, OuterRef

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.predictive.features import (
    Behaviour,
    ContactRow,
    FeatureSpec,
    event_key,
    matrix_build,
)
from leadflow.predictive.models import PredictiveModel
from leadflow.tracking.models import Event

BATCH = 2000
CONTACT_COLUMNS = ("id", "traits", "source_channel", "fit_score", "engagement_score", "title",
                   "company__traits", "last_seen_at", "created_at")
BEHAVIOUR_TYPES = ("track", "page", "screen")


def contact_batches(*, workspace_id: int, batch_size: int = BATCH) -> Iterator[list[ContactRow]]:
    """Every contact of the workspace in id order, streamed from one query in batches."""
    query = (Contact.objects.filter(workspace_id=workspace_id).order_by("id")
             .values_list(*CONTACT_COLUMNS))
    batch: list[ContactRow] = []
    for row in query.iterator(chunk_size=batch_size):
        batch.append(ContactRow(*row))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def contact_pages(*, workspace_id: int, contact_ids: Iterable[int] | None = None,
                  batch_size: int = BATCH) -> Iterator[list[ContactRow]]:
    """The workspace's contacts (all, or those in `contact_ids`) in id order, one short query per
    batch (keyset pages), so the caller may write between batches without a cursor held open."""
    base = Contact.objects.filter(workspace_id=workspace_id).order_by("id").values_list(*CONTACT_COLUMNS)
    if contact_ids is not None:
        ids = sorted(set(contact_ids))
        for start in range(0, len(ids), batch_size):
            page = [ContactRow(*row) for row in base.filter(id__in=ids[start:start + batch_size])]
            if page:
                yield page
        return
    last = 0
    while True:
        page = [ContactRow(*row) for row in base.filter(id__gt=last)[:batch_size]]
        if not page:
            return
        yield page
        last = page[-1].id


def behaviour_for(*, workspace_id: int, contact_ids: list[int],
                  before_outcome: str | None = None) -> dict[int, Behaviour]:
    """Event counts of the given contacts, in one grouped query.

    With `before_outcome` (an outcome event name) the outcome event itself and every event at or
    after a contact's first outcome event are left out, so the model never learns from what
    happened because someone converted.
    """
    query = Event.objects.filter(workspace_id=workspace_id, contact_id__in=contact_ids)
    if before_outcome:
        outcome_earlier = Event.objects.filter(workspace_id=workspace_id, contact_id=OuterRef("contact_id"),
                                               event=before_outcome, timestamp__lte=OuterRef("timestamp"))
        query = query.exclude(event=before_outcome).exclude(Exists(outcome_earlier))
    grouped = (query.values("contact_id", "type", "event").order_by()
               .annotate(n=Count("id"), last=Max("timestamp")))
    found: dict[int, Behaviour] = {}
    for row in grouped:
        seen = found.setdefault(row["contact_id"], Behaviour())
        seen.events_total += row["n"]
        if row["type"] == "page":
            seen.page_views += row["n"]
        key = event_key(row["type"], row["event"])
        if key:
            seen.counts[key] = seen.counts.get(key, 0) + row["n"]
        if row["last"] is not None and (seen.last_event_at is None or row["last"] > seen.last_event_at):
            seen.last_event_at = row["last"]
    return found


def event_key_counts(*, workspace_id: int, exclude_event: str | None = None) -> dict[str, int]:
    """How often each behaviour (`event:NAME`, `page:NAME`) occurs in the workspace's log."""
    query = Event.objects.filter(workspace_id=workspace_id, contact__isnull=False,
                                 type__in=BEHAVIOUR_TYPES).exclude(event="")
    if exclude_event:
        query = query.exclude(event=exclude_event)
    counts: dict[str, int] = {}
    for row in query.values("type", "event").order_by().annotate(n=Count("id")):
        key = event_key(row["type"], row["event"])
        if key:
            counts[key] = counts.get(key, 0) + row["n"]
    return counts


def channel_counts(*, workspace_id: int) -> dict[str, int]:
    """Contacts per source channel."""
    rows = (Contact.objects.filter(workspace_id=workspace_id).values("source_channel").order_by()
            .annotate(n=Count("id")))
    return {row["source_channel"]: row["n"] for row in rows}


def outcome_event_times(*, workspace_id: int, name: str) -> dict[int, dt.datetime]:
    """Each contact that has the event `name`, with the time of its first one."""
    rows = (Event.objects.filter(workspace_id=workspace_id, event=name, contact__isnull=False)
            .values("contact_id").order_by().annotate(first=Min("timestamp")))
    return {row["contact_id"]: row["first"] for row in rows}


def predictive_model_active(*, workspace: Workspace) -> PredictiveModel | None:
    """The model that scores the workspace's contacts now, without its pickled estimator."""
    return (PredictiveModel.objects.filter(workspace=workspace, active=True).defer("estimator").first())


def predictive_models(*, workspace: Workspace) -> list[PredictiveModel]:
    """Every model version of the workspace, newest first, without the pickled estimators."""
    return list(PredictiveModel.objects.filter(workspace=workspace).defer("estimator").order_by("-version"))


def _readable(value: float) -> float | None:
    if math.isnan(value):  # the contact has no value
        return None
    return round(float(value), 3)


def contact_probability_explain(*, contact: Contact) -> dict | None:
    """The active model's top features with this contact's values for them, for the profile.

    None when the workspace has no active model. `probability` is the stored score (None if the
    contact has not been scored yet).
    """
    model = predictive_model_active(workspace=contact.workspace)
    if model is None:
        return None
    spec = FeatureSpec.from_dict(model.feature_spec)
    row = ContactRow(contact.id, contact.traits, contact.source_channel, contact.fit_score,
                     contact.engagement_score, contact.title,
                     contact.company.traits if contact.company_id else None,
                     contact.last_seen_at, contact.created_at)
    behaviour = behaviour_for(workspace_id=contact.workspace_id, contact_ids=[contact.id])
    values = matrix_build(spec, [row], behaviour, now=clock.now())[0]
    index = {name: i for i, name in enumerate(model.feature_names)}
    features = []
    for item in model.top_features:
        position = index.get(item["feature"])
        features.append({**item, "value": _readable(values[position]) if position is not None else None})
    return {
        "probability": contact.conversion_probability,
        "model_version": model.version,
        "algorithm": model.algorithm,
        "outcome": model.outcome_description,
        "roc_auc": model.roc_auc,
        "features": features,
    }

