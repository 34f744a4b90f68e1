"""Predicted static attributes (gender): the feature table, the tuned classifier and its calibration,
predictions in the profile store (never over a declared value, stale ones retracted, re-runs
idempotent) and GetProfile's rendering of predicted against declared values."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
from google.protobuf.json_format import MessageToDict

from cluster.core.errors import FailedPrecondition
from cluster.core.settings import AttributeSettings
from cluster.core.storage import Zone, decode_str, open_lake, open_profile_store
from ray_apps.attributes.cells import decode_prediction, predicted_cell
from ray_apps.attributes.model import AttributeModel, reliability_table
from ray_apps.profiles.service import ProfileLookup

CELL = predicted_cell("gender")


def _snapshot(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT user_id, col, value FROM cells ORDER BY user_id, col").fetchall()


@pytest.fixture(scope="module")
def attr(built_tables, tmp_path_factory):
    """Attribute features built into the shared lake (a new table), the family searched in process
    and registered, the profiles' declared genders written to a private SQLite store, and one
    prediction run."""
    from ray_apps.attributes import service, train
    from ray_apps.registry import open_registry
    from ray_apps.tuning import grid_configs, run_trial
    from spark_jobs import attributes

    base = built_tables["settings"]
    store_path = tmp_path_factory.mktemp("attr-store") / "profiles.sqlite"
    s = base.model_copy(update={"profile_store": base.profile_store.model_copy(update={"sqlite_path": store_path})})
    meta = attributes.main(s, run_id="run-attributes")
    lake = open_lake(s)
    features = lake.read_parquet(meta["path"])
    users = pd.read_parquet(lake.uri(Zone.RAW, "users").removeprefix("file://"), columns=["user_id", "gender"])

    dataset = train.SPEC.load(s, False)
    rows = [{"config": c, **run_trial(train.SPEC, c, dataset.data)[-1]} for c in grid_configs(train.space(s))]
    best = min(rows, key=lambda r: r["val_log_loss"])
    fitted = train.SPEC.fit(best["config"], dataset.data, rows)
    mv = open_registry(s, lake).register("attributes", fitted.model, metrics=fitted.metrics, params=fitted.params,
                                      feature_run_id=dataset.feature_run_id)

    # What the profile build writes for the declared attribute (spark_jobs/profiles.py: a:gender
    # from raw users, absent when empty), without rebuilding the shared lake's profiles.
    store = open_profile_store(s)
    declared = {u: g for u, g in zip(users["user_id"], users["gender"]) if isinstance(g, str) and g.strip()}
    store.write_batch((u, {"a:gender": g, "a:city": "北京"}) for u, g in declared.items())
    store.close()
    first = service.predict_and_store(s)
    return {"settings": s, "meta": meta, "features": features, "users": users, "declared": declared,
            "dataset": dataset, "fitted": fitted, "mv": mv, "first": first, "store_path": store_path}


def test_feature_table_has_one_row_per_user_with_the_declared_value(attr):
    f, users = attr["features"], attr["users"]
    assert f["user_id"].is_unique
    assert set(users["user_id"]) <= set(f["user_id"])
    raw = dict(zip(users["user_id"], users["gender"]))
    declared = f.set_index("user_id")["declared"]
    for uid, g in list(raw.items())[:500]:
        expected = g.strip() if isinstance(g, str) and g.strip() else None
        assert (declared[uid] if isinstance(declared[uid], str) else None) == expected
    assert set(declared.dropna()) == {"M", "F"}
    assert attr["meta"]["declared"] == int(declared.notna().sum())
    # Each share group sums to 1 for a user with rows behind it (to float rounding).
    for prefix, count in (("view_share__", "views"), ("hour_share__", "events"), ("device_share__", "events")):
        cols = [c for c in f.columns if c.startswith(prefix)]
        active = f[count] > 0
        assert len(cols) >= 4 and active.sum() > 0.9 * len(f)
        np.testing.assert_allclose(f.loc[active, cols].sum(axis=1), 1.0, atol=1e-9)
        assert (f.loc[~active, cols].sum(axis=1) == 0).all()
    buyers = f["paid_orders"] > 0
    assert (f.loc[buyers, "mean_unit_price"] > 0).all() and f.loc[~buyers, "mean_unit_price"].isna().all()


def test_split_is_deterministic_disjoint_and_near_its_shares(attr):
    from ray_apps.attributes.train import split_sides

    data = attr["dataset"].data
    sides = {k: set(getattr(data, k)["user_id"]) for k in ("train", "valid", "test")}
    assert not (sides["train"] & sides["test"]) and not (sides["valid"] & sides["test"])
    ids = pd.Series(sorted(set().union(*sides.values())))
    again = split_sides(ids, data.test_percent, data.valid_percent)
    assert set(ids[again == "test"]) == sides["test"]
    n = len(ids)
    for side, pct in (("test", data.test_percent), ("valid", data.valid_percent)):
        share = len(sides[side]) / n
        # The hash behaves like a fair draw: the share is within 4 binomial standard errors.
        assert abs(share - pct / 100) < 4 * math.sqrt(pct / 100 * (1 - pct / 100) / n), (side, share)


def test_model_beats_the_majority_class_on_held_out_users(attr):
    m = attr["fitted"].metrics
    n = m["test_users"]
    acc = m["test_accuracy"]
    # The standard error of an accuracy on n users is sqrt(acc (1 - acc) / n); 3 of them make a
    # chance win of the model over the majority baseline about a 1-in-700 event.
    se = math.sqrt(acc * (1 - acc) / n)
    assert acc - m["majority_accuracy"] > 3 * se, (acc, m["majority_accuracy"], se)
    assert m["test_log_loss"] < m["prior_log_loss"]
    assert m["classes"] == ["F", "M"] and m["majority_class"] in ("F", "M")
    # The version records the abstention rule and what it keeps.
    assert m["min_probability"] == attr["settings"].attributes.min_probability
    assert 0 < m["test_coverage"] <= 1 and m["test_stored_accuracy"] >= acc


def test_probabilities_are_calibrated_on_held_out_users(attr):
    m = attr["fitted"].metrics
    table = m["reliability"]
    n = sum(r["count"] for r in table)
    assert n == m["test_users"]
    # A calibrated model's observed rate in a bin scatters around its mean prediction with standard
    # error sqrt(p (1 - p) / n_bin): the bound lets every bin be off by 3 of them (weighted like the ECE).
    bound = sum(r["count"] / n * 3 * math.sqrt(r["mean_predicted"] * (1 - r["mean_predicted"]) / r["count"])
                for r in table)
    assert m["test_ece"] < bound, (m["test_ece"], bound)
    # And no single bin off by more than 4 of its standard errors (at most 10 bins: a calibrated
    # model trips this by chance with probability below 10 x 6e-5).
    for r in table:
        se = math.sqrt(r["mean_predicted"] * (1 - r["mean_predicted"]) / r["count"])
        assert abs(r["observed_rate"] - r["mean_predicted"]) < 4 * se, r
    assert all(r["p_low"] <= r["mean_predicted"] <= r["p_high"] for r in table)


def test_ece_tells_calibrated_from_overconfident_probabilities():
    rng = np.random.default_rng(3)
    n = 20_000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < conf  # calibrated by construction

    def ece(c):
        t = reliability_table(correct, c, 10)
        return sum(r["count"] * abs(r["mean_predicted"] - r["observed_rate"]) for r in t) / n

    # Calibrated: only sampling noise, about sqrt(0.25 / 2000) per bin (~0.01); pushed towards 1 the
    # gap is about 0.1 by construction.
    assert ece(conf) < 0.02
    assert ece(1 - (1 - conf) ** 3) > 0.08


def test_predictions_are_stored_only_for_users_without_a_declared_value(attr):
    s, first, declared = attr["settings"], attr["first"], attr["declared"]
    f = attr["features"]
    undeclared = set(f.loc[f["declared"].isna(), "user_id"])
    assert first["scored"] == len(undeclared)
    store = open_profile_store(s)
    live = {}
    for uid in set(f["user_id"]):
        cells = store.read(uid, columns=["a:gender", CELL]) or {}
        pred = decode_prediction(cells.get(CELL))
        if uid in declared:
            assert pred is None and decode_str(cells["a:gender"]) == declared[uid]
        elif pred is not None:
            live[uid] = pred
    assert set(live) <= undeclared
    assert len(live) == first["stored"] > 0
    assert first["abstained"] == len(undeclared) - len(live)
    mv = attr["mv"]
    for pred in live.values():
        assert pred["value"] in ("M", "F") and pred["model_version"] == mv.ref
        assert s.attributes.min_probability <= pred["probability"] <= 1
    # The live users are recorded for the next run's stale check.
    assert open_lake(s).read_json(Zone.REPORTS, "attributes", "gender-stored.json") == sorted(live)


def test_a_declared_value_is_never_overwritten(attr):
    """A user declared in the profile but not (yet) in the features, with the behaviour of the
    user the model is surest about, keeps the declared value and gets no prediction."""
    from ray_apps.attributes.service import store_predictions

    s, mv = attr["settings"], attr["mv"]
    model = attr["fitted"].model
    f = attr["features"]
    undeclared = f[f["declared"].isna()]
    values, probs = model.predict(undeclared)
    surest = int(np.argmax(probs))
    assert probs[surest] >= s.attributes.min_probability  # eligible: it would be stored
    opposite = "M" if values[surest] == "F" else "F"
    clone = undeclared.iloc[[surest]].assign(user_id="u_declared_clone")
    store = open_profile_store(s)
    store.write_batch([("u_declared_clone", {"a:gender": opposite})])
    counts = store_predictions(store, clone, model, mv.ref, target="gender",
                               min_probability=s.attributes.min_probability)
    cells = store.read("u_declared_clone")
    assert counts["declared_in_store"] == 1 and counts["written"] == 0 and counts["live"] == []
    assert decode_str(cells["a:gender"]) == opposite and CELL not in cells
    p = ProfileLookup(store, None, 64).get("u_declared_clone")
    assert p.attributes.gender == opposite and len(p.predicted) == 0


def test_a_user_who_declares_later_shows_the_declared_value_and_the_prediction_is_retracted(attr):
    from ray_apps.attributes.service import store_predictions

    s, mv = attr["settings"], attr["mv"]
    store = open_profile_store(s)
    lookup = ProfileLookup(store, None, 64)
    f = attr["features"]
    live = open_lake(s).read_json(Zone.REPORTS, "attributes", "gender-stored.json")
    uid = live[0]
    before = lookup.get(uid)
    assert before.attributes.gender == "" and before.predicted[0].name == "gender"
    declared = "M" if before.predicted[0].value == "F" else "F"  # the prediction was wrong, say
    store.write_batch([(uid, {"a:gender": declared})])  # the next profile build brings it in
    # At once, before any prediction run: the declared value shows, the prediction does not.
    now = lookup.get(uid)
    assert now.attributes.gender == declared and len(now.predicted) == 0
    # The next run (features now declared too) retracts the stale cell; a further run changes nothing.
    later = f[f["user_id"] == uid].assign(declared=declared)
    counts = store_predictions(store, later, attr["fitted"].model, mv.ref, target="gender",
                               min_probability=s.attributes.min_probability, previous=[uid])
    assert counts["retracted"] == 1 and counts["scored"] == 0
    cells = store.read(uid)
    assert decode_prediction(cells[CELL]) is None and decode_str(cells["a:gender"]) == declared
    again = store_predictions(store, later, attr["fitted"].model, mv.ref, target="gender",
                              min_probability=s.attributes.min_probability, previous=[uid])
    assert again["retracted"] == 0 and again["written"] == 0


def test_rerun_is_idempotent(attr, tmp_path):
    from ray_apps.attributes import service

    s = attr["settings"]
    path = s.profile_store.sqlite_path
    before = _snapshot(path)
    second = service.predict_and_store(s)
    assert second["written"] == 0 and second["retracted"] == 0
    assert second["unchanged"] == second["stored"]
    assert _snapshot(path) == before


def _as_dict(message) -> dict:
    # What GET /v1/users/{id}/profile answers: ray_apps/serve/api.py renders the same Profile message
    # with these options (its _as_dict; not imported, to keep the Serve stack out of a unit test).
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def test_getprofile_renders_predicted_next_to_declared(attr):
    s = attr["settings"]
    store = open_profile_store(s)
    lookup = ProfileLookup(store, None, 64)
    live = open_lake(s).read_json(Zone.REPORTS, "attributes", "gender-stored.json")
    uid = live[-1]
    cell = decode_prediction(store.read(uid, columns=[CELL])[CELL])
    p = lookup.get(uid)
    assert p.attributes.gender == ""
    assert [(x.name, x.value, x.probability, x.model_version) for x in p.predicted] == \
        [("gender", cell["value"], cell["probability"], attr["mv"].ref)]
    body = _as_dict(p)
    assert body["attributes"]["gender"] == ""
    assert body["predicted"] == [{"name": "gender", "value": cell["value"], "probability": cell["probability"],
                                  "model_version": attr["mv"].ref}]
    assert MessageToDict(lookup.get(uid, ["predicted"]), preserving_proto_field_name=True)["predicted"] == \
        body["predicted"]
    declared_uid = next(iter(attr["declared"]))
    d = _as_dict(lookup.get(declared_uid))
    assert d["attributes"]["gender"] == attr["declared"][declared_uid] and d["predicted"] == []


def test_settings_and_preconditions(attr, tmp_path):
    from ray_apps.attributes import service

    with pytest.raises(ValueError, match="test_percent"):
        AttributeSettings(test_percent=40, valid_percent=30)
    s = attr["settings"]
    other = s.model_copy(update={"attributes": s.attributes.model_copy(update={"target": "city"})})
    with pytest.raises(FailedPrecondition, match="attributes.target"):
        service.predict_and_store(other)
    with pytest.raises(FailedPrecondition, match="no attributes model"):
        service.predict_and_store(s.model_copy(update={"lake": s.lake.model_copy(update={"root": tmp_path})}))
    with pytest.raises(FailedPrecondition):
        AttributeModel().fit(attr["features"].assign(declared="F"))
