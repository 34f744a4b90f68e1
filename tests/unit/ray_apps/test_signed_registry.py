"""Signed model artifacts: a version whose files, signature or key do not match is never unpickled;
promote refuses it; serving keeps the version it has and says why; the key's own rules."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cluster.core.catalog import MODEL_FILE, MODEL_METRICS, MODEL_SIGNATURE, REGISTRY
from cluster.core.errors import ConfigError, FailedPrecondition
from cluster.core.settings import RegistrySettings
from cluster.core.signing import VerificationFailed, init_registry_key_file, load_registry_key
from cluster.core.storage import LocalLake
from ray_apps.current import CurrentModel
from ray_apps.registry import ModelRegistry
from ray_apps.segments.model import RFMSegmenter
from tests.registry_keys import OTHER_REGISTRY_KEY, TEST_REGISTRY_KEY


def _model(seed: int = 0) -> RFMSegmenter:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.integers(1, 200, 200), rng.integers(1, 20, 200), rng.gamma(2, 300, 200)]).astype(float)
    return RFMSegmenter(n_clusters=3, random_state=0).fit(x)


def _flip_one_byte(lake: LocalLake, *parts: str) -> None:
    data = bytearray(lake.read_bytes(*REGISTRY.parts(*parts)))
    data[len(data) // 2] ^= 0x01
    lake.write_bytes(bytes(data), *REGISTRY.parts(*parts))


@pytest.fixture()
def reg(tmp_path):
    reg = ModelRegistry(LocalLake(tmp_path / "lake"), TEST_REGISTRY_KEY)
    reg.register("segments", _model(0), metrics={"silhouette": 0.5}, params={}, feature_run_id="r1")
    reg.register("segments", _model(1), metrics={"silhouette": 0.6}, params={}, feature_run_id="r2")
    return reg


def test_a_registered_version_verifies_and_loads(reg):
    assert reg.problem("segments", "v0002") is None
    model, mv = reg.load("segments")
    assert mv.version == "v0002" and model.centroids_.shape[0] == 3


@pytest.mark.parametrize("file", [MODEL_FILE, MODEL_METRICS])
def test_one_flipped_byte_is_refused_and_never_unpickled(reg, monkeypatch, file):
    _flip_one_byte(reg.lake, "segments", "v0002", file)
    unpickled = []
    monkeypatch.setattr("ray_apps.registry.joblib.load", lambda *a, **k: unpickled.append(1))
    with pytest.raises(VerificationFailed, match=f"{file} digest does not match") as err:
        reg.load("segments", "v0002")
    assert err.value.ref == "segments/v0002" and unpickled == []
    with pytest.raises(VerificationFailed):
        reg.promote("segments", "v0002")
    assert "digest" in reg.problem("segments", "v0002")


def test_a_replaced_model_with_its_digest_rewritten_fails_the_hmac(reg):
    """Whoever can write the lake can rewrite signature.json too, but cannot make its HMAC."""
    import hashlib
    import io

    import joblib

    buf = io.BytesIO()
    joblib.dump({"evil": True}, buf)
    reg.lake.write_bytes(buf.getvalue(), *REGISTRY.parts("segments", "v0002", MODEL_FILE))
    sig = REGISTRY.read_json(reg.lake, "segments", "v0002", MODEL_SIGNATURE)
    sig["signed"]["files"][MODEL_FILE] = hashlib.sha256(buf.getvalue()).hexdigest()
    REGISTRY.write_json(reg.lake, sig, "segments", "v0002", MODEL_SIGNATURE)
    with pytest.raises(VerificationFailed, match="signature does not verify"):
        reg.load("segments", "v0002")


def test_unsigned_and_foreign_versions_are_refused_and_sign_repairs_them(reg):
    reg.lake.delete(*REGISTRY.parts("segments", "v0001", MODEL_SIGNATURE))
    with pytest.raises(VerificationFailed, match="unsigned"):
        reg.load("segments", "v0001")
    foreign = ModelRegistry(reg.lake, OTHER_REGISTRY_KEY)
    with pytest.raises(VerificationFailed, match=f"signed with key {TEST_REGISTRY_KEY.key_id}"):
        foreign.load("segments", "v0002")
    with pytest.raises(FailedPrecondition, match="registry signing key"):
        ModelRegistry(reg.lake, None).register("segments", _model(), metrics={}, params={}, feature_run_id="x")
    reg.sign("segments", "v0001")
    assert reg.problem("segments", "v0001") is None


def test_serving_keeps_the_previous_version_and_says_why(reg):
    built = []
    current = CurrentModel(reg, "segments", lambda m, mv: built.append(mv.version) or mv.version, refresh_s=0.0)
    assert current.get() == "v0002" and current.refused is None
    reg.register("segments", _model(2), metrics={}, params={}, feature_run_id="r3")  # v0003, current
    _flip_one_byte(reg.lake, "segments", "v0003", MODEL_FILE)
    current.refresh()
    assert current.get() == "v0002"  # still answering, with the version it had
    assert "segments/v0003 is refused" in current.refused and "keeping segments/v0002" in current.refused
    assert built == ["v0002"]
    reg.promote("segments", "v0001")  # a version that verifies: picked up, the problem cleared
    current.refresh()
    assert current.get() == "v0001" and current.refused is None


def test_a_replica_whose_only_version_fails_answers_failed_precondition_naming_it(reg):
    _flip_one_byte(reg.lake, "segments", "v0002", MODEL_FILE)
    current = CurrentModel(reg, "segments", lambda m, mv: mv.version, refresh_s=0.0)
    with pytest.raises(FailedPrecondition, match="segments/v0002 is refused"):
        current.get()


def test_the_key_file_is_created_private_and_a_readable_one_is_refused(tmp_path):
    path = tmp_path / "keys" / "registry.key"
    settings = RegistrySettings(key_file=path, create_key_file=True)
    key = load_registry_key(settings, env={})
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert load_registry_key(settings, env={}).key_id == key.key_id  # kept, not regenerated
    assert not init_registry_key_file(path)
    assert key.key_id not in path.read_text() and "SigningKey(key_id=" in repr(key)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_registry_key(settings, env={})
    with pytest.raises(ConfigError, match="8 bytes; at least 32"):
        load_registry_key(RegistrySettings(), env={"PMKT_REGISTRY_KEY": "00" * 8})
    with pytest.raises(ConfigError, match="PMKT_REGISTRY_KEY"):
        load_registry_key(RegistrySettings(), env={})
