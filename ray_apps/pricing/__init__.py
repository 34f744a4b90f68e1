"""Demand per category and time slot, and its price response: the Poisson demand model
(:class:`DemandModel`), its held-out error metrics and its Tune entry point (``train.SPEC``)."""

from ray_apps.pricing.model import (
    FIT_COLUMNS,
    DemandModel,
    holdout_metrics,
    mape,
    poisson_deviance,
    r_squared,
    split_holdout,
)

__all__ = ["FIT_COLUMNS", "DemandModel", "holdout_metrics", "mape", "poisson_deviance", "r_squared",
           "split_holdout"]
