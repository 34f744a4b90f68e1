"""Spark feature build on 1 M and 5 M behaviour events (``local[2]``) against a single-process
pandas baseline computing the same features on the same Parquet, one run each.

The build is the behaviour part of ``spark_jobs.tags``: TF-IDF tag weights per (user, tag),
the user-item interaction matrix (max over a user's records of an item: 1 view/click/favorite/
cart, 2 purchase) and the weighted top category per user. The baseline computes the same three
with pandas; both results are compared (counts and weight sums) before the times are printed.

    make bench-features    # or: .venv/bin/python tests/benchmarks/bench_features.py --sizes 1000000 5000000
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

AS_OF = date(2026, 7, 1)
ACTIONS = np.array(["view", "click", "favorite", "cart", "remove_cart", "purchase"])
ACTION_P = np.array([0.55, 0.2, 0.05, 0.12, 0.03, 0.05])


def make_events(path: Path, n: int, users: int, items: int, seed: int = 0) -> None:
    """``n`` synthetic events in the raw zone's schema, written as Parquet."""
    rng = np.random.default_rng(seed)
    item = rng.zipf(1.3, n) % items
    start = datetime(2026, 1, 1).timestamp()
    ts = start + rng.uniform(0, (datetime(2026, 7, 1).timestamp() - start), n)
    table = pa.table({
        "event_id": pa.array(np.char.add("e", np.arange(n).astype(str))),
        "user_id": pa.array(np.char.add("u", (rng.zipf(1.5, n) % users).astype(str))),
        "ts": pa.array((ts * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
        "action": pa.array(rng.choice(ACTIONS, n, p=ACTION_P)),
        "item_id": pa.array(np.char.add("i", item.astype(str))),
        "category": pa.array(np.char.add("c", (item % 40).astype(str))),
        "brand": pa.array(np.char.add("b", (item % 300).astype(str))),
        "device_type": pa.array(rng.choice(np.array(["ios", "android", "web"]), n)),
    })
    pq.write_table(table, path, row_group_size=1_000_000)


def spark_build(spark, path: Path) -> dict:
    from pyspark.sql import functions as F

    from spark_jobs import tags

    events = spark.read.parquet(str(path))
    orders = spark.createDataFrame([], "user_id string, order_time timestamp, item_id string, category string, "
                                       "brand string, status string")
    records = tags.behaviour(events, orders, AS_OF).cache()
    weights = tags.tfidf(tags.tag_records(records)).agg(F.count("*").alias("n"), F.sum("weight").alias("s"))
    matrix = tags.interactions(events, orders, AS_OF).agg(F.count("*").alias("n"), F.sum("value").alias("s"))
    top = tags.top_by_weight(records, "category", k=1).count()
    w, m = weights.collect()[0], matrix.collect()[0]
    records.unpersist()
    return {"weights": int(w["n"]), "weight_sum": float(w["s"]), "cells": int(m["n"]), "cell_sum": int(m["s"]),
            "users_with_top": int(top)}


def pandas_build(path: Path) -> dict:
    from spark_jobs.tags import ACTION_WEIGHTS, INTERACTION_VALUES, TFIDF_ACTIONS

    ev = pd.read_parquet(path, columns=["user_id", "ts", "action", "item_id", "category", "brand"])
    ev = ev[ev["ts"] < pd.Timestamp(AS_OF, tz="UTC")]
    rec = ev[ev["action"].isin(TFIDF_ACTIONS)]
    n_total = len(rec)
    per_user = rec.groupby("user_id").size().rename("n_user")
    tags_long = pd.concat([
        pd.DataFrame({"user_id": rec["user_id"], "tag": "category:" + rec["category"]}),
        pd.DataFrame({"user_id": rec["user_id"], "tag": "brand:" + rec["brand"]}),
    ])
    hits = tags_long.groupby(["user_id", "tag"]).size().rename("hits").reset_index()
    n_t = tags_long.groupby("tag").size().rename("n_t")
    hits = hits.join(per_user, on="user_id").join(n_t, on="tag")
    weight = hits["hits"] / hits["n_user"] * np.log(n_total / (hits["n_t"] + 1))
    values = ev["action"].map(dict(INTERACTION_VALUES))
    cells = ev.assign(v=values).dropna(subset=["v", "item_id"]).groupby(["user_id", "item_id"])["v"].max()
    scored = ev.assign(w=ev["action"].map(dict(ACTION_WEIGHTS)).fillna(0.0)).dropna(subset=["category"])
    top = scored.groupby(["user_id", "category"])["w"].sum().reset_index()
    top = top[top["w"] > 0]
    return {"weights": len(hits), "weight_sum": float(weight.sum()), "cells": len(cells), "cell_sum": int(cells.sum()),
            "users_with_top": int(top["user_id"].nunique())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000], help="event counts")
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    args = parser.parse_args()

    from cluster.core.settings import load_settings
    from spark_jobs.session import get_spark, stop_spark

    with tempfile.TemporaryDirectory(prefix="pmkt-bench-features-") as tmp:
        settings = load_settings(env={**os.environ, "PMKT_HOME": tmp})
        spark = get_spark(settings, "pmkt-bench-features")
        spark.range(10).count()  # JVM warm-up outside the timings
        rows = []
        for n in args.sizes:
            path = Path(tmp) / f"events-{n}.parquet"
            make_events(path, n, args.users, args.items)
            t0 = time.perf_counter()
            got = spark_build(spark, path)
            t_spark = time.perf_counter() - t0
            t0 = time.perf_counter()
            base = pandas_build(path)
            t_pandas = time.perf_counter() - t0
            for key in ("weights", "cells", "cell_sum", "users_with_top"):
                assert got[key] == base[key], (key, got[key], base[key])
            assert abs(got["weight_sum"] - base["weight_sum"]) <= 1e-6 * max(1.0, abs(base["weight_sum"])), (got, base)
            rows.append((n, t_spark, t_pandas, got))
        stop_spark()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"feature build (TF-IDF weights + interaction matrix + top category), Spark {settings.spark.master} "
          f"vs pandas, same Parquet, results checked equal")
    for n, t_spark, t_pandas, got in rows:
        print(f"  {n:>10,} events: Spark {t_spark:7.1f} s   pandas {t_pandas:7.1f} s   ratio Spark/pandas "
              f"{t_spark / t_pandas:5.2f}   ({got['weights']:,} tag weights, {got['cells']:,} matrix cells)")
    print(f"  peak RSS of this (driver + pandas) process: {peak:,.0f} MiB (Spark's JVM not included)")


if __name__ == "__main__":
    main()
