"""Goal gaps, time-slot pricing, funnels, consumption levels and predicted attributes on the
e2e chain, through the typed client on both transports."""

from __future__ import annotations

import pytest

from cluster.core.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.e2e


def _names(err, field: str) -> bool:
    """HTTP errors carry the field; gRPC ones name it in the status message."""
    return err.field == field if err.field is not None else field in err.message


@pytest.fixture(scope="module")
def client(chain):
    from ray_apps.client import MarketingClient

    with MarketingClient.from_settings(chain["settings"], timeout_s=20.0) as c:
        yield c


def test_goal_gap_reads_the_campaign_from_the_lake_alike_on_both_transports(client, chain):
    from cluster.core.feature_io import load_latest
    from cluster.core.storage import open_lake

    body = {"campaign_id": "cmp001", "duration_days": 150, "targets": {"conversions": 40, "ctr": 0.05, "budget": 30}}
    grpc_answer, http_answer = client.goal_gap(body), client.goal_gap_http(body)
    assert grpc_answer == http_answer
    daily, _ = load_latest(open_lake(chain["settings"]), "campaign_daily")
    mine = daily[daily["campaign_id"] == "cmp001"]
    got = {g.metric: g for g in grpc_answer.goals}
    # Attained equals the table's own sums: nothing lost between the lake and the answer.
    assert got["conversions"].attained == mine["conversions"].sum()
    assert got["ctr"].attained == pytest.approx(mine["clicks"].sum() / mine["impressions"].sum())
    assert got["budget"].attained == pytest.approx(mine["cost"].sum())
    assert grpc_answer.days_elapsed + grpc_answer.days_remaining == 150
    for call in (client.goal_gap, client.goal_gap_http):
        with pytest.raises(NotFound):
            call({**body, "campaign_id": "no-such-campaign"})
        with pytest.raises(InvalidArgument) as err:
            call({**body, "targets": {"ctr": 2}})
        assert _names(err.value, "targets.ctr")


def test_pricing_forecast_and_discounts_agree_on_both_transports(client, chain):
    g, h = client.forecast_demand("食品"), client.forecast_demand_http("食品")
    assert g == h and len(g.slots) == 168 and g.model_version.startswith("demand/")
    assert sum(s.expected_orders for s in g.slots) > 0
    cheaper = client.forecast_demand("食品", 0.8)
    assert sum(s.expected_orders for s in cheaper.slots) > sum(s.expected_orders for s in g.slots)
    body = {"category": "食品", "budget": 500.0, "max_discount": 0.2}
    plan, plan_http = client.propose_discounts(body), client.propose_discounts_http(body)
    assert plan == plan_http and plan.solver_status == "Optimal"
    assert plan.discount_spend <= 500.0 + 1e-6 and plan.expected_margin >= plan.base_margin - 1e-6
    assert all(s.discount <= 0.2 + 1e-9 for s in plan.slots)
    assert all(s.discount == 0 for s in plan.slots if not s.offpeak)
    for call in (client.forecast_demand, client.forecast_demand_http):
        with pytest.raises(InvalidArgument) as err:
            call("no-such-category")
        assert _names(err.value, "category")
    for call in (client.propose_discounts, client.propose_discounts_http):
        with pytest.raises(InvalidArgument) as err:
            call({**body, "budget": -1})
        assert _names(err.value, "budget")


def test_funnels_agree_on_both_transports_and_with_the_lake_table(client, chain):
    from cluster.core.storage import open_lake
    from ray_apps.funnels.funnel import load_funnel_table

    table = load_funnel_table(open_lake(chain["settings"])).frame
    mine = table[table["funnel"] == "default"]
    for by in ("", "device", "channel", "segment"):
        g, h = client.get_funnel(by=by), client.get_funnel_http(by=by)
        assert g == h, by
        assert [s.users for s in g.overall.steps] == [int((mine["steps_reached"] >= k).sum()) for k in range(1, 5)]
        if by:
            assert sum(grp.users for grp in g.groups) == g.overall.users, by
    with pytest.raises(InvalidArgument) as err:
        client.get_funnel_http(by="city")
    assert err.value.field == "group_by"
    with pytest.raises(InvalidArgument) as err:
        client.get_funnel("nope")
    assert _names(err.value, "funnel")


def test_profiles_carry_consumption_levels_and_predictions_without_touching_declared_values(client, chain):
    from cluster.core.feature_io import load_latest
    from cluster.core.storage import open_lake

    lake = open_lake(chain["settings"])
    rfm, _ = load_latest(lake, "rfm", ["user_id", "consumption_level", "avg_monthly_spend"])
    features, _ = load_latest(lake, "attributes", ["user_id", "declared"])
    for row in rfm.sample(n=5, random_state=3).itertuples():
        p, h = client.get_profile(row.user_id, ["rfm", "behaviour"]), client.get_profile_http(row.user_id, ["rfm"])
        assert p.rfm.consumption_level == h.rfm.consumption_level == row.consumption_level
        assert p.rfm.avg_monthly_spend == pytest.approx(row.avg_monthly_spend)
        assert p.behaviour["consumption_level"] == row.consumption_level
    declared = features[features["declared"].fillna("") != ""]["user_id"].head(10)
    for uid in declared:
        p = client.get_profile(uid, ["attributes", "predicted"])
        assert p.attributes.gender in ("M", "F") and not p.predicted, uid
    undeclared = features[features["declared"].fillna("") == ""]["user_id"]
    predictions = [client.get_profile(u, ["predicted"]).predicted for u in undeclared.head(60)]
    stored = [p[0] for p in predictions if p]
    assert stored, "no undeclared user got a prediction"
    assert chain["predicted"]["stored"] >= len(stored)
    threshold = chain["settings"].attributes.min_probability
    assert all(p.name == "gender" and p.value in ("M", "F") and p.probability >= threshold
               and p.model_version.startswith("attributes/") for p in stored)
