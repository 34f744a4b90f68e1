"""`pmkt demo` on the cluster: raw files to HDFS, Spark standalone, Tune spread over the
Ray nodes, and the Serve application deployed at provisioning answering from HBase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def pipeline(cluster_settings, tmp_path_factory):
    """`pmkt demo` against the cluster as `pmkt cluster up` left it: the platform role created
    the HBase table and deployed the Serve application, which must pick the demo's model up
    from the registry by itself."""
    from cluster.errors import FailedPrecondition, NotFound
    from cluster.storage import Zone, open_lake
    from ray_apps.client import MarketingClient
    from ray_apps.registry import ModelRegistry

    lake = open_lake(cluster_settings)
    untrained = not ModelRegistry(lake).versions("segments")
    before = None
    if untrained:  # a fresh cluster: the deployed application waits for a model
        with MarketingClient.from_settings(cluster_settings, timeout_s=10) as client:
            try:
                client.get_segment("anyone")
            except (FailedPrecondition, NotFound) as exc:
                before = type(exc).__name__
    work = tmp_path_factory.mktemp("cluster-demo")
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("pmkt")), "--settings", str(cluster_settings.source), "demo",
         "--users", "1500", "--days", "90", "--seed", "5", "--smoke-test"],
        cwd=work, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    registry = ModelRegistry(lake)
    yield {
        "stdout": proc.stdout,
        "report": lake.read_json(Zone.REPORTS, "ingest", "latest.json"),
        "rfm": lake.read_json(Zone.FEATURES, "rfm", "latest.json"),
        "model": registry.get("segments"),
        "untrained": untrained,
        "before": before,
        "manifest": json.loads((work / "var" / "demo-input" / "_truth" / "manifest.json").read_text(encoding="utf-8")),
    }


def test_the_provisioned_application_waits_for_a_model(pipeline):
    if not pipeline["untrained"]:
        pytest.skip("this cluster already had a segments model before the test")
    assert pipeline["before"] == "FailedPrecondition"


def test_raw_files_land_in_hdfs_and_reconcile(cluster_settings, pipeline):
    from cluster.storage import Zone, open_lake

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
