"""The one place a SparkSession is built, from settings."""

from __future__ import annotations

import logging
import os

from pyspark.sql import SparkSession

from cluster.core.keyfiles import read_secret_file
from cluster.core.settings import Settings

__all__ = ["get_spark", "stop_spark"]

log = logging.getLogger(__name__)


def get_spark(settings: Settings, app_name: str = "pmkt") -> SparkSession:
    """Return the active session or build one from ``settings.spark``.

    The driver binds ``spark.driver_host`` (loopback by default): without it Spark binds
    the machine's external interface. Timestamps are handled in UTC throughout.
    """
    sp = settings.spark
    os.environ.setdefault("SPARK_LOCAL_IP", sp.driver_host)
    # Python workers must run the same interpreter as the driver (the project venv).
    import sys

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(sp.master)
        .config("spark.driver.host", sp.driver_host)
        .config("spark.driver.bindAddress", sp.driver_host)
        .config("spark.driver.memory", sp.driver_memory)
        .config("spark.executor.memory", sp.executor_memory)
        .config("spark.sql.shuffle.partitions", str(sp.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        # INT96 (Spark's default) reads back in pandas as naive nanoseconds; micros are exact.
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        # Executors (on other hosts, in cluster mode) run the driver's interpreter path.
        .config("spark.pyspark.python", sys.executable)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if settings.lake.hdfs is not None:
        # Spark's HDFS client has no hdfs-site.xml: without this its files get 3 replicas.
        builder = builder.config("spark.hadoop.dfs.replication", str(settings.lake.hdfs.replication))
    for key, value in sp.conf.items():
        builder = builder.config(key, value)
    if sp.auth_secret_file is not None:
        # Standalone mode takes the shared secret only as spark.authenticate.secret; Spark redacts
        # it (spark.redaction.regex) wherever it shows the configuration.
        builder = builder.config("spark.authenticate", "true").config(
            "spark.authenticate.secret", read_secret_file(sp.auth_secret_file, "spark.auth_secret_file"))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(sp.log_level)
    log.info("Spark session %s on %s", spark.sparkContext.applicationId, sp.master)
    return spark


def stop_spark() -> None:
    """Stop the active session, if any (frees the driver JVM's memory)."""
    spark = SparkSession.getActiveSession()
    if spark is not None:
        spark.stop()
