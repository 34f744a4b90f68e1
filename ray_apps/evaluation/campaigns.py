"""Campaign metrics by channel, campaign or segment, from the campaign table
(:mod:`spark_jobs.campaigns`: one row per user, campaign and channel).

Per group: impressions, clicks, CTR and its lift over all groups, converted clicks, the
conversion rate per click, attributed orders and revenue, cost, cost per acquisition and
ROI. **ROI is revenue per currency unit spent** (the convention of the budget optimiser and
of the article: an ROI of 3.2 returns 3.2 per 1 spent); it is ``None`` where nothing was spent
(free channels, or cost not delivered), rather than infinite. CPA is ``None`` without a
conversion or without cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from cluster.core.errors import FailedPrecondition, InvalidArgument

__all__ = ["GroupMetrics", "campaign_metrics", "DIMENSIONS"]

DIMENSIONS = ("channel", "campaign_id", "segment")
_SUMS = ("impressions", "clicks", "cost", "conversions", "orders", "revenue")


@dataclass(frozen=True)
class GroupMetrics:
    group: str
    impressions: int
    clicks: int
    ctr: float
    ctr_lift: float | None  # ctr / overall ctr - 1
    conversions: int
    conversion_rate: float | None  # conversions per click
    orders: int
    revenue: float
    cost: float
    cpa: float | None  # cost per conversion
    roi: float | None  # revenue per unit of cost; None when cost is 0


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b > 0 else None


def campaign_metrics(table: pd.DataFrame, by: str, segments: pd.Series | None = None) -> list[GroupMetrics]:
    """Aggregate the campaign table by ``channel``, ``campaign_id`` or ``segment`` (then
    ``segments`` maps user_id -> segment name; users without one go to ``(none)``).

    Returns the groups by revenue, largest first.
    """
    if by not in DIMENSIONS:
        raise InvalidArgument(f"by must be one of {', '.join(DIMENSIONS)}, got {by!r}", field="by")
    if table.empty:
        raise FailedPrecondition("the campaign table is empty: run `pmkt features campaigns` after ingesting "
                                 "impressions and orders")
    frame = table
    if by == "segment":
        if segments is None:
            raise InvalidArgument("by segment needs each user's segment", field="segments")
        frame = table.assign(segment=table["user_id"].map(segments).fillna("(none)"))
    sums = frame.groupby(by, sort=False)[list(_SUMS)].sum()
    overall_ctr = _ratio(float(sums["clicks"].sum()), float(sums["impressions"].sum())) or 0.0
    out = []
    for group, row in sums.iterrows():
        ctr = _ratio(row.clicks, row.impressions) or 0.0
        lift = float(ctr / overall_ctr - 1) if overall_ctr > 0 else None
        cost = float(row.cost) if math.isfinite(row.cost) else 0.0
        out.append(GroupMetrics(
            group=str(group), impressions=int(row.impressions), clicks=int(row.clicks), ctr=ctr,
            ctr_lift=lift, conversions=int(row.conversions),
            conversion_rate=_ratio(row.conversions, row.clicks), orders=int(row.orders), revenue=float(row.revenue),
            cost=cost, cpa=_ratio(cost, row.conversions) if cost > 0 else None, roi=_ratio(float(row.revenue), cost),
        ))
    return sorted(out, key=lambda g: -g.revenue)


class CampaignDaily:
    """``campaign_id -> its rows of the newest campaign_daily table`` (``pmkt features campaigns``),
    the table re-read when a newer run is published (checked at most every ``refresh_s``)."""

    def __init__(self, lake, refresh_s: float = 30.0) -> None:
        import time

        self._lake, self._refresh_s, self._clock = lake, refresh_s, time.monotonic
        self._run: str | None = None
        self._table: pd.DataFrame | None = None
        self._checked = float("-inf")

    def __call__(self, campaign_id: str) -> pd.DataFrame:
        from cluster.core.catalog import CAMPAIGN_DAILY
        from cluster.core.feature_io import load_latest

        now = self._clock()
        if self._table is None or now - self._checked >= self._refresh_s:
            self._checked = now
            run = CAMPAIGN_DAILY.require_latest(self._lake)["run_id"]  # FailedPrecondition naming the command
            if run != self._run:
                self._table, _ = load_latest(self._lake, CAMPAIGN_DAILY)
                self._run = run
        table = self._table
        return table[table["campaign_id"] == campaign_id]
