"""The slice on the cluster: raw files to HDFS, Spark standalone, Tune on the Ray cluster,
Serve answering from HBase."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def pipeline(cluster_settings, tmp_path_factory):
    from cluster.datagen import generate
    from ray_apps.runtime import shutdown_ray
    from ray_apps.segments.tune import train_segments
    from ray_apps.serve.launcher import start_serving
    from spark_jobs import ingest, rfm
    from spark_jobs.session import get_spark, stop_spark

    stop_spark()  # a local session from other tests would be reused by getOrCreate
    data = tmp_path_factory.mktemp("cluster-slice") / "input"
    generate(data, users=1500, days=90, seed=5)
    spark = get_spark(cluster_settings, "pmkt-itest")
    assert spark.sparkContext.master == cluster_settings.spark.master
    report = ingest.main(cluster_settings, data)
    rfm_meta = rfm.main(cluster_settings)
    stop_spark()
    model = train_segments(cluster_settings, smoke_test=True)
    start_serving(cluster_settings)
    try:
        yield {"data": data, "report": report, "rfm": rfm_meta, "model": model,
               "manifest": json.loads((data / "_truth" / "manifest.json").read_text(encoding="utf-8"))}
    finally:
        shutdown_ray()


def test_raw_files_land_in_hdfs_and_reconcile(cluster_settings, pipeline):
    from cluster.storage import Zone, open_lake

    lake = open_lake(cluster_settings)
    run_id = pipeline["report"]["run_id"]
    assert "orders.csv" in lake.list_dir(Zone.LANDING, run_id)
    assert any(name.startswith("dt=") for name in lake.list_dir(Zone.RAW, "orders"))
    for name, expected in pipeline["manifest"]["expected"].items():
        got = pipeline["report"]["files"][name]
        assert {k: got[k] for k in expected} == expected


def test_tune_trials_ran_on_the_ray_cluster(pipeline):
    assert pipeline["model"].metrics["elbow"], "no trial results"
    assert [r["k"] for r in pipeline["model"].metrics["elbow"]] == [2, 3, 4]


def test_serve_answers_from_hbase(cluster_settings, pipeline):
    from cluster.storage import HBaseProfileStore, decode_float, open_lake, open_profile_store
    from ray_apps.client import MarketingClient

    store = open_profile_store(cluster_settings)
    assert isinstance(store, HBaseProfileStore)
    features = open_lake(cluster_settings).read_parquet(pipeline["rfm"]["path"]).sample(n=3, random_state=1)
    with MarketingClient.from_settings(cluster_settings, timeout_s=15) as client:
        for _, row in features.iterrows():
            cells = store.read(row["user_id"], ["f:rfm_monetary"])
            assert decode_float(cells["f:rfm_monetary"]) == pytest.approx(row["monetary"])
            g = client.get_segment(row["user_id"])
            h = client.get_segment_http(row["user_id"])
            assert g.rfm.frequency == row["frequency"] and g.rfm.monetary == pytest.approx(row["monetary"])
            assert (g.segment_id, g.model_version) == (h.segment_id, h.model_version) == (
                g.segment_id, pipeline["model"].ref)
