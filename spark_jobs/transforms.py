"""Pure transforms and values that more than one job uses (jobs never import each other).

* :func:`rfm`: recency, frequency and monetary value per buyer (the RFM job's table, and the
  cleaning job's ``user_features`` over the cleaned orders);
* :func:`default_as_of`: the as-of day of a batch, the day after its last order (RFM, CLV, tags
  and cleaning agree on it);
* :data:`UNKNOWN`: the value standing for a missing campaign, channel or device.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cluster.core.errors import FailedPrecondition

__all__ = ["UNKNOWN", "default_as_of", "rfm"]

#: Stands for a missing campaign, channel or device (all optional in the data contract).
UNKNOWN = "(unknown)"


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


def default_as_of(orders: DataFrame) -> date:
    """The day after the last order in the data: a deterministic as-of date for a batch.

    Raises:
        FailedPrecondition: there are no orders.
    """
    last = orders.agg(F.max("order_time")).first()[0]
    if last is None:
        raise FailedPrecondition("the raw zone has no orders: run `pmkt ingest` first")
    return last.date() + timedelta(days=1)
