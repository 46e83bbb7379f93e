"""How contacts become rows of numbers for the conversion model: plain functions, no database.

Training reads a workspace's contacts twice, in streamed batches. The first pass feeds every
contact's traits to a `TraitStats`; `spec_build` then decides which traits, source channels and
event names become columns and records that vocabulary in a `FeatureSpec`. The spec is stored
with the model, so scoring a contact later builds exactly the columns the model was fitted on.
The second pass (and every scoring batch) turns contacts into a matrix with `matrix_build`.

Columns, in order (a missing value is NaN; both models handle it):

- `trait:NAME` — a numeric trait as its number, a boolean trait as 1/0;
- `trait:NAME=VALUE` and `trait:NAME=(other)` — a low-cardinality text trait, one-hot over its
  `TOP_VALUES` commonest values, anything else is "(other)", no value is all zeros;
- `source_channel=VALUE` / `source_channel=(other)` — the contact's first-touch channel, one-hot;
- `fit_score`, `engagement_score`;
- `title_seniority` — 0 (intern, assistant) to 5 (C-level, founder), from the job title;
- `company_employees` — the `employees` trait of the contact's company;
- `count:event:NAME` / `count:page:NAME` — how often the contact did each of the workspace's
  `TOP_EVENTS` commonest track events and named page views;
- `page_views`, `events_total` — all page views and all events;
- `days_since_last_seen`, `days_since_created` — recency and tenure in whole days, now.

For an event outcome, behaviour counts stop before each converter's first outcome event, and the
columns that can only be read as of today (`engagement_score`, recency, tenure) are not used:
converters would be measured at their conversion and everyone else today, and the model would
learn the difference between the two moments rather than anything about buying (`TIMED_COLUMNS`).
Columns with no information in the history (all missing, or one value for everyone) are dropped
too; a spec lists what it dropped in `unused`.

Never features: the outcome trait, identity traits (email, names, phone, company name), the
title as text (it enters as seniority), and any trait that is a near-copy of the outcome
(`near_copies`).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

TOP_VALUES = 10  # one-hot columns per text trait (plus "(other)")
TOP_EVENTS = 20  # event names counted per contact
TOP_CHANNELS = 12
MIN_PRESENT_SHARE = 0.01  # a trait on fewer contacts than this is ignored
MIN_VALUE_COUNT = 5  # a text value seen fewer times than this is "(other)"
MIN_TOP_COVERAGE = 0.5  # a text trait whose top values cover less than this is free text: ignored
NUMERIC_SHARE = 0.95  # a trait this numeric (or more) is a number; the rest of its values are NaN
MAX_TRACKED_VALUES = 1000  # distinct text values counted per trait while learning the spec
NEAR_COPY_AUC = 0.99  # a trait that alone separates the outcome this well is a copy of it
TIMED_COLUMNS = ("engagement_score", "days_since_last_seen", "days_since_created")

IDENTITY_TRAITS = frozenset({
    "email", "user_id", "userid", "id", "anonymous_id", "first_name", "last_name", "firstname",
    "lastname", "name", "phone", "company", "title", "address", "avatar", "website", "username",
    "description", "birthday",
})

_FALSE_WORDS = frozenset({"", "no", "false", "0", "0.0"})
OTHER = "(other)"


def outcome_truthy(value: Any) -> bool:
    """Whether an outcome trait's value means "converted": True, 1, "yes", "true" or any other
    non-empty value except no/false/0. Missing, None and empty containers are False."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return not (value == 0 or (isinstance(value, float) and math.isnan(value)))
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_WORDS
    return bool(value)


_SENIORITY = [
    (0, re.compile(r"\b(intern|internship|student|trainee|apprentice)\b")),
    (5, re.compile(r"\b(chief|ceo|cto|cfo|cmo|coo|cio|cro|cpo|founder|co-founder|cofounder|owner|"
                   r"president|partner|managing director|general manager)\b")),
    (4, re.compile(r"\b(vp|svp|evp|avp|vice president|head of|head)\b")),
    (3, re.compile(r"\b(director)\b")),
    (2, re.compile(r"\b(manager|lead|principal|senior|sr)\b")),
    (0, re.compile(r"\b(assistant|junior|jr)\b")),
]


