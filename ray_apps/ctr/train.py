"""The CTR model family for ``pmkt tune ctr``: load, search space, trial and refit.

* **Data.** The newest CTR training table (``pmkt features tables``). Its ``train`` split is
  earlier in time than ``test``; ``train`` is split again by time into *fit* (the earlier
  ``1 - VALIDATION_FRACTION``) and *validation* rows. Trials learn on fit rows and report on
  validation rows; the test split is touched only by :func:`fit`, for the version's metrics.
* **Search space.** L2 strength ``C`` on a log grid, class weighting (``None`` or ``balanced``)
  and the regularisation scale of the two sparse feature groups (``user_scale``, ``id_scale``,
  see :mod:`ray_apps.ctr.model`).
* **Trial.** L-BFGS in rounds of :data:`ITERS_PER_ROUND` iterations, warm-started; validation
  AUC and log loss after every round, so ASHA can stop a weak configuration after the first.
* **Refit.** The best configuration on all train rows; test AUC, log loss and a calibration curve,
  the same for the other class weighting (the comparison the issue asks for), and the largest
  coefficients by name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cluster.core.catalog import CTR_TRAIN
from cluster.core.errors import FailedPrecondition, NotFound
from cluster.core.settings import Settings
from cluster.core.storage import open_lake
from ray_apps.ctr.model import CtrModel, calibration_curve
from ray_apps.tuning import Dataset, Fitted, family_spec

__all__ = [
    "ITERS_PER_ROUND",
    "ROUNDS",
    "SPEC",
    "VALIDATION_FRACTION",
    "CtrData",
    "evaluate",
    "fit",
    "load",
    "space",
    "trial",
]

log = logging.getLogger(__name__)

#: Share of the train split (its latest impressions) held out to score trials.
VALIDATION_FRACTION = 0.2
#: Reports of a full trial (ASHA's ``max_t``; with its reduction factor 3 the rungs are 1, 3, 9).
ROUNDS = 9
#: L-BFGS iterations between two reports. A trial stops in the round in which L-BFGS converges
#: (22-135 iterations on the generated data; the few that need more are cut at 9 x 15).
ITERS_PER_ROUND = 15
#: Iteration cap of the final refit.
REFIT_MAX_ITER = 2000
#: Coefficients listed in the version's metrics.
TOP_FEATURES = 25
_BUILD = "pmkt features tables"


@dataclass
class CtrData:
    """What every trial gets: fit and validation rows, and the train and test splits for the refit."""

    X_fit: Any  # scipy.sparse.csr_matrix
    y_fit: np.ndarray
    X_val: Any
    y_val: np.ndarray
    X_train: Any  # fit + validation rows, for the refit
    y_train: np.ndarray
    X_test: Any
    y_test: np.ndarray
    #: Impression ids of the train rows (in ``X_train`` order) and of the test rows.
    train_ids: list[str]
    test_ids: list[str]
    #: Positions in the train rows of the validation rows (the rest are the fit rows).
    val_rows: np.ndarray
    spec: dict
    #: First impression time of the validation rows (ISO, UTC).
    val_from: str


def _model_params(config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "C": float(config["C"]),
        "class_weight": config.get("class_weight"),
        "user_scale": float(config.get("user_scale", 1.0)),
        "id_scale": float(config.get("id_scale", 1.0)),
    }


def load(settings: Settings, smoke_test: bool = False) -> Dataset:
    """Read the newest CTR table and split its train rows by time into fit and validation rows.

    Args:
        settings: Platform settings (the lake).
        smoke_test: Unused: the table is read whole either way (the smoke test shrinks the space).

    Returns:
        A :class:`~ray_apps.tuning.Dataset` whose ``data`` is a :class:`CtrData`.

    Raises:
        FailedPrecondition: no CTR table, an empty split, or a split with a single class.
    """
    from cluster.core.feature_io import load_ctr_matrix

    lake = open_lake(settings)
    meta = CTR_TRAIN.require_latest(lake)
    run_id = meta["run_id"]
    try:
        train = load_ctr_matrix(lake, "train", run_id=run_id)
        test = load_ctr_matrix(lake, "test", run_id=run_id)
    except NotFound as e:
        raise FailedPrecondition(f"CTR table run {run_id} is incomplete ({e}): run `{_BUILD}` again") from e
    for name, split in (("train", train), ("test", test)):
        if len(split.y) == 0 or len(np.unique(split.y)) < 2:
            raise FailedPrecondition(
                f"the CTR table's {name} split has {len(split.y)} rows and "
                f"{int(np.sum(split.y))} clicks; it needs both clicks and non-clicks: ingest more impressions "
                f"and run `{_BUILD}`")
    # The vectors carry no time; the table's ts column does (joined by id, not by row order).
    times = CTR_TRAIN.read_parquet(lake, run_id, "split=train", columns=["impression_id", "ts"])
    ts = times.set_index("impression_id")["ts"].reindex(train.impression_ids).to_numpy()
    order = np.argsort(ts, kind="stable")
    n_val = max(1, round(VALIDATION_FRACTION * len(order)))
    fit_rows, val_rows = np.sort(order[:-n_val]), np.sort(order[-n_val:])
    y = train.y
    if len(np.unique(y[fit_rows])) < 2 or len(np.unique(y[val_rows])) < 2:
        raise FailedPrecondition(f"too few clicks to split the CTR train rows into fit and validation: "
                                 f"ingest more impressions and run `{_BUILD}`")
    val_from = str(np.asarray(ts)[order[-n_val]])
    data = CtrData(
        X_fit=train.X[fit_rows], y_fit=y[fit_rows], X_val=train.X[val_rows], y_val=y[val_rows],
        X_train=train.X, y_train=y, X_test=test.X, y_test=test.y, train_ids=list(train.impression_ids),
        test_ids=list(test.impression_ids), val_rows=val_rows, spec=train.spec, val_from=val_from,
    )
    info = {
        "rows_fit": len(fit_rows), "rows_val": len(val_rows), "rows_test": len(test.y),
        "positive_rate_fit": round(float(y[fit_rows].mean()), 6),
        "positive_rate_val": round(float(y[val_rows].mean()), 6),
        "positive_rate_test": round(float(test.y.mean()), 6),
        "val_from": val_from, "test_from": meta.get("split_date", ""), "as_of": meta.get("as_of", ""),
        "features": int(train.spec["size"]),
    }
    log.info("CTR table %s: %d fit, %d validation (from %s), %d test rows", run_id, len(fit_rows),
             len(val_rows), val_from, len(test.y))
    return Dataset(data, run_id, info)


def space(settings: Settings, smoke_test: bool = False) -> dict[str, list[Any]]:
    """The search space (see the module docstring and docs/models-ctr.md for the reasons)."""
    if smoke_test:
        return {"C": [0.1, 1.0], "class_weight": [None], "user_scale": [0.3], "id_scale": [0.3]}
    return {
        # Half-decade steps: AUC moves by about 0.005 between neighbours around the optimum.
        "C": [0.01, 0.03, 0.1, 0.3, 1.0],
        "class_weight": [None, "balanced"],
        # 1 = the same L2 as the dense groups; 0.1 = 100 times stronger.
        "user_scale": [0.1, 1.0],
        "id_scale": [0.1, 0.3, 1.0],
    }


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    return {
        "auc": float(roc_auc_score(y, p)),
        "logloss": float(log_loss(y, np.clip(p, 1e-12, 1 - 1e-12), labels=[0, 1])),
        "mean_predicted": float(np.mean(p)),
        "observed_rate": float(np.mean(y)),
    }


def trial(config: dict, data: CtrData) -> Iterator[dict]:
    """One configuration: L-BFGS rounds on the fit rows, validation metrics after each round.

    Yields:
        ``val_auc``, ``val_logloss``, ``val_mean_predicted`` (against ``val_observed_rate``),
        ``lbfgs_iterations`` (so far) and ``converged``; at most :data:`ROUNDS` times, fewer when
        L-BFGS converges earlier.
    """
    model = CtrModel(**_model_params(config), max_iter=ITERS_PER_ROUND)
    for _ in range(ROUNDS):
        model.partial_fit(data.X_fit, data.y_fit, spec=data.spec)
        s = _scores(data.y_val, model.predict_proba(data.X_val))
        yield {
            "val_auc": s["auc"],
            "val_logloss": s["logloss"],
            "val_mean_predicted": s["mean_predicted"],
            "val_observed_rate": s["observed_rate"],
            "lbfgs_iterations": model.n_iter_,
            "converged": int(model.converged_),
        }
        if model.converged_:
            return


def evaluate(model: CtrModel, X: Any, y: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Test metrics of a fitted model: AUC, log loss, mean predicted vs observed, calibration curve."""
    p = model.predict_proba(X)
    s = _scores(y, p)
    return {**{k: round(v, 6) for k, v in s.items()}, "calibration": calibration_curve(y, p, bins)}


