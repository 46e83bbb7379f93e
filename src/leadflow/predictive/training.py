"""Fitting and judging the conversion model: scikit-learn on a ready matrix, no database.

Two candidates are fitted on the same stratified training split and judged on the same held-out
split (`HOLDOUT_SHARE` of the contacts, fixed `RANDOM_STATE`, so the same history gives the same
model and figures):

- `logistic_regression`: log of counts and days, median imputation with missing-value flags,
  standard scaling, logistic regression. Fitted by maximum likelihood, its probabilities are
  calibrated as they come; it is the baseline.
- `gradient_boosting`: scikit-learn's histogram gradient boosting (missing values native).

The one with the higher held-out ROC AUC wins (a tie goes to the simpler baseline); its held-out
figures are reported, and it is then refitted on all the history before it scores anyone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from leadflow.predictive.features import count_columns

RANDOM_STATE = 0
HOLDOUT_SHARE = 0.25
CALIBRATION_BINS = 10
TOP_FEATURES = 10
IMPORTANCE_REPEATS = 5
IMPORTANCE_ROWS = 5000  # held-out rows used to rank features (a stratified sample beyond this)
THREADED_ROWS = 100_000  # below this one thread is faster than OpenMP's start-up per tree

LOGISTIC = "logistic_regression"
BOOSTING = "gradient_boosting"


def log_columns(matrix: np.ndarray, columns: list[int]) -> np.ndarray:
    """log(1 + x) of the given (non-negative, heavy-tailed) columns; the others unchanged."""
    out = np.array(matrix, dtype=np.float64, copy=True)
    if columns:
        out[:, columns] = np.log1p(np.clip(out[:, columns], 0.0, None))
    return out


def candidates(feature_names: list[str]) -> dict:
    """The unfitted estimators, by algorithm name."""
    logistic = Pipeline([
        ("log_counts", FunctionTransformer(log_columns, kw_args={"columns": count_columns(feature_names)})),
        ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("model", LogisticRegression(C=1.0, max_iter=2000)),
    ])
    boosting = HistGradientBoostingClassifier(
        learning_rate=0.05, max_iter=300, max_leaf_nodes=15, min_samples_leaf=20, l2_regularization=1.0,
        early_stopping=True, validation_fraction=0.15, n_iter_no_change=20, random_state=RANDOM_STATE)
    return {LOGISTIC: logistic, BOOSTING: boosting}


def top_decile(labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """Precision among the highest-scored tenth (at least one row), and that tenth's size."""
    size = max(1, math.ceil(len(scores) * 0.1))
    order = np.argsort(-scores, kind="stable")[:size]
    return float(labels[order].mean()), size


