"""Orders per product category and local hour: the input of the demand forecast and the price
response (:mod:`ray_apps.pricing`).

One row per category, local date and local hour (time zone ``ingest.source_timezone``) over every
day from the first to the last paid order, **dense**: a cell without orders is a row with
``orders = 0``. A Poisson model needs the zeros, and writing them here means every reader sees the
same cells (10 categories x 180 days x 24 hours = 43,200 rows, whatever the number of users).

Prices. An order line's list price is estimated from the history as the **highest unit price
(amount / quantity) the item was ever paid at**; promotions only lower prices, so an item sold at
least once at full price gets its exact list price, and one only ever sold on promotion gets its
deepest seen price as "list" (its lines then count as undiscounted, which pulls the index
towards 1). ``price_index`` of a cell is its revenue / revenue at list price (1.0 = list price,
0.8 = 20 % off); ``day_price_index`` is the same over the category's whole local day, which is the
granularity of the shop's promotions, and is defined for zero-order hours of a day that had orders
(the model uses it). A day without any order of the category has no observed price (null).

``demand_table`` is a pure transform; ``main`` reads the raw zone and writes
``features/demand/run=<run_id>/`` (one Parquet file, sorted by category, date and hour).
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cluster.core.catalog import DEMAND
from cluster.core.errors import InvalidArgument
from cluster.core.settings import Settings
from spark_jobs.context import JobContext, Progress

__all__ = ["DEMAND_COLUMNS", "demand_table", "list_prices", "main"]

log = logging.getLogger(__name__)

#: Columns of the table ``demand_table`` builds (``weekday`` 0 = Monday, ``hour`` 0-23 local).
DEMAND_COLUMNS = ("category", "date", "weekday", "hour", "orders", "units", "revenue", "list_revenue",
                  "price_index", "day_price_index")


def _paid_local(orders: DataFrame, source_tz: str) -> DataFrame:
    """Paid orders with their local date and hour. ``order_time`` is an instant; the platform's
    Spark session runs in UTC (:func:`spark_jobs.session.get_spark`), so ``from_utc_timestamp``
    gives the wall-clock time in ``source_tz`` (daylight saving included)."""
    local = F.from_utc_timestamp("order_time", source_tz)
    return (orders.where((F.col("status") == "paid") & F.col("category").isNotNull()
                         & F.col("order_time").isNotNull())
            .select("item_id", "category", "quantity", "amount",
                    F.to_date(local).alias("date"), F.hour(local).alias("hour")))


def list_prices(orders: DataFrame) -> DataFrame:
    """``item_id``, ``list_price``: the highest unit price each item was paid at (paid orders)."""
    return (orders.where(F.col("status") == "paid")
            .groupBy("item_id").agg(F.max(F.col("amount") / F.col("quantity")).alias("list_price")))


def demand_table(orders: DataFrame, source_tz: str) -> DataFrame:
    """Dense per category, local date and local hour: orders, units, revenue and price indices.

    Args:
        orders: Raw-zone orders (``order_time`` timestamp, ``status``, ``item_id``, ``category``,
            ``quantity``, ``amount``).
        source_tz: IANA zone whose local date and hour the cells use.

    Returns:
        :data:`DEMAND_COLUMNS`; every category seen in paid orders x every date from the first to
        the last paid order x 24 hours.
    """
    if not source_tz:
        raise InvalidArgument("source_tz must name a time zone", field="source_tz")
    paid = _paid_local(orders, source_tz).join(list_prices(orders), "item_id", "left")
    lines = paid.withColumn("list_amount", F.coalesce(F.col("list_price") * F.col("quantity"), F.col("amount")))
    cells = lines.groupBy("category", "date", "hour").agg(
        F.count("*").alias("orders"), F.sum("quantity").cast("long").alias("units"),
        F.sum("amount").alias("revenue"), F.sum("list_amount").alias("list_revenue"))
    days = lines.groupBy("category", "date").agg(
        (F.sum("amount") / F.sum("list_amount")).alias("day_price_index"))
    span = lines.agg(F.min("date").alias("lo"), F.max("date").alias("hi"))
    grid = (span.select(F.explode(F.sequence("lo", "hi")).alias("date"))
            .crossJoin(lines.select("category").distinct())
            .crossJoin(F.broadcast(lines.sparkSession.range(24).select(F.col("id").cast("int").alias("hour")))))
    return (grid.join(cells, ["category", "date", "hour"], "left")
            .join(days, ["category", "date"], "left")
            .fillna({"orders": 0, "units": 0, "revenue": 0.0, "list_revenue": 0.0})
            .withColumn("price_index", F.when(F.col("orders") > 0, F.col("revenue") / F.col("list_revenue")))
            .withColumn("weekday", (F.dayofweek("date") + 5) % 7)  # Spark: 1 = Sunday; ours: 0 = Monday
            .select(*DEMAND_COLUMNS))


def main(settings: Settings, *, run_id: str | None = None, progress: Progress | None = None) -> dict:
    """Build the demand table from the raw zone into the lake.

    Returns:
        Run metadata: ``run_id``, ``rows``, ``categories``, ``first_date``, ``last_date``,
        ``orders``, ``timezone``, ``path`` (lake-relative).

    Raises:
        FailedPrecondition: no orders have been ingested.
    """
    tz = settings.ingest.source_timezone
    ctx = JobContext.start(settings, "pmkt-demand", run_id=run_id, progress=progress)
    ctx.require_raw("orders")
    ctx.step("reading orders", 0.0)
    orders = ctx.read_raw("orders")
    ctx.step("counting orders per category and local hour", 0.2)
    # ~10 categories x 180 days x 24 hours: one sorted file is the natural unit to read back.
    table = demand_table(orders, tz).repartition(1).sortWithinPartitions("category", "date", "hour").cache()
    path = ctx.write_run(DEMAND, table)
    summary = table.agg(F.count("*").alias("rows"), F.countDistinct("category").alias("categories"),
                        F.min("date").alias("lo"), F.max("date").alias("hi"),
                        F.sum("orders").alias("orders")).first()
    table.unpersist()
    meta = ctx.publish(DEMAND, {
        "run_id": ctx.run_id, "rows": int(summary["rows"]), "categories": int(summary["categories"] or 0),
        "first_date": str(summary["lo"]), "last_date": str(summary["hi"]),
        "orders": int(summary["orders"] or 0), "timezone": tz, "path": path,
    })
    ctx.step("done", 1.0)
    log.info("demand table run %s: %d rows, %d categories, %s..%s (%s)", ctx.run_id, meta["rows"],
             meta["categories"], meta["first_date"], meta["last_date"], tz)
    return meta
