"""Churn survival models: Cox PH / Weibull AFT estimator and its Tune entry point (``SPEC``)."""

from ray_apps.churn.model import INPUT_COLUMNS, KINDS, ChurnModel

__all__ = ["INPUT_COLUMNS", "KINDS", "ChurnModel"]
