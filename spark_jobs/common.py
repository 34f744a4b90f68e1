"""Helpers every Spark build shares: reading the raw zone without the users who asked to be forgotten.

Paths come from the lake catalog (:mod:`cluster.core.catalog`); :class:`spark_jobs.context.JobContext`
offers these as methods, so a job's ``main`` rarely calls them directly.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from cluster.core.catalog import RAW, RT_EVENTS
from cluster.core.errors import FailedPrecondition
from cluster.core.storage import Lake
from cluster.core.tombstones import Tombstones

__all__ = ["exclude_forgotten", "forgotten_users", "has_events", "read_events", "read_raw", "require_raw"]


def forgotten_users(spark: SparkSession, lake: Lake) -> DataFrame | None:
    """The tombstoned user ids as a one-column DataFrame (None when nobody was forgotten)."""
    stones = Tombstones(lake)
    if not stones.exists():
        return None
    return spark.read.json(stones.uri(), multiLine=True).select("user_id").distinct()


def exclude_forgotten(df: DataFrame, lake: Lake, user_col: str = "user_id") -> DataFrame:
    """``df`` without the rows of users who asked to be forgotten."""
    gone = forgotten_users(df.sparkSession, lake)
    if gone is None:
        return df
    return df.join(gone.withColumnRenamed("user_id", user_col), on=user_col, how="left_anti")


def require_raw(lake: Lake, *names: str) -> None:
    """Raise FailedPrecondition naming the first raw-zone table that has not been ingested."""
    for name in names:
        if not RAW[name].exists(lake):
            raise FailedPrecondition(f"the raw zone has no {name}: run `{RAW[name].built_by}` first")


def read_raw(spark: SparkSession, lake: Lake, name: str) -> DataFrame:
    """A raw-zone table, without the users who asked to be forgotten (every build reads this way)."""
    return exclude_forgotten(spark.read.parquet(RAW[name].uri(lake)), lake)


def has_events(lake: Lake) -> bool:
    """Whether the raw zone holds any behaviour event, delivered or taken in real time (no Spark)."""
    return RAW["events"].exists(lake) or bool(RT_EVENTS.list_dir(lake))


def read_events(spark: SparkSession, lake: Lake) -> DataFrame | None:
    """Every behaviour event: the delivered ones (``raw/events``) and those taken in real time
    (``raw/events_rt``), one row per event id, forgotten users excluded; None if there are none."""
    from pyspark.sql import functions as F

    frames = []
    if RAW["events"].exists(lake):
        frames.append(spark.read.parquet(RAW["events"].uri(lake)))
    if RT_EVENTS.list_dir(lake):
        rt = spark.read.parquet(RT_EVENTS.uri(lake)).drop("received_at")
        frames.append(rt.withColumn("dt", F.col("dt").cast("date")))
    if not frames:
        return None
    events = frames[0]
    for frame in frames[1:]:
        events = events.unionByName(frame.select(*[c for c in frame.columns if c in events.columns]),
                                    allowMissingColumns=True)
    return exclude_forgotten(events.dropDuplicates(["event_id"]), lake)
