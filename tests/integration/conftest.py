"""Fixtures for tests on the provisioned cluster (`pmkt cluster up`, or `make test`).

The cluster's settings file is the one the Ansible `platform` role renders
(var/cluster/pmkt-cluster.yaml for the local inventory; PMKT_CLUSTER_SETTINGS overrides).
Without a cluster these tests skip, unless PMKT_REQUIRE_CLUSTER=1 (set by `make test`),
where a missing cluster is a failure.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from cluster.settings import Settings, load_settings

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
    return load_settings(path=path)


@pytest.fixture(scope="session")
def run_tag() -> str:
    """A unique tag so repeated runs on a long-lived cluster do not collide."""
    return uuid.uuid4().hex[:8]
