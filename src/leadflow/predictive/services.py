"""Training a workspace's conversion model and writing contacts' conversion probabilities.

`predictive_train` learns from the workspace's own history: contacts whose outcome trait is true
(or who have the outcome event) are the converters, everyone else is not. It refuses when there
is too little history to judge a model. It stores a new `PredictiveModel` version, makes it the
active one and scores every contact. `predictive_score_contacts` scores given contacts with the
active model; the pipeline can call it for the contacts a batch touched.
"""

from __future__ import annotations

import hashlib
import pickle
import threading
from collections.abc import Iterable

import numpy as np
import sklearn
from django.db import connection, transaction
from django.db.models import Max

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError, audit_record
from leadflow.predictive import selectors
from leadflow.predictive.features import (
    ContactRow,
    FeatureSpec,
    TraitStats,
    matrix_build,
    near_copies,
    outcome_truthy,
    spec_build,
    spec_without,
    uninformative,
)
from leadflow.predictive.models import OutcomeKind, PredictiveModel
from leadflow.predictive.training import model_train, probabilities

MIN_CONTACTS = 100
MIN_POSITIVES = 20
MIN_NEGATIVES = 20
LOWEST_MIN_POSITIVES = 10  # --min-positives cannot go below this: the held-out split needs some


class PredictiveError(ServiceError):
    """Training cannot run (no outcome given, too little history, no usable model)."""


def _outcome_words(kind: str, name: str) -> str:
    if kind == OutcomeKind.EVENT:
        return f"contacts with the event {name!r}"
    return f"contacts whose trait {name!r} is true"


def _history_check(*, kind: str, name: str, contacts: int, positives: int, min_positives: int) -> None:
    negatives = contacts - positives
    if contacts >= MIN_CONTACTS and positives >= min_positives and negatives >= MIN_NEGATIVES:
        return
    raise PredictiveError(
        f"not enough history to train a model: {contacts} contacts, {positives} positives "
        f"({_outcome_words(kind, name)}) and {negatives} negatives; training needs at least "
        f"{MIN_CONTACTS} contacts, {min_positives} positives and {MIN_NEGATIVES} negatives. "
        f"Import more history (leadflow import contacts FILE with the outcome as a column, or "
        f"leadflow import events) or wait for more outcomes")


def predictive_train(*, workspace: Workspace, outcome_trait: str | None = None,
                     outcome_event: str | None = None, min_positives: int = MIN_POSITIVES,
                     actor: str = "") -> PredictiveModel:
    """Train, store as the next active version, and score every contact of the workspace."""
    if bool(outcome_trait) == bool(outcome_event):
        raise PredictiveError("name the outcome: either an outcome trait or an outcome event, not both")
    if min_positives < LOWEST_MIN_POSITIVES:
        raise PredictiveError(f"the minimum number of positives cannot be below {LOWEST_MIN_POSITIVES}")
    kind = OutcomeKind.TRAIT if outcome_trait else OutcomeKind.EVENT
    name = (outcome_trait or outcome_event or "").strip()
    now = clock.now()
    outcome_times = (selectors.outcome_event_times(workspace_id=workspace.pk, name=name)
                     if kind == OutcomeKind.EVENT else {})

    def label(row: ContactRow) -> bool:
        if kind == OutcomeKind.EVENT:
            return row.id in outcome_times
        return outcome_truthy((row.traits or {}).get(name))

    # Pass 1: what the traits look like, and whether there is enough history at all.
    stats, positives = TraitStats(), 0
    for batch in selectors.contact_batches(workspace_id=workspace.pk):
        for row in batch:
            stats.add(row.traits or {})
            positives += label(row)
    _history_check(kind=kind, name=name, contacts=stats.contacts, positives=positives,
                   min_positives=min_positives)
    spec = spec_build(
        stats, outcome_trait=name if kind == OutcomeKind.TRAIT else None,
        event_key_counts=selectors.event_key_counts(
            workspace_id=workspace.pk, exclude_event=name if kind == OutcomeKind.EVENT else None),
        channel_counts=selectors.channel_counts(workspace_id=workspace.pk),
        timed=kind == OutcomeKind.TRAIT)

    # Pass 2: the matrix, measured before the outcome for event outcomes.
    parts, labels = [], []
    for batch in selectors.contact_batches(workspace_id=workspace.pk):
        ids = [row.id for row in batch]
        behaviour = selectors.behaviour_for(workspace_id=workspace.pk, contact_ids=ids,
                                            before_outcome=name if kind == OutcomeKind.EVENT else None)
        parts.append(matrix_build(spec, batch, behaviour, now=now))
        labels.extend(label(row) for row in batch)
    matrix, y = np.vstack(parts), np.array(labels, dtype=np.int8)
    _history_check(kind=kind, name=name, contacts=len(y), positives=int(y.sum()), min_positives=min_positives)

    copies = near_copies(spec, matrix, y)
    if copies:
        spec, kept = spec_without(spec, copies)
        matrix = matrix[:, kept]
    empty = uninformative(matrix)
    if empty:
        names = spec.names()
        spec.unused += [names[i] for i in empty]
        matrix = np.delete(matrix, empty, axis=1)
    names = spec.names()
    trained = model_train(matrix, y, names)
    pickled = pickle.dumps(trained.estimator, protocol=pickle.HIGHEST_PROTOCOL)

    with transaction.atomic():
        Workspace.objects.select_for_update().filter(pk=workspace.pk).first()  # one training at a time
        version = (PredictiveModel.objects.filter(workspace=workspace).aggregate(v=Max("version"))["v"] or 0) + 1
        PredictiveModel.objects.filter(workspace=workspace, active=True).update(active=False)
        model = PredictiveModel.objects.create(
            workspace=workspace, version=version, outcome_kind=kind, outcome_name=name,
            algorithm=trained.algorithm, metrics=trained.metrics, feature_names=names,
            feature_spec=spec.as_dict(), top_features=trained.top_features,
            estimator=pickled, fingerprint=hashlib.sha256(pickled).hexdigest(),
            library_version=sklearn.__version__, active=True, created_at=now)
        _estimators.put((model.pk, model.fingerprint), trained.estimator)
        audit_record(workspace=workspace, actor=actor or "system", action="predictive.train",
                     target=f"v{version}", data={"outcome": model.outcome_description,
                                                 "algorithm": trained.algorithm,
                                                 "roc_auc": trained.metrics["roc_auc"]})
    model.contacts_scored = _score(model, selectors.contact_pages(workspace_id=workspace.pk))
    PredictiveModel.objects.filter(pk=model.pk).update(contacts_scored=model.contacts_scored)
    return model


