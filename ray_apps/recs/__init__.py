"""Recommendations: top-N estimators, ranking metrics, the serving object and the Tune entry point.

``ray_apps.recs.train.SPEC`` is what ``pmkt tune recs`` runs; the registered object is a
:class:`RecModel`. The estimators, splits and fallbacks are in :mod:`ray_apps.recs.model`.
"""

from ray_apps.recs.model import ALGORITHMS, RecModel, Recommendations, make_estimator, ranking_metrics

__all__ = ["ALGORITHMS", "RecModel", "Recommendations", "make_estimator", "ranking_metrics"]
