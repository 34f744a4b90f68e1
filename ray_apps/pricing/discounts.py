"""Off-peak discounts per time slot: the discount of each weekday-hour slot that maximises the
week's expected margin under a discount budget, as a mixed-integer program (PuLP + CBC).

For a category with list-price revenue ``V`` per order, gross margin rate ``m`` (of the list
price) and own-price elasticity ``e``, a slot with ``D`` expected orders at list price sells
``D (1 - d)^-e`` orders at discount ``d`` (the constant-elasticity response the demand model
estimates). Per slot and level:

* expected margin ``D (1 - d)^-e V (m - d)``;
* discount spend (what the discount gives away, the budget's unit) ``D (1 - d)^-e V d``.

Each slot takes exactly one level (0 included); only **off-peak** slots, those whose demand is
at or below the ``offpeak_quantile`` of the week's slots, may take a level above 0; the spend
summed over the week stays within ``budget``. A discount raises a slot's margin only when
``e m > 1`` near 0 (``d/dd [(1 - d)^-e (m - d)] = e m - 1`` at 0), so inelastic categories
get no discount whatever the budget: the optimiser says so rather than spending.

The response assumes discounting one slot moves no demand from other slots or categories; a
discount that only shifts purchases in time is worth less than this says (docs/pricing.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cluster.core.errors import InvalidArgument

__all__ = ["DiscountPlan", "SlotPlan", "propose_discounts", "slot_values"]

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class SlotPlan:
    weekday: int  # 0 = Monday
    hour: int
    discount: float
    base_orders: float
    expected_orders: float
    expected_margin: float
    discount_spend: float
    offpeak: bool


@dataclass(frozen=True)
class DiscountPlan:
    slots: list[SlotPlan]
    expected_margin: float
    #: The week's margin with no discount anywhere.
    base_margin: float
    discount_spend: float
    budget: float
    #: Slots with base demand at or below this many orders are off-peak.
    offpeak_threshold: float
    status: str


def slot_values(base: np.ndarray, levels: np.ndarray, elasticity: float, order_value: float,
                margin_rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orders, margin and spend of each slot (rows) at each discount level (columns)."""
    lift = (1.0 - levels)[None, :] ** (-elasticity)
    orders = base.reshape(-1)[:, None] * lift
    return orders, orders * order_value * (margin_rate - levels)[None, :], orders * order_value * levels[None, :]


def _check(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise InvalidArgument(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, "
                              f"got {value}", field=name)


def propose_discounts(base: np.ndarray, *, elasticity: float, order_value: float, margin_rate: float,
                      budget: float, levels: Sequence[float], max_discount: float,
                      offpeak_quantile: float, time_limit_s: float = 10.0) -> DiscountPlan:
    """The discount per slot that maximises the expected margin.

    Args:
        base: Expected orders per slot at list price, shape (7, 24) (weekday x hour).
        elasticity: Own-price elasticity (positive: demand falls as the price rises).
        order_value: Revenue per order at list price (CNY).
        margin_rate: Gross margin as a share of the list price, (0, 1).
        budget: Most discount spend over the week (CNY, >= 0).
        levels: Discount levels to choose from, each in (0, 1); 0 is always allowed.
        max_discount: No level above this is used.
        offpeak_quantile: Slots at or below this quantile of base demand may be discounted.

    Raises:
        InvalidArgument: a parameter out of range (the field named as in ProposeDiscountsRequest).
    """
    import pulp

    base = np.asarray(base, dtype=float)
    if base.shape != (7, 24) or not np.all(np.isfinite(base)) or np.any(base < 0):
        raise InvalidArgument("the forecast must be 7 x 24 non-negative numbers", field="category")
    _check("margin_rate", margin_rate, 0.0, 1.0, lo_open=True, hi_open=True)
    _check("budget", budget, 0.0, 1e12)
    _check("max_discount", max_discount, 0.0, 0.9)
    _check("offpeak_quantile", offpeak_quantile, 0.0, 1.0)
    if not math.isfinite(elasticity) or not math.isfinite(order_value) or order_value < 0:
        raise InvalidArgument("the demand model has no usable elasticity or order value", field="category")
    if len(levels) > 20:
        raise InvalidArgument("discount_levels holds more than 20 levels", field="discount_levels")
    for i, level in enumerate(levels):
        _check(f"discount_levels[{i}]", level, 0.0, 0.9, lo_open=True)
    grid = np.array([0.0] + sorted({float(x) for x in levels if x <= max_discount + 1e-12}))
    orders, margin, spend = slot_values(base, grid, elasticity, order_value, margin_rate)
    flat = base.reshape(-1)
    threshold = float(np.quantile(flat, offpeak_quantile))
    offpeak = flat <= threshold

    problem = pulp.LpProblem("slot_discounts", pulp.LpMaximize)
    choose = {(s, j): pulp.LpVariable(f"x_{s}_{j}", cat="Binary")
              for s in range(len(flat)) for j in range(len(grid)) if j == 0 or offpeak[s]}
    problem += pulp.lpSum(margin[s, j] * x for (s, j), x in choose.items())
    for s in range(len(flat)):
        problem += pulp.lpSum(x for (t, _), x in choose.items() if t == s) == 1, f"one_level_{s}"
    problem += pulp.lpSum(spend[s, j] * x for (s, j), x in choose.items()) <= budget, "budget"
    status = pulp.LpStatus[problem.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s))]
    picked = np.zeros(len(flat), dtype=int)
    for (s, j), x in choose.items():
        if (x.value() or 0.0) > 0.5:
            picked[s] = j
    rows = np.arange(len(flat))
    slots = [SlotPlan(weekday=s // 24, hour=s % 24, discount=float(grid[picked[s]]), base_orders=float(flat[s]),
                      expected_orders=float(orders[s, picked[s]]), expected_margin=float(margin[s, picked[s]]),
                      discount_spend=float(spend[s, picked[s]]), offpeak=bool(offpeak[s])) for s in rows]
    return DiscountPlan(slots=slots, expected_margin=float(margin[rows, picked].sum()),
                        base_margin=float(margin[:, 0].sum()), discount_spend=float(spend[rows, picked].sum()),
                        budget=float(budget), offpeak_threshold=threshold, status=status)
