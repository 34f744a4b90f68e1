"""Fixtures for tests on the provisioned cluster (`pmkt cluster up`, or `make test`).

The cluster's settings file is the one the Ansible `platform` role renders
(var/cluster/pmkt-cluster.yaml for the local inventory; PMKT_CLUSTER_SETTINGS overrides).
Without a cluster these tests skip, unless PMKT_REQUIRE_CLUSTER=1 (set by `make test`),
where a missing cluster is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cluster.core.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def _settings_path() -> Path:
    return Path(os.environ.get("PMKT_CLUSTER_SETTINGS", REPO / "var" / "cluster" / "pmkt-cluster.yaml"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster_settings() -> Settings:
    path = _settings_path()
    if not path.is_file():
        message = f"no cluster settings at {path}: run `pmkt cluster up` first"
        if os.environ.get("PMKT_REQUIRE_CLUSTER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    settings = load_settings(path=path)
    # Ray reads its authentication settings when first imported: before any test imports it.
    from ray_apps.runtime import ray_auth_env

    os.environ.update(ray_auth_env(settings))
    # The cluster requires API keys: the tests (and the pmkt commands they start) call as the
    # inventory's admin client, ops; test_h_security also calls as reader and as nobody.
    os.environ["PMKT_API_KEY"] = api_keys(settings)["ops"]
    return settings


def api_keys(settings: Settings) -> dict[str, str]:
    """client -> key, from the key file the platform role generated (serve.auth.keys_file)."""
    from cluster.core.keyfiles import read_private_file
    from ray_apps.serve.auth import parse_keys

    path = settings.serve.auth.keys_file
    assert path is not None, "the cluster settings name no serve.auth.keys_file"
    return {client: k.key for client, k in
            parse_keys(read_private_file(path, "serve.auth.keys_file"), str(path)).items()}


@pytest.fixture(scope="session")
def run_tag() -> str:
    """A unique tag so repeated runs on a long-lived cluster do not collide."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def pipeline(cluster_settings, tmp_path_factory):
    """`pmkt demo` against the cluster as `pmkt cluster up` left it: the platform role created
    the HBase table and deployed the Serve application, which must pick the demo's model up
    from the registry by itself."""
    from cluster.core.errors import FailedPrecondition, NotFound
    from cluster.core.storage import Zone, open_lake
    from ray_apps.client import MarketingClient
    from ray_apps.registry import open_registry

    lake = open_lake(cluster_settings)
    untrained = not open_registry(cluster_settings, lake).versions("segments")
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
        # 90 days cannot show a 90-day churn: a 30-day window gives the churn model churners.
        # A campaign of the generated data with targets: the report's goal-gap section.
        env={**os.environ, "COLUMNS": "160", "PMKT_TRAINING_TABLES__INACTIVITY_DAYS": "30",
             "PMKT_EVALUATION__GOALS": "{cmp001: {duration_days: 120, conversions: 5, ctr: 0.05, budget: 20}}"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    registry = open_registry(cluster_settings, lake)
    yield {
        "work": work,
        "stdout": proc.stdout + proc.stderr,
        "report": lake.read_json(Zone.REPORTS, "ingest", "latest.json"),
        "rfm": lake.read_json(Zone.FEATURES, "rfm", "latest.json"),
        "model": registry.get("segments"),
        "untrained": untrained,
        "before": before,
        "manifest": json.loads((work / "var" / "demo-input" / "_truth" / "manifest.json").read_text(encoding="utf-8")),
    }