class _EstimatorCache:
    """Unpickled estimators by model id and fingerprint (a rolled-back row's id can come back
    on SQLite; its fingerprint does not)."""

    SIZE = 8

    def __init__(self) -> None:
        self._items: dict[tuple[int, str], object] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[int, str]):
        with self._lock:
            return self._items.get(key)

    def put(self, key: tuple[int, str], estimator) -> None:
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = estimator
            while len(self._items) > self.SIZE:
                self._items.pop(next(iter(self._items)))


_estimators = _EstimatorCache()


def estimator_load(model: PredictiveModel):
    """The fitted estimator of a model row of this table (the only pickles LeadFlow loads)."""
    cached = _estimators.get((model.pk, model.fingerprint))
    if cached is not None:
        return cached
    if model.library_version != sklearn.__version__:
        raise PredictiveError(f"model v{model.version} was fitted with scikit-learn {model.library_version} "
                              f"and this is {sklearn.__version__}: train it again "
                              f"(leadflow scoring train)")
    raw = bytes(PredictiveModel.objects.filter(pk=model.pk).values_list("estimator", flat=True).get())
    if hashlib.sha256(raw).hexdigest() != model.fingerprint:
        raise PredictiveError(f"model v{model.version} is damaged (its estimator does not match its "
                              f"fingerprint): train it again (leadflow scoring train)")
    estimator = pickle.loads(raw)
    _estimators.put((model.pk, model.fingerprint), estimator)
    return estimator


def _probabilities_write(workspace_id: int, ids: list[int], values: list[float]) -> None:
    """One statement per batch. (`rows_update` would fall back to `bulk_update`'s CASE WHEN on
    PostgreSQL for a float column; `unnest` of two arrays is the set-based form.)"""
    table = connection.ops.quote_name(Contact._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"UPDATE {table} AS t SET conversion_probability = v.p "
                f"FROM unnest(%s::bigint[], %s::double precision[]) AS v(id, p) "
                f"WHERE t.id = v.id AND t.workspace_id = %s", [ids, values, workspace_id])
        else:
            cursor.executemany(f"UPDATE {table} SET conversion_probability = %s WHERE id = %s AND workspace_id = %s",
                               [(value, pk, workspace_id) for pk, value in zip(ids, values)])


def _score(model: PredictiveModel, pages: Iterable[list[ContactRow]]) -> int:
    estimator = estimator_load(model)
    spec = FeatureSpec.from_dict(model.feature_spec)
    now, scored = clock.now(), 0
    for page in pages:
        ids = [row.id for row in page]
        behaviour = selectors.behaviour_for(workspace_id=model.workspace_id, contact_ids=ids)
        values = probabilities(estimator, matrix_build(spec, page, behaviour, now=now))
        with transaction.atomic():
            _probabilities_write(model.workspace_id, ids, [round(float(v), 6) for v in values])
        scored += len(ids)
    return scored


def predictive_score_contacts(*, workspace: Workspace | int, contact_ids: Iterable[int]) -> int:
    """Write the active model's conversion probability to these contacts of the workspace.

    Returns how many were scored: 0 when the workspace has no active model. One grouped events
    query and one update per batch of contacts.
    """
    workspace_id = workspace.pk if isinstance(workspace, Workspace) else workspace
    ids = list(contact_ids)
    if not ids:
        return 0
    model = (PredictiveModel.objects.filter(workspace_id=workspace_id, active=True)
             .defer("estimator").first())
    if model is None:
        return 0
    return _score(model, selectors.contact_pages(workspace_id=workspace_id, contact_ids=ids))
