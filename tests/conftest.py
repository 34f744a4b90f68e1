"""Shared fixtures: one local SparkSession per test session, settings in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.core.settings import Settings, load_settings
from tests.ports import free_port


@pytest.fixture(scope="session")
def settings_factory(tmp_path_factory):
    """Build embedded settings rooted in a fresh temp folder (with free serving ports)."""

    def make(**env_overrides: str) -> Settings:
        home = tmp_path_factory.mktemp("pmkt-home")
        env = {
            **os.environ,
            "PMKT_HOME": str(home),
            "PMKT_SERVE__HTTP_PORT": str(free_port()),
            "PMKT_SERVE__GRPC_PORT": str(free_port()),
            "PMKT_SPARK__SHUFFLE_PARTITIONS": "2",
            **env_overrides,
        }
        env.pop("PMKT_SETTINGS", None)
        env.pop("PMKT_PROFILE", None)
        return load_settings("embedded", env=env)

    return make


@pytest.fixture(scope="session")
def settings(settings_factory) -> Settings:
    return settings_factory()


@pytest.fixture(scope="session")
def spark(settings):
    from spark_jobs.session import get_spark

    session = get_spark(settings, app_name="pmkt-tests")
    yield session
    session.stop()


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "input"
    d.mkdir()
    return d
