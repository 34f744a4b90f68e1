"""GetSegment's business logic, independent of the transport."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from cluster.contract import has_control_chars
from cluster.errors import InvalidArgument, NotFound
from cluster.storage import ProfileStore, decode_float, decode_str
from protos.marketing.v1 import segment_pb2
from ray_apps.current import CurrentModel
from ray_apps.registry import ModelRegistry, ModelVersion
from ray_apps.segments.model import RFMSegmenter

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SegmentLookup", "CurrentSegmentModel", "validate_user_id", "user_segments_of", "RFM_CELLS", "MODEL_NAME"]

MODEL_NAME = "segments"

RFM_CELLS = ("f:rfm_recency_days", "f:rfm_frequency", "f:rfm_monetary", "f:rfm_as_of")
#: Profile cell of each model input beyond RFM.
EXTRA_CELLS = {"clv_predicted": "m:clv_predicted"}


def validate_user_id(user_id: str, max_length: int, field: str = "user_id") -> str:
    """Check a user id from a request.

    Raises:
        InvalidArgument: empty, longer than ``max_length``, or containing control characters.
    """
    if not user_id or not user_id.strip():
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(user_id) > max_length:
        raise InvalidArgument(f"{field} must be at most {max_length} characters, got {len(user_id)}", field=field)
    if has_control_chars(user_id):
        raise InvalidArgument(f"{field} must not contain control characters", field=field)
    return user_id


class SegmentLookup:
    """Answers GetSegment from the profile store and one registered segmentation model."""

    def __init__(self, store: ProfileStore, model: RFMSegmenter, version: ModelVersion, max_user_id_length: int) -> None:
        self.store = store
        self.model = model
        self.version = version
        self.max_user_id_length = max_user_id_length
        self.extra = [f for f in model.features_[3:]]
        self.cells = (*RFM_CELLS, *(EXTRA_CELLS[f] for f in self.extra))

    def get(self, user_id: str) -> segment_pb2.GetSegmentResponse:
        """The user's segment.

        Raises:
            InvalidArgument: malformed user id.
            NotFound: the user has no RFM features (unknown, or never purchased).
        """
        validate_user_id(user_id, self.max_user_id_length)
        return self.from_cells(user_id, self.store.read(user_id, self.cells) or {})

    def from_cells(self, user_id: str, cells: dict[str, bytes]) -> segment_pb2.GetSegmentResponse:
        """The segment for RFM cells already read from the store.

        Raises:
            NotFound: the cells hold no RFM features.
        """
        if not cells or any(c not in cells for c in RFM_CELLS[:3]):
            raise NotFound(f"user {user_id!r} has no purchase history on the platform, so no segment")
        recency = decode_float(cells["f:rfm_recency_days"])
        frequency = decode_float(cells["f:rfm_frequency"])
        monetary = decode_float(cells["f:rfm_monetary"])
        row = [recency, frequency, monetary]
        for f in self.extra:
            if EXTRA_CELLS[f] not in cells:
                raise NotFound(f"user {user_id!r} has no {f} yet (run `pmkt features clv`), so no segment "
                               f"from {self.version.ref}")
            row.append(max(decode_float(cells[EXTRA_CELLS[f]]), 0.0))
        label = int(self.model.predict(np.array([row]))[0])
        return segment_pb2.GetSegmentResponse(
            user_id=user_id,
            segment_id=label,
            segment_name=self.model.names_[label],
            segment_name_zh=self.model.names_zh_[label],
            rfm=segment_pb2.Rfm(recency_days=int(recency), frequency=int(frequency), monetary=round(monetary, 2)),
            as_of=decode_str(cells["f:rfm_as_of"]) if "f:rfm_as_of" in cells else "",
            model_version=self.version.ref,
        )


class CurrentSegmentModel(CurrentModel[SegmentLookup]):
    """The registry's current segments model as a :class:`SegmentLookup` (see
    :class:`ray_apps.current.CurrentModel`: re-checked every ``refresh_s`` seconds, swapped
    without a redeploy, FAILED_PRECONDITION before the first training)."""

    def __init__(self, registry: ModelRegistry, store: ProfileStore, *, refresh_s: float, max_user_id_length: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(registry, MODEL_NAME,
                         lambda model, mv: SegmentLookup(store, model, mv, max_user_id_length),
                         refresh_s=refresh_s, clock=clock)

    def lookup(self) -> SegmentLookup:
        """The lookup for the current model.

        Raises:
            FailedPrecondition: no segments model has been trained yet.
        """
        return self.get()


def user_segments_of(lake, segment_model) -> "pd.Series":
    """user_id -> segment name, by the segments model on the newest RFM (and CLV) features."""
    import pandas as pd

    from cluster.feature_io import load_latest

    features, _ = load_latest(lake, "rfm")
    if "clv_predicted" in getattr(segment_model, "features_", ()):
        clv, _ = load_latest(lake, "clv", ["user_id", "clv_predicted"])
        features = features.merge(clv, on="user_id", how="inner")
        features["clv_predicted"] = features["clv_predicted"].fillna(0.0).clip(lower=0.0)
    names = np.array(segment_model.names_)[segment_model.predict(features)]
    return pd.Series(names, index=features["user_id"].to_numpy())