def title_seniority(title: str | None) -> float:
    """0 (intern, assistant) … 5 (C-level, founder) from a job title by keywords; NaN if none."""
    text = (title or "").strip().lower().replace(".", "")
    if not text:
        return math.nan
    for level, pattern in _SENIORITY:
        if pattern.search(text):
            return float(level)
    return 1.0  # an individual contributor: analyst, engineer, specialist, …


class ContactRow(NamedTuple):
    """The columns of one contact that features are made from."""

    id: int
    traits: dict
    source_channel: str
    fit_score: float
    engagement_score: float
    title: str
    company_traits: dict | None
    last_seen_at: dt.datetime | None
    created_at: dt.datetime


@dataclass
class Behaviour:
    """One contact's event counts, as of the reference time."""

    counts: dict[str, int] = field(default_factory=dict)  # "event:NAME" / "page:NAME" -> count
    page_views: int = 0
    events_total: int = 0
    last_event_at: dt.datetime | None = None


def event_key(event_type: str, name: str) -> str | None:
    """The name a behaviour count goes by: `event:NAME` for track calls, `page:NAME` for named
    page and screen views; None for calls that are not behaviour (identify, group, alias)."""
    if event_type == "track" and name:
        return f"event:{name}"
    if event_type in ("page", "screen") and name:
        return f"page:{name}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _normal_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


class TraitStats:
    """What the first pass learns about traits: how often each is present and of which type."""

    def __init__(self) -> None:
        self.contacts = 0
        self.present: Counter[str] = Counter()
        self.numbers: Counter[str] = Counter()
        self.booleans: Counter[str] = Counter()
        self.values: dict[str, Counter[str]] = {}

    def add(self, traits: dict) -> None:
        self.contacts += 1
        for name, value in traits.items():
            if value is None or value == "" or isinstance(value, (dict, list)):
                continue
            self.present[name] += 1
            if isinstance(value, bool):
                self.booleans[name] += 1
            elif _is_number(value):
                self.numbers[name] += 1
            counter = self.values.setdefault(name, Counter())
            text = _text(value)
            if text in counter or len(counter) < MAX_TRACKED_VALUES:
                counter[text] += 1


@dataclass
class FeatureSpec:
    """Which columns a model has; JSON-serialisable (`as_dict` / `from_dict`)."""

    numeric_traits: list[str] = field(default_factory=list)
    categorical_traits: dict[str, list[str]] = field(default_factory=dict)
    channels: list[str] = field(default_factory=list)
    event_keys: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # columns built but not given to the model
    excluded_traits: dict[str, str] = field(default_factory=dict)  # trait -> why it is not used

    def as_dict(self) -> dict:
        return {"numeric_traits": self.numeric_traits, "categorical_traits": self.categorical_traits,
                "channels": self.channels, "event_keys": self.event_keys,
                "unused": self.unused, "excluded_traits": self.excluded_traits}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        return cls(numeric_traits=list(data.get("numeric_traits", [])),
                   categorical_traits={k: list(v) for k, v in data.get("categorical_traits", {}).items()},
                   channels=list(data.get("channels", [])), event_keys=list(data.get("event_keys", [])),
                   unused=list(data.get("unused", [])),
                   excluded_traits=dict(data.get("excluded_traits", {})))

    def names(self) -> list[str]:
        """The names of the model's columns, in matrix order."""
        unused = set(self.unused)
        return [name for name in self.all_names() if name not in unused]

    def all_names(self) -> list[str]:
        """Every column `matrix_build` computes, used or not."""
        names = [f"trait:{t}" for t in self.numeric_traits]
        for trait, values in self.categorical_traits.items():
            names += [f"trait:{trait}={v}" for v in values] + [f"trait:{trait}={OTHER}"]
        names += [f"source_channel={c}" for c in self.channels] + [f"source_channel={OTHER}"]
        names += ["fit_score", "engagement_score"]
        names += ["title_seniority", "company_employees"]
        names += [f"count:{k}" for k in self.event_keys]
        names += ["page_views", "events_total", "days_since_last_seen", "days_since_created"]
        return names

    def trait_columns(self) -> dict[str, list[int]]:
        """Each trait's column indices in the model's matrix."""
        everything = self.all_names()
        used = {name: i for i, name in enumerate(self.names())}
        columns: dict[str, list[int]] = {}
        c = 0
        for trait in self.numeric_traits:
            columns[trait] = [c]
            c += 1
        for trait, values in self.categorical_traits.items():
            columns[trait] = list(range(c, c + len(values) + 1))
            c += len(values) + 1
        return {trait: [used[everything[i]] for i in found if everything[i] in used]
                for trait, found in columns.items()}