def calibration_table(labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Held-out rows sorted by predicted probability in `bins` equal groups (deciles): each with
    its size, mean predicted probability and observed conversion rate."""
    order = np.argsort(scores, kind="stable")
    table = []
    for number, part in enumerate(np.array_split(order, bins), start=1):
        if len(part):
            table.append({"bin": number, "contacts": len(part),
                          "mean_predicted": round(float(scores[part].mean()), 4),
                          "observed_rate": round(float(labels[part].mean()), 4)})
    return table


def evaluate(labels: np.ndarray, scores: np.ndarray) -> dict:
    """The held-out figures of one set of predictions."""
    base_rate = float(labels.mean())
    precision, size = top_decile(labels, scores)
    table = calibration_table(labels, scores)
    error = sum(b["contacts"] * abs(b["mean_predicted"] - b["observed_rate"]) for b in table) / len(labels)
    return {
        "roc_auc": round(float(roc_auc_score(labels, scores)), 4),
        "precision_top_decile": round(precision, 4),
        "top_decile_contacts": size,
        "held_out_base_rate": round(base_rate, 4),
        "lift_top_decile": round(precision / base_rate, 3) if base_rate else None,
        "brier_score": round(float(brier_score_loss(labels, scores)), 5),
        "calibration_error": round(error, 4),
        "calibration": table,
    }


def _importance_sample(labels: np.ndarray) -> np.ndarray:
    if len(labels) <= IMPORTANCE_ROWS:
        return np.arange(len(labels))
    keep, _ = train_test_split(np.arange(len(labels)), train_size=IMPORTANCE_ROWS, stratify=labels,
                               random_state=RANDOM_STATE)
    return np.sort(keep)


def top_features(estimator, matrix: np.ndarray, labels: np.ndarray, feature_names: list[str]) -> list[dict]:
    """The `TOP_FEATURES` columns whose shuffling costs the most held-out ROC AUC (permutation
    importance, so it means the same for both algorithms), each with its direction: whether a
    higher value goes with a higher predicted probability."""
    rows = _importance_sample(labels)
    x, y = matrix[rows], labels[rows]
    result = permutation_importance(estimator, x, y, scoring="roc_auc", n_repeats=IMPORTANCE_REPEATS,
                                    random_state=RANDOM_STATE)
    predicted = estimator.predict_proba(x)[:, 1]
    ranked = sorted(range(len(feature_names)), key=lambda i: (-result.importances_mean[i], i))
    found = []
    for index in ranked[:TOP_FEATURES]:
        importance = float(result.importances_mean[index])
        if importance <= 0:
            break
        column = x[:, index]
        finite = np.isfinite(column)
        correlation = 0.0
        if finite.sum() > 2 and np.std(column[finite]) > 0 and np.std(predicted[finite]) > 0:
            correlation = float(np.corrcoef(column[finite], predicted[finite])[0, 1])
        found.append({"feature": feature_names[index], "importance": round(importance, 4),
                      "direction": "+" if correlation >= 0 else "-"})
    return found


@dataclass
class Trained:
    algorithm: str
    estimator: object  # refitted on all rows
    metrics: dict
    top_features: list[dict]


def model_train(matrix: np.ndarray, labels: np.ndarray, feature_names: list[str]) -> Trained:
    """Fit both candidates, pick the better on held-out ROC AUC, refit it on everything."""
    with threadpool_limits(limits=1 if len(labels) < THREADED_ROWS else None):
        return _train(matrix, labels.astype(np.int8), feature_names)


def _train(matrix: np.ndarray, labels: np.ndarray, feature_names: list[str]) -> Trained:
    train_x, test_x, train_y, test_y = train_test_split(
        matrix, labels, test_size=HOLDOUT_SHARE, stratify=labels, random_state=RANDOM_STATE)
    fitted, scores, figures = {}, {}, {}
    for name, estimator in candidates(feature_names).items():
        estimator.fit(train_x, train_y)
        fitted[name] = estimator
        scores[name] = estimator.predict_proba(test_x)[:, 1]
        figures[name] = evaluate(test_y, scores[name])
    best = max(fitted, key=lambda n: (figures[n]["roc_auc"], n == LOGISTIC))
    metrics = {
        "algorithm": best,
        "contacts": len(labels),
        "positives": int(labels.sum()),
        "negatives": int(len(labels) - labels.sum()),
        "base_rate": round(float(labels.mean()), 4),
        "held_out_contacts": len(test_y),
        **figures[best],
        "candidates": {n: {k: f[k] for k in ("roc_auc", "precision_top_decile", "brier_score")}
                       for n, f in figures.items()},
    }
    ranked = top_features(fitted[best], test_x, test_y, feature_names)
    final = candidates(feature_names)[best]
    final.fit(matrix, labels)
    return Trained(best, final, metrics, ranked)


def probabilities(estimator, matrix: np.ndarray) -> np.ndarray:
    """Conversion probabilities in [0, 1] for the rows of `matrix` (a scoring batch: small)."""
    if not len(matrix):
        return np.zeros(0)
    with threadpool_limits(limits=1):
        return np.clip(estimator.predict_proba(matrix)[:, 1], 0.0, 1.0)
