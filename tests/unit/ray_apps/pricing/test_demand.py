"""Demand table and demand model: counts against the raw orders, the planted price response,
weekday and hour patterns, the held-out metrics, and the Tune entry point."""

from __future__ import annotations

import io
import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.storage import Zone, open_lake
from ray_apps.pricing.model import (
    DemandModel,
    holdout_metrics,
    mape,
    poisson_deviance,
    r_squared,
)
from ray_apps.pricing.train import SPEC
from ray_apps.tuning import grid_configs, run_trial
from spark_jobs import demand
from tests.unit.conftest import lake_settings

TZ = "Asia/Shanghai"


@pytest.fixture(scope="module")
def built(built_tables):
    """The demand table built into the shared lake (a new table), read back, and the truth."""
    s = built_tables["settings"]
    meta = demand.main(s, run_id="run-demand-test")
    lake = open_lake(s)
    truth = built_tables["base"] / "input" / "_truth"
    manifest = json.loads((truth / "manifest.json").read_text(encoding="utf-8"))
    promotions = pd.read_csv(truth / "promotions.csv")
    return {"settings": s, "meta": meta, "table": lake.read_parquet(meta["path"]), "lake": lake,
            "manifest": manifest, "promotions": promotions}


@pytest.fixture(scope="module")
def search(built):
    """The smoke search in-process (as the runner would), and its refit."""
    dataset = SPEC.load(built["settings"], True)
    rows = [{"config": c, **run_trial(SPEC, c, dataset.data)[-1]} for c in grid_configs(SPEC.space(built["settings"], True))]
    best = min(rows, key=lambda r: r[SPEC.metric])
    return {"dataset": dataset, "rows": rows, "best": best, "fitted": SPEC.fit(dict(best["config"]), dataset.data, rows)}


# --- the table ----------------------------------------------------------------------------------


def test_table_counts_equal_paid_orders_counted_from_the_raw_zone(built):
    table = built["table"]
    # The raw zone is partitioned by day (dt=...): read the local folder with pyarrow's dataset reader.
    raw = pd.read_parquet(Path(built["settings"].lake.root) / Zone.RAW.value / "orders",
                          columns=["order_id", "order_time", "category", "quantity", "amount", "status"])
    paid = raw[raw["status"] == "paid"].copy()
    t = pd.to_datetime(paid["order_time"])
    local = (t.dt.tz_localize("UTC") if t.dt.tz is None else t).dt.tz_convert(TZ)
    paid["date"], paid["hour"] = local.dt.strftime("%Y-%m-%d"), local.dt.hour
    direct = paid.groupby(["category", "date", "hour"]).agg(n=("order_id", "size"), n_units=("quantity", "sum"),
                                                            n_revenue=("amount", "sum"))
    tab = table.assign(date=pd.to_datetime(table["date"]).dt.strftime("%Y-%m-%d")).set_index(
        ["category", "date", "hour"])
    assert not tab.index.duplicated().any()
    # Dense: every category x every date of the span x 24 hours.
    n_days = tab.index.get_level_values("date").nunique()
    assert len(tab) == tab.index.get_level_values("category").nunique() * n_days * 24 == built["meta"]["rows"]
    joined = tab.join(direct, how="left").fillna({"n": 0, "n_units": 0, "n_revenue": 0.0})
    assert (joined["orders"] == joined["n"]).all() and joined["orders"].sum() == len(paid)
    assert (joined["units"] == joined["n_units"]).all()
    np.testing.assert_allclose(joined["revenue"], joined["n_revenue"], rtol=1e-9, atol=1e-6)
    dates = pd.to_datetime(joined.index.get_level_values("date"))
    assert (joined["weekday"].to_numpy() == dates.weekday).all()
    assert ((joined["orders"] > 0) == joined["price_index"].notna()).all()


def test_day_price_index_recovers_the_promotion_calendar(built):
    table, promo = built["table"], built["promotions"]
    days = table.assign(date=pd.to_datetime(table["date"]).dt.strftime("%Y-%m-%d")).groupby(
        ["category", "date"]).agg(index=("day_price_index", "first"), orders=("orders", "sum")).reset_index()
    joined = days.merge(promo, on=["category", "date"], how="inner")
    assert len(joined) == len(days)
    seen = joined[joined["orders"] > 0]
    err = (seen["index"] - seen["price_ratio"]).abs()
    # Exact unless an item was only ever sold on promotion (then its "list" price is too low).
    assert (err < 1e-6).mean() > 0.99 and err.max() < 0.05
    assert joined.loc[joined["orders"] == 0, "index"].isna().all()


