"""Training/serving parity of churn, recommendations, predicted attributes and the demand forecast.

Each test takes rows of a family's training table (the run the served model was trained on, read
back from the registry's ``feature_run_id``), rebuilds the request the API would receive from the
table's own values (a value the proto cannot carry fails here), answers it with the serving code
in-process, and compares with the model's batch prediction on the same rows. A second test per
family asks the running API the same on both transports and expects the in-process answer.

Nothing here assumes the generator's shapes: users, items, categories and values all come from the
tables, the registry and the profile store of the environment (``env``: a chain fixture's dict; only
its ``settings`` are used).
"""

from __future__ import annotations

import copy
import math
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e

#: Equality of a served float with the batch model's figure.
TOL = 1e-9
#: Users the API checks ask about per family (each on both transports).
API_USERS = 8


@pytest.fixture(params=["chain", "varied_chain"])
def env(request):
    return request.getfixturevalue(request.param)


# -- helpers -----------------------------------------------------------------------------------

_CACHE: dict[tuple[int, str], Any] = {}


def _cached(env: dict, key: str, build):
    """One object per environment and key (tables and models are read once per session)."""
    k = (id(env["settings"]), key)
    if k not in _CACHE:
        _CACHE[k] = build()
    return _CACHE[k]


def _lake(env):
    from cluster.core.storage import open_lake

    return _cached(env, "lake", lambda: open_lake(env["settings"]))


def _store(env):
    from cluster.core.storage import open_profile_store

    return _cached(env, "store", lambda: open_profile_store(env["settings"]))


def _load(env, family: str):
    """The served (current) version of a family: ``(model, ModelVersion)``."""
    from ray_apps.registry import open_registry

    return _cached(env, f"model:{family}", lambda: open_registry(env["settings"], _lake(env)).load(family))


def _close(a: float, b: float, tol: float = TOL) -> bool:
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def _sample(frame: pd.DataFrame, strata: list[str], per_value: int, extra: int, seed: int = 5) -> pd.DataFrame:
    """Rows covering every value of each stratum column (nulls included), plus a random share."""
    picked = []
    for col in strata:
        key = frame[col].astype(object).where(frame[col].notna(), "<null>")
        picked += [g.head(per_value) for _, g in frame.groupby(key, sort=True)]
    picked.append(frame.sample(n=min(extra, len(frame)), random_state=seed))
    out = pd.concat(picked)
    return out[~out.index.duplicated()]


@contextmanager
def _api(env) -> Iterator[Any]:
    """The typed client against the environment's running API (skipped when nothing serves there)."""
    from ray_apps.client import MarketingClient

    if "demo" in env:  # the varied chain: `pmkt demo` shut its API down (same serving code as the chain's)
        pytest.skip("the varied chain's demo has stopped its API; the chain's API runs the same code")
    sv = env["settings"].serve
    socket.create_connection((sv.grpc_client_host, sv.grpc_port), timeout=10).close()
    with MarketingClient.from_settings(env["settings"], timeout_s=30.0) as client:
        yield client


def _floats_equal(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between two ``MessageToDict`` trees; floats compared to :data:`TOL`."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only on one side" for k in set(a) ^ set(b)]
        for k in set(a) & set(b):
            out += _floats_equal(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} elements"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _floats_equal(x, y, f"{path}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        return [] if _close(a, b) else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _same_message(a, b) -> list[str]:
    from google.protobuf.json_format import MessageToDict

    return _floats_equal(MessageToDict(a, preserving_proto_field_name=True),
                         MessageToDict(b, preserving_proto_field_name=True))


# -- churn -------------------------------------------------------------------------------------


def _churn(env):
    """The served churn model, its training table, and the scorer the API builds."""
    from cluster.core.feature_io import load_run
    from ray_apps.churn.service import ChurnScorer

    def build():
        model, mv = _load(env, "churn")
        frame, meta = load_run(_lake(env), "churn", mv.feature_run_id)
        scorer = ChurnScorer(_lake(env), model, mv, max_user_id_length=env["settings"].serve.max_user_id_length)
        return model, mv, frame.reset_index(drop=True), meta, scorer

    return _cached(env, "churn", build)


