"""CLV: the summary transform, the BG/NBD + Gamma-Gamma fit against the published CDNOW
estimates, and the job end to end on generated data with planted archetypes."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from importlib.resources import files

import numpy as np
import pandas as pd
import pytest
from pyspark.testing import assertDataFrameEqual

from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.storage import Zone, decode_float, decode_str, open_lake, open_profile_store
from cluster.datagen import generate
from spark_jobs import clv, ingest
from spark_jobs.clv import CLV_COLUMNS, ClvModel, clv_summary, fit_clv

UTC = timezone.utc
COLS = "order_id string, user_id string, order_time timestamp, amount double, status string"

# Fader, Hardie and Lee (2005), and the lifetimes documentation: CDNOW cohort, 2,357
# customers, 39-week calibration period (1997-01-01 .. 1997-09-30), time in weeks.
CDNOW_AS_OF = date(1997, 10, 1)
CDNOW_BGNBD = {"r": 0.24, "alpha": 4.41, "a": 0.79, "b": 2.43}
CDNOW_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.45}


def _lifetimes_data(name: str):
    # lifetimes.datasets imports pkg_resources, which recent setuptools (84 here) no longer ships.
    return files("lifetimes") / "datasets" / name


@pytest.fixture(scope="module")
def cdnow_published() -> pd.DataFrame:
    """The published calibration summary, with the mean repeat spend (``zbar``)."""
    df = pd.read_csv(_lifetimes_data("cdnow_customers_summary_with_transactions.csv"))
    return df.rename(columns={"ID": "customer_id", "x": "frequency", "t_x": "recency", "zbar": "monetary_value"})


@pytest.fixture(scope="module")
def cdnow_orders(spark):
    """The CDNOW sample's transaction log as raw-zone orders (one order per line, UTC midnight)."""
    log = pd.read_csv(
        _lifetimes_data("CDNOW_sample.txt"), sep=r"\s+", header=None,
        names=["master_id", "customer_id", "date", "cds", "amount"], dtype={"date": str},
    )
    rows = [
        (f"o{i}", str(c), datetime.strptime(d, "%Y%m%d").replace(tzinfo=UTC), float(a), "paid")
        for i, (c, d, a) in enumerate(zip(log["customer_id"], log["date"], log["amount"]))
    ]
    return spark.createDataFrame(rows, COLS)


def _cents_half_up(values: pd.Series) -> pd.Series:
    # Not Series.round: it rounds half to even, and 28.025 is 28.0249999... in binary.
    return np.floor(values * 100 + 0.5 + 1e-6) / 100


def _published_params(model: ClvModel) -> dict[str, float]:
    return {k: round(v, 2) for k, v in model.params_.items()}


# ---------------------------------------------------------------------------------------------
# The published CDNOW fit
# ---------------------------------------------------------------------------------------------


def test_fit_reproduces_published_cdnow_parameters(cdnow_published):
    model = fit_clv(cdnow_published, penalizer=0.0, unit="weeks")
    assert model.n_customers_ == 2357 and model.n_repeat_customers_ == 946
    assert _published_params(model) == {**CDNOW_BGNBD, **CDNOW_GAMMA_GAMMA}


def test_summary_from_the_cdnow_transaction_log_feeds_the_published_fit(cdnow_orders, cdnow_published):
    ours = clv_summary(cdnow_orders, CDNOW_AS_OF, unit="weeks").toPandas()
    assert len(ours) == 2357
    joined = ours.assign(customer_id=ours["user_id"].astype(int)).merge(
        cdnow_published, on="customer_id", suffixes=("", "_published"), validate="one_to_one"
    )
    assert len(joined) == 2357
    assert (joined["frequency"] == joined["frequency_published"]).all()
    for column in ("recency", "T"):  # published to 2 decimals
        assert (joined[column] - joined[f"{column}_published"]).abs().max() <= 0.005 + 1e-9, column
    # The published mean spends are our exact means rounded half up to cents.
    rounded = _cents_half_up(joined["monetary_value"])
    assert np.allclose(rounded, joined["monetary_value_published"], rtol=0, atol=1e-9)

    exact = fit_clv(ours, unit="weeks")
    assert exact.n_customers_ == 2357 and exact.n_repeat_customers_ == 946
    assert {k: v for k, v in _published_params(exact).items() if k in CDNOW_BGNBD} == CDNOW_BGNBD
    # Exact means move Gamma-Gamma by less than a cent; v lands at 15.44 rather than 15.45.
    for name, published in CDNOW_GAMMA_GAMMA.items():
        assert exact.params_[name] == pytest.approx(published, abs=0.01), name
    as_published = fit_clv(ours.assign(monetary_value=_cents_half_up(ours["monetary_value"])), unit="weeks")
    assert _published_params(as_published) == {**CDNOW_BGNBD, **CDNOW_GAMMA_GAMMA}


