"""Connecting to Ray: the Ray Client path retries a refused connection, then says UNAVAILABLE."""

from __future__ import annotations

import pytest

from cluster.core.errors import Unavailable
from cluster.core.settings import load_settings
from ray_apps import runtime


@pytest.fixture
def client_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PMKT_RAY__ADDRESS", "ray://127.0.0.9:10001")
    monkeypatch.setenv("PMKT_RAY__CONNECT_ATTEMPTS", "3")
    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)
    return load_settings(profile="embedded")


def _fake_init(monkeypatch, failures: int):
    import ray

    calls = []

    def init(address, **kwargs):
        calls.append(address)
        if len(calls) <= failures:
            raise ConnectionAbortedError("Initialization failure from server:\nRuntimeError: Starting Ray "
                                         "client server failed. See ray_client_server_23008.err")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    return calls


def test_a_refused_client_connection_is_retried(client_settings, monkeypatch):
    calls = _fake_init(monkeypatch, failures=2)
    runtime.ensure_ray(client_settings)
    assert calls == ["ray://127.0.0.9:10001"] * 3


def test_a_client_connection_refused_every_time_is_unavailable_with_the_reason(client_settings, monkeypatch):
    calls = _fake_init(monkeypatch, failures=10)
    with pytest.raises(Unavailable) as err:
        runtime.ensure_ray(client_settings)
    assert len(calls) == 3
    assert "ray://127.0.0.9:10001" in err.value.message
    assert "ray_client_server_23008.err" in err.value.message


def test_the_ray_auth_environment_names_the_token_file_never_the_token(tmp_path):
    from cluster.core.settings import load_settings
    from ray_apps.runtime import ray_auth_env

    token = tmp_path / "ray.token"
    token.write_text("secret-token-value")
    settings = load_settings("cluster", env={"PMKT_RAY__AUTH_MODE": "token", "PMKT_RAY__AUTH_TOKEN_FILE": str(token)})
    env = ray_auth_env(settings)
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    assert "secret-token-value" not in str(env)
    assert ray_auth_env(load_settings("embedded", env={"PMKT_HOME": str(tmp_path)})) == {}
