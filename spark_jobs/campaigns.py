"""Campaign results per user, campaign and channel: impressions, clicks, cost, and the orders
the clicks led to (last-click attribution).

An order counts for a click when the same user clicked at most ``window_days`` before it
(``click_ts <= order_time < click_ts + window_days``); of several such clicks the latest takes
the order (last click wins; on a tie, the larger impression id). Only paid orders count. A click *converted* when at least one order was attributed to
it. ``campaign_table`` is a pure transform; ``main`` reads the raw zone and writes
``features/campaigns/run=<run_id>/`` (one row per user, campaign and channel), which
:mod:`ray_apps.evaluation.campaigns` aggregates by channel, campaign or segment, and
``features/campaign_daily/run=<run_id>/`` (one row per campaign and local day: what the
goal-gap analysis of :mod:`ray_apps.evaluation.goals` follows over time).
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from cluster.core.catalog import CAMPAIGN_DAILY, CAMPAIGNS
from cluster.core.errors import InvalidArgument
from cluster.core.settings import Settings
from spark_jobs.context import JobContext, Progress
from spark_jobs.transforms import UNKNOWN

__all__ = ["attribute_orders", "campaign_daily", "campaign_table", "main", "CAMPAIGN_COLUMNS", "DAILY_COLUMNS",
           "UNKNOWN"]

log = logging.getLogger(__name__)

#: Columns of the table ``campaign_table`` builds.
CAMPAIGN_COLUMNS = ("user_id", "campaign_id", "channel", "impressions", "clicks", "cost", "conversions",
                    "orders", "revenue")
#: Columns of the table ``campaign_daily`` builds (``date`` is the local day).
DAILY_COLUMNS = ("campaign_id", "date", "impressions", "new_reach", "clicks", "cost", "conversions", "revenue")


def attribute_orders(impressions: DataFrame, orders: DataFrame, window_days: int) -> DataFrame:
    """One row per attributed paid order: ``order_id``, ``amount`` and the click that takes it
    (``impression_id``, ``user_id``, ``campaign_id``, ``channel``, ``click_ts``)."""
    if window_days < 1:
        raise InvalidArgument(f"window_days must be at least 1, got {window_days}", field="window_days")
    clicks = impressions.where(F.col("clicked")).select(
        "impression_id", "user_id", F.col("ts").alias("click_ts"),
        F.coalesce("campaign_id", F.lit(UNKNOWN)).alias("campaign_id"),
        F.coalesce("channel", F.lit(UNKNOWN)).alias("channel"))
    paid = orders.where(F.col("status") == "paid").select("order_id", "user_id", "order_time", "amount")
    pairs = paid.join(clicks, "user_id").where(
        (F.col("click_ts") <= F.col("order_time"))
        & (F.col("order_time") < F.col("click_ts") + F.expr(f"INTERVAL {int(window_days)} DAYS")))
    latest = Window.partitionBy("order_id").orderBy(F.col("click_ts").desc(), F.col("impression_id").desc())
    return (pairs.withColumn("_rank", F.row_number().over(latest)).where(F.col("_rank") == 1)
            .select("order_id", "amount", "impression_id", "user_id", "campaign_id", "channel", "click_ts"))


def campaign_table(impressions: DataFrame, orders: DataFrame, window_days: int = 7) -> DataFrame:
    """Per user, campaign and channel: impressions, clicks, cost, converted clicks, attributed
    orders and their revenue."""
    shown = impressions.select(
        "impression_id", "user_id", F.coalesce("campaign_id", F.lit(UNKNOWN)).alias("campaign_id"),
        F.coalesce("channel", F.lit(UNKNOWN)).alias("channel"),
        F.coalesce("cost", F.lit(0.0)).alias("cost"), F.col("clicked").cast("int").alias("clicked"))
    keys = ["user_id", "campaign_id", "channel"]
    exposure = shown.groupBy(keys).agg(
        F.count("*").alias("impressions"), F.sum("clicked").cast("long").alias("clicks"),
        F.sum("cost").alias("cost"))
    won = attribute_orders(impressions, orders, window_days).groupBy(keys).agg(
        F.countDistinct("impression_id").alias("conversions"), F.count("*").alias("orders"),
        F.sum("amount").alias("revenue"))
    return (exposure.join(won, keys, "left")
            .fillna({"conversions": 0, "orders": 0, "revenue": 0.0})
            .select(*CAMPAIGN_COLUMNS))


def campaign_daily(impressions: DataFrame, orders: DataFrame, window_days: int = 7,
                   timezone: str = "Asia/Shanghai") -> DataFrame:
    """Per campaign and local day (``timezone``): impressions, users reached for the first time
    by the campaign, clicks and cost on the impressions' day; attributed paid orders
    (``conversions``) and their ``revenue`` on the orders' day. Days with no activity are absent."""
    local = lambda col: F.to_date(F.from_utc_timestamp(F.col(col), timezone))  # noqa: E731
    shown = impressions.select(
        "user_id", F.coalesce("campaign_id", F.lit(UNKNOWN)).alias("campaign_id"), local("ts").alias("date"),
        F.coalesce("cost", F.lit(0.0)).alias("cost"), F.col("clicked").cast("int").alias("clicked"))
    exposure = shown.groupBy("campaign_id", "date").agg(
        F.count("*").alias("impressions"), F.sum("clicked").cast("long").alias("clicks"), F.sum("cost").alias("cost"))
    first_seen = shown.groupBy("campaign_id", "user_id").agg(F.min("date").alias("date"))
    reach = first_seen.groupBy("campaign_id", "date").agg(F.count("*").alias("new_reach"))
    won = (attribute_orders(impressions, orders, window_days)
           .join(orders.select("order_id", local("order_time").alias("date")), "order_id")
           .groupBy("campaign_id", "date").agg(F.count("*").alias("conversions"), F.sum("amount").alias("revenue")))
    return (exposure.join(reach, ["campaign_id", "date"], "full").join(won, ["campaign_id", "date"], "full")
            .fillna({"impressions": 0, "new_reach": 0, "clicks": 0, "cost": 0.0, "conversions": 0, "revenue": 0.0})
            .select(*DAILY_COLUMNS))


