"""RFM features per user: recency (days), frequency (paid orders), monetary (CNY), and the
consumption level: a tag from the average monthly spend, in configurable bands.

``rfm`` and ``consumption_level`` are pure transforms; ``main`` reads the lake's raw orders,
writes the feature table to ``features/rfm/run=<run_id>/`` and the values to the profile store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime, timedelta, timezone

from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

from cluster.core.errors import FailedPrecondition
from cluster.core.settings import Settings
from cluster.core.storage import Zone, open_lake, open_profile_store
from spark_jobs.common import exclude_forgotten

__all__ = ["rfm", "consumption_level", "default_as_of", "main", "RFM_COLUMNS", "new_run_id", "DAYS_PER_MONTH"]

log = logging.getLogger(__name__)

#: Profile-store columns written by this job.
RFM_COLUMNS = {
    "recency_days": "f:rfm_recency_days",
    "frequency": "f:rfm_frequency",
    "monetary": "f:rfm_monetary",
    "as_of": "f:rfm_as_of",
    "run_id": "f:rfm_run",
    "avg_monthly_spend": "f:avg_monthly_spend",
    "consumption_level": "t:consumption_level",
}
#: Mean days per month of the Gregorian calendar (365.2425 / 12).
DAYS_PER_MONTH = 30.436875

Progress = Callable[[str, float], None]


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261125T150102Z-3fa9``."""
    import secrets

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def rfm(orders: DataFrame, as_of: date) -> DataFrame:
    """Recency, frequency and monetary value per user over paid orders before ``as_of``.

    Args:
        orders: Raw-zone orders (``user_id``, ``order_id``, ``order_time`` as UTC timestamp,
            ``amount``, ``status``).
        as_of: The day features are computed for; orders on or after it are ignored.

    Returns:
        One row per user with at least one paid order: ``user_id``, ``recency_days``
        (days from the last paid order's UTC date to ``as_of``, >= 1), ``frequency``
        (distinct paid orders), ``monetary`` (sum of paid amounts, 2 decimals),
        ``last_order_time``.
    """
    cutoff = datetime.combine(as_of, datetime.min.time())
    paid = orders.where((F.col("status") == "paid") & (F.col("order_time") < F.lit(cutoff)))
    return (
        paid.groupBy("user_id")
        .agg(
            F.max("order_time").alias("last_order_time"),
            F.countDistinct("order_id").cast("int").alias("frequency"),
            F.round(F.sum("amount"), 2).alias("monetary"),
        )
        .withColumn("recency_days", F.datediff(F.lit(as_of), F.to_date("last_order_time")).cast("int"))
        .select("user_id", "recency_days", "frequency", "monetary", "last_order_time")
    )


def consumption_level(orders: DataFrame, as_of: date, months: int, bands: Mapping[str, float]) -> DataFrame:
    """Average monthly spend and its band per user with a paid order before ``as_of``.

    The spend is the paid amount of the last ``months`` months (``months`` x
    :data:`DAYS_PER_MONTH` days before ``as_of``) divided by the months the user could have
    spent in that window: from their first paid order ever (before ``as_of``) to ``as_of``,
    at least one month and at most ``months``; a new customer is not averaged over months
    before they arrived. A user whose orders are all older than the window spends 0.

    Args:
        bands: Level name -> lowest average monthly spend (CNY) of the level; one bound is 0.

    Returns:
        ``user_id``, ``avg_monthly_spend`` (CNY, 2 decimals), ``consumption_level`` (the level
        with the highest bound at or below the spend).
    """
    window_start = datetime.combine(as_of, datetime.min.time()) - timedelta(days=months * DAYS_PER_MONTH)
    cutoff = datetime.combine(as_of, datetime.min.time())
    paid = orders.where((F.col("status") == "paid") & (F.col("order_time") < F.lit(cutoff)))
    seconds = F.lit(cutoff).cast("long") - F.min("order_time").cast("long")
    tenure = F.least(F.greatest(seconds / F.lit(DAYS_PER_MONTH * 86_400), F.lit(1.0)), F.lit(float(months)))
    recent = F.sum(F.when(F.col("order_time") >= F.lit(window_start), F.col("amount")).otherwise(0.0))
    spend = paid.groupBy("user_id").agg(F.round(recent / tenure, 2).alias("avg_monthly_spend"))
    level = None
    for name, bound in sorted(bands.items(), key=lambda kv: kv[1]):
        level = F.lit(name) if level is None else F.when(F.col("avg_monthly_spend") >= bound, F.lit(name)).otherwise(level)
    return spend.withColumn("consumption_level", level)


