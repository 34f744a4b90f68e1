"""CTR model: held-out AUC against the generator's true click probabilities, class weighting and
calibration, the serving API on raw records, the Tune entry point (in-process and through Ray)."""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.feature_io import encode_ctr, feature_names
from cluster.core.storage import Zone, open_lake
from ray_apps.ctr.model import CtrModel, calibration_curve, column_groups
from ray_apps.ctr.train import ITERS_PER_ROUND, ROUNDS, SPEC, VALIDATION_FRACTION
from ray_apps.tuning import grid_configs, run_trial

#: 8,000 users, not the 4,000 of test_training_tables: at 4,000 the test split has ~350 clicks, the
#: paired standard error of (model - oracle) AUC is ~0.008 and the searched model's ratio was 0.986
#: for seed 7 but 0.965 for seed 8. At 8,000 (~725 test clicks): 0.9795 (seed 7, this file),
#: 0.972 (seed 8), 0.978 (seed 9); docs/models-ctr.md has the table.
GEN_USERS, GEN_DAYS, SEED = 8000, 180, 7
#: The issue's bar: test AUC at least this share of the AUC of the true p_click on the same rows.
#: Measured here: 0.6318 / 0.6450 = 0.9795, SE of the AUC difference 0.0047 (ratio SE ~0.007).
#: The same logistic regression with one L2 strength for every feature (C=0.1): 0.963.
MIN_ORACLE_RATIO = 0.97
BOOTSTRAP = 200


def _lake_settings(settings, root: Path):
    return settings.model_copy(update={"lake": settings.lake.model_copy(update={"root": root})})


# --- the estimator on small inline data ------------------------------------------------------------


def _tiny_spec(buckets: int = 8) -> dict:
    """A spec laid out like fit_ctr_spec's: 1 numeric, channel and city one-hot, a hashed block."""
    names = ["frequency:log1p", "channel=feed", "channel=search", "channel=__other__",
             "city=上海", "city=__other__"]
    return {
        "format": "pmkt.ctr-features/1", "inputs": ["channel", "city", "frequency", "ad_id"],
        "numeric": [{"input": "frequency", "transform": "log1p", "mean": 0.5, "std": 0.5}],
        "onehot": [{"input": "channel", "values": ["feed", "search"]}, {"input": "city", "values": ["上海"]}],
        "hashed": {"inputs": [["ad_id"]], "offset": len(names), "buckets": buckets},
        "size": len(names) + buckets, "feature_names": names,
    }


def _tiny_rows(n: int = 4000, seed: int = 0):
    """Search ads click more (logit +1.5 over feed), city and the ad id are noise."""
    rng = np.random.default_rng(seed)
    search = rng.random(n) < 0.4
    records = [{"channel": "search" if s else "feed", "city": "上海" if rng.random() < 0.5 else "北京",
                "frequency": int(rng.integers(0, 4)), "ad_id": f"ad{rng.integers(0, 50)}"} for s in search]
    y = (rng.random(n) < 1 / (1 + np.exp(-(-2.5 + 1.5 * search)))).astype(int)
    return records, y


def _encode(records, spec):
    rows = [encode_ctr(r, spec) for r in records]
    indptr = np.cumsum([0] + [len(i) for i, _ in rows])
    return sp.csr_matrix((np.concatenate([v for _, v in rows]), np.concatenate([i for i, _ in rows]), indptr),
                         shape=(len(rows), spec["size"]))


def test_group_scale_is_a_group_penalty_and_zero_drops_the_group():
    spec = _tiny_spec()
    records, y = _tiny_rows()
    X = _encode(records, spec)
    assert list(column_groups(spec)) == ["behaviour"] + ["ad"] * 3 + ["user"] * 2 + ["ids"] * 8
    full = CtrModel(C=1.0, user_scale=1.0, id_scale=1.0).fit(X, y, spec=spec)
    weak = CtrModel(C=1.0, user_scale=0.01, id_scale=0.01).fit(X, y, spec=spec)
    dropped = CtrModel(C=1.0, user_scale=0.0, id_scale=0.0).fit(X, y, spec=spec)
    coef = full.coefficients()
    assert coef["channel=search"] - coef["channel=feed"] == pytest.approx(1.5, abs=0.35)
    # a scale of 0.01 is a 10,000 times stronger penalty: the noise groups' weights all but vanish
    noise = lambda m: max(abs(v) for k, v in m.coefficients().items() if k.startswith(("city", "hash")))
    assert noise(weak) < 0.05 * noise(full)
    assert not any(k.startswith(("city", "hash")) for k in dropped.coefficients())
    assert set(dropped.coefficients()) == {"frequency:log1p", "channel=feed", "channel=search"}


