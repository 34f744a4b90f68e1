"""Audiences: the users a campaign targets, chosen by consumption level, segment and recency.

An audience is read from the newest RFM table (``pmkt features rfm``: recency, frequency,
monetary, average monthly spend and consumption level); the segment of each user comes from
the current segments model when a segment filter is given. ``pmkt audience`` writes the list
as CSV for a campaign tool; consent is still checked per message by the channel service.

Every user of the RFM table made a paid order, so GetSegment's ``no_purchases`` segment can
never be in an audience: asking for it is an error rather than a silently empty list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from cluster.core.catalog import RFM
from cluster.core.errors import InvalidArgument
from cluster.core.feature_io import load_latest
from cluster.core.storage import Lake
from ray_apps.segments.service import NO_PURCHASES_NAME

__all__ = ["AUDIENCE_COLUMNS", "select_audience"]

AUDIENCE_COLUMNS = ("user_id", "consumption_level", "avg_monthly_spend", "recency_days", "frequency", "monetary")


def select_audience(lake: Lake, *, levels: Sequence[str] = (), segments: Sequence[str] = (),
                    segment_of: Callable[[pd.DataFrame], pd.Series] | None = None,
                    max_recency_days: int | None = None, min_frequency: int | None = None,
                    known_levels: Sequence[str] = ()) -> tuple[pd.DataFrame, dict]:
    """Users matching every given filter (an empty filter keeps everyone).

    Args:
        levels: Consumption levels to keep (``tags.consumption_bands`` names).
        segments: Segment names to keep; needs ``segment_of`` (RFM frame -> segment name per row).
        max_recency_days: Keep users whose last paid order is at most this many days old.
        min_frequency: Keep users with at least this many paid orders.
        known_levels: The configured level names (unknown ``levels`` are an error).

    Returns:
        The audience (:data:`AUDIENCE_COLUMNS` plus ``segment`` when filtered by segment),
        sorted by user id, and the RFM run's metadata.

    Raises:
        FailedPrecondition: no RFM table (names ``pmkt features rfm``), or one built before
            consumption levels existed.
        InvalidArgument: an unknown level, a negative bound, a segment filter without a model,
            or the ``no_purchases`` segment (its users have no RFM row).
    """
    if NO_PURCHASES_NAME in segments:
        raise InvalidArgument(f"segment {NO_PURCHASES_NAME!r} holds the users without a paid order, and audiences "
                              "are drawn from the RFM table of paying users: it would always be empty",
                              field="segment")
    unknown = sorted(set(levels) - set(known_levels)) if known_levels else []
    if unknown:
        raise InvalidArgument(f"unknown consumption level(s) {unknown}; one of {', '.join(known_levels)}",
                              field="level")
    if max_recency_days is not None and max_recency_days < 0:
        raise InvalidArgument("max_recency_days must be >= 0", field="max_recency_days")
    if min_frequency is not None and min_frequency < 0:
        raise InvalidArgument("min_frequency must be >= 0", field="min_frequency")
    table, meta = load_latest(lake, RFM)
    if "consumption_level" not in table.columns:
        from cluster.core.errors import FailedPrecondition

        raise FailedPrecondition("the RFM table predates consumption levels: run `pmkt features rfm` again")
    keep = pd.Series(True, index=table.index)
    if levels:
        keep &= table["consumption_level"].isin(list(levels))
    if max_recency_days is not None:
        keep &= table["recency_days"] <= max_recency_days
    if min_frequency is not None:
        keep &= table["frequency"] >= min_frequency
    out = table[list(AUDIENCE_COLUMNS)].copy()
    if segments:
        if segment_of is None:
            raise InvalidArgument("a segment filter needs the segments model", field="segment")
        out["segment"] = segment_of(table).to_numpy()
        keep &= out["segment"].isin(list(segments))
    return out[keep.to_numpy()].sort_values("user_id").reset_index(drop=True), meta
