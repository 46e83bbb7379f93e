"""A/B tests of broadcasts: splitting the audience, reading each variant's results and deciding the
winner with a significance test.

The maths is plain functions (`ab_split`, `ab_significance`, `ab_decide`) tested without a
database; `variant_counts` reads the results from the Message first-time columns, which record
only human opens and clicks (machine opens and bot clicks are kept as events but never stamp
`opened_at` / `clicked_at`, see `leadflow.messaging.events`).

Metrics are rates over *delivered* messages: accepted by the receiving server (`sent_at`, or a
provider's `delivered_at`) and not bounced. Click rate is the default; open rate is offered but
discouraged (privacy proxies open everything, and what is left is biased by mail client);
unsubscribe rate is lower-is-better. Two variants are compared with a two-proportion z-test, three
or four with a chi-square test of homogeneity (statsmodels), at alpha 0.05.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from django.db.models import Count, Q

from leadflow.messaging.models import Message

ALPHA = 0.05
MIN_VARIANTS = 2
MAX_VARIANTS = 4
LABELS = "ABCD"


@dataclass(frozen=True)
class Metric:
    column: str
    higher_is_better: bool
    label: str


METRICS = {
    "click_rate": Metric("clicked_at", True, "click rate (unique human clicks / delivered)"),
    "open_rate": Metric("opened_at", True, "open rate (unique human opens / delivered; unreliable, see docs)"),
    "unsubscribe_rate": Metric("unsubscribed_at", False, "unsubscribe rate (unsubscribes / delivered; lower wins)"),
}

# Delivered: the receiving server took it (SMTP acceptance sets sent_at; a provider webhook may set
# delivered_at) and it did not bounce afterwards.
DELIVERED = (Q(sent_at__isnull=False) | Q(delivered_at__isnull=False)) & Q(bounced_at__isnull=True)


# --- splitting ------------------------------------------------------------------------------------

def ab_split(*, seed: int, contact_ids: list[int], share: float, variants: int) -> list[tuple[int, int | None]]:
    """Every contact with its variant index (0 = A …) or None for the rest, test group first.

    The audience is shuffled by a generator seeded with the broadcast id (so the same audience
    always splits the same way, across processes and restarts); the first `share` of it — at least
    one person per variant when there are that many — is dealt out in turn, so variant sizes differ
    by at most one.
    """
    if variants < 1:
        raise ValueError("at least one variant")
    ids = sorted(set(contact_ids))
    random.Random(f"leadflow.broadcast.{seed}").shuffle(ids)
    test_n = min(len(ids), max(variants, round(len(ids) * share)))
    return [(cid, i % variants if i < test_n else None) for i, cid in enumerate(ids)]


# --- significance and decision -------------------------------------------------------------------

@dataclass
class Outcome:
    winner: int  # index into the variants
    significant: bool
    p_value: float | None
    statistic: float | None
    test: str
    rates: list[float | None] = field(default_factory=list)
    reason: str = ""


def ab_significance(counts: list[tuple[int, int]]) -> tuple[str, float | None, float | None]:
    """(test name, statistic, p-value) for `counts` = [(successes, delivered), …] per variant.

    Two-proportion z-test (two-sided) for two variants, chi-square test of homogeneity for three
    or four. None for the statistic and p-value when the test is undefined: a variant with nothing
    delivered, or every variant at 0% (or 100%).
    """
    from statsmodels.stats.proportion import proportions_chisquare, proportions_ztest

    test = "two-proportion z-test" if len(counts) == 2 else "chi-square test"
    successes = [s for s, _ in counts]
    trials = [n for _, n in counts]
    if len(counts) < 2 or any(n <= 0 for n in trials) or sum(successes) in (0, sum(trials)):
        return test, None, None
    if len(counts) == 2:
        statistic, p_value = proportions_ztest(successes, trials)
    else:
        statistic, p_value = proportions_chisquare(successes, trials)[:2]
    statistic, p_value = float(statistic), float(p_value)
    if not (math.isfinite(statistic) and math.isfinite(p_value)):
        return test, None, None
    return test, statistic, p_value


def ab_decide(*, counts: list[tuple[int, int]], higher_is_better: bool = True, alpha: float = ALPHA) -> Outcome:
    """The variant to send to the rest. Always the best by the metric (ties to the earliest label;
    nothing delivered anywhere: A), whether or not the difference is significant; `significant`
    says whether the test rejects "all variants perform the same" at `alpha`."""
    rates = [s / n if n > 0 else None for s, n in counts]
    measured = [(r, i) for i, r in enumerate(rates) if r is not None]
    test, statistic, p_value = ab_significance(counts)
    if not measured:
        return Outcome(0, False, None, None, test, rates, "nothing delivered yet: variant A is sent")
    best = (max if higher_is_better else min)(r for r, _ in measured)
    winner = min(i for r, i in measured if r == best)
    if p_value is None:
        return Outcome(winner, False, None, statistic, test, rates,
                       "not enough data for a significance test: the best by the metric is sent")
    significant = p_value < alpha
    reason = (f"significant at alpha {alpha:g} (p = {p_value:.4g})" if significant else
              f"not significant at alpha {alpha:g} (p = {p_value:.4g}): the best by the metric is sent anyway")
    return Outcome(winner, significant, p_value, statistic, test, rates, reason)


# --- reading results -----------------------------------------------------------------------------

def variant_counts(*, broadcast, metric: str) -> dict[int, tuple[int, int]]:
    """{variant id: (successes, delivered)} for the test group of `broadcast`, in one query."""
    column = METRICS[metric].column
    rows = (Message.objects
            .filter(workspace_id=broadcast.workspace_id, broadcast_id=broadcast.pk, variant__isnull=False)
            .order_by().values("variant_id")
            .annotate(delivered=Count("pk", filter=DELIVERED),
                      successes=Count("pk", filter=DELIVERED & Q(**{f"{column}__isnull": False})))
            .values_list("variant_id", "successes", "delivered"))
    return {variant_id: (successes, delivered) for variant_id, successes, delivered in rows}
