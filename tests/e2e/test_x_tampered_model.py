"""A tampered model against the running Serve application (embedded default): one byte of a newly
registered segments version is flipped in the lake; serving keeps answering with the version it
has, `/v1/models/health` says which version is refused and why, and promoting it fails.

Runs late in the session and restores the current version when done."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.e2e


def test_a_flipped_byte_is_refused_while_serving_keeps_the_previous_version(chain):
    from cluster.core.catalog import MODEL_FILE, REGISTRY
    from cluster.core.signing import VerificationFailed
    from cluster.core.storage import open_lake
    from ray_apps.client import MarketingClient
    from ray_apps.registry import open_registry

    settings = chain["settings"]
    lake = open_lake(settings)
    registry = open_registry(settings, lake)
    good = registry.get("segments")
    uid = str(lake.read_parquet(chain["rfm"]["path"], columns=["user_id"])["user_id"].iloc[0])
    health_url = f"http://{settings.serve.http_host}:{settings.serve.http_port}/v1/models/health"
    model, mv = registry.load("segments")
    with MarketingClient.from_settings(settings, timeout_s=20.0) as client:
        assert client.get_segment(uid).model_version == good.ref
        bad = registry.register("segments", model, metrics=mv.metrics, params=mv.params,
                                feature_run_id=mv.feature_run_id)
        try:
            data = bytearray(lake.read_bytes(*REGISTRY.parts("segments", bad.version, MODEL_FILE)))
            data[len(data) // 2] ^= 0x01
            lake.write_bytes(bytes(data), *REGISTRY.parts("segments", bad.version, MODEL_FILE))
            assert registry.current_version("segments") == bad.version  # the pointer names it

            deadline = time.monotonic() + settings.serve.model_refresh_s + 30
            health = {}
            while time.monotonic() < deadline:
                health = httpx.get(health_url, timeout=10).json()["models"]["segments"]
                if health["refused"]:
                    break
                time.sleep(1)
            assert health["serving"] == good.ref, health
            assert f"segments/{bad.version} is refused" in health["refused"], health
            assert "digest" in health["refused"] or "model.pkl" in health["refused"], health
            # Both transports keep answering with the version serving had.
            assert client.get_segment(uid).model_version == good.ref
            assert client.get_segment_http(uid).model_version == good.ref
            with pytest.raises(VerificationFailed):
                registry.promote("segments", bad.version)
        finally:
            registry.promote("segments", good.version, reason="tampered-model test: restore")
    assert registry.current_version("segments") == good.version
