"""Click-through-rate prediction: the logistic-regression model and its Tune entry point.

``ray_apps.ctr.train.SPEC`` is what ``pmkt tune ctr`` runs; the registered object is a
:class:`CtrModel` (``predict_proba_records`` scores raw user-ad records without Spark).
"""

from ray_apps.ctr.model import FEATURE_GROUPS, CtrModel, calibration_curve

__all__ = ["FEATURE_GROUPS", "CtrModel", "calibration_curve"]
