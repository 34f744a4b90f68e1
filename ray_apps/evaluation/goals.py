"""Goal-gap analysis: how far a campaign is from its targets, which way it is heading, and
where it will end at its current trend.

A campaign runs from ``start`` to ``end`` (inclusive days) and has targets for some of
:data:`METRICS`. Given its daily results up to ``as_of``:

* **attained** is the cumulative value (a ratio metric is the ratio of the cumulative sums:
  CTR = clicks / impressions, ROI = revenue / cost);
* **gap** is ``target - attained``: what is still missing (for ``budget``, the money left);
* **trend** is the least-squares slope of the daily values over the last ``trend_days`` days
  (per day, per day; for a ratio metric the slope of the daily ratio on days with a non-zero
  denominator);
* **projected** is the value at ``end`` if each remaining day follows that linear trend
  (``a + b * day``, never below 0): exact when the daily values lie on a line. A ratio metric
  projects its numerator and denominator and divides;
* **on_track**: the projection reaches the target (``budget``: stays within it).

Additive metrics also give ``required_per_day``: the daily value the remaining days need to
close the gap. The computation is pure; :mod:`ray_apps.evaluation.service` reads the daily
results (from the request or the ``campaign_daily`` table) and answers ``GoalGap``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from cluster.core.errors import InvalidArgument

__all__ = ["ADDITIVE", "DAILY_FIELDS", "METRICS", "RATIOS", "GoalResult", "goal_gap", "linear_projection"]

#: Metrics that add up over days: the daily column each sums.
ADDITIVE: dict[str, str] = {
    "reach": "new_reach", "impressions": "impressions", "clicks": "clicks", "conversions": "conversions",
    "revenue": "revenue", "budget": "cost",
}
#: Ratio metrics: (numerator, denominator) daily columns.
RATIOS: dict[str, tuple[str, str]] = {"ctr": ("clicks", "impressions"), "roi": ("revenue", "cost")}
METRICS = tuple(ADDITIVE) + tuple(RATIOS)
#: The daily columns a campaign's results carry (``new_reach``: users reached for the first time).
DAILY_FIELDS = ("impressions", "new_reach", "clicks", "conversions", "revenue", "cost")


@dataclass(frozen=True)
class GoalResult:
    metric: str
    target: float
    attained: float
    gap: float
    #: gap / target (None when the target is 0).
    gap_fraction: float | None
    trend_per_day: float
    projected: float | None
    projected_gap: float | None
    on_track: bool | None
    #: Additive metrics: the daily value the remaining days need (None when no day remains).
    required_per_day: float | None


def _slope(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Least-squares line ``a + b x`` through the points (a flat line through one point)."""
    if len(y) == 0:
        return 0.0, 0.0
    if len(y) == 1:
        return float(y[0]), 0.0
    b, a = np.polyfit(x.astype(float), y.astype(float), 1)
    return float(a), float(b)


def linear_projection(daily: Sequence[float], total_days: int, trend_days: int) -> tuple[float, float]:
    """The sum of ``daily`` extended to ``total_days`` days along the least-squares line of its
    last ``trend_days`` values (each future day clipped at 0), and the line's slope.

    Days are numbered 1..len(daily); the future days are len(daily)+1..total_days.
    """
    y = np.asarray(daily, dtype=float)
    t = len(y)
    x = np.arange(1, t + 1)
    recent = slice(max(0, t - trend_days), t)
    a, b = _slope(y[recent], x[recent])
    future = np.arange(t + 1, total_days + 1)
    return float(y.sum() + np.maximum(a + b * future, 0.0).sum()), b


def goal_gap(targets: Mapping[str, float], daily: Mapping[str, Sequence[float]], *, start: date, end: date,
             as_of: date, trend_days: int = 14) -> list[GoalResult]:
    """The gap to each target.

    Args:
        targets: metric (one of :data:`METRICS`) -> target value (>= 0; ``ctr`` at most 1).
        daily: each of :data:`DAILY_FIELDS` -> one value per day from ``start`` to ``as_of``.
        start, end: the campaign's first and last day.
        as_of: the last day the daily values cover (``start <= as_of <= end``).
        trend_days: days (the most recent) the trend is fitted on.

    Raises:
        InvalidArgument: an unknown metric, a negative or non-finite value, dates out of order,
            daily columns of the wrong length.
    """
    if not targets:
        raise InvalidArgument("give at least one target", field="targets")
    if end < start:
        raise InvalidArgument(f"end_date {end} is before start_date {start}", field="end_date")
    if not start <= as_of <= end:
        raise InvalidArgument(f"as_of {as_of} must be between start_date {start} and end_date {end}",
                              field="as_of")
    if trend_days < 2:
        raise InvalidArgument("trend_days must be at least 2", field="trend_days")
    elapsed, total = (as_of - start).days + 1, (end - start).days + 1
    columns = {}
    for name in DAILY_FIELDS:
        values = np.asarray(daily.get(name, [0.0] * elapsed), dtype=float)
        if len(values) != elapsed:
            raise InvalidArgument(f"daily.{name} holds {len(values)} values; {start}..{as_of} is {elapsed} days",
                                  field=f"daily.{name}")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise InvalidArgument(f"daily.{name} must hold non-negative numbers", field=f"daily.{name}")
        columns[name] = values
    if np.any(columns["clicks"] > columns["impressions"]):
        raise InvalidArgument("daily.clicks exceeds daily.impressions on some day", field="daily.clicks")
    remaining = total - elapsed
    out = []
    for metric, target in targets.items():
        if metric not in METRICS:
            raise InvalidArgument(f"unknown target {metric!r}; one of {', '.join(METRICS)}", field=f"targets.{metric}")
        if not math.isfinite(target) or target < 0 or (metric == "ctr" and target > 1):
            raise InvalidArgument(f"targets.{metric} must be a number >= 0{' and <= 1' if metric == 'ctr' else ''}",
                                  field=f"targets.{metric}")
        if metric in ADDITIVE:
            y = columns[ADDITIVE[metric]]
            attained = float(y.sum())
            projected, slope = linear_projection(y, total, trend_days)
            required = max(target - attained, 0.0) / remaining if remaining else None
            if metric == "budget":
                required = None  # a cap, not something to reach
        else:
            num_col, den_col = RATIOS[metric]
            num, den = columns[num_col], columns[den_col]
            attained = float(num.sum() / den.sum()) if den.sum() > 0 else 0.0
            pn, _ = linear_projection(num, total, trend_days)
            pd_, _ = linear_projection(den, total, trend_days)
            projected = pn / pd_ if pd_ > 0 else None
            seen = den > 0
            x = np.arange(1, elapsed + 1)[seen][-trend_days:]
            _, slope = _slope((num[seen] / den[seen])[-trend_days:], x)
            required = None
        gap = target - attained
        if metric == "budget":
            on_track = None if projected is None else projected <= target
        else:
            on_track = None if projected is None else projected >= target
        out.append(GoalResult(
            metric=metric, target=float(target), attained=attained, gap=gap,
            gap_fraction=gap / target if target else None, trend_per_day=slope, projected=projected,
            projected_gap=None if projected is None else target - projected, on_track=on_track,
            required_per_day=required))
    return out
