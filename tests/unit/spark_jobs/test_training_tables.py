"""Training tables: leak-free CTR features, the churn censoring rule, stable hashing, and the
planted truth of generated data (click rate, AUC against the true p_click, churn signal)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cluster.core.errors import FailedPrecondition
from cluster.core.storage import Zone, open_lake
from spark_jobs import training_tables as tt
from spark_jobs.transforms import rfm

USERS = ("user_id string, gender string, birth_date date, city string, signup_time timestamp, "
         "opt_in_sms boolean, opt_in_push boolean, opt_in_email boolean")
ORDERS = "order_id string, user_id string, order_time timestamp, amount double, status string, category string"
EVENTS = "event_id string, user_id string, ts timestamp, action string, category string"
IMPRESSIONS = ("impression_id string, user_id string, ts timestamp, ad_id string, campaign_id string, "
               "channel string, ad_position string, device_type string, cost double, clicked boolean")


def _lake_settings(settings, root: Path):
    return settings.model_copy(update={"lake": settings.lake.model_copy(update={"root": root})})


# --- CTR features: nothing from the impression's day or later --------------------------------------


def test_ctr_features_ignore_the_impressions_own_day_and_later(spark):
    users = spark.createDataFrame(
        [("u1", "F", date(1991, 7, 2), "上海", datetime(2025, 1, 1), True, False, False)], USERS
    )
    orders = spark.createDataFrame(
        [
            ("o1", "u1", datetime(2026, 6, 1, 10), 100.0, "paid", "服饰"),
            ("o0", "u1", datetime(2026, 5, 1, 10), 40.0, "refunded", "美妆"),   # refunds never count
            ("o2", "u1", datetime(2026, 6, 10, 8), 50.0, "paid", "美妆"),      # impression day, before it
            ("o3", "u1", datetime(2026, 6, 10, 13), 999.0, "paid", "美妆"),    # after the impression
            ("o4", "u1", datetime(2026, 6, 20, 9), 10.0, "paid", "美妆"),      # days later
        ],
        ORDERS,
    )
    events = spark.createDataFrame(
        [
            ("e1", "u1", datetime(2026, 5, 1, 9), "view", "服饰"),    # older than the 30-day lookback
            ("e2", "u1", datetime(2026, 6, 5, 9), "view", "美妆"),
            ("e3", "u1", datetime(2026, 6, 10, 9), "view", "美妆"),   # impression day
            ("e4", "u1", datetime(2026, 6, 11, 9), "cart", "美妆"),
        ],
        EVENTS,
    )
    impressions = spark.createDataFrame(
        [
            ("m1", "u1", datetime(2026, 6, 10, 12), "ad1", "c1", "search", "1", "ios", 1.2, True),
            ("m2", "u1", datetime(2026, 7, 3, 12), "ad1", "c1", "feed", "2", "ios", 0.03, False),
        ],
        IMPRESSIONS,
    )
    got = tt.ctr_rows(impressions, users, orders, events)
    assert "birth_date" not in got.columns and "cost" not in got.columns
    cols = "impression_id string, label int, age_band string, recency_days int, recency_band string, " \
           "frequency int, monetary double, events_recent int, top_category string, top_category_share double"
    expected = spark.createDataFrame(
        [
            # m1 sees o1 and e1, e2 only: 2 of 3 rows are 服饰 (o1, e1), 1 is 美妆 (e2); e1 is 40 days old.
            ("m1", 1, "25-34", 9, "8-30", 1, 100.0, 1, "服饰", 2 / 3),
            # m2 sees everything before 2026-07-03; the 35th birthday on 2026-07-02 moves the band.
            ("m2", 0, "35-44", 13, "8-30", 4, 1159.0, 3, "美妆", 6 / 8),
        ],
        cols,
    )
    assertDataFrameEqual(got.select(*[c.split()[0] for c in cols.split(", ")]), expected)


def test_behaviour_as_of_agrees_with_rfm_on_a_single_day(spark):
    orders = spark.createDataFrame(
        [
            ("o1", "u1", datetime(2026, 6, 1, 10), 100.0, "paid", "a"),
            ("o2", "u1", datetime(2026, 6, 20, 23, 59), 50.5, "paid", "a"),
            ("o3", "u1", datetime(2026, 6, 25), 999.0, "refunded", "a"),
            ("o4", "u1", datetime(2026, 7, 1, 0, 0), 70.0, "paid", "a"),
            ("o5", "u2", datetime(2026, 3, 2), 10.0, "paid", "b"),
            ("o6", "u3", datetime(2026, 6, 2), 5.0, "refunded", "b"),
        ],
        ORDERS,
    )
    as_of = date(2026, 7, 1)
    keys = spark.createDataFrame([(u, as_of) for u in ("u1", "u2", "u3")], "user_id string, as_of_day date")
    got = tt.behaviour_as_of(keys, orders, spark.createDataFrame([], EVENTS)).where(F.col("frequency") > 0)
    assertDataFrameEqual(
        got.select("user_id", "recency_days", "frequency", "monetary"),
        rfm(orders, as_of).select("user_id", "recency_days", "frequency", "monetary"),
    )


def test_time_split_puts_a_whole_day_boundary_between_train_and_test(spark):
    rows = spark.createDataFrame(
        [(f"m{d:02d}{h}", datetime(2026, 6, d, h)) for d in range(1, 11) for h in (1, 23)],
        "impression_id string, ts timestamp",
    )
    split, day = tt.time_split(rows, test_fraction=0.3)
    train = [r.ts for r in split.where("split = 'train'").collect()]
    test = [r.ts for r in split.where("split = 'test'").collect()]
    assert max(train) < datetime.combine(day, datetime.min.time()) <= min(test)
    n = len(train) + len(test)
    assert 0.3 * n <= len(test) <= 0.3 * n + 2  # at most one day's rows (two) more than asked


# --- Encoding: the spec is learnt on train only, and serving encodes identically -----------------


def _encoded_rows(spark):
    rows = spark.createDataFrame(
        [
            ("m1", "search", "1", "ios", None, "35-44", "上海", "8-30", "服饰", "ad1", "c1", 3, 120.0, 2, 0.5, "train"),
            ("m2", "feed", "2", "android", "F", "<25", "北京", "none", None, "ad2", "c1", 0, 0.0, 0, 0.0, "train"),
            ("m3", "feed", "2", "pc", "M", "<25", "深圳", "91+", "美妆", "ad9", "c7", 1, 9.9, 7, 1.0, "test"),
        ],
        "impression_id string, channel string, ad_position string, device_type string, gender string, "
        "age_band string, city string, recency_band string, top_category string, ad_id string, "
        "campaign_id string, frequency int, monetary double, events_recent int, top_category_share double, "
        "split string",
    )
    spec = tt.fit_ctr_spec(rows.where("split = 'train'"), hash_buckets=64, min_count=1)
    return rows, spec


def test_spec_vocabulary_comes_from_the_train_split_only(spark):
    rows, spec = _encoded_rows(spark)
    vocab = {b["input"]: b["values"] for b in spec["onehot"]}
    assert vocab["channel"] == ["feed", "search"]
    assert "pc" not in vocab["device_type"] and "深圳" not in vocab["city"]  # seen in test only
    assert vocab["gender"] == ["F", tt.MISSING]
    assert len(tt.feature_names(spec)) == spec["size"]
    assert all("cost" not in name for name in spec["feature_names"])


def test_spark_vectors_equal_the_serving_encoder(spark):
    rows, spec = _encoded_rows(spark)
    spec = json.loads(json.dumps(spec))  # what serving reads from _feature_spec.json
    names = tt.feature_names(spec)
    for r in tt.ctr_vectors(rows, spec).collect():
        record = r.asDict()
        indices, values = tt.encode_ctr(record, spec)
        assert list(r.features.indices) == indices and list(r.features.values) == pytest.approx(values)
        # a request carrying ad_position as a number encodes the same
        assert tt.encode_ctr({**record, "ad_position": int(record["ad_position"])}, spec) == (indices, values)
    m3 = dict(zip(names, tt.ctr_vectors(rows, spec).where("impression_id = 'm3'").first().features.toArray()))
    assert m3[f"device_type={tt.OTHER}"] == 1.0 and m3[f"city={tt.OTHER}"] == 1.0


def test_hash_bucket_is_the_documented_sha256_and_independent_of_the_process():
    tokens = ["ad_id=ad0001", "campaign_id*top_category=cmp003|手机", "campaign_id=__missing__"]
    for t in tokens:
        assert tt.hash_bucket(t, 1000) == int(hashlib.sha256(t.encode("utf-8")).hexdigest()[:16], 16) % 1000
    code = f"from spark_jobs.training_tables import hash_bucket; print([hash_bucket(t, 1000) for t in {tokens!r}])"
    seen = set()
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parents[3],
        ).stdout
        seen.add(out.strip())
    assert seen == {str([tt.hash_bucket(t, 1000) for t in tokens])}
    assert len({tt.hash_bucket(t, 1000) for t in tokens}) == len(tokens)  # the three tokens stay apart


# --- Churn: the censoring rule on its edge cases -----------------------------------------------------


def test_churn_censoring_rule_on_edge_cases(spark):
    as_of = date(2026, 7, 1)
    activity = {  # user -> activity days; the docstring's worked example plus two more
        "a": ["2026-01-10", "2026-03-01"],
        "b": ["2026-01-10", "2026-04-02"],     # inactive exactly W = 90 days: censored
        "c": ["2026-01-10", "2026-04-01"],     # 91 days: churned
        "d": ["2026-02-01"],                   # single activity, churned
        "e": ["2026-06-30"],                   # single activity on the last day
        "f": ["2026-05-15", "2026-06-20"],     # too recent to judge
        "g": ["2026-01-05", "2026-07-01"],     # activity on T itself is after the observation end
        "h": ["2026-07-02"],                   # only future activity: not in the table
    }
    orders, events = [], []
    for u, days in activity.items():
        for i, d in enumerate(days):
            t = datetime.fromisoformat(d).replace(hour=12)
            if i % 2 == 0:
                orders.append((f"o{u}{i}", u, t, 10.0, "paid", "x"))
            else:
                events.append((f"e{u}{i}", u, t, "view", "x"))
    got = tt.churn_table(
        spark.createDataFrame([], USERS), spark.createDataFrame(orders, ORDERS),
        spark.createDataFrame(events, EVENTS), spark.createDataFrame([], IMPRESSIONS), as_of, inactivity_days=90,
    )
    expected = spark.createDataFrame(
        [("a", 122, 1, 141), ("b", 90, 0, 172), ("c", 91, 1, 172), ("d", 150, 1, 91),
         ("e", 1, 0, 1), ("f", 11, 0, 47), ("g", 177, 1, 91)],
        "user_id string, inactive_days int, churned int, duration_days int",
    )
    assertDataFrameEqual(got.select("user_id", "inactive_days", "churned", "duration_days"), expected)
    # a longer window turns the two churners with the shortest gap into censored users
    longer = tt.churn_table(
        spark.createDataFrame([], USERS), spark.createDataFrame(orders, ORDERS),
        spark.createDataFrame(events, EVENTS), spark.createDataFrame([], IMPRESSIONS), as_of, inactivity_days=125,
    )
    flags = {r.user_id: (r.churned, r.duration_days) for r in longer.collect()}
    assert flags["a"] == (0, 172) and flags["c"] == (0, 172) and flags["d"] == (1, 126)


def test_churn_covariates_do_not_see_the_observation_end_or_later(spark):
    as_of = date(2026, 7, 1)
    users = spark.createDataFrame(
        [("u1", "M", date(1990, 7, 2), "北京", datetime(2025, 12, 1), True, None, False)], USERS
    )
    orders = spark.createDataFrame(
        [
            ("o1", "u1", datetime(2026, 1, 1, 9), 100.0, "paid", "x"),
            ("o2", "u1", datetime(2026, 2, 1, 9), 300.0, "paid", "x"),
            ("o3", "u1", datetime(2026, 3, 1, 9), 50.0, "refunded", "x"),
            ("o4", "u1", datetime(2026, 7, 1, 0), 9999.0, "paid", "x"),  # on T: ignored
        ],
        ORDERS,
    )
    impressions = spark.createDataFrame(
        [(f"m{i}", "u1", datetime(2026, 1, 1 + i), "a", "c", "feed", "1", "ios", 0.0, i == 0) for i in range(4)]
        + [("m9", "u1", datetime(2026, 7, 2), "a", "c", "feed", "1", "ios", 0.0, True)],  # after T
        IMPRESSIONS,
    )
    r = tt.churn_table(users, orders, spark.createDataFrame([], EVENTS), impressions, as_of, ctr_prior=0).first()
    assert (r.has_paid_order, r.avg_order_value, r.refund_share) == (1, 200.0, pytest.approx(1 / 3))
    assert (r.ad_impressions, r.ad_clicks, r.ad_ctr) == (4, 1, 0.25)
    assert (r.opt_in_sms, r.opt_in_push, r.age_band, r.account_age_days) == (1, 0, "35-44", 31)
    assert (r.last_active, r.churned, r.duration_days) == (date(2026, 3, 1), 1, 59 + 91)


# --- Generated data: the planted truth shows up ------------------------------------------------------

from tests.unit.conftest import TABLES_DAYS as GEN_DAYS  # noqa: E402  (the shared built_tables fixture)

#: Minimum test AUC of a logistic regression. Measured on this data set: 0.633 (C=0.1), against
#: 0.664 for the true p_click (the ceiling); the Hanley-McNeil standard error is about 0.015, so
#: 0.58 is more than three standard errors below the measurement and still far above chance.
MIN_AUC = 0.58


@pytest.fixture(scope="module")
def generated(built_tables):
    """Synthetic data, ingested, then the training tables built (shared with the churn tests)."""
    summary, meta = built_tables["summary"], built_tables["meta"]
    lake = open_lake(built_tables["settings"])
    return {
        "meta": meta,
        "lake": lake,
        "steps": built_tables["steps"],
        "truth": built_tables["base"] / "input" / "_truth",
        "manifest": json.loads(summary.manifest_path.read_text(encoding="utf-8")),
        "churn": lake.read_parquet(meta["churn"]["path"]),
    }


def _auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    return math.sqrt((auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg))


def test_click_rate_matches_the_planted_click_probability(generated):
    data = tt.load_ctr_matrix(generated["lake"])
    p = pd.read_csv(generated["truth"] / "impressions.csv").set_index("impression_id")["p_click"]
    assert len(data.impression_ids) == len(p) == generated["meta"]["ctr"]["rows"]  # every clean impression
    p = p.loc[data.impression_ids].to_numpy()
    se = math.sqrt(float(np.sum(p * (1 - p)))) / len(p)
    assert abs(data.y.mean() - p.mean()) < 4 * se, (data.y.mean(), p.mean(), se)
    assert generated["meta"]["ctr"]["positive_rate"] == pytest.approx(data.y.mean(), abs=1e-6)


def test_logistic_regression_beats_chance_but_not_the_truth(generated):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    train = tt.load_ctr_matrix(generated["lake"], "train")
    test = tt.load_ctr_matrix(generated["lake"], "test")
    assert len(train.y) > 3 * len(test.y) > 0
    model = LogisticRegression(C=0.1, max_iter=2000).fit(train.X, train.y)
    auc = roc_auc_score(test.y, model.predict_proba(test.X)[:, 1])
    p = pd.read_csv(generated["truth"] / "impressions.csv").set_index("impression_id")["p_click"]
    ceiling = roc_auc_score(test.y, p.loc[test.impression_ids].to_numpy())
    se = _auc_se(ceiling, int(test.y.sum()), int(len(test.y) - test.y.sum()))
    assert auc > MIN_AUC, (auc, ceiling)
    # A model that beats the true probability by more than noise has seen the label: a leak.
    assert auc < ceiling + 3 * se, (auc, ceiling, se)


def test_stored_spec_reencodes_the_stored_vectors(generated):
    lake = generated["lake"]
    meta = generated["meta"]["ctr"]
    spec = lake.read_json(meta["spec_path"])
    rows = lake.read_parquet(f"{meta['path']}/split=test").head(200)
    for r in rows.to_dict("records"):
        record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        indices, values = tt.encode_ctr(record, spec)
        assert list(r["features"]["indices"]) == indices
        assert list(r["features"]["values"]) == pytest.approx(values)


def test_churn_table_is_censored_right_on_generated_data(generated):
    churn = generated["churn"]
    meta = generated["meta"]["churn"]
    assert churn["user_id"].is_unique and len(churn) == meta["users"]
    assert (churn["duration_days"] >= 1).all()
    assert ((churn["inactive_days"] > 90) == (churn["churned"] == 1)).all()
    assert meta["censoring_rate"] == pytest.approx(1 - churn["churned"].mean(), abs=1e-6)
    # A planted churn day c (nothing from day c on) leaves a gap of at least days - c + 1 days,
    # so every user with c <= days - 90 must be flagged; the flag is not judged for later days.
    truth = pd.read_csv(generated["truth"] / "users.csv")
    m = churn.merge(truth, on="user_id")
    sure = m["churn_day"].notna() & (m["churn_day"] <= GEN_DAYS - 90)
    assert sure.sum() > 0 and (m.loc[sure, "churned"] == 1).all()


def test_cox_model_fits_and_recovers_the_planted_click_affinity(generated):
    from lifelines import CoxPHFitter

    design = tt.churn_design(generated["churn"])
    assert list(design.columns) == ["duration_days", "churned", *tt.CHURN_COVARIATES]
    assert not design.isna().any().any()
    cox = CoxPHFitter(penalizer=0.01).fit(design, "duration_days", "churned")
    # datagen: click affinity falls as planted churn risk rises (champions +0.7 with 5 % churn,
    # loyal +0.4 / 8 %, bargain and big_ticket +0.2 / +0.1 with 40 %, lapsed -0.6 with 100 %),
    # so users who click more of their ads must churn less.
    ci = cox.confidence_intervals_.loc["ad_ctr_pct"]
    assert cox.params_["ad_ctr_pct"] < 0 and ci.iloc[1] < 0, cox.summary.loc["ad_ctr_pct"]
    assert cox.concordance_index_ > 0.55


def test_main_writes_latest_meta_and_reports_progress(generated):
    lake = generated["lake"]
    meta = generated["meta"]
    for table in ("ctr_train", "churn"):
        latest = lake.read_json(Zone.FEATURES, table, "latest.json")
        assert latest["run_id"] == "run-tables" and latest["as_of"] == generated["manifest"]["as_of"]
    ctr = meta["ctr"]
    assert ctr["rows"] == ctr["rows_train"] + ctr["rows_test"]
    assert ctr["split_date"] > generated["manifest"]["start_date"]
    assert 0 < ctr["positive_rate_test"] < 0.2 and 0 < meta["churn"]["censoring_rate"] < 1
    fractions = [f for _, f in generated["steps"]]
    assert fractions == sorted(fractions) and generated["steps"][-1] == ("done", 1.0)


def test_main_needs_ingested_data(settings, tmp_path):
    with pytest.raises(FailedPrecondition, match="ingest"):
        tt.main(_lake_settings(settings, tmp_path / "empty-lake"))


def test_ctr_users_hold_every_known_users_inputs_as_of_the_cut_off(generated):
    """features/ctr_users (what the profiles serve the CTR model) against a pandas computation from
    the raw files: every known user, paid orders, spend and the events of the lookback window."""
    from cluster.core.feature_io import CTR_USER_INPUTS

    lake = generated["lake"]
    meta = generated["meta"]["ctr_users"]
    users = lake.read_parquet(meta["path"]).set_index("user_id")
    assert list(users.columns) == [*CTR_USER_INPUTS, "as_of"]
    assert (users["as_of"] == meta["as_of"]).all() and meta["as_of"] == generated["manifest"]["as_of"]
    raw = {name: pd.read_parquet(lake.root / "raw" / name, columns=cols) for name, cols in (
        ("users", ["user_id"]), ("orders", ["user_id", "order_id", "order_time", "amount", "status"]),
        ("events", ["user_id", "ts"]), ("impressions", ["user_id"]))}
    known = set().union(*(set(frame["user_id"]) for frame in raw.values()))
    assert set(users.index) == known
    cut = pd.Timestamp(meta["as_of"], tz="UTC")
    paid = raw["orders"][raw["orders"]["status"] == "paid"]
    paid = paid[pd.to_datetime(paid["order_time"], utc=True) < cut]
    freq = paid.groupby("user_id")["order_id"].nunique()
    spend = paid.groupby("user_id")["amount"].sum().round(2)
    ts = pd.to_datetime(raw["events"]["ts"], utc=True)
    recent = raw["events"][(ts < cut) & (ts >= cut - pd.Timedelta(days=meta["lookback_days"]))]
    counts = recent.groupby("user_id").size()
    expect = pd.DataFrame({"frequency": freq, "monetary": spend, "events_recent": counts}).reindex(users.index).fillna(0)
    np.testing.assert_array_equal(users["frequency"].to_numpy(), expect["frequency"].to_numpy())
    np.testing.assert_allclose(users["monetary"].to_numpy(), expect["monetary"].to_numpy(), atol=0.011)
    np.testing.assert_array_equal(users["events_recent"].to_numpy(), expect["events_recent"].to_numpy())
    assert users["recency_days"].isna().sum() == len(known - set(freq.index))