def test_estimator_validates_and_scores_records_like_matrices():
    spec = _tiny_spec()
    records, y = _tiny_rows()
    with pytest.raises(InvalidArgument, match="C"):
        CtrModel(C=0).fit(sp.csr_matrix((2, spec["size"])), np.array([0, 1]), spec=spec)
    with pytest.raises(InvalidArgument, match="class_weight"):
        CtrModel(class_weight="auto").fit(sp.csr_matrix((2, spec["size"])), np.array([0, 1]), spec=spec)
    with pytest.raises(InvalidArgument, match="columns"):
        CtrModel().fit(sp.csr_matrix((2, 3)), np.array([0, 1]), spec=spec)
    with pytest.raises(FailedPrecondition, match="clicks"):
        CtrModel().fit(sp.csr_matrix((2, spec["size"])), np.array([0, 0]), spec=spec)
    with pytest.raises(FailedPrecondition, match="fitted"):
        CtrModel().predict_proba_records(records[:1])
    X = _encode(records, spec)
    model = CtrModel(C=0.5).fit(X, y, spec=spec)
    np.testing.assert_allclose(model.predict_proba_records(records[:50]), model.predict_proba(X[:50]), rtol=1e-12)
    # unknown keys, a missing key and None are unknown values, as in training
    p = model.predict_proba_records([{"channel": "tv"}, {"channel": None, "frequency": None}])
    assert p.shape == (2,) and np.all((p > 0) & (p < 1)) and p[0] == pytest.approx(p[1])
    assert model.predict_proba_records([]).shape == (0,)
    # refitting replaces the serving path's folded weights
    before = model.predict_proba_records(records[:50])
    model.C = 0.001
    model.fit(X, y, spec=spec)
    after = model.predict_proba_records(records[:50])
    np.testing.assert_allclose(after, model.predict_proba(X[:50]), rtol=1e-12)
    assert not np.allclose(after, before)


def test_calibration_curve_uses_equal_count_bins():
    p = np.linspace(0.0, 0.1, 1000)
    y = (np.arange(1000) % 20 == 0).astype(int)
    curve = calibration_curve(y, p, bins=10)
    assert [c["count"] for c in curve] == [100] * 10
    assert [c["mean_predicted"] for c in curve] == sorted(c["mean_predicted"] for c in curve)
    assert sum(c["observed_rate"] * c["count"] for c in curve) == pytest.approx(y.sum())


# --- generated data with a planted click model -------------------------------------------------------


@pytest.fixture(scope="module")
def generated(settings, spark, tmp_path_factory):
    """Synthetic data, ingested, the training tables built, and the CTR data set loaded."""
    from cluster.datagen import generate
    from spark_jobs import ingest
    from spark_jobs import training_tables as tt

    base = tmp_path_factory.mktemp("ctr-model")
    generate(base / "input", users=GEN_USERS, days=GEN_DAYS, seed=SEED)
    s = _lake_settings(settings, base / "lake")
    ingest.main(s, base / "input", run_id="run-ingest")
    meta = tt.main(s, run_id="run-tables")
    truth = pd.read_csv(base / "input" / "_truth" / "impressions.csv").set_index("impression_id")["p_click"]
    return {"settings": s, "meta": meta, "dataset": SPEC.load(s, False), "p_click": truth}


@pytest.fixture(scope="module")
def search(generated):
    """The full grid run in-process (as the runner's grid would run it), and its refit."""
    data = generated["dataset"].data
    rows = []
    for config in grid_configs(SPEC.space(generated["settings"], False)):
        reports = run_trial(SPEC, config, data)
        rows.append({"config": config, **reports[-1], "reports": reports})
    best = max(rows, key=lambda r: r[SPEC.metric])
    return {"rows": rows, "best": best, "fitted": SPEC.fit(dict(best["config"]), data, rows)}


