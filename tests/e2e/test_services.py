"""The decision services on the embedded default, through the typed client on both transports."""

from __future__ import annotations

from datetime import datetime, timedelta

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.cli.demo_services import ARTICLE_BUDGET, ARTICLE_CHANNELS
from cluster.core.errors import FailedPrecondition, InvalidArgument, NotFound

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(chain):
    from ray_apps.client import MarketingClient

    with MarketingClient.from_settings(chain["settings"], timeout_s=20.0) as c:
        yield c


@pytest.fixture(scope="module")
def users(chain):
    """Users with a segment, with their consent flags (from the raw users the chain ingested)."""
    from cluster.core.storage import open_lake, open_profile_store
    from ray_apps.channels.service import consent_of

    settings = chain["settings"]
    store = open_profile_store(settings)
    rfm = open_lake(settings).read_parquet(chain["rfm"]["path"], columns=["user_id"])
    out = {}
    for uid in rfm["user_id"].sample(n=60, random_state=2):
        cells = store.read(uid, [f"a:opt_in_{c}" for c in settings.channels.names])
        out[uid] = consent_of(cells or {}, tuple(settings.channels.names))
    return out


@pytest.fixture(scope="module")
def ad(chain):
    from cluster.core.storage import open_lake

    lake = open_lake(chain["settings"])
    row = lake.read_parquet(chain["tables"]["ctr"]["path"], "split=test",
                            columns=["ad_id", "campaign_id", "channel", "ad_position", "device_type"]).iloc[0]
    return {"ad_id": str(row.ad_id), "campaign_id": str(row.campaign_id), "channel": str(row.channel),
            "ad_position": str(row.ad_position), "device_type": str(row.device_type)}


def test_ctr_scores_agree_on_both_transports_and_vary_with_the_user(client, chain, users, ad):
    uids = list(users)[:20]
    batch = [{**ad, "user_id": u} for u in uids] + [{**ad, "user_id": "never-seen-user"}]
    g, h = client.score_ctr(batch), client.score_ctr_http(batch)
    assert [s.index for s in g.scores] == list(range(len(batch)))
    assert [round(s.p_click, 9) for s in g.scores] == [round(s.p_click, 9) for s in h.scores]
    assert all(0.0 < s.p_click < 1.0 for s in g.scores)
    assert all(s.user_known for s in g.scores[:-1]) and not g.scores[-1].user_known
    assert len({round(s.p_click, 6) for s in g.scores[:-1]}) > 1  # the user's features matter
    assert g.model_version == chain["tuned"]["ctr"].ref


def test_recommendations_exclude_seen_and_requested_items(client, chain, users):
    from cluster.core.feature_io import load_interactions
    from cluster.core.storage import open_lake

    inter = load_interactions(open_lake(chain["settings"]))
    row_of = {u: i for i, u in enumerate(inter.user_ids)}
    uid = next(u for u in users if u in row_of and inter.matrix[row_of[u]].nnz >= 2)
    seen = {inter.item_ids[j] for j in inter.matrix[row_of[uid]].indices}
    first = client.recommend(uid, 10)
    assert 1 <= len(first.items) <= 10 and first.reason
    banned = first.items[0].item_id
    again = client.recommend_http(uid, 10, exclude=[banned])
    listed = {i.item_id for i in again.items}
    assert banned not in listed and not (listed & seen)
    scores = [i.score for i in first.items]
    assert scores == sorted(scores, reverse=True)
    unknown = client.recommend("never-seen-user", 5)
    assert unknown.reason.startswith("fallback:") and len(unknown.items) == 5
    assert first.model_version == chain["tuned"]["recs"].ref


def test_churn_risk_gives_a_falling_curve_and_agrees_on_both_transports(client, chain, users):
    answered = 0
    for uid in list(users)[:15]:
        try:
            g = client.churn_risk(uid, 10)
        except NotFound:
            continue
        h = client.churn_risk_http(uid, 10)
        assert round(g.churn_probability, 9) == round(h.churn_probability, 9) and g.status == h.status
        curve = [p.survival for p in g.survival]
        assert curve == sorted(curve, reverse=True) and 0 <= g.churn_probability <= 1 and g.relative_risk > 0
        assert g.survival[0].day == 0 and all(b.day - a.day <= 10 for a, b in zip(g.survival, g.survival[1:]))
        assert g.model_version == chain["tuned"]["churn"].ref and g.as_of
        answered += 1
    assert answered >= 10
    with pytest.raises(NotFound):
        client.churn_risk("never-seen-user")


def test_offers_are_idempotent_valid_for_seven_days_and_respect_consent(client, chain, users):
    issued = 0
    for uid, consent in list(users.items())[:30]:
        if not any(consent.values()):
            with pytest.raises(FailedPrecondition):
                client.generate_offer(uid)
            continue
        first = client.generate_offer(uid)
        again = client.generate_offer_http(uid)
        assert (again.offer_id, again.discount, again.channel) == (first.offer_id, first.discount, first.channel)
        assert first.newly_issued and not again.newly_issued
        assert consent[first.channel], (uid, consent, first.channel)
        start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (first.valid_from, first.valid_until))
        assert end - start == timedelta(days=7)
        assert 0 <= first.discount <= chain["settings"].offers.campaigns["default"].max_discount
        assert first.offer_type in {"retention", "winback", "second_purchase", "cross_sell", "loyalty_points"}
        issued += 1
    assert issued >= 10
    with pytest.raises(NotFound):
        client.generate_offer(next(iter(users)), "no-such-campaign")


