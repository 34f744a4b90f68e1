"""Customer segmentation: the K-means model, its Tune entry point and its lookup service."""

from ray_apps.segments.model import FEATURES, RFMSegmenter, name_segment

__all__ = ["FEATURES", "RFMSegmenter", "name_segment"]