def test_load_splits_train_by_time_and_keeps_test_apart(generated):
    ds = generated["dataset"]
    data = ds.data
    meta = generated["meta"]["ctr"]
    assert ds.feature_run_id == "run-tables"
    assert len(data.y_train) == meta["rows_train"] and len(data.y_test) == meta["rows_test"]
    assert len(data.y_fit) + len(data.y_val) == len(data.y_train)
    assert len(data.y_val) == pytest.approx(VALIDATION_FRACTION * len(data.y_train), abs=1)
    assert set(data.train_ids).isdisjoint(data.test_ids)
    lake = open_lake(generated["settings"])
    ts = pd.concat([lake.read_parquet(Zone.FEATURES, f"ctr_train/run=run-tables/split={s}",
                                      columns=["impression_id", "ts"]) for s in ("train", "test")])
    ts = ts.set_index("impression_id")["ts"]
    train_ts = ts.reindex(data.train_ids).to_numpy()
    is_val = np.zeros(len(train_ts), dtype=bool)
    is_val[data.val_rows] = True
    # validation rows are the latest train rows; test rows are later than every train row
    assert train_ts[~is_val].max() <= train_ts[is_val].min()
    assert train_ts.max() < ts.reindex(data.test_ids).min()
    assert str(train_ts[is_val].min()) == data.val_from
    np.testing.assert_array_equal(data.y_val, data.y_train[data.val_rows])
    again = pickle.loads(pickle.dumps(data))  # shipped to the trials through the object store
    assert (again.X_val != data.X_val).nnz == 0


def test_load_without_tables_names_the_command(settings, tmp_path):
    with pytest.raises(FailedPrecondition, match="pmkt features tables"):
        SPEC.load(_lake_settings(settings, tmp_path / "empty-lake"), True)


def test_trials_report_every_round_and_stop_when_converged(search):
    for row in search["rows"]:
        reports = row["reports"]
        assert 1 <= len(reports) <= ROUNDS
        iters = [r["lbfgs_iterations"] for r in reports]
        # every round but the last used its whole L-BFGS budget: a trial stops in the round in
        # which L-BFGS converges (a round may find it converged at the start and run none)
        assert iters[:-1] == [ITERS_PER_ROUND * (k + 1) for k in range(len(iters) - 1)]
        assert iters[-1] - (iters[-2] if len(iters) > 1 else 0) <= ITERS_PER_ROUND
        assert reports[-1]["converged"] == 1 or len(reports) == ROUNDS
        assert all(r["converged"] == 0 for r in reports[:-1])
        assert 0.55 < reports[-1]["val_auc"] < 0.75 and reports[-1]["val_logloss"] > 0
    # more than one round per trial on average: there is something for ASHA to stop early
    assert np.mean([len(r["reports"]) for r in search["rows"]]) >= 2


def test_test_auc_reaches_the_oracle_and_does_not_beat_it(generated, search):
    """The oracle is the generator's own p_click of each test impression. Features only proxy the
    user's archetype and top category (which the click model uses), so the model must stay below
    it: more than noise above it means the label leaked into a feature."""
    data = generated["dataset"].data
    fitted = search["fitted"]
    model = fitted.model
    p_model = model.predict_proba(data.X_test)
    y = data.y_test
    auc = roc_auc_score(y, p_model)
    assert auc == pytest.approx(fitted.metrics["test_auc"], abs=1e-6)
    p_true = generated["p_click"].loc[data.test_ids].to_numpy()
    oracle = roc_auc_score(y, p_true)
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(y), len(y))
        boot.append(roc_auc_score(y[i], p_model[i]) - roc_auc_score(y[i], p_true[i]))
    se_diff = float(np.std(boot))
    line = (f"test AUC {auc:.4f} vs oracle {oracle:.4f}: ratio {auc / oracle:.4f} "
            f"(SE of the difference {se_diff:.4f}); best {search['best']['config']}")
    print("\n" + line)
    assert auc / oracle >= MIN_ORACLE_RATIO, line
    assert auc < oracle + 3 * se_diff, "leak? " + line


def test_the_registered_model_predicts_click_rates_whatever_the_weighting(generated):
    """Balanced weights with the prior correction: the same ranking, and click rates again."""
    data = generated["dataset"].data
    observed = float(np.mean(data.y_test))
    model = CtrModel(C=0.1, class_weight="balanced", user_scale=0.1, id_scale=0.1).fit(
        data.X_train, data.y_train, spec=data.spec)
    raw = model.predict_proba(data.X_test)
    corrected = model.correct_prior(data.y_train).predict_proba(data.X_test)
    assert raw.mean() > 5 * observed
    assert abs(corrected.mean() - observed) < 0.3 * observed, (corrected.mean(), observed)
    assert roc_auc_score(data.y_test, corrected) == pytest.approx(roc_auc_score(data.y_test, raw), abs=1e-12)
    none = CtrModel(C=0.1, user_scale=0.1, id_scale=0.1).fit(data.X_train, data.y_train, spec=data.spec)
    assert none.correct_prior(data.y_train).predict_proba(data.X_test) == pytest.approx(
        none.predict_proba(data.X_test))