# ---------------------------------------------------------------------------------------------
# The summary transform
# ---------------------------------------------------------------------------------------------


def test_summary_counts_paid_purchase_days_before_as_of(spark):
    orders = spark.createDataFrame(
        [
            ("o1", "u1", datetime(2026, 6, 1, 10, tzinfo=UTC), 100.0, "paid"),
            ("o2", "u1", datetime(2026, 6, 1, 23, 59, tzinfo=UTC), 20.0, "paid"),  # same day: one purchase
            ("o3", "u1", datetime(2026, 6, 11, tzinfo=UTC), 50.0, "paid"),
            ("o4", "u1", datetime(2026, 6, 20, tzinfo=UTC), 999.0, "refunded"),  # refunds do not count
            ("o5", "u1", datetime(2026, 6, 21, tzinfo=UTC), 30.0, "paid"),
            ("o6", "u1", datetime(2026, 7, 1, tzinfo=UTC), 70.0, "paid"),  # on as_of: excluded
            ("o7", "u2", datetime(2026, 6, 30, 23, 59, tzinfo=UTC), 10.5, "paid"),  # one purchase, last day
            ("o8", "u3", datetime(2026, 6, 2, tzinfo=UTC), 5.0, "refunded"),  # only refunds: no row
        ],
        COLS,
    )
    got = clv_summary(orders, date(2026, 7, 1))
    expected = spark.createDataFrame(
        [("u1", 2, 20.0, 29.0, 40.0, 200.0), ("u2", 0, 0.0, 0.0, 0.0, 10.5)],
        "user_id string, frequency int, recency double, T double, monetary_value double, clv_historic double",
    )
    assertDataFrameEqual(got, expected)


def test_summary_in_weeks_is_the_summary_in_days_over_seven(spark):
    rng = np.random.default_rng(4)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        (f"o{i}", f"u{rng.integers(40)}", start + timedelta(minutes=int(rng.integers(180 * 1440))),
         float(rng.integers(1, 500)), "paid")
        for i in range(400)
    ]
    orders = spark.createDataFrame(rows, COLS)
    days = clv_summary(orders, date(2026, 7, 1)).toPandas().set_index("user_id").sort_index()
    weeks = clv_summary(orders, date(2026, 7, 1), unit="weeks").toPandas().set_index("user_id").sort_index()
    pd.testing.assert_frame_equal(weeks[["recency", "T"]], days[["recency", "T"]] / 7)
    pd.testing.assert_frame_equal(weeks.drop(columns=["recency", "T"]), days.drop(columns=["recency", "T"]))


def test_summary_properties_on_random_orders(spark):
    rng = np.random.default_rng(11)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    as_of = date(2026, 4, 1)
    n = 1500
    users = rng.zipf(1.6, n) % 300  # a few heavy buyers, many one-timers
    seconds = rng.integers(0, 100 * 86_400, n)
    amounts = rng.gamma(2.0, 60.0, n).round(2)
    statuses = rng.choice(["paid", "refunded"], n, p=[0.9, 0.1])
    rows = [
        (f"o{i}", f"u{users[i]}", start + timedelta(seconds=int(seconds[i])), float(amounts[i]), str(statuses[i]))
        for i in range(n)
    ]
    orders = spark.createDataFrame(rows, COLS)
    log = pd.DataFrame(rows, columns=["order_id", "user_id", "order_time", "amount", "status"])
    got = clv_summary(orders, as_of).toPandas().set_index("user_id")

    paid = log[(log["status"] == "paid") & (log["order_time"] < datetime(2026, 4, 1, tzinfo=UTC))]
    days = paid.assign(day=[t.date() for t in paid["order_time"]]).groupby("user_id")["day"]
    assert set(got.index) == set(paid["user_id"])
    assert (got["frequency"] == days.nunique().reindex(got.index) - 1).all()
    first = days.min().reindex(got.index)
    assert (got["T"] == [(as_of - timedelta(days=1) - d).days for d in first]).all()
    assert np.allclose(got["clv_historic"], paid.groupby("user_id")["amount"].sum().reindex(got.index).round(2))
    assert ((got["recency"] >= 0) & (got["recency"] <= got["T"])).all()
    once = got["frequency"] == 0
    assert once.any() and (~once).any()
    assert (got.loc[once, ["recency", "monetary_value"]] == 0).all().all()
    assert (got.loc[~once, "monetary_value"] > 0).all()
    # The repeat purchases' total never exceeds what the user paid in all.
    assert (got["monetary_value"] * got["frequency"] <= got["clv_historic"] + 0.01).all()


