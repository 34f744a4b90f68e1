"""``pmkt tune attributes``: the attribute classifier family for the generic Tune runner (:mod:`ray_apps.tuning`).

* **Data.** The newest attribute feature table (``features/attributes``, built by
  :mod:`spark_jobs.attributes`); only users with a declared value have a label. They are split
  by a hash of their id, ``b = hash_bucket("attributes/" + user_id, 100)``: *test* when
  ``b < attributes.test_percent``, *validation* when below ``test_percent + valid_percent``,
  *train* otherwise. The split is the same on every run and machine, and a user stays on their
  side as the table grows.
* **Search space.** The L2 strength ``C`` on a half-decade log grid, crossed with the share
  transform (raw shares or smoothed log shares, :mod:`ray_apps.attributes.model`); trials fit on
  the train users and report the validation log loss (a proper score: it rewards calibration,
  which the abstention threshold relies on, as well as accuracy).
* **Refit.** The chosen configuration on train + validation users; the version's metrics are those
  of *that* model on the test users, which neither the search nor the fit saw: accuracy against
  always answering the training majority value, log loss against the class prior, Brier score,
  expected calibration error and the reliability table, and the share of users the abstention
  rule (``attributes.min_probability``) keeps with their accuracy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.catalog import ATTRIBUTES
from cluster.core.errors import FailedPrecondition
from cluster.core.feature_io import hash_bucket, load_latest
from cluster.core.settings import Settings
from cluster.core.storage import open_lake
from ray_apps.attributes.model import SHARE_TRANSFORMS, AttributeModel, score
from ray_apps.tuning import Dataset, Fitted, family_spec

__all__ = ["C_GRID", "SPEC", "AttributeData", "fit", "load", "model_for", "space", "split_sides", "trial"]

log = logging.getLogger(__name__)

#: Inverse L2 strengths searched (half-decade steps).
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
#: The command that builds the feature table.
BUILD = "pmkt features attributes"


@dataclass
class AttributeData:
    """What every trial gets: the declared users split three ways, and the settings the metrics use."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    target: str
    bins: int
    min_probability: float
    test_percent: int
    valid_percent: int


def split_sides(user_ids: pd.Series, test_percent: int, valid_percent: int) -> np.ndarray:
    """Per user ``"test"``, ``"valid"`` or ``"train"`` by ``hash_bucket("attributes/" + user_id, 100)``."""
    buckets = np.fromiter((hash_bucket(f"attributes/{u}", 100) for u in user_ids), int, len(user_ids))
    return np.where(buckets < test_percent, "test",
                    np.where(buckets < test_percent + valid_percent, "valid", "train")).astype(object)


