"""Is a forgotten user answered as a stranger? Shared by the embedded (tests/e2e/test_y_forget.py)
and the cluster (tests/integration/test_d_privacy.py) forget tests."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict

from cluster.core.errors import PlatformError

__all__ = ["STRANGER", "answers", "differences", "sample_ad"]

#: The generator's id pattern, never generated at the sizes the tests use.
STRANGER = "u999999"


def sample_ad(lake) -> dict[str, str]:
    """An ad as the CTR model knows it (the first test impression of the newest training table)."""
    from cluster.core.catalog import CTR_TRAIN

    meta = CTR_TRAIN.require_latest(lake)
    row = lake.read_parquet(meta["path"], "split=test",
                            columns=["ad_id", "campaign_id", "channel", "ad_position", "device_type"]).iloc[0]
    return {k: str(v) for k, v in row.items()}


def answers(client: Any, uid: str, ad: dict[str, str]) -> dict[str, str]:
    """Every user-facing answer for ``uid`` (profile, segment, CTR, recommendations, churn, offer,
    channel; gRPC, and HTTP for two of them), the user's id blanked, so two users' answers compare.
    An error is kept as its class name. The channel is Thompson-sampled, so only whether it
    answered counts."""
    calls = {
        "profile": lambda: client.get_profile(uid),
        "profile_http": lambda: client.get_profile_http(uid),
        "segment": lambda: client.get_segment(uid),
        "ctr": lambda: client.score_ctr([{**ad, "user_id": uid}]),
        "recs": lambda: client.recommend(uid, 10),
        "recs_http": lambda: client.recommend_http(uid, 10),
        "churn": lambda: client.churn_risk(uid, 30),
        "offer": lambda: client.generate_offer(uid),
        "channel": lambda: client.choose_channel(user_id=uid),
    }
    out = {}
    for name, call in calls.items():
        try:
            msg = MessageToDict(call(), preserving_proto_field_name=True)
        except PlatformError as exc:
            out[name] = f"error {type(exc).__name__}"
            continue
        if name == "channel":
            msg = {"answered": True}
        out[name] = json.dumps(msg, sort_keys=True).replace(uid, "<user>")
    return out


def differences(a: dict[str, str], b: dict[str, str]) -> dict[str, tuple[str, str]]:
    """The answers that differ, for an assertion message."""
    return {k: (a[k], b.get(k, "")) for k in a if a[k] != b.get(k)}