def main(settings: Settings, *, run_id: str | None = None, window_days: int | None = None,
         progress: Progress | None = None) -> dict:
    """Build the campaign table from the raw zone into the lake.

    Returns:
        Run metadata of the campaign table: ``run_id``, ``rows``, ``window_days``, ``path``
        (lake-relative). The per-day table shares the run id.

    Raises:
        FailedPrecondition: no impressions or orders have been ingested.
    """
    window_days = settings.evaluation.attribution_window_days if window_days is None else window_days
    tz = settings.ingest.source_timezone
    ctx = JobContext.start(settings, "pmkt-campaigns", run_id=run_id, progress=progress)
    ctx.require_raw("impressions", "orders")
    ctx.step("reading impressions and orders", 0.0)
    impressions, orders = ctx.read_raw("impressions"), ctx.read_raw("orders")
    ctx.step("attributing orders to clicks", 0.2)
    table = campaign_table(impressions, orders, window_days).cache()
    path = ctx.write_run(CAMPAIGNS, table)
    rows = table.count()
    table.unpersist()
    meta = ctx.publish(CAMPAIGNS, {"run_id": ctx.run_id, "rows": rows, "window_days": window_days, "path": path})
    ctx.step("campaign results per day", 0.7)
    daily = campaign_daily(impressions, orders, window_days, tz).repartition(1).sortWithinPartitions(
        "campaign_id", "date")
    daily_path = ctx.write_run(CAMPAIGN_DAILY, daily)
    ctx.publish(CAMPAIGN_DAILY, {"run_id": ctx.run_id, "window_days": window_days, "timezone": tz, "path": daily_path})
    ctx.step("done", 1.0)
    log.info("campaign table run %s: %d rows (attribution window %d days)", ctx.run_id, rows, window_days)
    return meta