def count_columns(names: list[str]) -> list[int]:
    """Indices of heavy-tailed count and day columns (the linear model takes their log)."""
    wanted = ("count:", "page_views", "events_total", "days_since_")
    return [i for i, name in enumerate(names) if name.startswith(wanted)]


def spec_build(stats: TraitStats, *, event_key_counts: dict[str, int], channel_counts: dict[str, int],
               outcome_trait: str | None = None, timed: bool = True) -> FeatureSpec:
    """Choose the columns from what the first pass saw (`timed=False` for event outcomes)."""
    spec = FeatureSpec(unused=[] if timed else list(TIMED_COLUMNS))
    minimum = max(1, math.ceil(stats.contacts * MIN_PRESENT_SHARE))
    outcome_normal = _normal_name(outcome_trait) if outcome_trait else None
    for name in sorted(stats.present):
        present = stats.present[name]
        if outcome_trait is not None and (name == outcome_trait or _normal_name(name) == outcome_normal):
            spec.excluded_traits[name] = "the outcome"
            continue
        if name.lower() in IDENTITY_TRAITS:
            continue
        if present < minimum:
            continue
        numbers, booleans = stats.numbers[name], stats.booleans[name]
        if numbers and numbers + booleans >= NUMERIC_SHARE * present:
            spec.numeric_traits.append(name)
            continue
        if booleans == present:
            spec.numeric_traits.append(name)
            continue
        counter = stats.values.get(name, Counter())
        top = [v for v, n in sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:TOP_VALUES]
               if n >= MIN_VALUE_COUNT]
        if not top or sum(counter[v] for v in top) < MIN_TOP_COVERAGE * present:
            spec.excluded_traits[name] = "free text (too many distinct values)"
            continue
        spec.categorical_traits[name] = top
    spec.channels = [c for c, _ in sorted(channel_counts.items(), key=lambda i: (-i[1], i[0]))
                     if c][:TOP_CHANNELS]
    spec.event_keys = [k for k, _ in sorted(event_key_counts.items(), key=lambda i: (-i[1], i[0]))][:TOP_EVENTS]
    return spec


def _days(later: dt.datetime, earlier: dt.datetime | None) -> float:
    """Whole days between two times (so contacts imported together are alike, not seconds apart)."""
    if earlier is None:
        return math.nan
    return float(max(0, (later - earlier).days))


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if _is_number(value):
        return float(value)
    return math.nan


