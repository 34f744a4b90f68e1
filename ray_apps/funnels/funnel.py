"""Funnel statistics from the funnel table (:mod:`spark_jobs.funnels`: one row per funnel and user
with the deepest step reached and that chain's step times).

Per group and step ``k``: the users who **entered** the step (reached ``k`` or deeper), the
conversion from the previous step (``users_k / users_{k-1}``) and from the first
(``users_k / users_1``), the users lost since the previous step and the drop-off rate
(``1 - conversion from the previous step``), and the median time from the previous step over
the users who entered step ``k`` (from the chain the table kept for each user). A rate with a
zero denominator, and the median of no users, are ``None``. Groups: none (all users),
``device`` or ``channel`` (of the user's first step, columns of the table), or ``segment``
(from a lookup passed in). A date range keeps the users whose first step fell on those UTC days.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from cluster.core.catalog import FUNNELS
from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.storage import Lake

__all__ = [
    "GROUP_BY",
    "NO_SEGMENT",
    "FunnelTable",
    "GroupFunnel",
    "StepStats",
    "funnel_stats",
    "load_funnel_table",
    "step_gaps",
]

log = logging.getLogger(__name__)

#: Accepted groupings: "" (one group of every user) or a dimension.
GROUP_BY = ("", "segment", "channel", "device")
#: Group of users the segment lookup gives no segment for.
NO_SEGMENT = "(none)"
SegmentOf = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class FunnelTable:
    """The newest funnel table as pandas, with the definitions it was built from.

    Attributes:
        frame: One row per funnel and user (``spark_jobs.funnels.FUNNEL_COLUMNS``).
        definitions: Funnel name -> ``{"steps": [...], "window_hours": h}``.
        run_id: The run that built it.
    """

    frame: pd.DataFrame
    definitions: dict[str, dict]
    run_id: str = ""


@dataclass(frozen=True)
class StepStats:
    step: int  # 1-based
    action: str
    users: int  # entered the step: reached it or a deeper one
    conversion_from_previous: float | None  # None at step 1 and after a step nobody entered
    conversion_from_first: float | None  # None when nobody entered step 1
    dropped: int  # users of the previous step who did not enter this one (0 at step 1)
    drop_off: float | None  # 1 - conversion_from_previous
    median_s_from_previous: float | None  # seconds; None at step 1 and when nobody entered


@dataclass(frozen=True)
class GroupFunnel:
    group: str
    steps: list[StepStats]

    @property
    def users(self) -> int:
        """Users who entered the funnel (step 1)."""
        return self.steps[0].users if self.steps else 0


def load_funnel_table(lake: Lake) -> FunnelTable:
    """The newest :data:`~cluster.core.catalog.FUNNELS` run.

    Raises:
        FailedPrecondition: the table has never been built (names ``pmkt features funnels``).
    """
    meta = FUNNELS.require_latest(lake)
    frame = lake.read_parquet(meta["path"])
    return FunnelTable(frame=frame, definitions={n: {"steps": list(d["steps"]), "window_hours": d["window_hours"]}
                                                 for n, d in meta["funnels"].items()}, run_id=meta["run_id"])


def step_gaps(frame: pd.DataFrame, n_steps: int) -> np.ndarray:
    """Seconds from step ``k-1`` to step ``k`` per user: shape ``(users, n_steps)``; column 0 and
    the steps a user did not reach are NaN."""
    gaps = np.full((len(frame), n_steps), np.nan)
    lengths = np.array([len(t) for t in frame["step_ts"]], dtype=np.int64)
    if not lengths.sum():
        return gaps
    # All users' step times in one vector (Arrow gives datetime64 arrays; lists of datetimes work too).
    flat = pd.to_datetime(pd.Series(np.concatenate([np.asarray(t) for t in frame["step_ts"] if len(t)])), utc=True)
    secs = (flat - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    row = np.repeat(np.arange(len(frame)), lengths)
    pos = np.arange(len(secs)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    later = pos > 0  # a step with a previous step of the same user right before it in ``secs``
    gaps[row[later], pos[later]] = secs[1:][later[1:]] - secs[:-1][later[1:]]
    return gaps


def _rate(a: int, b: int) -> float | None:
    return a / b if b > 0 else None


def _group_stats(name: str, reached: np.ndarray, gaps: np.ndarray, steps: Sequence[str]) -> GroupFunnel:
    out: list[StepStats] = []
    entered = [int((reached >= k).sum()) for k in range(1, len(steps) + 1)]
    for k, action in enumerate(steps, start=1):
        users = entered[k - 1]
        prev = entered[k - 2] if k > 1 else None
        conv = _rate(users, prev) if prev is not None else None
        col = gaps[reached >= k, k - 1] if k > 1 else np.empty(0)
        out.append(StepStats(
            step=k, action=action, users=users, conversion_from_previous=conv,
            conversion_from_first=_rate(users, entered[0]), dropped=(prev - users) if prev is not None else 0,
            drop_off=None if conv is None else 1.0 - conv,
            median_s_from_previous=float(np.median(col)) if len(col) else None))
    return GroupFunnel(group=name, steps=out)


def funnel_stats(table: FunnelTable, funnel: str = "default", by: str = "", *, segment_of: SegmentOf | None = None,
                 from_date: date | None = None, to_date: date | None = None) -> tuple[GroupFunnel, list[GroupFunnel]]:
    """Step counts, conversion, drop-off and median step times of one funnel, overall and per group.

    Args:
        table: The funnel table (:func:`load_funnel_table`).
        funnel: A funnel name of ``table.definitions``.
        by: One of :data:`GROUP_BY`.
        segment_of: ``user_ids -> segment names`` (same order); needed when ``by == "segment"``.
        from_date: Keep users whose first step was on or after this UTC day.
        to_date: ... and on or before this one.

    Returns:
        ``(overall, groups)``: ``groups`` is empty without ``by``, else ordered by users entering,
        most first (then by name). A range holding no user gives zero counts, not an error.

    Raises:
        InvalidArgument: unknown ``funnel`` or ``by``, ``from_date`` after ``to_date``.
        FailedPrecondition: ``by == "segment"`` without a segment lookup.
    """
    if funnel not in table.definitions:
        known = ", ".join(sorted(table.definitions)) or "none"
        raise InvalidArgument(f"unknown funnel {funnel!r}; the funnel table has: {known} (a funnel added to "
                              "funnels.definitions appears after `pmkt features funnels`)", field="funnel")
    if by not in GROUP_BY:
        raise InvalidArgument(f"group_by must be empty or one of {', '.join(GROUP_BY[1:])}, got {by!r}",
                              field="group_by")
    if from_date and to_date and from_date > to_date:
        raise InvalidArgument(f"from_date {from_date} is after to_date {to_date}", field="from_date")
    if by == "segment" and segment_of is None:
        raise FailedPrecondition("grouping by segment needs a segments model: run `pmkt train segments` first")
    steps = table.definitions[funnel]["steps"]
    frame = table.frame[table.frame["funnel"] == funnel]
    if from_date or to_date:
        days = pd.to_datetime(frame["first_date"]).dt.date
        keep = np.ones(len(frame), dtype=bool)
        if from_date:
            keep &= (days >= from_date).to_numpy()
        if to_date:
            keep &= (days <= to_date).to_numpy()
        frame = frame[keep]
    frame = frame.reset_index(drop=True)
    reached = frame["steps_reached"].to_numpy(dtype=np.int64)
    gaps = step_gaps(frame, len(steps))
    overall = _group_stats("all", reached, gaps, steps)
    if not by:
        return overall, []
    if by == "segment":
        names = list(segment_of(frame["user_id"].astype(str).tolist())) if len(frame) else []
        if len(names) != len(frame):
            raise ValueError(f"segment_of returned {len(names)} segments for {len(frame)} users")
        labels = np.array([NO_SEGMENT if s is None or s == "" else str(s) for s in names], dtype=object)
    else:
        labels = frame[by].fillna("(unknown)").astype(str).to_numpy(dtype=object)
    groups = [_group_stats(g, reached[labels == g], gaps[labels == g], steps) for g in sorted(set(labels))]
    return overall, sorted(groups, key=lambda g: (-g.users, g.group))
