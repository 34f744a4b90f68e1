"""The API's replica over local back-ends (a lake folder, a SQLite profile store), without Ray."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def replica(settings_factory):
    """An :class:`~ray_apps.serve.api.ApiReplica` whose lake holds a segments model (and no other),
    and whose profile store knows a buyer who consented to every channel and a user without orders."""
    from cluster.core.storage import open_lake, open_profile_store
    from ray_apps.registry import open_registry
    from ray_apps.segments.model import RFMSegmenter
    from ray_apps.serve.api import ApiReplica

    settings = settings_factory()
    rng = np.random.default_rng(0)
    rfm = np.column_stack([rng.integers(1, 200, 200), rng.integers(1, 20, 200), rng.gamma(2, 300, 200)]).astype(float)
    open_registry(settings).register("segments", RFMSegmenter(n_clusters=3, random_state=0).fit(rfm),
                                                metrics={}, params={"k": 3}, feature_run_id="r1")
    consent = {f"a:opt_in_{c}": "1" for c in settings.channels.names}
    open_profile_store(settings).write_batch([
        ("u1", {"f:rfm_recency_days": 3, "f:rfm_frequency": 12, "f:rfm_monetary": 5000.5,
                "f:rfm_as_of": "2026-07-01", **consent}),
        ("u2", {"a:city": "上海", "f:profile_built_at": "2026-07-02T00:00:00+00:00"}),
    ])
    api = ApiReplica(settings)
    yield api
    api.close()


@pytest.fixture(scope="module")
def http_app(replica):
    """The replica's HTTP app, as a Serve replica builds it (no API keys)."""
    from ray_apps.serve.auth import ApiKeys
    from ray_apps.serve.http_app import build_http_app

    return build_http_app(replica, ApiKeys({}))
