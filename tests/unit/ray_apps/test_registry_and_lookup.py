import grpc
import numpy as np
import pytest

from cluster.core.errors import InvalidArgument, NotFound
from cluster.core.storage import LocalLake, SqliteProfileStore
from ray_apps.registry import ModelRegistry
from tests.registry_keys import TEST_REGISTRY_KEY
from ray_apps.segments.model import RFMSegmenter
from ray_apps.segments.service import SegmentLookup


def _model(seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.integers(1, 200, 200), rng.integers(1, 20, 200), rng.gamma(2, 300, 200)]).astype(float)
    return RFMSegmenter(n_clusters=3, random_state=0).fit(X)


def test_versions_increment_and_current_moves(tmp_path):
    reg = ModelRegistry(LocalLake(tmp_path), TEST_REGISTRY_KEY)
    with pytest.raises(NotFound, match="pmkt tune segments"):
        reg.current_version("segments")
    v1 = reg.register("segments", _model(0), metrics={"silhouette": 0.5}, params={"k": 3}, feature_run_id="r1")
    v2 = reg.register("segments", _model(1), metrics={"silhouette": 0.6}, params={"k": 3}, feature_run_id="r2")
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert reg.versions("segments") == ["v0001", "v0002"]
    assert reg.current_version("segments") == "v0002"
    model, mv = reg.load("segments", "v0001")
    assert mv.feature_run_id == "r1" and mv.metrics == {"silhouette": 0.5}
    assert mv.ref == "segments/v0001"
    np.testing.assert_allclose(model.centroids_, _model(0).centroids_)


def test_registry_rejects_bad_names_and_versions(tmp_path):
    reg = ModelRegistry(LocalLake(tmp_path), TEST_REGISTRY_KEY)
    with pytest.raises(InvalidArgument):
        reg.versions("../etc")
    with pytest.raises(InvalidArgument):
        reg.get("segments", "latest")
    with pytest.raises(NotFound):
        reg.get("segments", "v0009")


@pytest.fixture()
def lookup(tmp_path):
    reg = ModelRegistry(LocalLake(tmp_path / "lake"), TEST_REGISTRY_KEY)
    reg.register("segments", _model(), metrics={}, params={}, feature_run_id="r1")
    model, mv = reg.load("segments")
    store = SqliteProfileStore(tmp_path / "p.sqlite")
    store.write_batch(
        [
            ("u1", {"f:rfm_recency_days": 3, "f:rfm_frequency": 12, "f:rfm_monetary": 5000.5, "f:rfm_as_of": "2026-07-01"}),
            # a profile without purchases, as the profile build writes it
            ("u2", {"a:city": "上海", "f:profile_built_at": "2026-07-02T00:00:00+00:00"}),
        ]
    )
    return SegmentLookup(store, model, mv, max_user_id_length=64)


def test_lookup_answers_with_model_version(lookup):
    resp = lookup.get("u1")
    assert resp.model_version == "segments/v0001"
    assert (resp.rfm.recency_days, resp.rfm.frequency, resp.rfm.monetary) == (3, 12, 5000.5)
    assert resp.segment_name == lookup.model.names_[resp.segment_id]
    assert resp.as_of == "2026-07-01"


def test_lookup_not_found_only_for_users_never_seen(lookup):
    with pytest.raises(NotFound) as err:
        lookup.get("nobody")
    assert err.value.grpc_status_code() == grpc.StatusCode.NOT_FOUND and err.value.http_status_code() == 404
    # A profile without purchases is known: the reserved segment (tests/unit/ray_apps/segments/test_no_purchases.py).
    assert lookup.get("u2").segment_name == "no_purchases"


@pytest.mark.parametrize("uid", ["", "   ", "x" * 65, "u\x001"])
def test_lookup_invalid_argument_names_field(lookup, uid):
    with pytest.raises(InvalidArgument) as err:
        lookup.get(uid)
    assert err.value.field == "user_id"
    assert err.value.grpc_status_code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.http_status_code() == 422


def test_current_model_waits_for_training_then_follows_new_versions(tmp_path):
    from cluster.core.errors import FailedPrecondition
    from ray_apps.segments.service import CurrentSegmentModel

    reg = ModelRegistry(LocalLake(tmp_path / "lake"), TEST_REGISTRY_KEY)
    store = SqliteProfileStore(tmp_path / "p.sqlite")
    store.write_batch([("u1", {"f:rfm_recency_days": 3, "f:rfm_frequency": 12, "f:rfm_monetary": 500.0})])
    now = [0.0]
    current = CurrentSegmentModel(reg, store, refresh_s=30, max_user_id_length=64, clock=lambda: now[0])
    with pytest.raises(FailedPrecondition, match="pmkt tune segments"):
        current.lookup()

    reg.register("segments", _model(0), metrics={}, params={}, feature_run_id="r1")
    now[0] = 10.0  # within the refresh interval: not re-checked yet
    with pytest.raises(FailedPrecondition):
        current.lookup()
    now[0] = 31.0
    assert current.lookup().get("u1").model_version == "segments/v0001"

    reg.register("segments", _model(1), metrics={}, params={}, feature_run_id="r2")
    now[0] = 40.0
    assert current.lookup().get("u1").model_version == "segments/v0001"
    now[0] = 62.0
    assert current.lookup().get("u1").model_version == "segments/v0002"