# --- the metrics on hand examples ---------------------------------------------------------------


def test_metric_functions_on_hand_examples():
    # zero actual excluded: mean(|2-1|/2, |4-5|/4) = 0.375
    assert mape([0, 2, 4], [1, 1, 5]) == pytest.approx(0.375)
    assert np.isnan(mape([0, 0], [1, 2]))
    assert r_squared([1, 2, 3], [1, 2, 4]) == pytest.approx(1 - 1 / 2)
    # 2 * [(0 - (0 - 1)), (2 log 1 - 0)] / 2 cells = 1
    assert poisson_deviance([0, 2], [1, 2]) == pytest.approx(1.0)
    frame = pd.DataFrame({"category": ["a"] * 48 + ["b"] * 48,
                          "date": np.tile(np.repeat(["2026-06-01", "2026-06-02"], 24), 2),
                          "hour": np.tile(np.arange(24), 4), "orders": np.repeat([0, 1, 2, 3], 24)})
    perfect = holdout_metrics(frame, frame["orders"].to_numpy(float))
    assert perfect["mape_day"] == 0 and perfect["r2_day"] == 1 and perfect["deviance"] == pytest.approx(0)
    double = holdout_metrics(frame, 2.0 * frame["orders"].to_numpy(float))
    assert double["mape_slot"] == pytest.approx(1.0) and double["mape_day"] == pytest.approx(1.0)
    # Category "a" has no order on Monday 2026-06-01: its 24 slots and 1 day are left out of MAPE.
    assert double["zero_slots_excluded"] == 24 and double["zero_days_excluded"] == 1
    # Day totals 0, 24, 48, 72 against their mean, 36, each: MAPE over the non-zero three, R^2 = 0.
    flat = holdout_metrics(frame, np.full(96, 1.5))
    assert flat["mape_day"] == pytest.approx((12 / 24 + 12 / 48 + 36 / 72) / 3) and flat["r2_day"] == pytest.approx(0)


# --- the model on the generated data ------------------------------------------------------------

#: Band for |estimate - planted| in standard errors, all ten categories at once. Over 8 seeds of
#: 4,000 users x 180 days (80 category estimates, clean data, ridge 1, knots every 30 days) the
#: z-scores had mean -0.14 and SD 1.13 (the SE is a little optimistic), one beyond 3 (this data
#: set's 家居, z = 3.07). A joint 99.7 % band over 10 categories is z = 3.4 per category
#: (Bonferroni), times 1.13: 3.9.
Z_TOL = 3.9
#: The elasticity's standard error must be below this for the recovery test to mean anything:
#: the planted values are 0.2-0.5 apart, so a larger SE could not tell neighbours apart.
MAX_SE = 0.35


def test_planted_elasticities_are_recovered_within_their_standard_errors(built, search):
    model = search["fitted"].model
    planted = {c["name"]: c["elasticity"] for c in built["manifest"]["categories"]}
    assert sorted(planted) == model.categories_
    for c in model.categories_:
        est, se = model.elasticity_[c], model.elasticity_se_[c]
        assert 0 < se < MAX_SE, (c, se)
        assert abs(est - planted[c]) < Z_TOL * se, (c, est, se, planted[c])
    # Ordering: every pair whose planted gap is beyond 3 combined SE is ordered correctly, and the
    # rank correlation is high (a model without the price term would rank them at random).
    cats = model.categories_
    for i, a in enumerate(cats):
        for b in cats[i + 1:]:
            gap = planted[a] - planted[b]
            se = np.hypot(model.elasticity_se_[a], model.elasticity_se_[b])
            if abs(gap) > 3 * se:
                assert np.sign(model.elasticity_[a] - model.elasticity_[b]) == np.sign(gap), (a, b)
    rho = pd.Series([model.elasticity_[c] for c in cats]).corr(pd.Series([planted[c] for c in cats]),
                                                               method="spearman")
    assert rho > 0.8


