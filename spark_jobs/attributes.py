"""Behaviour features for predicting a static attribute (gender first), with its declared value.

One row per user: how the user's views and paid orders spread over the categories, the devices
and the hours of the day, what they pay per unit, how active they are, and the value the user
declared for the target attribute (``None`` when the CRM file left it empty or ingest emptied an
invalid one). :mod:`ray_apps.attributes` trains a classifier on the users with a declared value and
stores its predictions for the others. ``attribute_features`` is a pure transform; ``main`` reads the
raw zone and writes ``features/attributes/run=<run_id>/``.

Columns (``<x>`` is a value found in the data, so a new category becomes a new column):

==========================  ==================================================================
column                      meaning
==========================  ==================================================================
``user_id``                 the user
``declared``                the declared value of the target attribute, ``None`` when unknown
``events``                  behaviour events of every action
``views``                   ``view`` events with a category
``active_days``             distinct days with at least one event
``paid_orders``             paid order lines with a category
``paid_amount``             their amount, CNY
``mean_unit_price``         mean of ``amount / quantity`` over paid order lines (``None`` without)
``view_share__<category>``  share of the user's views in the category (0 without views)
``order_share__<category>`` share of the user's paid order lines in the category
``device_share__<device>``  share of the user's events on the device type
``hour_share__h<HH>``       share of the user's events in the 4-hour block starting at local
                            hour HH (``ingest.source_timezone``)
==========================  ==================================================================
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from cluster.core.catalog import ATTRIBUTES
from cluster.core.errors import InvalidArgument
from cluster.core.settings import Settings
from spark_jobs.context import JobContext, Progress

__all__ = ["COUNT_COLUMNS", "HOUR_BLOCK", "SHARE_PREFIXES", "attribute_features", "main"]

log = logging.getLogger(__name__)

#: Activity columns (counts and amounts); every other feature column is a share or a price.
COUNT_COLUMNS = ("events", "views", "active_days", "paid_orders", "paid_amount")
#: Prefixes of the share columns (one column per value found in the data).
SHARE_PREFIXES = ("view_share__", "order_share__", "device_share__", "hour_share__")
#: Hours per block of the hour-of-day profile: six blocks keep about 20 events per block for a
#: median user, where 24 single hours would be mostly zeros.
HOUR_BLOCK = 4


def _long_shares(parts: list[DataFrame]) -> DataFrame:
    """Per user, one column per ``<prefix><value>``: the share of the user's rows of that prefix with the
    value. ``parts`` hold ``user_id``, ``prefix``, ``value`` rows (rows without a value are skipped).

    All share groups go through one aggregation and one pivot with its values listed, rather than a
    pivot per group (each of which would first scan its input for the values).
    """
    rows = parts[0]
    for part in parts[1:]:
        rows = rows.unionByName(part)
    rows = rows.where(F.col("value").isNotNull() & (F.trim(F.col("value")) != ""))
    counts = rows.groupBy("user_id", "prefix", "value").count()
    per_group = Window.partitionBy("user_id", "prefix")
    shares = counts.select("user_id", F.concat("prefix", "value").alias("column"),
                           (F.col("count") / F.sum("count").over(per_group)).alias("share"))
    # Listing the columns costs one extra pass; not cached, so that nothing stays pinned in the
    # (possibly shared) session after the build.
    columns = sorted(r["column"] for r in shares.select("column").distinct().collect())
    return shares.groupBy("user_id").pivot("column", columns).agg(F.first("share"))


def attribute_features(users: DataFrame, events: DataFrame | None, orders: DataFrame, target: str = "gender",
                       timezone: str = "UTC") -> DataFrame:
    """One row per user: behaviour features and the declared value of ``target``.

    Args:
        users: Raw-zone users (``user_id`` and the ``target`` column).
        events: Raw-zone behaviour events (``user_id``, ``ts``, ``dt``, ``action``, ``category``,
            ``device_type``), or None when none were ingested.
        orders: Raw-zone orders (``user_id``, ``category``, ``quantity``, ``amount``, ``status``).
        target: The users column to predict.
        timezone: Time zone of the hour-of-day profile (where the users live).

    Returns:
        The columns of the module docstring; share columns are 0 for users without such rows,
        ``mean_unit_price`` stays ``None`` for users without a paid order.

    Raises:
        InvalidArgument: ``target`` is not a users column (``attributes.target``).
    """
    if target not in users.columns or target == "user_id":
        raise InvalidArgument(f"attributes.target {target!r} is not a users column", field="attributes.target")
    declared = F.trim(F.col(target).cast("string"))
    parts = [users.select("user_id", F.when(declared != "", declared).alias("declared"))]

    def group(frame: DataFrame, prefix: str, value) -> DataFrame:
        return frame.select("user_id", F.lit(prefix).alias("prefix"), value.cast("string").alias("value"))

    paid = orders.where(F.coalesce(F.col("status"), F.lit("paid")) == "paid")
    quantity = F.when(F.col("quantity") >= 1, F.col("quantity")).otherwise(F.lit(1))
    parts.append(paid.groupBy("user_id").agg(
        F.count(F.when(F.col("category").isNotNull(), 1)).alias("paid_orders"),
        F.sum(F.when(F.col("category").isNotNull(), F.col("amount"))).alias("paid_amount"),
        F.avg(F.col("amount") / quantity).alias("mean_unit_price")))
    groups = [group(paid, "order_share__", F.col("category"))]

    if events is not None:
        parts.append(events.groupBy("user_id").agg(
            F.count("*").alias("events"),
            F.count(F.when((F.col("action") == "view") & F.col("category").isNotNull(), 1)).alias("views"),
            F.countDistinct("dt").alias("active_days")))
        block = F.floor(F.hour(F.from_utc_timestamp(F.col("ts"), timezone)) / HOUR_BLOCK) * HOUR_BLOCK
        # One pass over the events for the three groups: each event gives a (prefix, value) pair per group.
        pairs = F.array(*[F.struct(F.lit(prefix).alias("prefix"), value.cast("string").alias("value"))
                          for prefix, value in (
                              ("view_share__", F.when(F.col("action") == "view", F.col("category"))),
                              ("device_share__", F.col("device_type")),
                              ("hour_share__", F.format_string("h%02d", block.cast("int"))))])
        groups.append(events.select("user_id", F.explode(pairs).alias("g")).select("user_id", "g.prefix", "g.value"))
    parts.append(_long_shares(groups))

    out = parts[0]
    for frame in parts[1:]:
        out = out.join(frame, on="user_id", how="full_outer")
    for name in COUNT_COLUMNS:
        if name not in out.columns:
            out = out.withColumn(name, F.lit(0))
    shares = sorted(c for c in out.columns if c.startswith(SHARE_PREFIXES))
    out = out.fillna({c: 0 for c in (*shares, *COUNT_COLUMNS)})
    return out.select("user_id", "declared", *[F.col(c).cast("long").alias(c) for c in COUNT_COLUMNS[:4]],
                      F.col("paid_amount").cast("double").alias("paid_amount"),
                      F.col("mean_unit_price").cast("double").alias("mean_unit_price"),
                      *[F.col(f"`{c}`").cast("double").alias(c) for c in shares])


def main(settings: Settings, *, run_id: str | None = None, progress: Progress | None = None) -> dict:
    """Build the attribute features from the raw zone into the lake.

    Returns:
        Run metadata: ``run_id``, ``target``, ``rows``, ``declared`` (users with a declared value),
        ``classes`` (declared value -> users), ``feature_columns``, ``path`` (lake-relative).

    Raises:
        FailedPrecondition: no users or orders have been ingested.
        InvalidArgument: ``attributes.target`` is not a users column.
    """
    target = settings.attributes.target
    ctx = JobContext.start(settings, "pmkt-attributes", run_id=run_id, progress=progress)
    ctx.require_raw("users", "orders")
    ctx.step("reading users, events and orders", 0.0)
    users, orders, events = ctx.read_raw("users"), ctx.read_raw("orders"), ctx.read_events()
    ctx.step(f"building {target} features", 0.2)
    table = attribute_features(users, events, orders, target, settings.ingest.source_timezone).cache()
    path = ctx.write_run(ATTRIBUTES, table)
    rows = table.count()
    classes = {r["declared"]: r["count"] for r in table.where(F.col("declared").isNotNull())
               .groupBy("declared").count().collect()}
    columns = [c for c in table.columns if c not in ("user_id", "declared")]
    table.unpersist()
    meta = ctx.publish(ATTRIBUTES, {
        "run_id": ctx.run_id, "target": target, "rows": rows, "declared": sum(classes.values()),
        "classes": dict(sorted(classes.items())), "feature_columns": columns, "path": path,
    })
    ctx.step("done", 1.0)
    log.info("attribute features run %s (%s): %d users, %d declared", ctx.run_id, target, rows, meta["declared"])
    return meta
