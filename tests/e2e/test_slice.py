"""The whole slice on small generated data: generate -> ingest -> RFM -> Tune -> Serve -> client.

The chain (tests/e2e/conftest.py) runs once per session and each test checks one promise of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

pytestmark = pytest.mark.e2e


def _features(lake, chain) -> pd.DataFrame:
    """RFM joined with CLV: the segmentation model's inputs."""
    rfm = lake.read_parquet(chain["rfm"]["path"])
    clv = lake.read_parquet(chain["clv"]["path"], columns=["user_id", "clv_predicted"])
    return rfm.merge(clv, on="user_id", how="inner")


def test_reconciliation_matches_planted_defects_exactly(chain):
    expected = chain["manifest"]["expected"]
    files = chain["report"]["files"]
    assert set(expected) <= set(files)
    for name, exp in expected.items():
        got = files[name]
        for key, value in exp.items():
            assert got[key] == value, f"{name}.{key}: report {got[key]!r} != planted {value!r}"
        assert got["rows_read"] == got["accepted"] + sum(got["quarantined"].values()) + got["duplicates_dropped"]
    # --report writes the same document the lake keeps.
    assert json.loads(chain["report_path"].read_text(encoding="utf-8"))["files"] == files


def test_segments_recover_planted_archetypes(chain):
    """ARI between the served segmentation and the generator's archetypes.

    Threshold 0.75: the generator plants archetypes that K-means on log-RFM separates with an
    ARI of about 0.9 (docs/synthetic-data.md); merging any two archetypes, or choosing k=2
    as a silhouette search on raw skewed RFM tends to, drops it below 0.6.
    """
    from cluster.core.storage import open_lake
    from ray_apps.registry import open_registry
    settings = chain["settings"]
    lake = open_lake(settings)
    model, mv = open_registry(settings, lake).load("segments")
    assert mv.version == chain["model"].version
    assert model.features_[-1] == "clv_predicted"
    features = _features(lake, chain)
    truth = pd.read_csv(chain["data"] / "_truth" / "users.csv", dtype={"user_id": str})
    joined = features.merge(truth[["user_id", "archetype"]], on="user_id", how="inner")
    assert len(joined) >= 0.95 * len(features)
    labels = model.predict(joined[list(model.features_)])
    ari = adjusted_rand_score(joined["archetype"], labels)
    assert ari >= 0.75, f"ARI {ari:.3f} with k={model.n_clusters}"
    elbow = mv.metrics["elbow"]
    assert [row["k"] for row in elbow] == list(range(2, 11))
    assert mv.metrics["chosen_k"] == max(elbow, key=lambda r: r["silhouette"])["k"]


def test_separate_process_gets_answers_and_errors(chain):
    from cluster.core.storage import open_lake
    from ray_apps.registry import open_registry
    settings = chain["settings"]
    lake = open_lake(settings)
    features = _features(lake, chain).sample(n=5, random_state=3)
    model, mv = open_registry(settings, lake).load("segments")
    sv = settings.serve
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("client_process.py")), f"{sv.grpc_client_host}:{sv.grpc_port}",
         f"http://{sv.http_host}:{sv.http_port}", *features["user_id"]],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    expected_labels = model.predict(features[list(model.features_)])
    for (_, row), label in zip(features.iterrows(), expected_labels):
        answer = out["users"][row["user_id"]]
        assert answer["grpc"]["code"] == "OK"
        g = answer["grpc"]["body"]
        assert g.get("segment_id", 0) == label  # proto3 JSON omits a zero id
        assert g["segment_name"] == model.names_[label]
        assert g["model_version"] == mv.ref
        assert g["rfm"]["frequency"] == row["frequency"]
        assert np.isclose(g["rfm"]["monetary"], row["monetary"])
        assert answer["http"]["status"] == 200
        h = answer["http"]["body"]
        assert (h["segment_id"], h["segment_name"], h["model_version"]) == (int(label), g["segment_name"], mv.ref)
    errors = out["errors"]
    assert errors["unknown"]["grpc"]["code"] == "NOT_FOUND" and errors["unknown"]["http"]["status"] == 404
    for case in ("empty", "long"):
        assert errors[case]["grpc"]["code"] == "INVALID_ARGUMENT", errors[case]
        assert "user_id" in errors[case]["grpc"]["details"]
        assert errors[case]["http"]["status"] == 422
        assert errors[case]["http"]["body"]["error"]["field"] == "user_id"


def test_profiles_hold_rfm_for_every_featured_user(chain):
    from cluster.core.storage import decode_float, open_lake, open_profile_store

    settings = chain["settings"]
    features = open_lake(settings).read_parquet(chain["rfm"]["path"])
    store = open_profile_store(settings)
    # Every user with a profile (accepted users and buyers), purchasers among them with RFM.
    assert store.count_users() == chain["profiles"]["profiles"] > len(features)
    row = features.iloc[0]
    cells = store.read(row["user_id"], ["f:rfm_frequency", "f:rfm_monetary"])
    assert decode_float(cells["f:rfm_frequency"]) == row["frequency"]
    assert decode_float(cells["f:rfm_monetary"]) == pytest.approx(row["monetary"])


