"""Conversion funnels over behaviour events: how deep each user got into an ordered list of actions.

**Definition** (docs/funnels.md). A funnel is an ordered list of actions ``a_1 .. a_n`` (contract
actions; one may repeat) and a window ``W``. A user *reaches step k* when they have ``k``
**distinct** events ``e_1 .. e_k`` with ``action(e_i) = a_i``,
``ts(e_1) <= ts(e_2) <= ... <= ts(e_k)`` and ``ts(e_k) - ts(e_1) <= W`` (ClickHouse's
``windowFunnel`` with ``W`` inclusive). Consequences of that wording:

* **ties**: events in the same instant may follow each other in either order (``<=``), so a
  view and a click stamped in the same second make the two steps; one event never fills two
  steps, so ``view, view`` needs two view events;
* **items**: the steps need not concern the same item (a view of one item and the purchase of
  another make a chain);
* events of other actions in between do not matter, and steps may be skipped by nothing: a
  user without a click never reaches the cart step of ``view, click, cart, purchase``, however
  many carts they have.

Per user the table keeps the deepest step reached and one chain that reaches it: the one
with the **latest first event**, and of those the one whose steps come earliest (each
step at the first time it can). From that chain: every step's timestamp, the device of
the first event (of several first-step events in the same instant, the one with the smallest
event id; ``(unknown)`` when it has none) and the date (UTC) of the first event. The channel is
the channel of the user's latest ad click at most ``attribution_days`` before the first event
(``click_ts <= first_ts < click_ts + attribution_days``, on a tie the larger impression id: the
last-click rule of :mod:`spark_jobs.campaigns`), else ``organic``. Users without any event of
the first step get no row.

The per-user scan (:func:`deepest_chain`) is one pass over the user's events in time order,
keeping for each step the latest-starting chain that reached it; it costs
``O(events * steps^2)``, linear in events. ``funnel_table`` is the pure transform; ``main``
reads the raw zone and writes ``features/funnels/run=<run_id>/`` (one row per funnel and user),
which :mod:`ray_apps.funnels` aggregates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from cluster.core.catalog import FUNNELS
from cluster.core.contract import ACTIONS
from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.settings import Settings
from spark_jobs.context import JobContext, Progress
from spark_jobs.transforms import UNKNOWN

__all__ = ["FUNNEL_COLUMNS", "ORGANIC", "UNKNOWN", "check_steps", "deepest_chain", "funnel_table", "main"]

log = logging.getLogger(__name__)

#: Columns of the table ``funnel_table`` builds.
FUNNEL_COLUMNS = ("funnel", "user_id", "steps_reached", "step_ts", "device", "first_date", "channel")
#: Channel of a user whose first step followed no ad click within the attribution window.
ORGANIC = "organic"

_SCAN_SCHEMA = "user_id string, steps_reached int, step_us array<bigint>, device string"


def check_steps(steps: Sequence[str]) -> list[str]:
    """``steps`` as a list, or InvalidArgument naming ``steps`` (fewer than 2, or not contract actions)."""
    if isinstance(steps, str) or len(steps) < 2:
        raise InvalidArgument("steps must list at least 2 actions", field="steps")
    unknown = sorted({s for s in steps if s not in ACTIONS}, key=str)
    if unknown:
        raise InvalidArgument(f"steps: unknown action(s) {unknown}; known: {', '.join(ACTIONS)}", field="steps")
    return list(steps)


def deepest_chain(ts: Sequence[int], actions: Sequence[str], devices: Sequence[str], steps: Sequence[str],
                  window: int) -> tuple[int, tuple[int, ...], str | None]:
    """The deepest step one user reached, the chosen chain's step times and its first device.

    Args:
        ts: Event times (any integer unit, e.g. microseconds), ascending; events in the same
            instant ordered by event id (that order only picks the device among tied first events).
        actions: The events' actions, aligned with ``ts``.
        devices: The events' devices, aligned with ``ts``.
        steps: The funnel's actions in order.
        window: Longest time from the first to the last step, in the unit of ``ts`` (inclusive).

    Returns:
        ``(steps_reached, step_times, device)``; ``(0, (), None)`` when no event is a first step.
    """
    n = len(steps)
    # Per step k (1-based): the latest first-event time of any chain that reached k so far, that
    # chain's step times (earliest for that start) and its first event's device.
    start: list[int | None] = [None] * (n + 1)
    chain: list[tuple[int, ...]] = [()] * (n + 1)
    device: list[str | None] = [None] * (n + 1)
    i, total = 0, len(ts)
    while i < total:
        # Events in one instant are taken together: they may fill consecutive steps in any order.
        t, j = ts[i], i
        counts: dict[str, int] = {}
        first_device = None
        while j < total and ts[j] == t:
            if actions[j] == steps[0] and not counts.get(steps[0]):
                first_device = devices[j]
            counts[actions[j]] = counts.get(actions[j], 0) + 1
            j += 1
        # Chains continue from the state before this instant: from "nothing" (a new chain
        # starting now) or from any step reached earlier whose start is still within the window.
        origins = [(0, t, (), first_device)] if counts.get(steps[0]) else []
        origins += [(k, start[k], chain[k], device[k]) for k in range(1, n)
                    if start[k] is not None and t - start[k] <= window]
        updates = []
        for k, s, ch, dev in origins:
            used: dict[str, int] = {}
            m = k
            while m < n and used.get(steps[m], 0) < counts.get(steps[m], 0):
                used[steps[m]] = used.get(steps[m], 0) + 1
                m += 1
                updates.append((m, s, ch + (t,) * (m - k), dev))
        for m, s, ch, dev in updates:
            if start[m] is None or s > start[m] or (s == start[m] and ch < chain[m]):
                start[m], chain[m], device[m] = s, ch, dev
        i = j
    reached = max((k for k in range(1, n + 1) if start[k] is not None), default=0)
    return reached, chain[reached], device[reached]


def _scan_users(steps: list[str], window_us: int):
    """The mapInPandas function: batches of users (their events as one sorted array) in, one
    row per user out. Whole batches cross into Python, not one pandas frame per user."""

    def scan(batches):
        import pandas as pd

        for batch in batches:
            reached, times, devices = [], [], []
            for events in batch["events"]:
                r, t, d = deepest_chain([e["ts_us"] for e in events], [e["action"] for e in events],
                                        [e["device"] for e in events], steps, window_us)
                reached.append(r)
                times.append(list(t))
                devices.append(d)
            yield pd.DataFrame({"user_id": batch["user_id"], "steps_reached": reached, "step_us": times,
                                "device": devices})

    return scan


def funnel_table(events: DataFrame, steps: Sequence[str], window_s: float, clicks: DataFrame | None = None, *,
                 name: str = "default", attribution_days: int = 7) -> DataFrame:
    """One row per user who reached the funnel's first step (columns :data:`FUNNEL_COLUMNS`).

    Args:
        events: Behaviour events (``user_id``, ``event_id``, ``ts``, ``action``, ``device_type``).
        steps: The funnel's actions in order.
        window_s: Longest time from the first to the last step, seconds (inclusive).
        clicks: Raw impressions (``impression_id``, ``user_id``, ``ts``, ``channel``, ``clicked``);
            None: every user's channel is ``organic``.
        name: The value of the ``funnel`` column.
        attribution_days: A click counts for a first step at most this many days after it.

    Raises:
        InvalidArgument: ``steps`` are not 2+ contract actions, ``window_s`` is not positive.
    """
    steps = check_steps(steps)
    if not (isinstance(window_s, (int, float)) and math.isfinite(window_s) and window_s > 0):
        raise InvalidArgument(f"window_s must be a positive number of seconds, got {window_s!r}", field="window_s")
    if attribution_days < 1:
        raise InvalidArgument(f"attribution_days must be at least 1, got {attribution_days}", field="attribution_days")
    window_us = round(window_s * 1_000_000)
    # Only the funnel's actions matter to the scan: fewer rows cross into Python.
    relevant = events.where(F.col("action").isin(sorted(set(steps)))).select(
        "user_id", "event_id", F.unix_micros("ts").alias("ts_us"), "action",
        F.coalesce("device_type", F.lit(UNKNOWN)).alias("device"))
    # Per user one array of events sorted by (time, event id): the order deepest_chain expects.
    per_user = relevant.groupBy("user_id").agg(
        F.array_sort(F.collect_list(F.struct("ts_us", "event_id", "action", "device"))).alias("events"))
    scanned = per_user.mapInPandas(_scan_users(steps, window_us), _SCAN_SCHEMA)
    # Users with events of later steps only reached nothing: they get no row.
    users = scanned.where(F.col("steps_reached") >= 1).select(
        F.lit(name).alias("funnel"), "user_id", "steps_reached",
        F.transform("step_us", lambda x: F.timestamp_micros(x)).alias("step_ts"), "device")
    users = users.withColumn("first_ts", F.col("step_ts")[0]).withColumn("first_date", F.to_date("first_ts"))
    if clicks is None:
        with_channel = users.withColumn("channel", F.lit(ORGANIC))
    else:
        clicked = clicks.where(F.col("clicked")).select(
            "impression_id", F.col("user_id").alias("_click_user"), F.col("ts").alias("click_ts"),
            F.coalesce("channel", F.lit(UNKNOWN)).alias("click_channel"))
        pairs = users.select("user_id", "first_ts").join(
            clicked, (F.col("_click_user") == F.col("user_id")) & (F.col("click_ts") <= F.col("first_ts"))
            & (F.col("first_ts") < F.col("click_ts") + F.expr(f"INTERVAL {int(attribution_days)} DAYS")))
        latest = Window.partitionBy("user_id").orderBy(F.col("click_ts").desc(), F.col("impression_id").desc())
        last_click = (pairs.withColumn("_rank", F.row_number().over(latest)).where(F.col("_rank") == 1)
                      .select("user_id", "click_channel"))
        with_channel = (users.join(last_click, "user_id", "left")
                        .withColumn("channel", F.coalesce("click_channel", F.lit(ORGANIC))))
    return with_channel.select(*FUNNEL_COLUMNS)


def _definitions(settings: Settings, funnels: Mapping[str, Any] | None) -> dict[str, dict]:
    """``{name: {"steps": [...], "window_hours": h}}`` from settings or the ad hoc override."""
    if funnels is None:
        return {n: {"steps": list(d.steps), "window_hours": float(d.window_hours)}
                for n, d in settings.funnels.definitions.items()}
    if not funnels:
        raise InvalidArgument("funnels must name at least one funnel", field="funnels")
    out = {}
    for name, d in funnels.items():
        spec = d if isinstance(d, Mapping) else d.model_dump()
        if set(spec) - {"steps", "window_hours"}:
            raise InvalidArgument(f"funnel {name!r}: only steps and window_hours may be given", field="funnels")
        hours = spec.get("window_hours")
        if not (isinstance(hours, (int, float)) and math.isfinite(hours) and hours > 0):
            raise InvalidArgument(f"funnel {name!r}: window_hours must be a positive number, got {hours!r}",
                                  field="window_hours")
        out[str(name)] = {"steps": check_steps(spec.get("steps") or []), "window_hours": float(hours)}
    return out


def main(settings: Settings, run_id: str | None = None, progress: Progress | None = None,
         funnels: Mapping[str, Any] | None = None) -> dict:
    """Build the funnel table of every defined funnel from the raw zone into the lake.

    Args:
        settings: Platform settings (``funnels.definitions``, ``evaluation.attribution_window_days``).
        run_id: The run's id (default: a new one).
        progress: Called with ``(step, fraction)``.
        funnels: ``{name: {"steps": [...], "window_hours": h}}`` replacing ``funnels.definitions``
            for an ad hoc run.

    Returns:
        Run metadata: ``run_id``, ``rows``, ``funnels`` (name -> steps, window_hours, users),
        ``attribution_window_days``, ``path`` (lake-relative).

    Raises:
        InvalidArgument: an override funnel has bad ``steps`` or ``window_hours``.
        FailedPrecondition: no events have been ingested.
    """
    definitions = _definitions(settings, funnels)
    days = settings.evaluation.attribution_window_days
    ctx = JobContext.start(settings, "pmkt-funnels", run_id=run_id, progress=progress)
    if not ctx.has_events():  # checked before Spark starts: a minute of JVM start-up for this line is too long
        raise FailedPrecondition("the raw zone has no events: run `pmkt ingest DIR` with an events file first")
    ctx.step("reading events and clicks", 0.0)
    events = ctx.read_events()
    # Impressions are optional in a delivery: without them every funnel entry is organic.
    clicks = ctx.read_raw("impressions") if ctx.has_raw("impressions") else None
    ctx.step("scanning each user's events", 0.1)
    tables = [funnel_table(events, d["steps"], d["window_hours"] * 3600.0, clicks, name=name, attribution_days=days)
              for name, d in definitions.items()]
    table = tables[0]
    for more in tables[1:]:
        table = table.unionByName(more)
    table = table.cache()
    path = ctx.write_run(FUNNELS, table)
    users = {r["funnel"]: r["count"] for r in table.groupBy("funnel").count().collect()}
    table.unpersist()
    meta = ctx.publish(FUNNELS, {
        "run_id": ctx.run_id, "rows": int(sum(users.values())), "attribution_window_days": days,
        "funnels": {n: {**d, "users": int(users.get(n, 0))} for n, d in definitions.items()}, "path": path,
    })
    ctx.step("done", 1.0)
    log.info("funnel table run %s: %d rows over %d funnel(s)", ctx.run_id, meta["rows"], len(definitions))
    return meta
