"""Slot discounts: the mixed-integer program against exhaustive search, and its economics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cluster.core.errors import InvalidArgument
from ray_apps.pricing.discounts import propose_discounts, slot_values

LEVELS = (0.05, 0.10, 0.20)


def _week(rng: np.random.Generator) -> np.ndarray:
    hours = 1.0 + np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False)) * 0.8
    days = np.array([1.0, 0.9, 0.9, 1.0, 1.2, 1.5, 1.4])
    return np.outer(days, hours) * rng.uniform(0.5, 1.5, (7, 24))


def _brute_force(base, levels, e, v, m, budget, offpeak):
    """The best plan by trying every level of every off-peak slot (few slots only)."""
    grid = np.array((0.0,) + tuple(levels))
    orders, margin, spend = slot_values(base, grid, e, v, m)
    free = np.flatnonzero(offpeak)
    best = margin[:, 0].sum()
    for combo in itertools.product(range(len(grid)), repeat=len(free)):
        pick = np.zeros(len(base.reshape(-1)), dtype=int)
        pick[free] = combo
        rows = np.arange(len(pick))
        if spend[rows, pick].sum() <= budget + 1e-9:
            best = max(best, margin[rows, pick].sum())
    return best


@pytest.mark.parametrize("seed", range(4))
def test_the_program_finds_the_exhaustive_optimum(seed):
    rng = np.random.default_rng(seed)
    base = np.full((7, 24), 50.0)  # peak everywhere but in 6 slots ...
    cheap = rng.choice(168, 6, replace=False)
    base.reshape(-1)[cheap] = rng.uniform(1, 10, 6)  # ... which are off-peak
    e, v, m = rng.uniform(2.5, 5.0), 100.0, 0.4
    budget = float(rng.uniform(20, 150))
    plan = propose_discounts(base, elasticity=e, order_value=v, margin_rate=m, budget=budget, levels=LEVELS,
                             max_discount=0.2, offpeak_quantile=6 / 168)
    offpeak = np.array([s.offpeak for s in plan.slots])
    assert set(np.flatnonzero(offpeak)) == set(cheap)
    assert plan.status == "Optimal"
    assert plan.expected_margin == pytest.approx(_brute_force(base, LEVELS, e, v, m, budget, offpeak), rel=1e-9)
    assert plan.discount_spend <= budget + 1e-6
    assert all(s.discount == 0 for s in plan.slots if not s.offpeak)


def test_inelastic_demand_gets_no_discount_and_more_budget_never_hurts():
    base = _week(np.random.default_rng(1))
    common = dict(order_value=200.0, margin_rate=0.3, levels=(0.05, 0.1, 0.15, 0.2), max_discount=0.2,
                  offpeak_quantile=0.5)
    flat = propose_discounts(base, elasticity=2.0, budget=1e6, **common)  # e * m = 0.6 < 1
    assert all(s.discount == 0 for s in flat.slots) and flat.expected_margin == pytest.approx(flat.base_margin)
    margins = [propose_discounts(base, elasticity=6.0, budget=b, **common).expected_margin for b in (0, 50, 200, 1e6)]
    assert margins[0] == pytest.approx(flat.base_margin)  # no budget: nothing to give away
    assert all(b >= a - 1e-6 for a, b in zip(margins, margins[1:]))
    assert margins[-1] > margins[0]
    capped = propose_discounts(base, elasticity=6.0, budget=1e6, **{**common, "max_discount": 0.1})
    assert max(s.discount for s in capped.slots) <= 0.1


@pytest.mark.parametrize("kw, field", [
    ({"margin_rate": 0.0}, "margin_rate"),
    ({"budget": -1.0}, "budget"),
    ({"max_discount": 0.95}, "max_discount"),
    ({"offpeak_quantile": 1.5}, "offpeak_quantile"),
    ({"levels": (0.0,)}, "discount_levels[0]"),
])
def test_bad_parameters_name_their_field(kw, field):
    args = dict(elasticity=2.0, order_value=100.0, margin_rate=0.3, budget=10.0, levels=LEVELS, max_discount=0.2,
                offpeak_quantile=0.5)
    with pytest.raises(InvalidArgument) as err:
        propose_discounts(np.ones((7, 24)), **{**args, **kw})
    assert err.value.field == field
