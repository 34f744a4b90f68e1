"""Promote and rollback change what the running Serve application answers, with no restart.

After the demo (one segments version serving), `pmkt tune segments` registers a version with a
different k on the cluster's Ray; then `pmkt models rollback` and `pmkt models promote` move the
pointer back and forth. Each time, GetSegment (gRPC and HTTP) must answer with the pointed-to
version and that version's own prediction within the replicas' refresh interval, while the
application is never redeployed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.cluster


def _pmkt(settings, *args: str, env: dict[str, str] | None = None, timeout: int = 900) -> str:
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("pmkt")), "--settings", str(settings.source), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "160", **(env or {})},
    )
    assert proc.returncode == 0, f"pmkt {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _deployed_at(settings) -> float:
    from ray import serve

    from ray_apps.runtime import ensure_ray
    from ray_apps.serve.launcher import APP_NAME

    ensure_ray(settings)
    return float(serve.status().applications[APP_NAME].last_deployed_time_s)


def _expect(settings, lake, users: pd.DataFrame, version: str, timeout_s: float) -> None:
    """Poll until every user's answer names ``version`` and carries that model's segment."""
    from ray_apps.client import MarketingClient
    from ray_apps.registry import open_registry

    model, mv = open_registry(settings, lake).load("segments", version)
    expected = dict(zip(users["user_id"], model.predict(users[list(model.features_)])))
    deadline = time.monotonic() + timeout_s
    last = None
    with MarketingClient.from_settings(settings, timeout_s=10) as client:
        while time.monotonic() < deadline:
            answers = {u: (client.get_segment(u), client.get_segment_http(u)) for u in expected}
            last = {u: (g.model_version, g.segment_id, h.model_version, h.segment_id) for u, (g, h) in answers.items()}
            if all(v == (mv.ref, int(expected[u]), mv.ref, int(expected[u])) for u, v in last.items()):
                return
            time.sleep(1.0)
    pytest.fail(f"serving did not switch to {mv.ref} within {timeout_s:.0f} s; last answers {last}")


def test_promote_and_rollback_switch_serving_without_a_restart(cluster_settings, pipeline):
    from cluster.core.storage import Zone, open_lake, open_profile_store
    from ray_apps.registry import open_registry

    lake = open_lake(cluster_settings)
    registry = open_registry(cluster_settings, lake)
    first = pipeline["model"]
    rfm = lake.read_parquet(pipeline["rfm"]["path"])
    clv = lake.read_parquet(lake.read_json(Zone.FEATURES, "clv", "latest.json")["path"],
                            columns=["user_id", "clv_predicted"])
    # Users still in the profile store (an earlier test forgets one).
    store = open_profile_store(cluster_settings)
    sample = rfm.merge(clv, on="user_id").sample(n=20, random_state=4)
    users = sample[[bool(store.read(u, ["f:rfm_monetary"])) for u in sample["user_id"]]].head(12)
    assert len(users) >= 10
    # Answers switch within the refresh interval, plus a margin for the cluster's pace.
    wait = cluster_settings.serve.model_refresh_s * 3 + 15
    deployed = _deployed_at(cluster_settings)
    _expect(cluster_settings, lake, users, first.version, wait)

    # A second version with another k (a one-value search on the cluster's Ray).
    out = _pmkt(cluster_settings, "tune", "segments", "--fresh",
                env={"PMKT_SEGMENTS__K_MIN": "6", "PMKT_SEGMENTS__K_MAX": "6"})
    second = registry.get("segments")
    assert second.version != first.version and second.metrics["chosen_k"] == 6, out
    model_1, _ = registry.load("segments", first.version)
    model_2, _ = registry.load("segments", second.version)
    assert model_1.n_clusters != model_2.n_clusters
    _expect(cluster_settings, lake, users, second.version, wait)

    assert f"segments/{first.version} is current" in _pmkt(cluster_settings, "models", "rollback", "segments")
    _expect(cluster_settings, lake, users, first.version, wait)

    assert f"segments/{second.version} is current" in _pmkt(
        cluster_settings, "models", "promote", "segments", second.version)
    _expect(cluster_settings, lake, users, second.version, wait)

    listing = _pmkt(cluster_settings, "models", "list", "segments")
    assert first.version in listing and second.version in listing
    assert _deployed_at(cluster_settings) == deployed  # the application was never redeployed
    # Leave the demo's version serving for the tests that follow.
    _pmkt(cluster_settings, "models", "rollback", "segments")
    _expect(cluster_settings, lake, users, first.version, wait)