def test_unknown_unit_is_an_invalid_argument(spark):
    orders = spark.createDataFrame([("o1", "u1", datetime(2026, 6, 1, tzinfo=UTC), 1.0, "paid")], COLS)
    with pytest.raises(InvalidArgument) as err:
        clv_summary(orders, date(2026, 7, 1), unit="months")
    assert err.value.field == "unit"


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cdnow_in_days(cdnow_published) -> pd.DataFrame:
    return cdnow_published.assign(recency=cdnow_published["recency"] * 7, T=cdnow_published["T"] * 7)


def test_fit_does_not_depend_on_the_time_unit(cdnow_published, cdnow_in_days):
    weeks = fit_clv(cdnow_published, unit="weeks")
    days = fit_clv(cdnow_in_days, unit="days")
    for name in ("r", "a", "b", "p", "q", "v"):
        assert days.params_[name] == pytest.approx(weeks.params_[name], rel=1e-3), name
    assert days.params_["alpha"] == pytest.approx(7 * weeks.params_["alpha"], rel=1e-3)
    by_week = weeks.predict(cdnow_published, horizon_days=182)
    by_day = days.predict(cdnow_in_days, horizon_days=182)
    for column in by_week.columns:
        assert np.allclose(by_day[column], by_week[column], rtol=5e-3, atol=1e-6), column


def test_predicted_clv_matches_lifetimes_discounted_cash_flow(cdnow_in_days):
    model = fit_clv(cdnow_in_days, unit="days")
    ours = model.predict(cdnow_in_days, horizon_days=360, monthly_discount_rate=0.01)
    theirs = model.gamma_gamma_.customer_lifetime_value(
        model.bgnbd_, cdnow_in_days["frequency"], cdnow_in_days["recency"], cdnow_in_days["T"],
        cdnow_in_days["monetary_value"], time=12, discount_rate=0.01, freq="D",
    )
    assert np.allclose(ours["clv_predicted"], theirs, rtol=1e-9)


def test_predictions_are_consistent(cdnow_published):
    model = fit_clv(cdnow_published, unit="weeks")
    undiscounted = model.predict(cdnow_published, horizon_days=365, monthly_discount_rate=0.0)
    discounted = model.predict(cdnow_published, horizon_days=365, monthly_discount_rate=0.02)
    shorter = model.predict(cdnow_published, horizon_days=100, monthly_discount_rate=0.0)
    spend = undiscounted["expected_purchases"] * undiscounted["expected_spend"]
    assert np.allclose(undiscounted["clv_predicted"], spend)
    assert (discounted["clv_predicted"] < undiscounted["clv_predicted"]).all()
    assert (shorter["expected_purchases"] < undiscounted["expected_purchases"]).all()
    assert undiscounted["p_alive"].between(0, 1).all()
    # BG/NBD: nobody drops out before a first repeat purchase.
    assert (undiscounted.loc[cdnow_published["frequency"] == 0, "p_alive"] == 1).all()
    # The same purchase history, silent for longer, is less likely alive and worth less.
    a = cdnow_published.iloc[[0]].assign(frequency=3, recency=10.0, T=20.0, monetary_value=30.0)
    b = a.assign(T=38.0)
    pa, pb = model.predict(a), model.predict(b)
    assert pb["p_alive"].iloc[0] < pa["p_alive"].iloc[0]
    assert pb["clv_predicted"].iloc[0] < pa["clv_predicted"].iloc[0]


