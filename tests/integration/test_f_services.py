"""The decision services on the cluster: CTR, recommendations, churn, offers, budget and
channel choice answer over gRPC and HTTP from the client, with the registry's current
versions, HBase behind them."""

from __future__ import annotations

import pytest

from cluster.cli.demo_services import ARTICLE_BUDGET, ARTICLE_CHANNELS

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def served(cluster_settings, pipeline):
    from cluster.core.storage import decode_flag, open_lake, open_profile_store
    from ray_apps.client import MarketingClient
    from ray_apps.registry import open_registry

    lake = open_lake(cluster_settings)
    current = {name: open_registry(cluster_settings, lake).get(name).ref for name in ("ctr", "recs", "churn")}
    store = open_profile_store(cluster_settings)
    consent_cols = [f"a:opt_in_{c}" for c in cluster_settings.channels.names]
    users, consenting, silent = [], [], []
    for u in lake.read_parquet(pipeline["rfm"]["path"], columns=["user_id"])["user_id"].sample(n=80, random_state=8):
        cells = store.read(u, ["f:rfm_monetary", *consent_cols]) or {}
        if "f:rfm_monetary" not in cells:
            continue  # forgotten by an earlier test
        if len(users) < 10:
            users.append(u)
        if any(decode_flag(cells.get(c)) for c in consent_cols):
            if len(consenting) < 6:
                consenting.append(u)
        elif len(silent) < 2:
            silent.append(u)
    with MarketingClient.from_settings(cluster_settings, timeout_s=30.0) as client:
        yield {"client": client, "current": current, "users": users, "consenting": consenting, "silent": silent,
               "wait": cluster_settings.serve.model_refresh_s}


def test_model_services_answer_with_the_current_versions_on_both_transports(served):
    from cluster.cli.demo_services import _served

    c, users = served["client"], served["users"]
    ad = {"ad_id": "ad-1", "channel": "feed", "ad_position": "1"}
    g = _served(lambda: c.score_ctr([{**ad, "user_id": u} for u in users]), served["wait"] * 3)
    h = c.score_ctr_http([{**ad, "user_id": u} for u in users])
    assert [round(s.p_click, 9) for s in g.scores] == [round(s.p_click, 9) for s in h.scores]
    assert g.model_version == served["current"]["ctr"] and all(s.user_known for s in g.scores)

    r = _served(lambda: c.recommend(users[0], 5), served["wait"] * 3)
    assert [i.item_id for i in r.items] == [i.item_id for i in c.recommend_http(users[0], 5).items]
    assert r.model_version == served["current"]["recs"] and len(r.items) == 5

    from cluster.core.errors import NotFound

    answered = 0
    for u in users:
        try:
            k = _served(lambda u=u: c.churn_risk(u), served["wait"] * 3)
        except NotFound:
            continue
        assert k.model_version == served["current"]["churn"]
        assert round(k.churn_probability, 9) == round(c.churn_risk_http(u).churn_probability, 9)
        answered += 1
    assert answered >= 5


def test_offers_budget_and_channels_answer_on_both_transports(served):
    from cluster.core.errors import FailedPrecondition

    c = served["client"]
    plan = c.optimize_budget_http(ARTICLE_CHANNELS, ARTICLE_BUDGET)
    assert {a.name: round(a.placements) for a in plan.allocations} == {"feed": 10000, "search": 6000,
                                                                        "short_video": 5000}
    assert c.optimize_budget(ARTICLE_CHANNELS, ARTICLE_BUDGET).objective_value == plan.objective_value
    assert len(served["consenting"]) >= 4
    offered = 0
    for u in served["consenting"]:
        first = c.generate_offer(u)
        assert c.generate_offer_http(u).offer_id == first.offer_id
        choice = c.choose_channel(user_id=u)
        before = next(a.trials for a in choice.arms if a.channel == choice.channel)
        after = c.report_outcome(choice.channel, False, user_id=u)
        # Counters in HBase: the segment's and the user's own both went up by one.
        assert after.trials == before + 2
        offered += 1
    assert offered == len(served["consenting"])
    for u in served["silent"]:  # consented to no channel: never an offer
        with pytest.raises(FailedPrecondition):
            c.generate_offer_http(u)