def test_balanced_weights_inflate_probabilities_and_the_comparison_is_recorded(search):
    m = search["fitted"].metrics
    none, balanced = m["class_weight"]["none"], m["class_weight"]["balanced"]
    observed = none["observed_rate"]
    assert 0.01 < observed < 0.2 and balanced["observed_rate"] == observed
    # unweighted: calibrated in the large (the test weeks' click rate drifts a little from train's)
    assert abs(none["mean_predicted"] - observed) < 0.25 * observed, none
    # balanced: each class weighs half, so the average prediction moves towards 0.5
    assert balanced["mean_predicted"] > 5 * observed, balanced
    assert balanced["logloss"] > none["logloss"] + 0.1
    for curve, factor in ((none["calibration"], None), (balanced["calibration"], 3.0)):
        assert len(curve) == 10 and sum(b["count"] for b in curve) == search["fitted"].metrics["rows_test"]
        assert curve[-1]["observed_rate"] > curve[0]["observed_rate"]  # the ranking holds in both
        if factor:
            assert all(b["mean_predicted"] > factor * max(b["observed_rate"], 0.01) for b in curve)
    # ranking: weighting the rare clicks buys no AUC here (within noise either way)
    assert abs(none["auc"] - balanced["auc"]) < 0.02
    json.dumps({"metrics": m, "params": search["fitted"].params}, allow_nan=False)  # stored as JSON


def test_coefficients_are_named_and_recover_the_planted_ad_effects(search):
    fitted = search["fitted"]
    model = fitted.model
    top = fitted.metrics["top_features"]
    names = set(feature_names(model.spec_))
    assert len(top) == 25 and all(t["feature"] in names for t in top)
    assert [abs(t["coef"]) for t in top] == sorted((abs(t["coef"]) for t in top), reverse=True)
    c = model.coefficients()
    # datagen CLICK_MODEL against feed: search +0.7, sms -1.0, email -1.6 (but email reaches few
    # users: a few hundred impressions, shrunk towards 0); position -0.18 per slot
    assert c["channel=search"] > c["channel=feed"] > c["channel=sms"]
    assert c["channel=email"] < c["channel=feed"] - 0.3
    assert c["ad_position=1"] > c["ad_position=3"] > c["ad_position=6"]
    assert c["device_type=ios"] > c["device_type=pc"]
    p = fitted.params
    assert p["feature_spec_format"] == model.spec_["format"] and p["feature_spec_size"] == model.spec_["size"]
    assert p["config"] == search["best"]["config"]


def test_serving_records_score_like_the_stored_vectors(generated, search):
    model = search["fitted"].model
    data = generated["dataset"].data
    rows = open_lake(generated["settings"]).read_parquet(
        Zone.FEATURES, "ctr_train/run=run-tables/split=test").head(300)
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items() if k in model.inputs}
               for r in rows.to_dict("records")]
    position = {i: k for k, i in enumerate(data.test_ids)}
    X = data.X_test[[position[i] for i in rows["impression_id"]]]
    expected = model.predict_proba(X)
    np.testing.assert_allclose(model.predict_proba_records(records), expected, rtol=1e-9)
    # a request carries ad_position as a number
    as_int = [{**r, "ad_position": int(r["ad_position"])} for r in records]
    np.testing.assert_allclose(model.predict_proba_records(as_int), expected, rtol=1e-9)
    buf = io.BytesIO()
    joblib.dump(model, buf)  # what the registry stores
    buf.seek(0)
    np.testing.assert_array_equal(joblib.load(buf).predict_proba_records(records), model.predict_proba_records(records))


def test_serving_code_does_not_import_spark(spark_free_import):
    spark_free_import("ray_apps.ctr.train", "ray_apps.ctr.model", "ray_apps.ctr.service")


def test_the_search_runs_through_ray_tune_and_registers_a_servable_model(generated, tune_and_load):
    """The same family through `pmkt tune`'s runner: ASHA trials in Ray workers, refit, registry."""
    outcome, model, mv = tune_and_load(generated["settings"], SPEC, scheduler="asha", trials=3, smoke_test=True)
    assert outcome.complete and len(outcome.trials) == 3
    assert 3 <= outcome.compute["iterations"] <= 3 * ROUNDS
    assert mv.feature_run_id == "run-tables" and mv.params["tuned"] == outcome.best_config
    assert mv.metrics["test_auc"] > 0.55
    p = model.predict_proba_records([{"channel": "search", "ad_position": 1}, {"channel": "email", "ad_position": 1}])
    assert 0 < p[1] < p[0] < 1