def test_get_profile_on_both_transports_with_field_mask(chain):
    import grpc

    from cluster.core.errors import InvalidArgument, NotFound
    from cluster.core.storage import open_lake
    from protos.marketing.v1 import profile_pb2, profile_pb2_grpc
    from ray_apps.client import MarketingClient

    settings = chain["settings"]
    uid = open_lake(settings).read_parquet(chain["rfm"]["path"])["user_id"].iloc[0]
    with MarketingClient.from_settings(settings, timeout_s=10) as client:
        g = client.get_profile(uid)
        h = client.get_profile_http(uid)
        assert g == h
        assert g.segment.model_version == chain["model"].ref and g.rfm.frequency >= 1
        assert g.updated == chain["profiles"]["built_at"]
        only = client.get_profile(uid, ["consent", "rfm"])
        assert only.rfm == g.rfm and only.consent == g.consent
        assert not only.HasField("attributes") and not only.HasField("segment")
        assert client.get_profile_http(uid, ["consent", "rfm"]) == only
        with pytest.raises(NotFound):
            client.get_profile("no-such-user")
        for call in (client.get_profile, client.get_profile_http):
            with pytest.raises(InvalidArgument) as err:
                call(uid, ["secrets"])
            assert "secrets" in err.value.message
    # A raw gRPC caller sees INVALID_ARGUMENT naming the field, never UNKNOWN.
    with grpc.insecure_channel(f"{settings.serve.grpc_client_host}:{settings.serve.grpc_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetProfile(profile_pb2.GetProfileRequest(user_id=""), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in err.value.details()


def test_events_update_counters_seen_by_get_profile(chain):
    import httpx

    from ray_apps.client import MarketingClient

    settings = chain["settings"]
    uid = "u000001"
    events = [
        {"event_id": "rt-1", "user_id": uid, "ts": "2026-06-30 10:00:00", "action": "view", "category": "手机"},
        {"event_id": "rt-2", "user_id": uid, "ts": "2026-06-30T02:00:01Z", "action": "cart", "category": "手机"},
        {"event_id": "rt-3", "user_id": uid, "ts": "yesterday", "action": "view"},
        {"event_id": "rt-4", "user_id": uid, "ts": "2026-06-30 10:00:02", "action": "dance"},
    ]
    with MarketingClient.from_settings(settings, timeout_s=10) as client:
        before = dict(client.get_profile(uid, ["counters"]).counters) if _has_profile(client, uid) else {}
        g = client.track_events(events[:2] + events[2:3])
        assert (g.accepted, [(r.index, r.reason, r.field) for r in g.rejected]) == (2, [(2, "bad_timestamp", "ts")])
        h = client.track_events_http([{**e, "event_id": e["event_id"] + "h"} for e in events])
        assert h.accepted == 2 and {(r.index, r.reason) for r in h.rejected} == {(2, "bad_timestamp"), (3, "unknown_action")}
        resent = client.track_events(events[:1])
        assert (resent.accepted, resent.duplicates) == (0, 1)
        after = dict(client.get_profile(uid, ["counters"]).counters)
    assert after.get("view", 0) - before.get("view", 0) == 2
    assert after.get("cart:手机", 0) - before.get("cart:手机", 0) == 2
    base = f"http://{settings.serve.http_client_host}:{settings.serve.http_port}"
    for body, field in (({"events": []}, "events"), ({}, "events"), ({"events": "x"}, "events")):
        resp = httpx.post(f"{base}/v1/events", json=body, timeout=10)
        assert resp.status_code == 422 and resp.json()["error"]["field"] == field, resp.text


def _has_profile(client, uid) -> bool:
    from cluster.core.errors import NotFound

    try:
        client.get_profile(uid, ["counters"])
        return True
    except NotFound:
        return False


def test_no_purchases_segment_for_known_users_and_not_found_for_unknown_ids(chain):
    """A user of users.csv (accepted by ingest) without RFM features, i.e. no paid order, is in the
    reserved no_purchases segment on both transports, in GetSegment and GetProfile; an id the
    platform never saw stays NOT_FOUND."""
    import httpx

    from cluster.core.errors import NotFound
    from cluster.core.storage import Zone, open_lake
    from ray_apps.client import MarketingClient

    settings = chain["settings"]
    lake = open_lake(settings)
    listed = set(pd.read_csv(chain["data"] / "users.csv", dtype=str, usecols=["user_id"])["user_id"].dropna())
    accepted = set().union(*(lake.read_parquet(Zone.RAW, "users", part, columns=["user_id"])["user_id"]
                             for part in lake.list_dir(Zone.RAW, "users") if part.startswith("dt=")))
    buyers = set(lake.read_parquet(chain["rfm"]["path"], columns=["user_id"])["user_id"])
    never_paid = sorted((listed & accepted) - buyers)
    assert len(never_paid) >= 100, "the generated data has registered users who never paid"
    picked = pd.Series(never_paid).sample(n=3, random_state=5).tolist()
    base = f"http://{settings.serve.http_client_host}:{settings.serve.http_port}"
    with MarketingClient.from_settings(settings, timeout_s=10) as client:
        for uid in picked:
            g = client.get_segment(uid)
            assert (g.user_id, g.segment_id, g.segment_name, g.segment_name_zh) == (uid, -1, "no_purchases",
                                                                                   "未购买客户"), uid
            assert not g.HasField("rfm") and g.as_of == "" and g.model_version == chain["model"].ref
            resp = httpx.get(f"{base}/v1/users/{uid}/segment", timeout=10)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert "rfm" not in body and (body["segment_id"], body["segment_name"]) == (-1, "no_purchases")
            assert client.get_segment_http(uid) == g
            for get_profile in (client.get_profile, client.get_profile_http):
                p = get_profile(uid)
                assert (p.segment.segment_id, p.segment.segment_name) == (-1, "no_purchases")
                assert not p.HasField("rfm")
        for get in (client.get_segment, client.get_segment_http):
            with pytest.raises(NotFound):
                get("never-seen-user-77")
    assert "never-seen-user-77" not in listed
