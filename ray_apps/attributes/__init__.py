"""Predicted static attributes (gender first): the classifier, its Tune entry point and the profile writer.

``ray_apps.attributes.train.SPEC`` is what ``pmkt tune attributes`` runs; the registered object is an
:class:`AttributeModel`. :func:`ray_apps.attributes.service.predict_and_store` scores the users without
a declared value and stores the predictions in the profile store (never over a declared value).
"""

from ray_apps.attributes.model import SHARE_TRANSFORMS, AttributeModel, reliability_table, score

__all__ = ["SHARE_TRANSFORMS", "AttributeModel", "reliability_table", "score"]
