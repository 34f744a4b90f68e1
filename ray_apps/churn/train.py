"""``pmkt tune churn``: the churn survival family for the generic Tune runner (:mod:`ray_apps.tuning`).

The search crosses the model kind (Cox proportional hazards, Weibull AFT) with lifelines'
penalizer on a log grid and the number of basket-value knots, and picks the configuration with
the best concordance on held-out users. Users are split by a hash of their id
(:data:`VALID_PERCENT` % to validation): the split is the same on every run and machine, and a user
stays on their side as the table grows. The chosen configuration is refitted on every user; the
registered metrics keep the held-out figures of the train-only fit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.errors import FailedPrecondition
from cluster.core.feature_io import hash_bucket, load_churn_frame
from cluster.core.settings import Settings
from cluster.core.storage import open_lake
from ray_apps.churn.model import INPUT_COLUMNS, KINDS, ChurnModel
from ray_apps.tuning import Dataset, Fitted, family_spec

__all__ = [
    "AOV_KNOTS",
    "PENALIZERS",
    "SPEC",
    "VALID_PERCENT",
    "ChurnData",
    "fit",
    "is_validation",
    "load",
    "model_for",
    "space",
    "trial",
]

log = logging.getLogger(__name__)

#: Share of users (percent, by hash of the user id) held out for validation.
VALID_PERCENT = 20
#: lifelines penalizer grid (log spaced; covariates are standardised inside lifelines).
PENALIZERS = (0.0001, 0.001, 0.01, 0.1)
#: Basket-value hinge knots: 0 (linear only) or 5 (non-monotone risk over the price bands).
AOV_KNOTS = (0, 5)


@dataclass
class ChurnData:
    """What every trial gets: the churn table split by user, and the table's churn window."""

    train: pd.DataFrame
    valid: pd.DataFrame
    #: The table's ``inactivity_days`` W: nobody can churn before day W + 1 of their tenure.
    offset_days: int
    as_of: str


def is_validation(user_ids: pd.Series, percent: int = VALID_PERCENT) -> np.ndarray:
    """The validation side of the split: ``hash_bucket("churn/" + user_id, 100) < percent``."""
    return np.fromiter((hash_bucket(f"churn/{u}", 100) < percent for u in user_ids), bool, len(user_ids))


def load(settings: Settings, smoke_test: bool = False) -> Dataset:
    """The newest churn table, split by user.

    Args:
        settings: Platform settings (the lake).
        smoke_test: Unused: the table is small enough, the smoke test shrinks the space instead.

    Raises:
        FailedPrecondition: the churn table has not been built (``pmkt features tables``), or one
            side of the split has no churned user.
    """
    frame, meta = load_churn_frame(open_lake(settings))
    missing = [c for c in ("user_id", "duration_days", "churned", *INPUT_COLUMNS) if c not in frame.columns]
    if missing:
        raise FailedPrecondition(f"the churn table lacks {missing}: rebuild it with `pmkt features tables`")
    valid = is_validation(frame["user_id"])
    train, held = frame[~valid].reset_index(drop=True), frame[valid].reset_index(drop=True)
    if not train["churned"].any() or not held["churned"].any():
        raise FailedPrecondition(
            f"the churn table has too few churned users to train and validate ({int(frame['churned'].sum())})"
        )
    offset = int(meta.get("inactivity_days", 0))
    data = ChurnData(train=train, valid=held, offset_days=offset, as_of=str(meta.get("as_of", "")))
    info = {
        "users": len(frame), "train_users": len(train), "valid_users": len(held),
        "churned": int(frame["churned"].sum()), "as_of": data.as_of, "inactivity_days": offset,
        "valid_percent": VALID_PERCENT,
    }
    return Dataset(data=data, feature_run_id=str(meta.get("run_id", "")), info=info)


def space(settings: Settings, smoke_test: bool = False) -> dict[str, list[Any]]:
    """Model kind x penalizer x basket-value knots; the smoke test fits each kind once."""
    if smoke_test:
        return {"model": list(KINDS), "penalizer": [0.001], "aov_knots": [5]}
    return {"model": list(KINDS), "penalizer": list(PENALIZERS), "aov_knots": list(AOV_KNOTS)}