def _churn_differences(served, batch: dict, step: int) -> list[str]:
    """Where a ChurnRisk message differs from a ``predict_users`` element."""
    probability = 1.0 if batch["status"] == "churned" else 1.0 - batch["survival"][-1][1]
    checks = {
        "status": served.status == batch["status"],
        "tenure_days": served.tenure_days == batch["tenure_days"],
        "horizon_days": served.horizon_days == batch["horizon_days"],
        "relative_risk": _close(served.relative_risk, batch["risk"]),
        "churn_probability": _close(served.churn_probability, min(max(probability, 0.0), 1.0)),
        "survival.day": [p.day for p in served.survival] == [d for d, _ in batch["survival"]],
        "survival": all(_close(p.survival, s) for p, (_, s) in zip(served.survival, batch["survival"])),
    }
    for name in ("median_days", "peak_day", "contact_day"):
        value = batch[name]
        checks[name] = (getattr(served, name) == value) if value is not None else not served.HasField(name)
    return [f"{name} (step {step}): served {getattr(served, name.split('.')[0], None)!r}"
            for name, ok in checks.items() if not ok]


def test_churn_served_outlook_equals_the_batch_prediction_of_its_training_row(env):
    from protos.marketing.v1 import churn_pb2
    from ray_apps.churn.service import DEFAULT_STEP_DAYS

    model, mv, frame, meta, scorer = _churn(env)
    # The rows served are the rows the model was trained on, as of the same day and window.
    assert scorer.as_of == meta["as_of"] == mv.metrics["as_of"]
    assert int(meta["inactivity_days"]) == model.offset_days
    strata = frame.assign(_signup_known=frame["account_age_days"].notna())
    rows = _sample(strata, ["churned", "gender", "age_band", "has_paid_order", "opt_in_sms", "_signup_known"],
                   per_value=8, extra=100)
    assert rows["churned"].nunique() == 2, "the sample must hold churned and censored users"
    risk = model.risk(frame)  # the hazard ratio of every training row's covariates
    for step in (DEFAULT_STEP_DAYS, 1):
        batch = model.predict_users(frame, curve_step_days=step)  # every training row at once
        for i, row in (rows if step == DEFAULT_STEP_DAYS else rows.head(30)).iterrows():
            # The request the API receives: the table's own user id (a non-string fails here).
            request = churn_pb2.GetChurnRiskRequest(user_id=row["user_id"],
                                                    curve_step_days=0 if step == DEFAULT_STEP_DAYS else step)
            served = scorer.risk(request.user_id, request.curve_step_days)
            assert served.user_id == row["user_id"] and served.model_version == mv.ref
            assert served.as_of == meta["as_of"]
            diff = _churn_differences(served, batch[i], step)
            assert not diff, (row["user_id"], diff)
            assert _close(served.relative_risk, risk[i]), row["user_id"]


