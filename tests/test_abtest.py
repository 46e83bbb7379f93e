"""The A/B maths without a database: the seeded split, the significance tests and the decision."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st
from statsmodels.stats.proportion import proportions_chisquare, proportions_ztest

from leadflow.messaging.abtest import ab_decide, ab_significance, ab_split


@given(ids=st.lists(st.integers(min_value=1, max_value=10**9), max_size=400, unique=True),
       share=st.floats(min_value=0.01, max_value=0.99), variants=st.integers(min_value=2, max_value=4),
       seed=st.integers(min_value=1, max_value=10**6))
@settings(max_examples=150, deadline=None)
def test_the_split_is_reproducible_even_and_covers_everyone_once(ids, share, variants, seed):
    plan = ab_split(seed=seed, contact_ids=ids, share=share, variants=variants)
    assert sorted(cid for cid, _ in plan) == sorted(ids), "everyone exactly once"
    assert plan == ab_split(seed=seed, contact_ids=list(reversed(ids)), share=share, variants=variants), \
        "the same audience splits the same way, whatever order it comes in"
    sizes = [sum(1 for _, i in plan if i == v) for v in range(variants)]
    test_n = sum(sizes)
    assert max(sizes) - min(sizes) <= 1, "evenly"
    assert test_n == min(len(ids), max(variants, round(len(ids) * share)))
    firsts = [i for _, i in plan]
    assert all(i is not None for i in firsts[:test_n]) and all(i is None for i in firsts[test_n:]), "test group first"


def test_the_split_depends_on_the_seed_and_is_random_not_by_id():
    ids = list(range(1, 1001))
    one = ab_split(seed=1, contact_ids=ids, share=0.2, variants=2)
    two = ab_split(seed=2, contact_ids=ids, share=0.2, variants=2)
    assert [c for c, _ in one[:200]] != [c for c, _ in two[:200]]
    test_group = sorted(c for c, i in one if i is not None)
    assert test_group != ids[:200] and test_group[0] < 100 < 900 < test_group[-1], "spread over the audience"


def test_two_variants_use_statsmodels_two_proportion_z_test():
    test, statistic, p = ab_significance([(40, 200), (10, 200)])
    z, expected = proportions_ztest([40, 10], [200, 200])
    assert test == "two-proportion z-test" and statistic == pytest.approx(z) and p == pytest.approx(expected)
    assert p < 0.001


def test_three_or_four_variants_use_a_chi_square_test():
    counts = [(10, 180), (12, 180), (45, 180), (11, 170)]
    test, statistic, p = ab_significance(counts)
    chi2, expected, _ = proportions_chisquare([c for c, _ in counts], [n for _, n in counts])
    assert test == "chi-square test" and statistic == pytest.approx(chi2) and p == pytest.approx(expected)


@pytest.mark.parametrize("counts", [[(0, 100), (0, 100)], [(5, 5), (7, 7)], [(3, 0), (2, 100)], [(1, 10)]])
def test_undefined_tests_give_no_p_value(counts):
    assert ab_significance(counts)[1:] == (None, None)


def test_the_best_wins_significant_or_not_ties_go_to_the_earliest():
    clear = ab_decide(counts=[(10, 200), (40, 200)])
    assert (clear.winner, clear.significant) == (1, True) and clear.rates == [0.05, 0.2]
    close = ab_decide(counts=[(11, 200), (12, 200)])
    assert (close.winner, close.significant) == (1, False) and close.p_value > 0.05
    assert "not significant" in close.reason
    tie = ab_decide(counts=[(12, 200), (12, 200), (3, 200)])
    assert tie.winner == 0
    nothing = ab_decide(counts=[(0, 0), (0, 0)])
    assert (nothing.winner, nothing.p_value) == (0, None)
    one_side = ab_decide(counts=[(0, 0), (3, 50)])
    assert one_side.winner == 1 and one_side.p_value is None, "a variant with nothing delivered cannot be tested"
    lower = ab_decide(counts=[(30, 200), (2, 200)], higher_is_better=False)
    assert (lower.winner, lower.significant) == (1, True)


@given(counts=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)).map(lambda t: (min(t), max(t))),
                       min_size=2, max_size=4),
       higher=st.booleans())
@settings(max_examples=200, deadline=None)
def test_the_decision_is_always_a_best_variant_and_significance_matches_alpha(counts, higher):
    outcome = ab_decide(counts=counts, higher_is_better=higher)
    measured = [r for r in outcome.rates if r is not None]
    if measured:
        best = max(measured) if higher else min(measured)
        assert outcome.rates[outcome.winner] == best
        assert outcome.winner == min(i for i, r in enumerate(outcome.rates) if r == best)
    else:
        assert outcome.winner == 0
    if outcome.p_value is None:
        assert not outcome.significant
    else:
        assert 0 <= outcome.p_value <= 1 and math.isfinite(outcome.p_value)
        assert outcome.significant == (outcome.p_value < 0.05)