def test_the_budget_example_returns_the_true_optimum_on_both_transports(client):
    for call in (client.optimize_budget, client.optimize_budget_http):
        plan = call(ARTICLE_CHANNELS, ARTICLE_BUDGET)
        assert {a.name: round(a.placements) for a in plan.allocations} == {
            "feed": 10000, "search": 6000, "short_video": 5000}
        assert plan.objective_value == pytest.approx(4_180_000)
        assert {b.name: round(b.shadow_price, 6) for b in plan.binding} == {
            "budget": 2.8, "max_placements[feed]": 20.0, "max_placements[search]": 136.0}
    roi = client.optimize_budget(ARTICLE_CHANNELS, ARTICLE_BUDGET, objective="roi_sum")
    assert roi.objective_value == pytest.approx(84_125)


def test_an_infeasible_budget_names_the_conflict_on_both_transports(client):
    for call in (client.optimize_budget, client.optimize_budget_http):
        with pytest.raises(FailedPrecondition) as err:
            call(ARTICLE_CHANNELS, 300_000)
        assert "budget" in str(err.value) and "min_placements[search]" in str(err.value)


def test_channel_choice_learns_from_reported_outcomes_and_never_picks_unconsented(client, chain, users):
    uid, consent = next((u, c) for u, c in users.items() if any(c.values()) and not all(c.values()))
    picks = {client.choose_channel(user_id=uid).channel for _ in range(25)}
    assert all(consent[p] for p in picks)
    seg = client.choose_channel(segment_id=0)
    before = {a.channel: a.trials for a in seg.arms}
    out = client.report_outcome("email", True, segment_id=0)
    assert out.trials == before["email"] + 1 and out.segment_name == seg.segment_name
    after = client.choose_channel_http(segment_id=0)
    assert {a.channel: a.trials for a in after.arms}["email"] == before["email"] + 1


@pytest.mark.parametrize("call, field", [
    (lambda c: c.score_ctr([{"user_id": "u1", "ad_id": ""}]), "candidates[0].ad_id"),
    (lambda c: c.score_ctr_http([{"user_id": "", "ad_id": "a"}]), "candidates[0].user_id"),
    (lambda c: c.score_ctr([]), "candidates"),
    (lambda c: c.recommend("u1", 101), "n"),
    (lambda c: c.recommend_http("u1", -1), "n"),
    (lambda c: c.churn_risk("u1", 91), "curve_step_days"),
    (lambda c: c.churn_risk_http("", 1), "user_id"),
    (lambda c: c.generate_offer("u1", "bad id!"), "campaign_id"),
    (lambda c: c.optimize_budget([{**ARTICLE_CHANNELS[0], "cost_per_placement": 0}], 1000), "channels[0].cost_per_placement"),
    (lambda c: c.optimize_budget_http(ARTICLE_CHANNELS, 1000, objective="clicks"), "objective"),
    (lambda c: c.choose_channel(), "target"),
    (lambda c: c.choose_channel_http(segment_id=999), "segment_id"),
    (lambda c: c.report_outcome("fax", True, segment_id=0), "channel"),
])
def test_bad_requests_are_invalid_arguments_naming_the_field(client, call, field):
    with pytest.raises(InvalidArgument) as err:
        call(client)
    assert field in str(err.value)


EXPERIMENTS = {
    "AnalyzeConversions": {"control": {"name": "control", "conversions": 200, "trials": 10_000},
                           "variants": [{"name": "red", "conversions": 260, "trials": 10_000}]},
    "CompareMeans": {"control": [3.0, 5.0, 4.0, 6.0, 5.5], "variant": [6.0, 7.5, 6.5, 8.0, 7.0],
                     "control_pre": [3.1, 4.8, 4.2, 5.9, 5.0], "variant_pre": [3.0, 5.1, 4.1, 6.2, 5.2]},
    "SequentialTest": {"looks": [{"control_conversions": 50 * k, "control_trials": 1000 * k,
                                  "variant_conversions": 65 * k, "variant_trials": 1000 * k} for k in range(1, 30)]},
    "SampleSize": {"baseline_rate": 0.05, "variant_rate": 0.06, "control_trials": 3000},
    "SegmentSignificance": {"groups": [{"name": "a", "values": [1, 2, 3, 2]}, {"name": "b", "values": [5, 6, 7, 6]}]},
}


@pytest.mark.parametrize("method", sorted(EXPERIMENTS))
def test_experiment_service_answers_alike_on_both_transports(client, method):
    from google.protobuf.json_format import MessageToDict

    by_grpc = client.experiment(method, EXPERIMENTS[method])
    by_http = client.experiment_http(method, EXPERIMENTS[method])
    assert MessageToDict(by_grpc) == MessageToDict(by_http)
    assert by_grpc.ByteSize() > 0


