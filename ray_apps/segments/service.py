"""GetSegment's business logic, independent of the transport.

Every user the platform knows gets a segment: a K-means segment of the served model when the
profile has RFM features (at least one paid order), and the reserved **no_purchases** segment
(:data:`NO_PURCHASES_ID`, :data:`NO_PURCHASES_NAME`) when it has none. NOT_FOUND is left for a
user id with no profile row at all (and, as before, for a buyer whose CLV the model needs is not
built yet). One read of the profile store decides: it asks for the RFM cells together with
:data:`KNOWN_USER_CELLS`, one of which every writer of a user's row puts there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from cluster.core.contract import ACTIONS, validate_user_id
from cluster.core.errors import NotFound
from cluster.core.storage import ProfileStore, decode_float, decode_str
from protos.marketing.v1 import segment_pb2
from ray_apps.current import CurrentModel
from ray_apps.registry import ModelRegistry, ModelVersion
from ray_apps.segments.model import RFMSegmenter

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SegmentLookup", "CurrentSegmentModel", "validate_user_id", "user_segments_of", "RFM_CELLS", "MODEL_NAME",
           "KNOWN_USER_CELLS", "NO_PURCHASES_ID", "NO_PURCHASES_NAME", "NO_PURCHASES_NAME_ZH"]

MODEL_NAME = "segments"

RFM_CELLS = ("f:rfm_recency_days", "f:rfm_frequency", "f:rfm_monetary", "f:rfm_as_of")
#: Profile cell of each model input beyond RFM.
EXTRA_CELLS = {"clv_predicted": "m:clv_predicted"}
#: Cells that tell a known user from an id the platform never saw, read in the same call as the
#: RFM cells: the store has no "does the row exist" read, and a whole-row read would also fetch
#: every tag and counter. Every way a user reaches the store writes one of them: the 360° profile
#: build (users.csv, orders) ``f:profile_built_at``, the tags build (behaviour in the lake)
#: ``t:as_of``, the real-time intake ``c:<action>``. (The RFM build writes the RFM cells.)
KNOWN_USER_CELLS = ("f:profile_built_at", "t:as_of", *(f"c:{action}" for action in ACTIONS))

#: The segment of a known user without RFM features (no paid order): K-means labels are 0..k-1,
#: so -1 cannot collide with one, and the name is not one :func:`~ray_apps.segments.model.name_segment`
#: gives. Its answer has no ``rfm`` (unset) and an empty ``as_of``.
NO_PURCHASES_ID = -1
NO_PURCHASES_NAME = "no_purchases"
NO_PURCHASES_NAME_ZH = "未购买客户"


class SegmentLookup:
    """Answers GetSegment from the profile store and one registered segmentation model."""

    def __init__(self, store: ProfileStore, model: RFMSegmenter, version: ModelVersion, max_user_id_length: int) -> None:
        self.store = store
        self.model = model
        self.version = version
        self.max_user_id_length = max_user_id_length
        self.extra = [f for f in model.features_[3:]]
        #: What :meth:`from_cells` needs, :data:`KNOWN_USER_CELLS` included.
        self.cells = (*RFM_CELLS, *(EXTRA_CELLS[f] for f in self.extra), *KNOWN_USER_CELLS)

    def get(self, user_id: str) -> segment_pb2.GetSegmentResponse:
        """The user's segment: a K-means segment, or no_purchases for a known user without RFM.

        Raises:
            InvalidArgument: malformed user id.
            NotFound: the platform never saw the user (no profile row), or the model needs CLV
                and the user has RFM features but no CLV yet.
        """
        validate_user_id(user_id, self.max_user_id_length)
        return self.from_cells(user_id, self.store.read(user_id, self.cells) or {})

    def from_cells(self, user_id: str, cells: dict[str, bytes], *,
                   known: bool | None = None) -> segment_pb2.GetSegmentResponse:
        """The segment for cells already read from the store.

        Args:
            cells: At least :attr:`cells` as the store returned them (absent cells missing).
            known: Whether the user has a profile row; by default whether ``cells`` holds any
                cell, which is right when the read asked for :data:`KNOWN_USER_CELLS`.

        Raises:
            NotFound: the user is not known, or has RFM but lacks a model input (CLV).
        """
        if any(c not in cells for c in RFM_CELLS[:3]):
            if not (bool(cells) if known is None else known):
                raise NotFound(f"user {user_id!r} is unknown to the platform (no profile), so no segment")
            return self.no_purchases(user_id)
        row = self.inputs(user_id, cells)
        recency, frequency, monetary = row[:3]
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

    def inputs(self, user_id: str, cells: dict[str, bytes]) -> list[float]:
        """The model's input row from a buyer's cells: RFM, then CLV (negative predictions as 0,
        as :func:`ray_apps.segments.train.load_features` prepares the training rows).

        Raises:
            NotFound: a model input beyond RFM (CLV) is not in the profile yet.
        """
        row = [decode_float(cells[c]) for c in RFM_CELLS[:3]]
        for f in self.extra:
            if EXTRA_CELLS[f] not in cells:
                raise NotFound(f"user {user_id!r} has no {f} yet (run `pmkt features clv`), so no segment "
                               f"from {self.version.ref}")
            row.append(max(decode_float(cells[EXTRA_CELLS[f]]), 0.0))
        return row

    def no_purchases(self, user_id: str) -> segment_pb2.GetSegmentResponse:
        """The answer for a known user without RFM features: the reserved segment, ``rfm`` unset."""
        return segment_pb2.GetSegmentResponse(
            user_id=user_id, segment_id=NO_PURCHASES_ID, segment_name=NO_PURCHASES_NAME,
            segment_name_zh=NO_PURCHASES_NAME_ZH, model_version=self.version.ref,
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


def user_segments_of(lake, segment_model, known_users: Iterable[str] | None = None) -> "pd.Series":
    """user_id -> segment name, by the segments model on the newest RFM (and CLV) features.

    Args:
        known_users: Users the caller knows of (e.g. the rows of a churn or campaign table);
            those without RFM features (no paid order) are labelled :data:`NO_PURCHASES_NAME`.
            Users with RFM but without a CLV the model needs stay out, as in GetSegment.
    """
    import pandas as pd

    from cluster.core.catalog import CLV, RFM
    from cluster.core.feature_io import load_latest

    features, _ = load_latest(lake, RFM)
    buyers = set(features["user_id"])
    if "clv_predicted" in getattr(segment_model, "features_", ()):
        clv, _ = load_latest(lake, CLV, ["user_id", "clv_predicted"])
        features = features.merge(clv, on="user_id", how="inner")
        features["clv_predicted"] = features["clv_predicted"].fillna(0.0).clip(lower=0.0)
    names = np.array(segment_model.names_)[segment_model.predict(features)] if len(features) else []
    segments = pd.Series(names, index=features["user_id"].to_numpy(), dtype=object)
    if known_users is not None:
        never_paid = sorted(set(known_users) - buyers)
        segments = pd.concat([segments, pd.Series(NO_PURCHASES_NAME, index=never_paid, dtype=object)])
    return segments
