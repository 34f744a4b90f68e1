"""Known users without a paid order are in the reserved no_purchases segment everywhere
(GetSegment, GetProfile, offers, channel choice, the report's segment map, audiences); only
ids the platform never saw are NOT_FOUND."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from cluster.core.errors import InvalidArgument, NotFound
from cluster.core.settings import CampaignSettings, OfferSettings
from cluster.core.storage import LocalLake, SqliteProfileStore, Zone
from ray_apps.channels import ChannelBandit
from ray_apps.channels.bandit import NO_SEGMENT, segment_row
from ray_apps.channels.service import ChannelChooser
from ray_apps.offers.policy import ScoreInputs, decide
from ray_apps.offers.service import OfferEngine
from ray_apps.profiles.service import ProfileLookup
from ray_apps.registry import ModelRegistry
from tests.registry_keys import TEST_REGISTRY_KEY
from ray_apps.segments.model import FEATURES_WITH_CLV, RFMSegmenter
from ray_apps.segments.service import (
    NO_PURCHASES_ID,
    NO_PURCHASES_NAME,
    NO_PURCHASES_NAME_ZH,
    CurrentSegmentModel,
    SegmentLookup,
    user_segments_of,
)

CHANNELS = ("sms", "push", "email")
CONSENT = {"a:opt_in_sms": True, "a:opt_in_push": True, "a:opt_in_email": False}
BUYER = {"f:rfm_recency_days": 3, "f:rfm_frequency": 12, "f:rfm_monetary": 5000.5, "f:rfm_as_of": "2026-07-01"}
#: Known users without RFM, one per way a user reaches the profile store.
NON_BUYERS = ("profiled", "tagged", "counted")


class CountingStore(SqliteProfileStore):
    """A SQLite store that counts reads (one per request is the contract)."""

    reads = 0

    def read(self, user_id, columns=None, families=None):
        self.reads += 1
        return super().read(user_id, columns, families)


def _model(features=("recency_days", "frequency", "monetary")) -> RFMSegmenter:
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.integers(1, 200, 200), rng.integers(1, 20, 200), rng.gamma(2, 300, 200),
                         rng.gamma(2, 200, 200)])[:, : len(features)].astype(float)
    return RFMSegmenter(n_clusters=3, random_state=0, features=tuple(features)).fit(X)


@pytest.fixture()
def store(tmp_path):
    s = CountingStore(tmp_path / "p.sqlite")
    s.write_batch([
        ("buyer", {**BUYER, **CONSENT, "m:clv_predicted": 900.0, "f:profile_built_at": "2026-07-02T00:00:00Z"}),
        # users.csv row, no order: the profile build writes attributes and f:profile_built_at
        ("profiled", {**CONSENT, "a:city": "上海", "f:profile_built_at": "2026-07-02T00:00:00Z"}),
        # behaviour in the lake only: the tags build
        ("tagged", {"t:top_categories": "[]", "t:as_of": "2026-07-01"}),
        # bought, but the CLV build has not run since the RFM build
        ("buyer-no-clv", {**BUYER, **CONSENT, "f:profile_built_at": "2026-07-02T00:00:00Z"}),
    ])
    s.increment("counted", "c:view")  # seen by the real-time intake only
    yield s
    s.close()


def _registry(tmp_path, model) -> ModelRegistry:
    reg = ModelRegistry(LocalLake(tmp_path / "lake"), TEST_REGISTRY_KEY)
    reg.register("segments", model, metrics={}, params={}, feature_run_id="r1")
    return reg


@pytest.fixture()
def current(tmp_path, store):
    return CurrentSegmentModel(_registry(tmp_path, _model()), store, refresh_s=60, max_user_id_length=64)


# -- GetSegment --------------------------------------------------------------------------------
@pytest.mark.parametrize("uid", NON_BUYERS)
def test_a_known_user_without_rfm_is_no_purchases_with_both_names_in_one_read(current, store, uid):
    lookup = current.lookup()
    store.reads = 0
    got = lookup.get(uid)
    assert store.reads == 1
    assert (got.user_id, got.segment_id, got.segment_name, got.segment_name_zh) == (
        uid, -1, "no_purchases", "未购买客户")
    assert not got.HasField("rfm") and got.as_of == ""
    assert got.model_version == "segments/v0001"


def test_a_user_never_seen_is_not_found_in_one_read(current, store):
    lookup = current.lookup()
    store.reads = 0
    with pytest.raises(NotFound, match="unknown"):
        lookup.get("never-seen")
    assert store.reads == 1


def test_a_buyer_gets_a_kmeans_segment(current):
    lookup = current.lookup()
    got = lookup.get("buyer")
    assert 0 <= got.segment_id < lookup.model.n_clusters
    assert got.segment_name == lookup.model.names_[got.segment_id] != NO_PURCHASES_NAME
    assert got.segment_name_zh == lookup.model.names_zh_[got.segment_id]
    assert (got.rfm.frequency, got.as_of) == (12, "2026-07-01")


def test_the_reserved_segment_cannot_collide_with_a_kmeans_one():
    model = _model()
    assert NO_PURCHASES_ID not in range(model.n_clusters)
    assert NO_PURCHASES_NAME not in model.names_ and NO_PURCHASES_NAME_ZH not in model.names_zh_


def test_a_buyer_without_the_clv_the_model_needs_stays_not_found(tmp_path, store):
    model, mv = _registry(tmp_path, _model(FEATURES_WITH_CLV)).load("segments")
    lookup = SegmentLookup(store, model, mv, max_user_id_length=64)
    with pytest.raises(NotFound, match="clv_predicted"):
        lookup.get("buyer-no-clv")
    assert lookup.get("profiled").segment_name == NO_PURCHASES_NAME
    assert 0 <= lookup.get("buyer").segment_id < model.n_clusters


# -- GetProfile --------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [[], ["segment"]])
def test_a_profile_without_rfm_carries_the_no_purchases_segment(current, store, mask):
    profiles = ProfileLookup(store, current, max_user_id_length=64)
    store.reads = 0
    p = profiles.get("profiled", mask)
    assert store.reads == 1  # the segment-only mask needs no second read to know the user
    assert (p.segment.segment_id, p.segment.segment_name, p.segment.model_version) == (
        -1, "no_purchases", "segments/v0001")
    assert not p.HasField("rfm")
    buyer = profiles.get("buyer", mask)
    assert buyer.segment.segment_name == current.lookup().model.names_[buyer.segment.segment_id]
    with pytest.raises(NotFound):
        profiles.get("never-seen", mask)


def test_a_profile_without_a_model_has_no_segment(tmp_path, store):
    empty = CurrentSegmentModel(ModelRegistry(LocalLake(tmp_path / "none"), TEST_REGISTRY_KEY), store, refresh_s=60,
                                max_user_id_length=64)
    p = ProfileLookup(store, empty, max_user_id_length=64).get("profiled")
    assert not p.HasField("segment") and p.attributes.city == "上海"


# -- channel choice ----------------------------------------------------------------------------
@pytest.fixture()
def chooser(current, store):
    return ChannelChooser(store, current, ChannelBandit(store, CHANNELS, seed=1), max_user_id_length=64)


def test_channel_choice_pools_users_without_purchases_under_no_purchases(chooser, store):
    got = chooser.choose(user_id="profiled")
    assert (got.segment_id, got.segment_name) == (-1, NO_PURCHASES_NAME)
    assert got.channel in ("sms", "push") and got.excluded == ["email"]
    chooser.report(user_id="profiled", channel="push", converted=True)
    assert chooser.bandit.state(segment=NO_PURCHASES_NAME)["push"] == (1, 1)
    assert store.read(segment_row(NO_SEGMENT)) is None  # the old catch-all pool is not used for them
    # A segment-level campaign reaches the same pool by the reserved id.
    pooled = chooser.report(segment_id=-1, channel="push", converted=False)
    assert (pooled.segment_name, pooled.trials, pooled.conversions) == (NO_PURCHASES_NAME, 2, 1)
    with pytest.raises(InvalidArgument, match="-1"):
        chooser.choose(segment_id=7)


def test_channel_choice_segments_buyers_and_refuses_unknown_users(chooser):
    got = chooser.choose(user_id="buyer")
    assert got.segment_name == chooser.segments.lookup().model.names_[got.segment_id]
    with pytest.raises(NotFound):
        chooser.choose(user_id="never-seen")


def test_a_buyer_without_clv_still_pools_under_none(tmp_path, store):
    current = CurrentSegmentModel(_registry(tmp_path, _model(FEATURES_WITH_CLV)), store, refresh_s=60,
                                  max_user_id_length=64)
    chooser = ChannelChooser(store, current, ChannelBandit(store, CHANNELS, seed=1), max_user_id_length=64)
    assert chooser.user_context("buyer-no-clv")[:2] == (-1, NO_SEGMENT)
    assert chooser.user_context("profiled")[:2] == (-1, NO_PURCHASES_NAME)


# -- offers ------------------------------------------------------------------------------------
def test_the_policy_gives_no_purchases_a_first_purchase_offer_whatever_the_churn_risk():
    for risk in (None, 0.1, 0.95):
        d = decide(ScoreInputs(NO_PURCHASES_NAME, clv=None, propensity=None, churn_risk=risk, frequency=None),
                   CampaignSettings(max_discount=0.3), OfferSettings())
        assert (d.offer_type, d.discount) == ("first_purchase", pytest.approx(0.15))
    # A buyer with the same (missing) scores is not treated as one.
    d = decide(ScoreInputs("general-value", clv=None, propensity=None, churn_risk=None, frequency=1.0),
               CampaignSettings(max_discount=0.3), OfferSettings())
    assert d.offer_type == "second_purchase"


def test_an_offer_for_a_user_without_purchases_is_a_first_purchase_one(chooser):
    engine = OfferEngine(chooser.store, chooser, None, OfferSettings())
    offer = engine.generate("profiled", "default")
    assert (offer.offer_type, offer.inputs.segment_name) == ("first_purchase", NO_PURCHASES_NAME)
    assert offer.discount == pytest.approx(0.1) and offer.channel in ("sms", "push")
    assert engine.generate("buyer", "default").offer_type != "first_purchase"
    with pytest.raises(NotFound):
        engine.generate("never-seen", "default")


# -- the report's segment map and audiences -----------------------------------------------------
def _publish(lake: LocalLake, name: str, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf)
    lake.write_bytes(buf.getvalue(), Zone.FEATURES, f"{name}/run=r1", "part-0.parquet")
    lake.write_json({"run_id": "r1", "path": f"features/{name}/run=r1"}, Zone.FEATURES, name, "latest.json")


def test_user_segments_label_known_users_without_rfm_as_no_purchases(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    _publish(lake, "rfm", pd.DataFrame({"user_id": ["b1", "b2", "b3"], "recency_days": [3, 90, 20],
                                        "frequency": [12, 1, 4], "monetary": [5000.0, 30.0, 800.0],
                                        "consumption_level": ["high", "low", "medium"]}))
    _publish(lake, "clv", pd.DataFrame({"user_id": ["b1", "b2"], "clv_predicted": [900.0, 10.0]}))
    model = _model(FEATURES_WITH_CLV)
    plain = user_segments_of(lake, model)
    assert sorted(plain.index) == ["b1", "b2"]  # b3 has no CLV yet
    got = user_segments_of(lake, model, known_users=["b1", "b3", "n1", "n2", "n1"])
    assert got[["n1", "n2"]].tolist() == [NO_PURCHASES_NAME] * 2
    assert "b3" not in got.index  # a buyer without CLV is not called a non-buyer
    assert got["b1"] == plain["b1"] and set(plain) <= set(model.names_)
    assert got.index.is_unique

    from ray_apps.audiences import select_audience

    with pytest.raises(InvalidArgument, match="no_purchases") as err:
        select_audience(lake, segments=[NO_PURCHASES_NAME], segment_of=lambda f: f["user_id"])
    assert err.value.field == "segment"


def test_the_reports_campaign_section_groups_impressed_non_buyers_as_no_purchases(tmp_path, settings):
    import functools

    from ray_apps.evaluation.report import _campaigns

    lake = LocalLake(tmp_path / "lake")
    _publish(lake, "rfm", pd.DataFrame({"user_id": ["b1", "b2"], "recency_days": [3, 90], "frequency": [12, 1],
                                        "monetary": [5000.0, 30.0]}))
    _publish(lake, "clv", pd.DataFrame({"user_id": ["b1"], "clv_predicted": [900.0]}))
    _publish(lake, "campaigns", pd.DataFrame({
        "user_id": ["b1", "b2", "n1", "n2"], "campaign_id": ["c1"] * 4, "channel": ["sms"] * 4,
        "impressions": [10, 10, 10, 10], "clicks": [2, 1, 1, 0], "cost": [1.0] * 4, "conversions": [1, 0, 0, 0],
        "orders": [1, 0, 0, 0], "revenue": [100.0, 0.0, 0.0, 0.0]}))
    model = _model(FEATURES_WITH_CLV)
    section = _campaigns(settings, lake, functools.partial(user_segments_of, lake, model))
    by_segment = section.tables[1]
    assert NO_PURCHASES_NAME in by_segment
    assert "(none)" in by_segment  # b2 bought but has no CLV: not called a non-buyer
    assert model.names_[model.predict(np.array([[3.0, 12.0, 5000.0, 900.0]]))[0]] in by_segment