def model_for(config: dict, data: ChurnData) -> ChurnModel:
    """An unfitted model for a search configuration."""
    return ChurnModel(
        kind=str(config["model"]), penalizer=float(config["penalizer"]),
        l1_ratio=float(config.get("l1_ratio", 0.0)), aov_knots=int(config.get("aov_knots", 0)),
        offset_days=data.offset_days,
    )


def _held_out(model: ChurnModel, data: ChurnData) -> dict[str, float]:
    return {
        "val_concordance": model.concordance(data.valid),
        "val_log_likelihood": model.log_likelihood(data.valid),
        "train_concordance": model.concordance_,
        "aic": model.aic_,
    }


def trial(config: dict, data: ChurnData) -> Iterator[dict]:
    """Fit one configuration on the training users and score it on the held-out users (one iteration).

    ``aic`` is lifelines' (partial AIC for Cox): comparable within a kind only.
    ``val_log_likelihood`` is per row on whole days and comparable across kinds.
    """
    yield _held_out(model_for(config, data).fit(data.train), data)


def _best_by_kind(trial_rows: list[dict], metric: str) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for row in trial_rows:
        config = row.get("config", {})
        score = row.get(metric, row.get("metrics", {}).get(metric))
        kind = config.get("model")
        if kind is None or score is None or not np.isfinite(score):
            continue
        if kind not in best or score > best[kind]["score"]:
            best[kind] = {"score": float(score), "config": dict(config)}
    return best


def fit(best_config: dict, data: ChurnData, trial_rows: list[dict]) -> Fitted:
    """Refit the chosen configuration on every user; record held-out figures of both kinds.

    The held-out metrics come from a fit on the training users only (as in the trial); the model
    returned is fitted on all users. A kind missing from the trial table (a failed or skipped trial)
    is fitted here with the chosen penalizer and knots, so both concordances are always recorded.
    """
    held_model = model_for(best_config, data).fit(data.train)
    metrics: dict[str, Any] = _held_out(held_model, data)
    by_kind = _best_by_kind(trial_rows, "val_concordance")
    for kind in KINDS:
        if kind not in by_kind:
            cfg = {**best_config, "model": kind}
            by_kind[kind] = {"score": model_for(cfg, data).fit(data.train).concordance(data.valid), "config": cfg}
        metrics[f"{kind}_val_concordance"] = by_kind[kind]["score"]
        metrics[f"{kind}_best_config"] = by_kind[kind]["config"]
    final = model_for(best_config, data).fit(pd.concat([data.train, data.valid], ignore_index=True))
    metrics.update({
        "concordance": final.concordance_,
        "users": int(len(data.train) + len(data.valid)),
        "fit_rows": final.n_rows_,
        "events": final.n_events_,
        "follow_up_days": final.follow_up_days_,
        "as_of": data.as_of,
        "coefficients": final.coefficients(),
    })
    if final.rho_ is not None:
        metrics["weibull_rho"] = final.rho_
    params = {
        "model": final.kind, "penalizer": final.penalizer, "l1_ratio": final.l1_ratio,
        "aov_knots": final.aov_knots, "knots": final.knots_, "offset_days": final.offset_days,
        "horizon_days": final.horizon_days, "lead_days": final.lead_days, "smooth_days": final.smooth_days,
        "covariates": final.feature_names_, "valid_percent": VALID_PERCENT,
        "split": 'hash_bucket("churn/" + user_id, 100) < valid_percent',
    }
    log.info("churn %s: held-out concordance %.4f (cox %.4f, weibull_aft %.4f)", final.kind,
             metrics["val_concordance"], metrics["cox_val_concordance"], metrics["weibull_aft_val_concordance"])
    return Fitted(model=final, metrics=metrics, params=params)


SPEC = family_spec(__name__, "churn", metric="val_concordance", mode="max",
                   description="churn survival: Cox PH or Weibull AFT, penalizer tuned by held-out concordance")