@pytest.mark.parametrize("transport", ["experiment", "experiment_http"])
def test_experiment_errors_name_the_field(client, transport):
    bad = {"control": {"name": "control", "conversions": 20, "trials": 10},
           "variants": [{"name": "red", "conversions": 1, "trials": 10}]}
    with pytest.raises(InvalidArgument) as err:
        getattr(client, transport)("AnalyzeConversions", bad)
    assert "control" in str(err.value)


# -- fuzz: random requests never get UNKNOWN or INTERNAL ----------------------------------------
_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
       grpc.StatusCode.FAILED_PRECONDITION}
text = st.text(max_size=80)
finite = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _status(fn, request):
    try:
        fn(request, timeout=20)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


@pytest.fixture(scope="module")
def stubs(chain):
    from protos.marketing.v1 import budget_pb2_grpc, channel_pb2_grpc, ctr_pb2_grpc, offer_pb2_grpc, recommend_pb2_grpc

    sv = chain["settings"].serve
    with grpc.insecure_channel(f"{sv.grpc_client_host}:{sv.grpc_port}") as ch:
        yield {"ctr": ctr_pb2_grpc.CtrServiceStub(ch), "recs": recommend_pb2_grpc.RecommendServiceStub(ch),
               "offer": offer_pb2_grpc.OfferServiceStub(ch), "budget": budget_pb2_grpc.BudgetServiceStub(ch),
               "channel": channel_pb2_grpc.ChannelServiceStub(ch)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_requests_get_a_defined_status(stubs, data):
    from protos.marketing.v1 import budget_pb2, channel_pb2, ctr_pb2, offer_pb2, recommend_pb2

    cand = st.builds(ctr_pb2.AdCandidate, user_id=text, ad_id=text, campaign_id=text, channel=text,
                     ad_position=text, device_type=text)
    chan = st.builds(budget_pb2.BudgetChannel, name=text, cost_per_placement=finite, roi=finite,
                     max_placements=finite, min_placements=finite)
    cases = [
        (stubs["ctr"].ScoreBatch, st.builds(ctr_pb2.ScoreBatchRequest, candidates=st.lists(cand, max_size=4))),
        (stubs["recs"].Recommend, st.builds(recommend_pb2.RecommendRequest, user_id=text,
                                            n=st.integers(-2**31, 2**31 - 1), exclude_item_ids=st.lists(text, max_size=3))),
        (stubs["offer"].GenerateOffer, st.builds(offer_pb2.GenerateOfferRequest, user_id=text, campaign_id=text)),
        (stubs["budget"].OptimizeBudget, st.builds(budget_pb2.OptimizeBudgetRequest, channels=st.lists(chan, max_size=4),
                                                   total_budget=finite, objective=st.sampled_from(["", "revenue", "x"]),
                                                   integer_placements=st.booleans())),
        (stubs["channel"].ChooseChannel, st.one_of(
            st.builds(channel_pb2.ChooseChannelRequest, user_id=text),
            st.builds(channel_pb2.ChooseChannelRequest, segment_id=st.integers(-2**31, 2**31 - 1)))),
    ]
    fn, strategy = data.draw(st.sampled_from(cases))
    request = data.draw(strategy)
    assert _status(fn, request) in _OK, request


def test_the_standard_grpc_health_service_answers_per_service(chain):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    sv = chain["settings"].serve
    with grpc.insecure_channel(f"{sv.grpc_client_host}:{sv.grpc_port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "marketing.v1.CtrService", "marketing.v1.BudgetService", "marketing.v1.ChurnService"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == serving
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_http_takes_any_contract_id_in_paths_and_exclusions(client, chain, users):
    """User ids with a slash reach their route, and an excluded item id holding a comma is one
    item (the contract allows both); HTTP answers like gRPC."""
    import httpx

    sv = chain["settings"].serve
    base = f"http://{sv.grpc_client_host}:{sv.http_port}"
    for suffix in ("segment", "profile", "recommendations", "churn"):
        r = httpx.get(f"{base}/v1/users/no%2Fsuch%2Fuser/{suffix}", timeout=20)
        if suffix == "recommendations":  # an unknown user gets the popularity fallback
            assert r.status_code == 200 and r.json()["reason"].startswith("fallback:"), r.text
        else:  # the route matched: the platform's NOT_FOUND body, not the router's bare 404
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    uid = next(iter(users))
    first = client.recommend(uid, 5)
    banned = [first.items[0].item_id, f"{first.items[1].item_id},{first.items[2].item_id}"]
    g, h = client.recommend(uid, 5, exclude=banned), client.recommend_http(uid, 5, exclude=banned)
    assert [i.item_id for i in g.items] == [i.item_id for i in h.items]
    listed = {i.item_id for i in h.items}
    assert first.items[0].item_id not in listed
    # "b,c" is one (unknown) id: b and c themselves stay listable
    assert first.items[1].item_id in listed and first.items[2].item_id in listed