def default_as_of(orders: DataFrame) -> date:
    """The day after the last order in the data: a deterministic as-of date for a batch.

    Raises:
        FailedPrecondition: there are no orders.
    """
    last = orders.agg(F.max("order_time")).first()[0]
    if last is None:
        raise FailedPrecondition("the raw zone has no orders: run `pmkt ingest` first")
    return last.date() + timedelta(days=1)


def _store_writer(settings: Settings, as_of: str, run_id: str) -> Callable[[Iterator[Row]], None]:
    def write_partition(rows: Iterator[Row]) -> None:
        store = open_profile_store(settings)
        try:
            store.write_batch(
                (
                    r.user_id,
                    {
                        RFM_COLUMNS["recency_days"]: int(r.recency_days),
                        RFM_COLUMNS["frequency"]: int(r.frequency),
                        RFM_COLUMNS["monetary"]: float(r.monetary),
                        RFM_COLUMNS["as_of"]: as_of,
                        RFM_COLUMNS["run_id"]: run_id,
                        RFM_COLUMNS["avg_monthly_spend"]: float(r.avg_monthly_spend),
                        RFM_COLUMNS["consumption_level"]: r.consumption_level,
                    },
                )
                for r in rows
            )
        finally:
            store.close()

    return write_partition


def main(
    settings: Settings,
    as_of: date | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Build RFM features from the raw zone; write the lake table and the profile store.

    Returns:
        Run metadata: ``run_id``, ``as_of``, ``users``, ``path`` (lake-relative).

    Raises:
        FailedPrecondition: no orders have been ingested yet.
    """
    from spark_jobs.session import get_spark

    step = progress or (lambda _s, _f: None)
    lake = open_lake(settings)
    if not lake.exists(Zone.RAW, "orders"):
        raise FailedPrecondition("the raw zone has no orders: run `pmkt ingest DIR` first")
    spark = get_spark(settings, "pmkt-rfm")
    run_id = run_id or new_run_id()
    step("reading orders", 0.0)
    # Users who asked to be forgotten stay out of every build.
    orders = exclude_forgotten(spark.read.parquet(lake.uri(Zone.RAW, "orders")), lake)
    as_of = as_of or default_as_of(orders)
    step("computing RFM", 0.2)
    t = settings.tags
    features = rfm(orders, as_of).join(consumption_level(orders, as_of, t.consumption_months, t.consumption_bands),
                                       "user_id").cache()
    rel = f"rfm/run={run_id}"
    features.write.mode("overwrite").parquet(lake.uri(Zone.FEATURES, rel))
    users = features.count()
    step("writing profiles", 0.6)
    features.select("user_id", "recency_days", "frequency", "monetary", "avg_monthly_spend",
                    "consumption_level").foreachPartition(
        _store_writer(settings, as_of.isoformat(), run_id)
    )
    features.unpersist()
    levels = {r.consumption_level: r["count"] for r in features.groupBy("consumption_level").count().collect()}
    meta = {"run_id": run_id, "as_of": as_of.isoformat(), "users": users, "path": f"{Zone.FEATURES.value}/{rel}",
            "consumption_levels": {k: levels.get(k, 0) for k in t.consumption_bands},
            "consumption_months": t.consumption_months}
    lake.write_json(meta, Zone.FEATURES, rel, "_meta.json")
    lake.write_json(meta, Zone.FEATURES, "rfm", "latest.json")
    step("done", 1.0)
    log.info("RFM run %s: %d users as of %s", run_id, users, as_of)
    return meta