def test_fit_needs_repeat_customers_and_the_summary_columns(cdnow_published):
    one_timers = cdnow_published[cdnow_published["frequency"] == 0]
    with pytest.raises(FailedPrecondition, match="repeat"):
        fit_clv(one_timers, unit="weeks")
    with pytest.raises(InvalidArgument, match="monetary_value"):
        fit_clv(cdnow_published.drop(columns=["monetary_value"]), unit="weeks")
    with pytest.raises(FailedPrecondition, match="q = 0.9"):  # the penalty drags q below 1
        fit_clv(cdnow_published, penalizer=0.01, unit="weeks")
    with pytest.raises(InvalidArgument) as err:
        fit_clv(cdnow_published, penalizer=-1.0, unit="weeks")
    assert err.value.field == "penalizer"
    with pytest.raises(InvalidArgument) as err:
        fit_clv(cdnow_published, unit="weeks").predict(cdnow_published, horizon_days=0)
    assert err.value.field == "horizon_days"


# ---------------------------------------------------------------------------------------------
# The job on generated data with planted archetypes
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(settings_factory, spark, tmp_path_factory):
    """Generated orders ingested into a fresh lake, then one CLV run."""
    s = settings_factory()
    folder = tmp_path_factory.mktemp("clv-input")
    generate(folder, users=1000, days=120, seed=5, defects=False)
    for name in ("users.csv", "events.jsonl", "impressions.csv"):  # CLV reads orders only
        (folder / name).unlink()
    ingest.main(s, folder, run_id="run-ingest")
    steps: list[tuple[str, float]] = []
    meta = clv.main(s, run_id="run-clv", progress=lambda step, frac: steps.append((step, frac)))
    lake = open_lake(s)
    features = lake.read_parquet(Zone.FEATURES, "clv", "run=run-clv")
    truth = pd.read_csv(folder / "_truth" / "users.csv", dtype={"user_id": str})
    joined = features.merge(truth[["user_id", "archetype"]], on="user_id", validate="one_to_one")
    return {"settings": s, "meta": meta, "features": features, "joined": joined, "steps": steps}


def test_predicted_clv_ranks_planted_high_value_customers_first(generated):
    joined = generated["joined"]
    assert len(joined) == len(generated["features"]) == generated["meta"]["users"]
    assert "none" not in set(joined["archetype"])  # never-buyers have no summary row
    median = joined.groupby("archetype")["clv_predicted"].median()
    others = median.drop("champions")
    assert (median["champions"] > others).all(), median.to_dict()
    assert median["loyal"] > max(median["bargain"], median["lapsed"]), median.to_dict()
    # Nearly every champion is worth more than nearly every low-value customer.
    champions = joined.loc[joined["archetype"] == "champions", "clv_predicted"].to_numpy()
    low = joined.loc[joined["archetype"].isin(["bargain", "lapsed"]), "clv_predicted"].to_numpy()
    assert (champions[:, None] > low[None, :]).mean() > 0.95


def test_churned_archetype_is_least_likely_alive(generated):
    p_alive = generated["joined"].groupby("archetype")["p_alive"].median()
    assert p_alive["lapsed"] < 0.5 < min(p_alive["champions"], p_alive["loyal"]), p_alive.to_dict()


def test_main_writes_profiles_and_latest_meta(generated):
    s, meta, features = generated["settings"], generated["meta"], generated["features"]
    lake = open_lake(s)
    assert lake.read_json(Zone.FEATURES, "clv", "latest.json") == meta
    assert lake.read_json(Zone.FEATURES, "clv", "run=run-clv", "_meta.json") == meta
    assert meta["path"] == "features/clv/run=run-clv" and meta["as_of"] == "2026-07-01"
    assert set(meta["params"]) == {"r", "alpha", "a", "b", "p", "q", "v"}
    assert 0 < meta["repeat_customers"] < meta["users"]
    store = open_profile_store(s)
    try:
        assert store.count_users() == meta["users"]
        top = features.sort_values("clv_predicted").iloc[-1]
        cells = store.read(top["user_id"], list(CLV_COLUMNS.values()))
    finally:
        store.close()
    for name in ("clv_historic", "clv_predicted", "p_alive", "expected_purchases"):
        assert decode_float(cells[CLV_COLUMNS[name]]) == pytest.approx(float(top[name])), name
    assert decode_str(cells[CLV_COLUMNS["run_id"]]) == "run-clv"
    assert decode_str(cells[CLV_COLUMNS["as_of"]]) == "2026-07-01"
    assert [f for _, f in generated["steps"]] == sorted(f for _, f in generated["steps"])