def load(settings: Settings, smoke_test: bool = False) -> Dataset:
    """The newest attribute table's declared users, split by user.

    Args:
        settings: Platform settings (the lake, ``attributes``).
        smoke_test: Unused: the table is small, the smoke test shrinks the space instead.

    Raises:
        FailedPrecondition: the table has not been built, was built for another target, or a side of
            the split lacks a declared value.
    """
    cfg = settings.attributes
    lake = open_lake(settings)
    frame, meta = load_latest(lake, ATTRIBUTES)  # FailedPrecondition naming BUILD before the first build
    if meta.get("target") != cfg.target:
        raise FailedPrecondition(f"the attribute features were built for {meta.get('target')!r}, "
                                 f"attributes.target is {cfg.target!r}: run `{BUILD}` again")
    declared = frame[frame["declared"].notna()].reset_index(drop=True)
    side = split_sides(declared["user_id"], cfg.test_percent, cfg.valid_percent)
    parts = {s: declared[side == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    for name, part in parts.items():
        if part["declared"].nunique() < 2:
            raise FailedPrecondition(f"the {name} users have {part['declared'].nunique()} declared {cfg.target} "
                                     f"value(s) among {len(part)}: ingest more users and run `{BUILD}`")
    data = AttributeData(**parts, target=cfg.target, bins=cfg.calibration_bins,
                         min_probability=cfg.min_probability, test_percent=cfg.test_percent,
                         valid_percent=cfg.valid_percent)
    info = {"target": cfg.target, "users": len(frame), "declared_users": len(declared),
            "undeclared_users": int(len(frame) - len(declared)), **{f"{k}_users": len(v) for k, v in parts.items()},
            "features": len(meta.get("feature_columns", []))}
    log.info("attribute table %s (%s): %d train, %d validation, %d test users", meta["run_id"], cfg.target,
             len(parts["train"]), len(parts["valid"]), len(parts["test"]))
    return Dataset(data=data, feature_run_id=str(meta["run_id"]), info=info)


def space(settings: Settings, smoke_test: bool = False) -> dict[str, list[Any]]:
    """``C`` x share transform; the smoke test tries one ``C`` with each transform."""
    if smoke_test:
        return {"C": [0.1], "share_transform": list(SHARE_TRANSFORMS)}
    return {"C": list(C_GRID), "share_transform": list(SHARE_TRANSFORMS)}


def model_for(config: dict) -> AttributeModel:
    """An unfitted model for a search configuration."""
    return AttributeModel(C=float(config["C"]), share_transform=str(config.get("share_transform", "log_share")))


def trial(config: dict, data: AttributeData) -> Iterator[dict]:
    """Fit one configuration on the train users; validation log loss and accuracy (one iteration)."""
    model = model_for(config).fit(data.train)
    s = score(model, data.valid, bins=data.bins)
    yield {"val_log_loss": s["log_loss"], "val_accuracy": s["accuracy"], "val_ece": s["ece"],
           "lbfgs_iterations": model.n_iter_}


def fit(best_config: dict, data: AttributeData, trial_rows: list[dict]) -> Fitted:
    """Refit the chosen configuration on train + validation users; metrics on the test users.

    Returns:
        :class:`~ray_apps.tuning.Fitted` with the :class:`AttributeModel` that predictions use; its
        metrics describe that very model on users it never saw.
    """
    learn = pd.concat([data.train, data.valid], ignore_index=True)
    model = model_for(best_config).fit(learn)
    counts = learn["declared"].astype(str).value_counts()
    majority = str(counts.index[0])
    prior = [float(counts.get(c, 0)) / len(learn) for c in model.classes_]
    test = score(model, data.test, bins=data.bins, min_probability=data.min_probability,
                 majority=majority, prior=prior)
    best_val = min((r for r in trial_rows if r.get("val_log_loss") is not None),
                   key=lambda r: r["val_log_loss"], default=None)
    metrics: dict[str, Any] = {
        "target": data.target,
        "classes": list(model.classes_),
        "test_accuracy": test["accuracy"],
        "majority_class": test["majority_class"],
        "majority_accuracy": test["majority_accuracy"],
        "test_log_loss": test["log_loss"],
        "prior_log_loss": test["prior_log_loss"],
        "test_brier": test["brier"],
        "test_ece": test["ece"],
        "reliability": test["reliability"],
        "calibration_bins": data.bins,
        # The abstention rule: predict_and_store keeps a prediction only at or above it.
        "min_probability": data.min_probability,
        "test_coverage": test["coverage"],
        "test_stored_accuracy": test["stored_accuracy"],
        "test_users": test["users"],
        "fit_users": len(learn),
        "val_log_loss": None if best_val is None else best_val["val_log_loss"],
        "lbfgs_iterations": model.n_iter_,
        "coefficients": model.coefficients(),
    }
    params = {
        **model.get_params(),
        "config": dict(best_config),
        "target": data.target,
        "feature_names": list(model.feature_names_),
        "test_percent": data.test_percent,
        "valid_percent": data.valid_percent,
        "split": 'b = hash_bucket("attributes/" + user_id, 100): test b < test_percent, '
                 "validation b < test_percent + valid_percent, else train",
    }
    log.info("attributes %s: test accuracy %.4f (majority %.4f), log loss %.4f, ECE %.4f", data.target,
             test["accuracy"], test["majority_accuracy"], test["log_loss"], test["ece"])
    return Fitted(model=model, metrics=metrics, params=params)


SPEC = family_spec(__name__, "attributes", metric="val_log_loss", mode="min",
                   description="static attribute (gender) from behaviour: logistic regression, L2 strength and "
                               "share transform")