def test_planted_weekday_and_hour_patterns_are_recovered(built):
    # Unpenalised fit: the ridge would shrink the quiet night hours towards the mean.
    model = DemandModel(ridge=0.0).fit(built["table"])
    week = sum(model.weekly_demand(c) for c in model.categories_)
    n = model.n_orders_
    for got, weights in ((week.sum(axis=1), built["manifest"]["weekday_weights"]),
                         (week.sum(axis=0), built["manifest"]["hour_weights"])):
        share, planted = got / got.sum(), np.asarray(weights) / np.sum(weights)
        # Multinomial SE of a share estimated from n orders; 4 SE leaves room for the small
        # distortions of the plant (orders near a user's active-window edges cannot move freely).
        se = np.sqrt(planted * (1 - planted) / n)
        assert np.all(np.abs(share - planted) < 4 * se + 1e-9), (share.round(4), planted.round(4))


def test_holdout_error_is_measured_and_r2_is_near_what_noise_allows(search):
    metrics = search["fitted"].metrics
    for key in ("holdout_mape_slot", "holdout_mape_day", "holdout_r2_slot", "holdout_r2_day"):
        assert np.isfinite(metrics[key]), key
    data = search["dataset"].data
    model = DemandModel(**{k: search["best"]["config"][k] for k in ("ridge", "trend", "knot_days")}).fit(data.train)
    mu = model.predict(data.holdout)
    got = holdout_metrics(data.holdout, mu)
    assert got["r2_day"] == pytest.approx(metrics["holdout_r2_day"])
    # What a perfect forecast scores: R^2 of Poisson draws around the forecast itself (200 draws).
    rng = np.random.default_rng(0)
    draws = [holdout_metrics(data.holdout.assign(orders=rng.poisson(mu)), mu)["r2_day"] for _ in range(200)]
    ceiling, sd = float(np.mean(draws)), float(np.std(draws))
    # Within 4 draw SDs of the ceiling: misfit beyond noise (e.g. no trend) falls below.
    assert got["r2_day"] > ceiling - 4 * sd, (got["r2_day"], ceiling, sd)
    # And clearly better than a flat forecast (each category's mean cell over the training days).
    flat = data.holdout["category"].map(data.train.groupby("category")["orders"].mean()).to_numpy()
    assert got["r2_day"] > holdout_metrics(data.holdout, flat)["r2_day"] + 0.1


# --- the model's interface ----------------------------------------------------------------------


def test_model_interface_and_errors(search):
    model = search["fitted"].model
    c = model.categories_[0]
    base = model.weekly_demand(c)
    assert base.shape == (7, 24) and np.all(base > 0)
    cheaper = model.weekly_demand(c, 0.8)
    np.testing.assert_allclose(cheaper / base, 0.8 ** -model.elasticity_[c], rtol=1e-9)
    ratios = np.ones((7, 24))
    ratios[5, 20] = 0.7
    slot = model.weekly_demand(c, ratios)
    assert slot[5, 20] > base[5, 20] and np.allclose(np.delete(slot.ravel(), 5 * 24 + 20),
                                                     np.delete(base.ravel(), 5 * 24 + 20))
    assert model.order_value_[c] > 0
    with pytest.raises(InvalidArgument) as err:
        model.weekly_demand("no-such-category")
    assert err.value.field == "category"
    with pytest.raises(InvalidArgument):
        model.weekly_demand(c, -1.0)
    with pytest.raises(InvalidArgument):
        model.predict(pd.DataFrame({"category": ["no-such-category"], "date": ["2026-07-01"], "hour": [1]}))
    # The registry stores models with joblib: the round trip predicts the same.
    buf = io.BytesIO()
    joblib.dump(model, buf)
    buf.seek(0)
    np.testing.assert_allclose(joblib.load(buf).weekly_demand(c), base)


def test_tune_entry_point_smoke(search):
    rows, fitted = search["rows"], search["fitted"]
    assert len(rows) == len(grid_configs(SPEC.space(None, True)))
    assert all(np.isfinite(r[SPEC.metric]) for r in rows)
    # Trend pieces model the early-window decline (lapsed users churn): the search must prefer them.
    assert search["best"]["config"]["knot_days"] > 0
    m = fitted.metrics
    assert set(m["elasticity"]) == set(m["elasticity_se"]) == set(fitted.model.categories_)
    assert m["orders"] == int(search["dataset"].data.full["orders"].sum())
    assert fitted.params["holdout_days"] == search["dataset"].data.holdout_days


def test_load_names_the_command_when_the_table_is_missing(settings, tmp_path):
    with pytest.raises(FailedPrecondition, match="pmkt features demand"):
        SPEC.load(lake_settings(settings, tmp_path / "lake"), False)
