"""`pmkt demo` on the cluster: raw files to HDFS, Spark standalone, Tune spread over the
Ray nodes, and the Serve application deployed at provisioning answering from HBase."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cluster


def test_the_provisioned_application_waits_for_a_model(pipeline):
    if not pipeline["untrained"]:
        pytest.skip("this cluster already had a segments model before the test")
    assert pipeline["before"] == "FailedPrecondition"


def test_raw_files_land_in_hdfs_and_reconcile(cluster_settings, pipeline):
    from cluster.core.storage import Zone, open_lake

    lake = open_lake(cluster_settings)
    run_id = pipeline["report"]["run_id"]
    assert "orders.csv" in lake.list_dir(Zone.LANDING, run_id)
    assert any(name.startswith("dt=") for name in lake.list_dir(Zone.RAW, "orders"))
    for name, expected in pipeline["manifest"]["expected"].items():
        got = pipeline["report"]["files"][name]
        assert {k: got[k] for k in expected} == expected


def test_tune_trials_spread_over_the_ray_nodes(pipeline):
    elbow = pipeline["model"].metrics["elbow"]
    assert [r["k"] for r in elbow] == [2, 3, 4]
    # One CPU per node and one per trial: three trials cannot all run on one node.
    assert pipeline["model"].metrics["trial_nodes"] >= 2, elbow


def test_serve_answers_from_hbase(cluster_settings, pipeline):
    from cluster.core.storage import (
        HBaseProfileStore,
        decode_float,
        open_lake,
        open_profile_store,
    )
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


def test_every_model_family_is_tuned_and_registered_on_the_cluster(cluster_settings, pipeline):
    from cluster.core.storage import open_lake
    from ray_apps.registry import open_registry

    registry = open_registry(cluster_settings)
    for name in ("ctr", "recs", "churn"):
        mv = registry.get(name)
        assert mv.metrics["trial_nodes"] >= 1 and registry.extra(name, mv.version, "tuning.json")["trials"], name
    # Three one-CPU trials on one-CPU nodes: the search used more than one node.
    recs = registry.extra("recs", registry.current_version("recs"), "tuning.json")
    assert recs["compute"]["nodes"] >= 2, recs["compute"]