def test_churn_api_answers_what_the_serving_code_answers(env):
    _, _, frame, _, scorer = _churn(env)
    users = _sample(frame, ["churned"], per_value=API_USERS // 2, extra=0)["user_id"]
    with _api(env) as client:
        for uid in users:
            local = scorer.risk(uid, 5)
            for call in (client.churn_risk, client.churn_risk_http):
                diff = _same_message(call(uid, 5), local)
                assert not diff, (call.__name__, uid, diff)


# -- recommendations ---------------------------------------------------------------------------


def _recs(env):
    from cluster.core.feature_io import load_interactions, load_run
    from ray_apps.recs.service import Recommender

    def build():
        model, mv = _load(env, "recs")
        inter = load_interactions(_lake(env), mv.feature_run_id)
        tags, _ = load_run(_lake(env), "tags", mv.feature_run_id, ["user_id", "top_categories"])
        sv = env["settings"].serve
        service = Recommender(_store(env), model, mv, max_exclude=sv.max_batch,
                              max_user_id_length=sv.max_user_id_length)
        return model, mv, inter, tags, service

    return _cached(env, "recs", build)


def _batch_lists(model, users: list[str], n: int, exclude: dict[str, list[str]]) -> dict[str, list[tuple[str, float]]]:
    """The model's batch recommendations (the functions the training scores its lists with):
    ``recommend_top_n`` for users at or above ``min_interactions``, ``category_fallback_top_n`` below
    it; a user outside the training matrix gets the fallback of their training-time categories."""
    import scipy.sparse as sp

    from ray_apps.recs.model import category_fallback_top_n, history_category_shares, recommend_top_n

    row_of = {u: i for i, u in enumerate(model.user_ids)}
    col_of = {t: j for j, t in enumerate(model.item_ids)}
    cells = [(row_of[u], col_of[t]) for u in users if u in row_of for t in exclude.get(u, ()) if t in col_of]
    E = sp.csr_matrix((np.ones(len(cells)), ([r for r, _ in cells], [c for _, c in cells])),
                      shape=model.history.shape)
    counts = np.diff(model.history.indptr)
    scored = [row_of[u] for u in users if u in row_of and counts[row_of[u]] >= model.min_interactions]
    short = [row_of[u] for u in users if u in row_of and counts[row_of[u]] < model.min_interactions]
    out: dict[str, list[tuple[str, float]]] = {}
    if scored:
        lists = recommend_top_n(model.estimator, model.history, n, users=scored, exclude=E)
        scores = model.estimator.scores(model.history[scored])
        for k, (r, items) in enumerate(zip(scored, lists)):
            out[model.user_ids[r]] = [(model.item_ids[j], float(scores[k, j])) for j in items if j >= 0]
    if short:
        lists = category_fallback_top_n(model.history, model.item_category_index, len(model.categories),
                                        model.popularity, n, users=short, exclude=E)
        shares = history_category_shares(model.history[short], model.item_category_index, len(model.categories))
        for k, (r, items) in enumerate(zip(short, lists)):
            shown = np.append(shares[k], 0.0)[model.item_category_index] * model.popularity
            out[model.user_ids[r]] = [(model.item_ids[j], float(shown[j])) for j in items if j >= 0]
    for u in users:
        if u not in row_of:  # no history: the training-time categories (tags table), else popularity
            out[u] = model.recommend(u, n, exclude=exclude.get(u, ())).items
    return out


def _recs_users(model, inter, tags) -> list[str]:
    """Users of every kind the rules tell apart, from the tables: the most and least active users of
    the matrix, those below the cold-start threshold, tags-only users, and a random share."""
    counts = np.diff(model.history.indptr)
    order = np.argsort(counts, kind="stable")
    users = [model.user_ids[i] for i in (*order[:20], *order[-20:])]
    users += [model.user_ids[i] for i in np.flatnonzero(counts < model.min_interactions)[:40]]
    outside = sorted(set(tags["user_id"]) - set(model.user_ids))
    users += outside[:40]
    rng = np.random.default_rng(7)
    users += [model.user_ids[i] for i in rng.choice(len(model.user_ids), size=min(200, len(model.user_ids)),
                                                   replace=False)]
    users.append("never-seen-user")  # in no table: the popularity fallback
    return list(dict.fromkeys(users))


def test_recommendations_served_list_equals_the_batch_list_with_the_same_exclusions(env):
    from ray_apps.recs.service import Recommender
    from ray_apps.recs.train import MIN_INTERACTIONS_CHOICES

    model, mv, inter, tags, service = _recs(env)
    assert "never-seen-user" not in set(inter.user_ids) | set(tags["user_id"])
    # The model's rows are the training matrix's rows (the smoke test may keep a sample of users).
    inter_row = {u: i for i, u in enumerate(inter.user_ids)}
    assert set(model.item_ids) == set(inter.item_ids)
    for r in np.random.default_rng(1).choice(len(model.user_ids), size=min(100, len(model.user_ids)), replace=False):
        u = model.user_ids[r]
        got = dict(zip((model.item_ids[j] for j in model.history[r].indices), model.history[r].data))
        want = dict(zip((inter.item_ids[j] for j in inter.matrix[inter_row[u]].indices),
                        inter.matrix[inter_row[u]].data))
        assert got == want, u
    # The model's training-time categories are the tags table's rows.
    for uid, cats in zip(tags["user_id"], tags["top_categories"]):
        if cats is not None and len(cats):
            assert model.user_categories[uid] == [(str(c["name"]), float(c["score"])) for c in cats], uid

    # The tuned cold-start threshold, and the largest the search may pick (the fallback for short
    # histories must match the batch lists whichever threshold the validation chooses).
    for threshold in sorted({model.min_interactions, max(MIN_INTERACTIONS_CHOICES)}):
        variant = copy.copy(model)
        variant.min_interactions = threshold
        _check_recs_parity(Recommender(_store(env), variant, mv, max_exclude=service.max_exclude,
                                       max_user_id_length=service.max_user_id_length),
                           _recs_users(variant, inter, tags), mv)


def _check_recs_parity(service, users: list[str], mv) -> None:
    from protos.marketing.v1 import recommend_pb2
    from ray_apps.recs.service import DEFAULT_N

    model = service.model
    first = {}
    for uid in users:
        request = recommend_pb2.RecommendRequest(user_id=uid, n=0)  # the API's default length
        first[uid] = service.recommend(request.user_id, request.n, list(request.exclude_item_ids))
    batch = _batch_lists(model, users, DEFAULT_N, {})
    # The same users again, excluding the first, third and last item of their list and one item they saw.
    row_of = {u: i for i, u in enumerate(model.user_ids)}
    exclude = {}
    for uid, resp in first.items():
        listed = [i.item_id for i in resp.items]
        seen = [model.item_ids[j] for j in model.history[row_of[uid]].indices[:1]] if uid in row_of else []
        exclude[uid] = list(dict.fromkeys([*listed[:1], *listed[2:3], *listed[-1:], *seen]))
    again = {}
    for uid in users:
        request = recommend_pb2.RecommendRequest(user_id=uid, n=0, exclude_item_ids=exclude[uid])
        again[uid] = service.recommend(request.user_id, request.n, list(request.exclude_item_ids))
    batch_excluded = _batch_lists(model, users, DEFAULT_N, exclude)

    reasons = []
    for answers, lists in ((first, batch), (again, batch_excluded)):
        for uid in users:
            served = [(i.item_id, i.score) for i in answers[uid].items]
            want = lists[uid]
            assert [t for t, _ in served] == [t for t, _ in want], (uid, model.min_interactions, answers[uid].reason)
            assert all(_close(a, b) for (_, a), (_, b) in zip(served, want)), uid
            assert answers[uid].model_version == mv.ref
            reasons.append(answers[uid].reason)
    for uid in users:  # the exclusions took effect
        assert not set(exclude[uid]) & {i.item_id for i in again[uid].items}, uid
    # Both rules were exercised when the sample has users on both sides of the threshold.
    short = {u for u in users if model.interactions_of(u) < model.min_interactions}
    assert ("model" in reasons) == (len(short) < len(users))
    assert all(first[u].reason.startswith("fallback:") for u in short)


def _unusual(item_id: str) -> int:
    """How many characters of an id are not letters or digits (the ones a transport may mangle)."""
    return sum(not ch.isalnum() for ch in item_id) + (item_id != item_id.strip())


def test_recommendations_api_answers_what_the_serving_code_answers(env):
    from ray_apps.recs.service import MAX_N

    model, _, _, _, service = _recs(env)
    counts = np.diff(model.history.indptr)
    rows = np.argsort(-counts, kind="stable")[:API_USERS]
    cap = min(env["settings"].serve.max_batch, MAX_N // 2)
    with _api(env) as client:
        for r in rows:
            uid = model.user_ids[r]
            full = [i.item_id for i in service.recommend(uid, MAX_N).items]
            # Exclude the listed ids a transport is likeliest to mangle first, then every other one.
            exclude = sorted(full, key=lambda t: (-_unusual(t), full.index(t)))[:cap // 2]
            exclude = list(dict.fromkeys([*exclude, *full[::2]]))[:cap]
            local = service.recommend(uid, 20, exclude)
            for call in (client.recommend, client.recommend_http):
                diff = _same_message(call(uid, 20, exclude), local)
                assert not diff, (call.__name__, uid, diff)


# -- predicted attributes ----------------------------------------------------------------------


def _attributes(env):
    from cluster.core.feature_io import load_run
    from cluster.core.storage import Zone
    from cluster.core.tombstones import Tombstones
    from ray_apps.profiles.service import ProfileLookup

    def build():
        lake = _lake(env)
        model, mv = _load(env, "attributes")
        target = str(mv.params["target"])
        run = lake.read_json(Zone.REPORTS, "attributes", f"{target}-latest.json")  # the last prediction run
        frame, meta = load_run(lake, "attributes", run["feature_run_id"])
        lookup = ProfileLookup(_store(env), None, env["settings"].serve.max_user_id_length)
        return model, mv, target, run, frame.reset_index(drop=True), lookup, Tombstones(lake).all()

    return _cached(env, "attributes", build)


def test_predicted_attribute_served_equals_stored_equals_the_model_on_the_training_row(env):
    from cluster.core.errors import NotFound
    from protos.marketing.v1 import profile_pb2
    from ray_apps.attributes.cells import decode_prediction, predicted_cell

    model, mv, target, run, frame, lookup, forgotten = _attributes(env)
    settings = env["settings"]
    assert run["model_version"] == mv.ref, "the stored predictions come from the served model"
    min_p = settings.attributes.min_probability
    undeclared = frame[frame["declared"].isna() & ~frame["user_id"].isin(forgotten)].reset_index(drop=True)
    values, probabilities = model.predict(undeclared)  # the batch prediction on the training rows
    declared = frame[frame["declared"].notna() & ~frame["user_id"].isin(forgotten)]
    counts = {"live": 0, "abstained": 0, "declared_in_profile": 0}

    def served(uid: str) -> list:
        request = profile_pb2.GetProfileRequest(user_id=uid)  # the table's id as the API carries it
        request.field_mask.paths.append("predicted")
        try:
            profile = lookup.get(request.user_id, list(request.field_mask.paths))
        except NotFound:  # no profile at all (no cell of any build): nothing can be shown
            return []
        return [p for p in profile.predicted if p.name == target]

    for uid, value, p in zip(undeclared["user_id"], values, probabilities):
        cells = _store(env).read(uid, [f"a:{target}", predicted_cell(target)]) or {}
        stored = decode_prediction(cells.get(predicted_cell(target)))
        answer = served(uid)
        if cells.get(f"a:{target}", b"").decode("utf-8").strip():
            counts["declared_in_profile"] += 1  # declared since the table was built: never shown
            assert answer == [], uid
        elif p >= min_p:
            counts["live"] += 1
            assert stored is not None, (uid, value, p)
            # The cell keeps the probability to 6 places (byte-stable re-runs).
            assert (stored["value"], stored["probability"], stored["model_version"]) == \
                (str(value), round(float(p), 6), mv.ref), uid
            assert [(a.value, a.probability, a.model_version) for a in answer] == \
                [(stored["value"], stored["probability"], stored["model_version"])], uid
        else:
            counts["abstained"] += 1
            assert stored is None and answer == [], (uid, p)
    for uid in declared["user_id"].head(300):
        assert served(uid) == [], uid  # a declared value is never predicted over
    assert counts["live"] == run["stored"] > 0, counts


def test_predicted_attribute_api_answers_what_the_profile_store_holds(env):
    from ray_apps.attributes.cells import decode_prediction, predicted_cell

    _, _, target, _, frame, lookup, forgotten = _attributes(env)
    live = [u for u in frame.loc[frame["declared"].isna() & ~frame["user_id"].isin(forgotten), "user_id"]
            if decode_prediction((_store(env).read(u, [predicted_cell(target)]) or {}).get(predicted_cell(target)))]
    users = live[:API_USERS] + list(frame.loc[frame["declared"].notna(), "user_id"][:2])
    assert live
    with _api(env) as client:
        for uid in users:
            local = lookup.get(uid, ["predicted"])
            for call in (client.get_profile, client.get_profile_http):
                diff = _same_message(call(uid, ["predicted"]), local)
                assert not diff, (call.__name__, uid, diff)


# -- demand forecast ---------------------------------------------------------------------------


def _demand(env):
    from cluster.core.feature_io import load_run
    from ray_apps.pricing.service import PricingAdvisor

    def build():
        model, mv = _load(env, "demand")
        frame, meta = load_run(_lake(env), "demand", mv.feature_run_id)
        frame = frame.assign(date=pd.to_datetime(frame["date"]).dt.date)
        return model, mv, frame, meta, PricingAdvisor(model, mv, env["settings"].pricing)

    return _cached(env, "demand", build)


def _ratios(frame: pd.DataFrame, category: str) -> list[float]:
    """List price (0 = the API's default) and the lowest and a middle price level the category was sold at."""
    seen = frame.loc[(frame["category"] == category) & frame["day_price_index"].notna(), "day_price_index"]
    seen = seen[(seen > 0) & (seen <= 1.5)]
    return [0.0, *([float(seen.min()), float(seen.median())] if len(seen) else [])]


def test_demand_forecast_slots_equal_the_model_on_rows_shaped_like_the_demand_table(env):
    from protos.marketing.v1 import pricing_pb2

    model, mv, frame, meta, advisor = _demand(env)
    # Every category the table has is one the API accepts, and only those.
    assert sorted(frame["category"].astype(str).unique()) == model.categories_
    last = max(frame["date"])
    assert str(last) == str(meta["last_date"]) == mv.params["last_date"]
    weekday_of = dict(zip(frame["date"], frame["weekday"]))  # the table's weekday convention
    week = [last + timedelta(days=k) for k in range(1, 8)]
    for category in model.categories_:
        # The training rows: the model's fitted values, from the table's columns as they are.
        rows = frame[frame["category"] == category]
        fitted = model.predict(rows)
        assert np.all(np.isfinite(fitted) & (fitted > 0)), category
        for ratio in _ratios(frame, category):
            request = pricing_pb2.ForecastDemandRequest(category=category, price_ratio=ratio)
            served = advisor.forecast(request)
            assert served.model_version == mv.ref and served.category == category
            assert len(served.slots) == 168
            assert _close(served.elasticity, mv.metrics["elasticity"][category])
            assert _close(served.order_value, mv.metrics["order_value"][category])
            # The coming week as demand-table rows (the day's price level = the requested ratio).
            future = pd.DataFrame([{"category": category, "date": d, "hour": h, "day_price_index": ratio or None}
                                   for d in week for h in range(24)])
            expected = model.predict(future)
            slot = {(s.weekday, s.hour): s.expected_orders for s in served.slots}
            for (d, h), e in zip(((d, h) for d in week for h in range(24)), expected):
                weekday = int(weekday_of[d - timedelta(days=7)])  # same weekday, a week earlier, in the table
                assert _close(slot[(weekday, h)], e), (category, ratio, str(d), h, slot[(weekday, h)], e)
    # The discounts start from the same forecast at list price.
    category = model.categories_[0]
    plan = advisor.propose(pricing_pb2.ProposeDiscountsRequest(category=category, budget=0.0))
    base = {(s.weekday, s.hour): s.expected_orders
            for s in advisor.forecast(pricing_pb2.ForecastDemandRequest(category=category)).slots}
    assert all(_close(s.base_orders, base[(s.weekday, s.hour)]) for s in plan.slots)


def test_demand_api_answers_what_the_serving_code_answers(env):
    from protos.marketing.v1 import pricing_pb2

    model, _, frame, _, advisor = _demand(env)
    with _api(env) as client:
        for category in model.categories_[:API_USERS]:
            for ratio in _ratios(frame, category)[:2]:
                local = advisor.forecast(pricing_pb2.ForecastDemandRequest(category=category, price_ratio=ratio))
                for call in (client.forecast_demand, client.forecast_demand_http):
                    diff = _same_message(call(category, ratio), local)
                    assert not diff, (call.__name__, category, ratio, diff)
