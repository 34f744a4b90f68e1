"""Budget LP: the article's example, its true optimum, duals, conflicts and validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.core.errors import FailedPrecondition, InvalidArgument
from ray_apps.budget import Channel, optimize_budget

ARTICLE = [
    Channel("feed", cost=50, roi=3.2, max_placements=10000, min_placements=2000),
    Channel("search", cost=80, roi=4.5, max_placements=6000, min_placements=1500),
    Channel("short_video", cost=30, roi=2.8, max_placements=15000, min_placements=3000),
]
BUDGET = 1_130_000


def test_the_article_example_maximises_revenue():
    plan = optimize_budget(ARTICLE, BUDGET)
    assert plan.placements == pytest.approx({"feed": 10000, "search": 6000, "short_video": 5000})
    assert plan.objective_value == pytest.approx(4_180_000)
    assert plan.total_spend == pytest.approx(BUDGET)
    assert {c.name for c in plan.binding} == {"budget", "max_placements[feed]", "max_placements[search]"}


def test_the_articles_roi_figure_is_not_the_optimum_of_its_own_metric():
    # The article reports sum(ROI x placements) = 73,000 at the revenue-optimal point.
    at_article_point = sum(c.roi * p for c, p in zip(ARTICLE, (10000, 6000, 5000)))
    assert at_article_point == pytest.approx(73_000)
    plan = optimize_budget(ARTICLE, BUDGET, objective="roi_sum")
    assert plan.objective_value == pytest.approx(84_125)
    assert plan.placements == pytest.approx({"feed": 10000, "search": 2250, "short_video": 15000})
    assert plan.objective_value > at_article_point


@pytest.mark.parametrize("objective", ["revenue", "profit", "placements", "roi_sum"])
def test_a_shadow_price_is_what_relaxing_its_constraint_earns(objective):
    plan = optimize_budget(ARTICLE, BUDGET, objective=objective)
    budget = next(c for c in plan.constraints if c.name == "budget")
    step = 300.0  # small enough not to change which constraints bind
    relaxed = optimize_budget(ARTICLE, BUDGET + step, objective=objective)
    assert relaxed.objective_value - plan.objective_value == pytest.approx(budget.shadow_price * step, rel=1e-6)
    for c in plan.constraints:
        if c.slack > 0:
            assert c.shadow_price == pytest.approx(0.0, abs=1e-9), c.name


def _greedy(channels, budget, coef):
    """The LP optimum for one budget row and box bounds: minimums first, then best ratio."""
    left = budget - sum(c.cost * c.min_placements for c in channels)
    x = {c.name: c.min_placements for c in channels}
    for c in sorted(channels, key=lambda c: coef(c) / c.cost, reverse=True):
        if coef(c) <= 0:
            continue
        extra = min(c.max_placements - c.min_placements, left / c.cost)
        x[c.name] += extra
        left -= extra * c.cost
    return sum(coef(c) * x[c.name] for c in channels)


channel_st = st.builds(
    lambda i, cost, roi, hi, lo_frac: Channel(f"ch{i}", cost, roi, hi, round(hi * lo_frac)),
    st.integers(0, 10**6), st.integers(1, 200), st.floats(0, 6, allow_nan=False).map(lambda r: round(r, 2)),
    st.integers(0, 20000), st.sampled_from([0.0, 0.0, 0.1, 0.3]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(channel_st, min_size=1, max_size=6, unique_by=lambda c: c.name), st.integers(1, 3_000_000))
def test_the_lp_optimum_matches_the_greedy_solution_of_a_single_budget_row(channels, budget):
    floor = sum(c.cost * c.min_placements for c in channels)
    if floor > budget:
        with pytest.raises(FailedPrecondition):
            optimize_budget(channels, budget)
        return
    plan = optimize_budget(channels, budget)
    assert plan.objective_value == pytest.approx(_greedy(channels, budget, lambda c: c.cost * c.roi), rel=1e-6,
                                                 abs=1e-3)
    assert plan.total_spend <= budget * (1 + 1e-7)  # CBC writes 8 significant digits
    for c in channels:
        assert c.min_placements - 1e-6 <= plan.placements[c.name] <= c.max_placements + 1e-6


def test_integer_placements_are_whole_and_never_beat_the_lp():
    budget = 1_130_017  # not a multiple of the costs: the LP answer is fractional
    lp = optimize_budget(ARTICLE, budget)
    ip = optimize_budget(ARTICLE, budget, integer=True)
    assert any(not float(p).is_integer() for p in lp.placements.values())
    assert all(float(p).is_integer() for p in ip.placements.values())
    assert ip.objective_value <= lp.objective_value
    assert ip.total_spend <= budget
    assert all(c.shadow_price is None for c in ip.constraints)


def test_an_infeasible_plan_names_the_constraints_in_conflict():
    channels = [*ARTICLE, Channel("email", cost=1, roi=9.0, max_placements=1000)]  # no minimum: not in conflict
    with pytest.raises(FailedPrecondition) as err:
        optimize_budget(channels, 300_000)  # the minimums alone cost 310,000
    msg = err.value.message
    for name in ("budget", "min_placements[feed]", "min_placements[search]", "min_placements[short_video]"):
        assert name in msg
    assert "email" not in msg and "max_placements" not in msg


def test_a_conflict_set_is_minimal():
    channels = [Channel("a", 10, 2, 100, 50), Channel("b", 10, 2, 100, 1), Channel("c", 1000, 1, 10, 10)]
    # 500 + 10 + 10,000 > 10,000, but c's minimum alone already breaks the budget.
    with pytest.raises(FailedPrecondition) as err:
        optimize_budget(channels, 10_000 - 1)
    assert "min_placements[c]" in err.value.message and "min_placements[a]" not in err.value.message


@pytest.mark.parametrize("mutate, field", [
    (lambda chs, b: ([Channel("feed", -1, 3, 10)], b), "channels[0].cost_per_placement"),
    (lambda chs, b: ([Channel("feed", 1, math.nan, 10)], b), "channels[0].roi"),
    (lambda chs, b: ([chs[0], Channel("x", 1, 1, 5, 9)], b), "channels[1].min_placements"),
    (lambda chs, b: ([chs[0], chs[0]], b), "channels[1].name"),
    (lambda chs, b: ([Channel("", 1, 1, 5)], b), "channels[0].name"),
    (lambda chs, b: (chs, 0), "total_budget"),
    (lambda chs, b: (chs, math.inf), "total_budget"),
    (lambda chs, b: ([], b), "channels"),
])
def test_bad_input_names_the_field(mutate, field):
    channels, budget = mutate(ARTICLE, BUDGET)
    with pytest.raises(InvalidArgument) as err:
        optimize_budget(channels, budget)
    assert err.value.field == field


def test_an_unknown_objective_is_invalid():
    with pytest.raises(InvalidArgument) as err:
        optimize_budget(ARTICLE, BUDGET, objective="clicks")
    assert err.value.field == "objective"
