"""RFM features per user: recency (days), frequency (paid orders), monetary (CNY), and the
consumption level: a tag from the average monthly spend, in configurable bands.

``rfm`` (shared with the cleaning job, so it lives in :mod:`spark_jobs.transforms`) and
``consumption_level`` are pure transforms; ``main`` reads the lake's raw orders, writes the
feature table to ``features/rfm/run=<run_id>/`` and the values to the profile store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date, datetime, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cluster.core.catalog import RFM
from cluster.core.settings import Settings
from spark_jobs.context import JobContext, Progress, column_cells
from spark_jobs.transforms import default_as_of, rfm

__all__ = ["consumption_level", "main", "RFM_COLUMNS", "DAYS_PER_MONTH"]

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

_cells = column_cells(RFM_COLUMNS, {"recency_days": int, "frequency": int, "monetary": float,
                                    "avg_monthly_spend": float, "consumption_level": str})

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
    ctx = JobContext.start(settings, "pmkt-rfm", run_id=run_id, progress=progress)
    ctx.require_raw("orders")
    ctx.step("reading orders", 0.0)
    orders = ctx.read_raw("orders")
    as_of = as_of or default_as_of(orders)
    ctx.step("computing RFM", 0.2)
    t = settings.tags
    features = rfm(orders, as_of).join(consumption_level(orders, as_of, t.consumption_months, t.consumption_bands),
                                       "user_id").cache()
    path = ctx.write_run(RFM, features)
    users = features.count()
    ctx.step("writing profiles", 0.6)
    ctx.write_profiles(features, _cells, {RFM_COLUMNS["as_of"]: as_of.isoformat(), RFM_COLUMNS["run_id"]: ctx.run_id})
    levels = {r.consumption_level: r["count"] for r in features.groupBy("consumption_level").count().collect()}
    features.unpersist()
    meta = ctx.publish(RFM, {
        "run_id": ctx.run_id, "as_of": as_of.isoformat(), "users": users, "path": path,
        "consumption_levels": {k: levels.get(k, 0) for k in t.consumption_bands},
        "consumption_months": t.consumption_months,
    })
    ctx.step("done", 1.0)
    log.info("RFM run %s: %d users as of %s", ctx.run_id, users, as_of)
    return meta
