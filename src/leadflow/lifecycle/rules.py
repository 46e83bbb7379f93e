"""Lifecycle rules that need no database: stage order, allowed moves, qualification, routing match.

Plain functions over plain values, tested on their own (tests/test_lifecycle_rules.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from leadflow.lifecycle.models import (
    CHURNED, CUSTOMER, DISQUALIFIED, LEAD, MQL, RECYCLED, SAL, SQL, SUBSCRIBER, OPPORTUNITY,
)

# Keys the engine moves contacts to by itself; a workspace's stage list must keep them.
REQUIRED_STAGES = (SUBSCRIBER, LEAD, MQL, SAL, SQL, OPPORTUNITY, CUSTOMER, RECYCLED, DISQUALIFIED, CHURNED)
EXIT_STAGES = (RECYCLED, DISQUALIFIED, CHURNED)
GRADES = ("A", "B", "C", "D")
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class RuleError(ValueError):
    """A stage list or setting that cannot be used; the message says why."""


def stages_validate(stages: object) -> list[dict]:
    """A clean copy of a workspace's stage list, or RuleError."""
    if not isinstance(stages, list) or not stages:
        raise RuleError("stages must be a non-empty list of {key, label, kind}")
    clean, seen = [], set()
    for item in stages:
        if not isinstance(item, dict):
            raise RuleError("each stage must be an object with key, label and kind")
        key = str(item.get("key") or "")
        if not _KEY.match(key):
            raise RuleError(f"stage key {key!r} must be lower-case letters, digits and _ (max 32)")
        if key in seen:
            raise RuleError(f"stage {key!r} is listed twice")
        seen.add(key)
        kind = item.get("kind") or "funnel"
        if kind not in ("funnel", "exit"):
            raise RuleError(f"stage {key!r}: kind must be 'funnel' or 'exit'")
        if key in EXIT_STAGES and kind != "exit" or key not in EXIT_STAGES and key in REQUIRED_STAGES and kind != "funnel":
            raise RuleError(f"stage {key!r} must keep its kind")
        clean.append({"key": key, "label": str(item.get("label") or key)[:100], "kind": kind})
    missing = [k for k in REQUIRED_STAGES if k not in seen]
    if missing:
        raise RuleError(f"stages must include {', '.join(missing)} (the engine moves contacts there)")
    funnel = [s["key"] for s in clean if s["kind"] == "funnel"]
    built_in = [k for k in funnel if k in REQUIRED_STAGES]
    if built_in != [k for k in REQUIRED_STAGES if k not in EXIT_STAGES]:
        raise RuleError("the built-in funnel stages must keep their order: "
                        + " → ".join(k for k in REQUIRED_STAGES if k not in EXIT_STAGES))
    return clean


@dataclass(frozen=True)
class StageOrder:
    """Positions of a workspace's funnel stages; exit stages have no position."""

    funnel: tuple[str, ...]
    exits: tuple[str, ...]

    @classmethod
    def of(cls, stages: Sequence[dict]) -> StageOrder:
        return cls(tuple(s["key"] for s in stages if s.get("kind", "funnel") == "funnel"),
                   tuple(s["key"] for s in stages if s.get("kind") == "exit"))

    def known(self, stage: str) -> bool:
        return stage in self.funnel or stage in self.exits

    def position(self, stage: str) -> int:
        """-1 for no stage, the funnel index, or -1 for exit stages (below every funnel stage)."""
        return self.funnel.index(stage) if stage in self.funnel else -1

    def is_forward(self, from_stage: str, to_stage: str) -> bool:
        return to_stage in self.funnel and (from_stage == "" or from_stage in self.funnel) and \
            self.position(to_stage) > self.position(from_stage)

    def further(self, a: str, b: str) -> str:
        """The further-along of two stages (a merge keeps it); a funnel stage beats an exit one."""
        if b in self.funnel and (a not in self.funnel or self.position(b) > self.position(a)):
            return b
        if not a:
            return b
        return a


def automatic_move_allowed(order: StageOrder, from_stage: str, to_stage: str) -> bool:
    """Rules move contacts forward only; the one backward-looking rule is recycled → MQL
    (a recycled lead that qualifies again or reaches its return date). Disqualified and churned
    contacts only move by hand."""
    if from_stage == RECYCLED:
        return to_stage == MQL
    if from_stage in order.exits:
        return False
    return order.is_forward(from_stage, to_stage)


def explicit_move_allowed(order: StageOrder, from_stage: str, to_stage: str) -> bool:
    """A person (or the API) may set any known stage other than the current one."""
    return order.known(to_stage) and to_stage != from_stage


@dataclass(frozen=True)
class Qualification:
    grades: frozenset[str]
    threshold: float
    hot_events: frozenset[str]


def qualification_reason(rule: Qualification, *, fit_grade: str, engagement_score: float,
                         event_names: Iterable[str] = ()) -> str:
    """Why this contact is an MQL now ('' when it is not): the hot path first, then the score rule."""
    hot = sorted(set(event_names) & rule.hot_events)
    if hot:
        return f"hot: {hot[0]}"
    if fit_grade in rule.grades and engagement_score >= rule.threshold:
        return f"fit grade {fit_grade} and engagement {engagement_score:g} >= {rule.threshold:g}"
    return ""


def employees_of(traits: dict) -> int | None:
    """A company's head count from its traits (`employees`), however it was sent."""
    value = traits.get("employees") if isinstance(traits, dict) else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    digits = re.sub(r"[,\s_]", "", str(value))
    return int(digits) if digits.isdigit() else None


@dataclass(frozen=True)
class RuleCondition:
    countries: frozenset[str] = frozenset()
    employees_min: int | None = None
    employees_max: int | None = None
    source_channels: frozenset[str] = frozenset()


def condition_matches(cond: RuleCondition, *, country: str, employees: int | None, channel: str) -> bool:
    """Every condition that is set must hold; a rule with none matches every lead."""
    if cond.countries and (country or "").upper() not in cond.countries:
        return False
    if cond.employees_min is not None or cond.employees_max is not None:
        if employees is None:
            return False
        if cond.employees_min is not None and employees < cond.employees_min:
            return False
        if cond.employees_max is not None and employees > cond.employees_max:
            return False
    if cond.source_channels and channel not in cond.source_channels:
        return False
    return True


def round_robin_pick(pool: Sequence[int], pointer: int, eligible: set[int],
                     exclude: Iterable[int] = ()) -> tuple[int | None, int]:
    """The next eligible user of `pool` starting at `pointer`, and the pointer after it.

    Returns (None, pointer) when nobody in the pool is eligible.
    """
    skip = set(exclude)
    n = len(pool)
    for step in range(n):
        index = (pointer + step) % n
        user_id = pool[index]
        if user_id in eligible and user_id not in skip:
            return user_id, (index + 1) % n
    return None, pointer
