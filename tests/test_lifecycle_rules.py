"""Lifecycle rules without a database: stage order, allowed moves, qualification, routing match."""

from __future__ import annotations

import pytest

from leadflow.lifecycle import rules
from leadflow.lifecycle.models import DEFAULT_STAGES

ORDER = rules.StageOrder.of(DEFAULT_STAGES)
QUAL = rules.Qualification(frozenset({"A", "B"}), 40.0, frozenset({"Demo Requested", "Contact Sales"}))


def test_automatic_moves_only_go_forward():
    assert rules.automatic_move_allowed(ORDER, "", "lead")
    assert rules.automatic_move_allowed(ORDER, "lead", "marketing_qualified")
    assert rules.automatic_move_allowed(ORDER, "subscriber", "marketing_qualified")
    assert not rules.automatic_move_allowed(ORDER, "sales_accepted", "marketing_qualified")
    assert not rules.automatic_move_allowed(ORDER, "customer", "lead")
    assert not rules.automatic_move_allowed(ORDER, "lead", "lead")


def test_exit_stages_are_explicit_except_recycled_requalifying():
    for stage in ("recycled", "disqualified", "churned"):
        assert not rules.automatic_move_allowed(ORDER, "lead", stage)
    assert rules.automatic_move_allowed(ORDER, "recycled", "marketing_qualified")
    assert not rules.automatic_move_allowed(ORDER, "recycled", "customer")
    assert not rules.automatic_move_allowed(ORDER, "disqualified", "marketing_qualified")
    assert not rules.automatic_move_allowed(ORDER, "churned", "marketing_qualified")
    assert rules.explicit_move_allowed(ORDER, "customer", "churned")
    assert rules.explicit_move_allowed(ORDER, "sales_qualified", "lead")
    assert not rules.explicit_move_allowed(ORDER, "lead", "lead")
    assert not rules.explicit_move_allowed(ORDER, "lead", "nonsense")


def test_further_stage_wins_a_merge():
    assert ORDER.further("lead", "sales_accepted") == "sales_accepted"
    assert ORDER.further("opportunity", "marketing_qualified") == "opportunity"
    assert ORDER.further("", "lead") == "lead"
    assert ORDER.further("recycled", "lead") == "lead"
    assert ORDER.further("recycled", "") == "recycled"


@pytest.mark.parametrize("grade,score,events,expected", [
    ("A", 40, (), True), ("B", 75, (), True), ("A", 39.9, (), False), ("C", 90, (), False),
    ("", 0, ("Demo Requested",), True), ("D", 0, ("Contact Sales",), True), ("D", 0, ("Page Viewed",), False),
])
def test_qualification_grade_threshold_and_hot_path(grade, score, events, expected):
    reason = rules.qualification_reason(QUAL, fit_grade=grade, engagement_score=score, event_names=events)
    assert bool(reason) is expected
    if events and expected:
        assert reason.startswith("hot: ")


def test_stage_lists_keep_the_built_in_stages_in_order():
    custom = [dict(s) for s in DEFAULT_STAGES]
    custom.insert(2, {"key": "product_qualified", "label": "PQL", "kind": "funnel"})
    assert [s["key"] for s in rules.stages_validate(custom)][2] == "product_qualified"
    with pytest.raises(rules.RuleError, match="must include"):
        rules.stages_validate([s for s in DEFAULT_STAGES if s["key"] != "recycled"])
    swapped = [dict(s) for s in DEFAULT_STAGES]
    swapped[2], swapped[3] = swapped[3], swapped[2]
    with pytest.raises(rules.RuleError, match="order"):
        rules.stages_validate(swapped)
    with pytest.raises(rules.RuleError, match="twice"):
        rules.stages_validate(DEFAULT_STAGES + [DEFAULT_STAGES[0]])


def test_routing_conditions():
    de_mid = rules.RuleCondition(countries=frozenset({"DE", "AT"}), employees_min=50, employees_max=500)
    assert rules.condition_matches(de_mid, country="de", employees=120, channel="")
    assert not rules.condition_matches(de_mid, country="FR", employees=120, channel="")
    assert not rules.condition_matches(de_mid, country="DE", employees=5000, channel="")
    assert not rules.condition_matches(de_mid, country="DE", employees=None, channel="")
    paid = rules.RuleCondition(source_channels=frozenset({"paid_search"}))
    assert rules.condition_matches(paid, country="", employees=None, channel="paid_search")
    assert not rules.condition_matches(paid, country="", employees=None, channel="email")
    assert rules.condition_matches(rules.RuleCondition(), country="", employees=None, channel="")
    assert rules.employees_of({"employees": "1,200"}) == 1200
    assert rules.employees_of({"employees": 80}) == 80
    assert rules.employees_of({"employees": "many"}) is None


def test_round_robin_skips_unavailable_and_excluded():
    pool = [1, 2, 3]
    assert rules.round_robin_pick(pool, 0, {1, 2, 3}) == (1, 1)
    assert rules.round_robin_pick(pool, 1, {1, 3}) == (3, 0)
    assert rules.round_robin_pick(pool, 2, {1, 2, 3}, exclude=[3]) == (1, 1)
    assert rules.round_robin_pick(pool, 0, set()) == (None, 0)
    assert rules.round_robin_pick([], 0, {1}) == (None, 0)
