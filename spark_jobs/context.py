"""What every Spark job's ``main`` needs, in one object: settings, lake, Spark, run id, progress.

A job's ``main`` reads its inputs through a :class:`JobContext`, calls its pure transforms and
writes through the context again; every lake path comes from the catalog
(:mod:`cluster.core.catalog`)::

    ctx = JobContext.start(settings, "pmkt-rfm", run_id=run_id, progress=progress)
    ctx.require_raw("orders")                 # before Spark starts: a missing input fails at once
    orders = ctx.read_raw("orders")           # forgotten users already left out
    features = rfm(orders, as_of)             # a pure transform
    path = ctx.write_run(RFM, features)       # features/rfm/run=<run_id>/
    ctx.write_profiles(features, cells, {"f:rfm_run": ctx.run_id})
    return ctx.publish(RFM, {"run_id": ctx.run_id, "path": path, ...})   # _meta.json, then latest.json

Spark starts on the first use of :attr:`JobContext.spark`, so checks that need only the lake
fail without a minute of JVM start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pyspark.sql import DataFrame, Row, SparkSession

from cluster.core.catalog import RAW, Table, check_run_id, new_run_id
from cluster.core.settings import Settings
from cluster.core.storage import Lake, open_lake, open_profile_store
from spark_jobs import common
from spark_jobs.session import get_spark

__all__ = ["Cells", "JobContext", "Progress", "column_cells", "profile_writer"]

log = logging.getLogger(__name__)

#: Called as ``progress(step_name, fraction_done)`` with the fraction in [0, 1].
Progress = Callable[[str, float], None]
#: One row's profile cells (``{"f:rfm_frequency": 3, ...}``); the row key is the row's ``user_id``.
Cells = Callable[[Row], Mapping[str, Any]]


def _quiet(_step: str, _fraction: float) -> None:
    return None


def column_cells(cells: Mapping[str, str], types: Mapping[str, Callable[[Any], Any]]) -> Cells:
    """A :data:`Cells` function writing each column of ``types``, converted by its type, to its cell.

    Args:
        cells: Column -> profile cell (a job's ``*_COLUMNS``).
        types: Column -> conversion to a plain Python value (``int``, ``float``, ``str``).
    """
    mapping = {column: (cells[column], convert) for column, convert in types.items()}

    def row_cells(r: Row) -> dict[str, Any]:
        return {cell: convert(r[column]) for column, (cell, convert) in mapping.items()}

    return row_cells


def profile_writer(
    settings: Settings, cells: Cells, constants: Mapping[str, Any] | None = None
) -> Callable[[Iterator[Row]], None]:
    """A ``foreachPartition`` function writing each row's cells to the profile store.

    One store connection per partition, batched mutations (``profile_store.batch_size`` rows each).

    Args:
        settings: Where the profile store is.
        cells: Row -> its cells; ``None`` values are written as given (leave them out to keep a cell).
        constants: Cells every row gets (the run id, the as-of day).
    """
    fixed = dict(constants or {})

    def write_partition(rows: Iterator[Row]) -> None:
        store = open_profile_store(settings)
        try:
            store.write_batch((r.user_id, {**cells(r), **fixed}) for r in rows)
        finally:
            store.close()

    return write_partition


@dataclass
class JobContext:
    """One run of one job.

    Attributes:
        settings: Platform settings.
        lake: The lake the run reads and writes.
        run_id: The run's id (a folder name, checked).
        app_name: Spark application name.
        progress: Called as ``progress(step, fraction)``.
    """

    settings: Settings
    lake: Lake
    run_id: str
    app_name: str = "pmkt"
    progress: Progress = _quiet

    @classmethod
    def start(cls, settings: Settings, app_name: str, *, run_id: str | None = None,
              progress: Progress | None = None, lake: Lake | None = None) -> JobContext:
        """A context with a checked (or new) run id and the settings' lake; Spark is not started yet.

        Raises:
            InvalidArgument: ``run_id`` is not a safe folder name.
        """
        run_id = check_run_id(run_id) if run_id is not None else new_run_id()
        return cls(settings, lake if lake is not None else open_lake(settings), run_id, app_name,
                   progress or _quiet)

    @cached_property
    def spark(self) -> SparkSession:
        """The Spark session (built from settings on first use)."""
        return get_spark(self.settings, self.app_name)

    def step(self, name: str, fraction: float) -> None:
        """Report progress."""
        self.progress(name, fraction)

    # -- reading ---------------------------------------------------------------------------
    def has_raw(self, name: str) -> bool:
        """Whether a raw-zone table has been ingested (no Spark)."""
        return RAW[name].exists(self.lake)

    def has_events(self) -> bool:
        """Whether any behaviour event, delivered or real-time, has been taken (no Spark)."""
        return common.has_events(self.lake)

    def require_raw(self, *names: str) -> None:
        """Raise FailedPrecondition naming the first raw-zone table not ingested yet (no Spark)."""
        common.require_raw(self.lake, *names)

    def read_raw(self, name: str, empty_schema: str | None = None) -> DataFrame:
        """A raw-zone table without the forgotten users; with ``empty_schema``, an empty table of
        that schema when it was never ingested."""
        if empty_schema is not None and not self.has_raw(name):
            log.info("the raw zone has no %s: using an empty table", name)
            return self.spark.createDataFrame([], empty_schema)
        return common.read_raw(self.spark, self.lake, name)

    def read_events(self, empty_schema: str | None = None) -> DataFrame | None:
        """Delivered and real-time events without the forgotten users; None (or an empty table of
        ``empty_schema``) when there are none."""
        events = common.read_events(self.spark, self.lake)
        if events is None and empty_schema is not None:
            log.info("the raw zone has no events: using an empty table")
            return self.spark.createDataFrame([], empty_schema)
        return events

    def exclude_forgotten(self, df: DataFrame, user_col: str = "user_id") -> DataFrame:
        """``df`` without the rows of users who asked to be forgotten."""
        return common.exclude_forgotten(df, self.lake, user_col)

    def read_latest(self, table: Table) -> tuple[dict, DataFrame] | None:
        """The newest run of a feature table and its metadata, or None before its first build."""
        meta = table.latest(self.lake)
        if meta is None:
            return None
        return meta, self.spark.read.parquet(table.run_uri(self.lake, meta["run_id"]))

    def read_run(self, table: Table, *sub: str) -> DataFrame:
        """This run's files of ``table`` (or ``sub`` below its run folder), as written."""
        return self.spark.read.parquet(table.run_uri(self.lake, self.run_id, *sub))

    # -- writing ---------------------------------------------------------------------------
    def write_run(self, table: Table, df: DataFrame, *sub: str, partition_by: Sequence[str] = ()) -> str:
        """Write ``df`` as this run of ``table`` (or ``sub`` below its run folder), replacing it.

        Returns:
            The run folder, lake-relative (``features/rfm/run=<run_id>``), as metadata records it.
        """
        writer = df.write.mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(table.run_uri(self.lake, self.run_id, *sub))
        return table.run_rel(self.run_id)

    def publish(self, table: Table, meta: dict) -> dict:
        """Make this run the table's newest (``_meta.json``, then ``latest.json``); returns ``meta``."""
        return table.publish(self.lake, self.run_id, meta)

    def write_profiles(self, df: DataFrame, cells: Cells, constants: Mapping[str, Any] | None = None) -> None:
        """Write every row of ``df`` (with a ``user_id``) to the profile store (:func:`profile_writer`)."""
        df.foreachPartition(profile_writer(self.settings, cells, constants))