def matrix_build(spec: FeatureSpec, rows: list[ContactRow], behaviour: dict[int, Behaviour], *,
                 now: dt.datetime) -> np.ndarray:
    """The feature matrix of `rows`, one row each, columns as `spec.names()`."""
    everything = spec.all_names()
    width = len(everything)
    matrix = np.full((len(rows), width), np.nan, dtype=np.float64)
    channel_index = {c: i for i, c in enumerate(spec.channels)}
    for r, row in enumerate(rows):
        out = matrix[r]
        traits = row.traits or {}
        c = 0
        for name in spec.numeric_traits:
            out[c] = _number(traits.get(name))
            c += 1
        for name, values in spec.categorical_traits.items():
            block = out[c:c + len(values) + 1]
            block[:] = 0.0
            value = traits.get(name)
            if value is not None and value != "" and not isinstance(value, (dict, list)):
                text = _text(value)
                block[values.index(text) if text in values else len(values)] = 1.0
            c += len(values) + 1
        block = out[c:c + len(spec.channels) + 1]
        block[:] = 0.0
        if row.source_channel:
            block[channel_index.get(row.source_channel, len(spec.channels))] = 1.0
        c += len(spec.channels) + 1
        out[c] = row.fit_score or 0.0
        out[c + 1] = row.engagement_score or 0.0
        c += 2
        out[c] = title_seniority(row.title or _text(traits.get("title") or ""))
        out[c + 1] = _number((row.company_traits or {}).get("employees"))
        c += 2
        seen = behaviour.get(row.id) or Behaviour()
        for key in spec.event_keys:
            out[c] = seen.counts.get(key, 0)
            c += 1
        out[c] = seen.page_views
        out[c + 1] = seen.events_total
        out[c + 2] = _days(now, row.last_seen_at or seen.last_event_at)
        out[c + 3] = _days(now, row.created_at)
    if spec.unused:
        unused = set(spec.unused)
        matrix = matrix[:, [i for i, name in enumerate(everything) if name not in unused]]
    return matrix


def uninformative(matrix: np.ndarray) -> list[int]:
    """Columns with nothing to learn from: all missing, or one value and never missing."""
    found = []
    for index in range(matrix.shape[1]):
        column = matrix[:, index]
        finite = column[np.isfinite(column)]
        if not finite.size or (finite.size == column.size and finite.min() == finite.max()):
            found.append(index)
    return found


def near_copies(spec: FeatureSpec, matrix: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Traits that on their own separate converters from the rest almost perfectly (single-trait
    ROC AUC ≥ NEAR_COPY_AUC): a copy of the outcome written after the fact (`customer_since`,
    `deal_won`), not a predictor. Returns trait → its single-trait AUC."""
    from sklearn.metrics import roc_auc_score

    if labels.min() == labels.max():
        return {}
    found = {}
    for trait, columns in spec.trait_columns().items():
        block = matrix[:, columns]
        if len(columns) == 1:
            column = block[:, 0]
            finite = column[np.isfinite(column)]
            floor = (finite.min() - 1.0) if finite.size else 0.0
            score = np.where(np.isfinite(column), column, floor)
        else:
            # a category per row (the hot column, or "none"), scored by its share of converters
            category = np.where(block.any(axis=1), block.argmax(axis=1), len(columns))
            rate = np.zeros(len(columns) + 1)
            for value in np.unique(category):
                rate[value] = labels[category == value].mean()
            score = rate[category]
        auc = float(roc_auc_score(labels, score))
        auc = max(auc, 1.0 - auc)
        if auc >= NEAR_COPY_AUC:
            found[trait] = round(auc, 4)
    return found


def spec_without(spec: FeatureSpec, traits: dict[str, float]) -> tuple[FeatureSpec, list[int]]:
    """The spec without `traits` (marked excluded) and the matrix columns that remain."""
    drop = {i for t in traits for i in spec.trait_columns().get(t, [])}
    kept = [i for i in range(len(spec.names())) if i not in drop]
    smaller = FeatureSpec.from_dict(spec.as_dict())
    smaller.numeric_traits = [t for t in spec.numeric_traits if t not in traits]
    smaller.categorical_traits = {t: v for t, v in spec.categorical_traits.items() if t not in traits}
    for trait, auc in traits.items():
        smaller.excluded_traits[trait] = f"near-copy of the outcome (alone it reaches ROC AUC {auc})"
    return smaller, kept
