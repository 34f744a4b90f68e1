"""ScoreBatch's business logic, independent of the transport.

The model was trained on impressions joined with each user's inputs *as of the impression day*
(:func:`spark_jobs.training_tables.ctr_user_inputs`). The same function writes every user's
inputs as of the training tables' cut-off into the profile (``f:ctr_*`` cells, through
``features/ctr_users``), and :func:`cluster.core.feature_io.ctr_user_features` reads them back here,
so a served request is featurised by the code and with the values that built the training rows.
Recency moves on with the calendar; the other inputs are those of the cut-off day until the next
build (docs/models-ctr.md).

The request's ad fields carry the contract's types: ``ad_position`` is text (``"3"`` or
``"top_banner"``), as in impressions.csv and the training table.

A user without a profile is scored on the ad and its context alone (every user input
unknown), as the model saw impressions of users it knew nothing about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

from cluster.core.contract import has_control_chars, validate_user_id
from cluster.core.errors import InvalidArgument
from cluster.core.feature_io import CTR_USER_CELLS, ctr_user_features
from cluster.core.storage import ProfileStore
from protos.marketing.v1 import ctr_pb2
from ray_apps.ctr.model import CtrModel
from ray_apps.registry import ModelVersion

__all__ = ["CtrScorer", "USER_CELLS", "MODEL_NAME", "AD_FIELDS", "candidate_dict"]

MODEL_NAME = "ctr"
USER_CELLS = tuple(CTR_USER_CELLS.values())
#: The AdCandidate fields, as the scorer reads them from either transport.
AD_FIELDS = ("user_id", "ad_id", "campaign_id", "channel", "ad_position", "device_type")
_MAX_ID = 128


def candidate_dict(candidate: ctr_pb2.AdCandidate) -> dict[str, str]:
    """A gRPC AdCandidate as the dict :meth:`CtrScorer.score` takes (what the HTTP body gives)."""
    return {f: getattr(candidate, f) for f in AD_FIELDS}


def _text(value: str, field: str, *, required: bool = False) -> str:
    if required and not value:
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(value) > _MAX_ID or has_control_chars(value):
        raise InvalidArgument(f"{field} must be at most {_MAX_ID} printable characters", field=field)
    return value


class CtrScorer:
    """Scores candidates with one CTR model version and the profile store."""

    def __init__(self, store: ProfileStore, model: CtrModel, version: ModelVersion, *, max_batch: int,
                 max_user_id_length: int) -> None:
        self.store = store
        self.model = model
        self.version = version
        self.max_batch = max_batch
        self.max_user_id_length = max_user_id_length

    def score(self, candidates: Sequence[Mapping[str, Any]], today: date | None = None) -> ctr_pb2.ScoreBatchResponse:
        """Click probabilities for ``candidates`` (dicts with the AdCandidate fields).

        Raises:
            InvalidArgument: empty or over-large batch, or a bad field (named with its index).
        """
        if not candidates:
            raise InvalidArgument("candidates must not be empty", field="candidates")
        if len(candidates) > self.max_batch:
            raise InvalidArgument(f"at most {self.max_batch} candidates per call, got {len(candidates)}",
                                  field="candidates")
        records = []
        for i, c in enumerate(candidates):
            where = f"candidates[{i}]"
            validate_user_id(c.get("user_id") or "", self.max_user_id_length, field=f"{where}.user_id")
            records.append({
                "ad_id": _text(c.get("ad_id") or "", f"{where}.ad_id", required=True),
                "campaign_id": _text(c.get("campaign_id") or "", f"{where}.campaign_id") or None,
                "channel": _text(c.get("channel") or "", f"{where}.channel") or None,
                "ad_position": _text(c.get("ad_position") or "", f"{where}.ad_position") or None,
                "device_type": _text(c.get("device_type") or "", f"{where}.device_type") or None,
            })
        today = today or datetime.now(timezone.utc).date()
        users: dict[str, dict[str, Any]] = {}
        for c in candidates:
            uid = c["user_id"]
            if uid not in users:
                users[uid] = ctr_user_features(self.store.read(uid, USER_CELLS), today)
        rows = [{**users[c["user_id"]], **r} for c, r in zip(candidates, records)]
        p = self.model.predict_proba_records(rows)
        return ctr_pb2.ScoreBatchResponse(
            scores=[ctr_pb2.CtrScore(index=i, p_click=float(p[i]), user_known=bool(users[c["user_id"]]))
                    for i, c in enumerate(candidates)],
            model_version=self.version.ref,
        )