def fit(config: dict, data: CtrData, trial_rows: list[dict]) -> Fitted:
    """Refit ``config`` on all train rows and compute the version's metrics on the test split.

    The other class weighting (``balanced`` if the chosen one is ``None`` and vice versa) is fitted
    with the same other parameters and evaluated on the same rows, so the version records what
    re-weighting the rare clicks does to ranking (AUC) and to calibration.

    Returns:
        :class:`~ray_apps.tuning.Fitted` with a :class:`~ray_apps.ctr.model.CtrModel`.
    """
    params = _model_params(config)
    model = CtrModel(**params, max_iter=REFIT_MAX_ITER).fit(data.X_train, data.y_train, spec=data.spec)
    raw = evaluate(model, data.X_test, data.y_test)  # as fitted: the class-weight comparison
    # The registered model answers click probabilities whatever the weighting the search chose.
    test = evaluate(model.correct_prior(data.y_train), data.X_test, data.y_test)
    other_cw = None if params["class_weight"] == "balanced" else "balanced"
    other = CtrModel(**{**params, "class_weight": other_cw}, max_iter=REFIT_MAX_ITER).fit(
        data.X_train, data.y_train, spec=data.spec)
    other_test = evaluate(other, data.X_test, data.y_test)
    label = {None: "none", "balanced": "balanced"}
    best_val = max((r for r in trial_rows if r.get("val_auc") is not None), key=lambda r: r["val_auc"], default=None)
    metrics = {
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "test_mean_predicted": test["mean_predicted"],
        "test_observed_rate": test["observed_rate"],
        "calibration": test["calibration"],
        "val_auc": None if best_val is None else round(float(best_val["val_auc"]), 6),
        # Both weightings as fitted (no prior correction): what re-weighting does to ranking and calibration.
        "class_weight": {label[params["class_weight"]]: raw, label[other_cw]: other_test},
        "prior_correction": round(float(getattr(model, "logit_offset_", 0.0)), 6),
        "top_features": model.top_features(TOP_FEATURES),
        "intercept": round(model.intercept, 6),
        "features_used": len(model.columns_),
        "rows_train": len(data.y_train),
        "rows_test": len(data.y_test),
        "lbfgs_iterations": int(model.n_iter_),
    }
    spec = data.spec
    out_params = {
        **model.get_params(),
        "config": dict(config),
        "feature_spec_format": spec.get("format"),
        "feature_spec_size": int(spec["size"]),
        "hash_buckets": int(spec["hashed"]["buckets"]),
        "inputs": list(spec["inputs"]),
        "validation_fraction": VALIDATION_FRACTION,
        "val_from": data.val_from,
    }
    return Fitted(model, metrics, out_params)


SPEC = family_spec(__name__, "ctr", metric="val_auc", mode="max", max_iterations=ROUNDS, default_trials=20,
                   description="logistic regression on the CTR table; L2 strength, class weights, sparse-group scales")
