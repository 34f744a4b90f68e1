"""``pmkt tune demand``: the demand model family for the generic Tune runner (:mod:`ray_apps.tuning`).

The newest demand table (``spark_jobs.demand``, built by ``pmkt features demand``) is split by
time: the last ``pricing.holdout_days`` days are held out. Each trial fits one configuration
(ridge strength on the hour, weekday and trend effects x trend on/off x knot spacing) on the earlier days and reports the
held-out Poisson deviance per cell (the search minimises it) with MAPE and R^2 on the two
aggregates of :func:`ray_apps.pricing.model.holdout_metrics`. The chosen configuration is
refitted on every day; the registered metrics keep the held-out figures of the train-only fit and
the refit's elasticity (and standard error) per category. The registered object is the fitted
:class:`~ray_apps.pricing.model.DemandModel` (``ModelRegistry.load("demand")`` returns it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cluster.core.catalog import DEMAND
from cluster.core.errors import FailedPrecondition
from cluster.core.feature_io import load_latest
from cluster.core.settings import Settings
from cluster.core.storage import open_lake
from ray_apps.pricing.model import (
    FIT_COLUMNS,
    DemandModel,
    holdout_metrics,
    split_holdout,
)
from ray_apps.tuning import Dataset, Fitted, family_spec

__all__ = ["KNOT_DAYS", "RIDGES", "SPEC", "DemandData", "fit", "load", "model_for", "space", "trial"]

log = logging.getLogger(__name__)

#: Ridge strengths on the hour and weekday dummies (0 = unpenalised).
RIDGES = (0.0, 1.0, 10.0, 100.0)
#: Days between the trend's knots (0 = one straight line over the window).
KNOT_DAYS = (0, 60, 30)
#: The demand table's builder, named in errors.
BUILD_COMMAND = "pmkt features demand"


@dataclass
class DemandData:
    """What every trial gets: the demand table split by time."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    holdout_days: int

    @property
    def full(self) -> pd.DataFrame:
        return pd.concat([self.train, self.holdout], ignore_index=True)


def load(settings: Settings, smoke_test: bool = False) -> Dataset:
    """The newest demand table, its last ``pricing.holdout_days`` days held out.

    Args:
        settings: Platform settings (the lake, ``pricing.holdout_days``).
        smoke_test: Unused: the table is small, the smoke test shrinks the space instead.

    Raises:
        FailedPrecondition: the demand table has not been built (``pmkt features demand``), lacks
            columns, or is too short for the hold-out.
    """
    lake = open_lake(settings)
    frame, meta = load_latest(lake, DEMAND)  # FailedPrecondition naming BUILD_COMMAND before the first build
    missing = [c for c in FIT_COLUMNS if c not in frame.columns]
    if missing:
        raise FailedPrecondition(f"the demand table lacks {missing}: rebuild it with `{BUILD_COMMAND}`")
    days = settings.pricing.holdout_days
    n_days = frame["date"].nunique()
    if n_days < days + 28:
        raise FailedPrecondition(f"the demand table covers {n_days} days; holding out {days} needs "
                                 f"{days + 28} (or lower pricing.holdout_days)")
    train, held = split_holdout(frame, days)
    info = {"rows": len(frame), "days": int(n_days), "categories": int(frame["category"].nunique()),
            "orders": int(frame["orders"].sum()), "holdout_days": days,
            "first_date": str(meta.get("first_date", "")), "last_date": str(meta.get("last_date", ""))}
    return Dataset(data=DemandData(train, held, days), feature_run_id=str(meta.get("run_id", "")), info=info)


def space(settings: Settings, smoke_test: bool = False) -> dict[str, list[Any]]:
    """Ridge strength x trend on/off x knot spacing (0 = straight line); the smoke test keeps one ridge
    and a trend, with and without knots."""
    if smoke_test:
        return {"ridge": [1.0], "trend": [True], "knot_days": [0, KNOT_DAYS[-1]]}
    return {"ridge": list(RIDGES), "trend": [False, True], "knot_days": list(KNOT_DAYS)}


def model_for(config: dict) -> DemandModel:
    """An unfitted model for a search configuration."""
    return DemandModel(ridge=float(config["ridge"]), trend=bool(config["trend"]),
                       knot_days=int(config.get("knot_days", 30)))


def _held_out(model: DemandModel, data: DemandData) -> dict[str, float]:
    m = holdout_metrics(data.holdout, model.predict(data.holdout))
    return {f"holdout_{k}": v for k, v in m.items()}


def trial(config: dict, data: DemandData) -> Iterator[dict]:
    """Fit one configuration on the training days, score it on the held-out days (one iteration)."""
    yield _held_out(model_for(config).fit(data.train), data)


def fit(best_config: dict, data: DemandData, trial_rows: list[dict]) -> Fitted:
    """Refit the chosen configuration on every day; record held-out error and the elasticities.

    The held-out metrics come from a fit on the training days only (as in the trial); the model
    returned is fitted on all days, and its elasticities (with standard errors) are recorded.
    """
    metrics: dict[str, Any] = _held_out(model_for(best_config).fit(data.train), data)
    final = model_for(best_config).fit(data.full)
    metrics.update({
        "cells": final.n_rows_,
        "orders": final.n_orders_,
        "elasticity": dict(final.elasticity_),
        "elasticity_se": dict(final.elasticity_se_),
        "order_value": dict(final.order_value_),
        "dispersion": dict(final.dispersion_),
    })
    params = {"ridge": final.ridge, "trend": final.trend, "knot_days": final.knot_days, "holdout_days": data.holdout_days,
              "categories": final.categories_, "first_date": str(final.first_date_),
              "last_date": str(final.last_date_)}
    log.info("demand: held-out MAPE %.3f (slot) / %.3f (day), R^2 %.3f / %.3f", metrics["holdout_mape_slot"],
             metrics["holdout_mape_day"], metrics["holdout_r2_slot"], metrics["holdout_r2_day"])
    return Fitted(model=final, metrics=metrics, params=params)


SPEC = family_spec(__name__, "demand", metric="holdout_deviance", mode="min",
                   description="demand per category and time slot: Poisson GLM with price elasticity, ridge and "
                               "trend tuned by held-out deviance")
