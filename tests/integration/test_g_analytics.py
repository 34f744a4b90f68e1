"""The analytics of issue 9 on the cluster: funnels, predicted attributes, consumption levels,
demand pricing and goal gaps, built by the cluster demo (Spark standalone, HDFS, HBase) and
served by the deployed application over gRPC and HTTP."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client(cluster_settings, pipeline):
    from ray_apps.client import MarketingClient

    with MarketingClient.from_settings(cluster_settings, timeout_s=30.0) as c:
        yield c


def test_the_cluster_report_has_every_plot(pipeline):
    from ray_apps.evaluation.report import PLOT_IDS

    assert f"report with {len(PLOT_IDS)} plots" in pipeline["stdout"], pipeline["stdout"][-3000:]


def test_funnel_counts_from_hdfs_agree_on_both_transports(cluster_settings, pipeline, client):
    from cluster.core.storage import Zone, open_lake

    g, h = client.get_funnel("default", by="device"), client.get_funnel_http("default", by="device")
    assert g == h and g.overall.users > 0
    lake = open_lake(cluster_settings)
    meta = lake.read_json(Zone.FEATURES, "funnels", "latest.json")
    table = lake.read_parquet(meta["path"])
    mine = table[table["funnel"] == "default"]
    assert [s.users for s in g.overall.steps] == [int((mine["steps_reached"] >= k).sum())
                                                  for k in range(1, len(g.actions) + 1)]
    assert sum(grp.users for grp in g.groups) == g.overall.users


def test_predicted_attributes_and_consumption_levels_reach_hbase_profiles(cluster_settings, pipeline, client):
    from cluster.core.storage import Zone, open_lake

    lake = open_lake(cluster_settings)
    rfm = lake.read_parquet(lake.read_json(Zone.FEATURES, "rfm", "latest.json")["path"])
    levels = set(cluster_settings.tags.consumption_bands)
    assert set(rfm["consumption_level"]) <= levels and rfm["avg_monthly_spend"].ge(0).all()
    features = lake.read_parquet(lake.read_json(Zone.FEATURES, "attributes", "latest.json")["path"],
                                 columns=["user_id", "declared"])
    undeclared = features[features["declared"].fillna("") == ""]["user_id"].head(15).tolist()
    declared = features[features["declared"].fillna("") != ""]["user_id"].head(5).tolist()
    seen_prediction = False
    for uid in undeclared + declared:
        g, h = client.get_profile(uid), client.get_profile_http(uid)
        assert g == h
        predicted = {p.name: p for p in g.predicted}
        if uid in declared:
            assert "gender" not in predicted and g.attributes.gender in ("M", "F")
        elif "gender" in predicted:
            seen_prediction = True
            assert predicted["gender"].value in ("M", "F") and predicted["gender"].probability >= 0.5
    assert seen_prediction


def test_pricing_and_goal_gap_answer_from_the_cluster_registry_and_lake(client):
    g = client.forecast_demand("食品")
    assert g == client.forecast_demand_http("食品") and len(g.slots) == 168
    plan = client.propose_discounts({"category": "食品", "budget": 100.0})
    assert plan.solver_status == "Optimal" and plan.discount_spend <= 100.0 + 1e-6
    body = {"campaign_id": "cmp001", "duration_days": 120, "targets": {"conversions": 5, "budget": 20}}
    gap = client.goal_gap(body)
    assert gap == client.goal_gap_http(body) and gap.days_elapsed + gap.days_remaining == 120
