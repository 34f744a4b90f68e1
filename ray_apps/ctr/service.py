"""ScoreBatch's business logic, independent of the transport.

The model was trained on impressions joined with each user's features *as of the
impression day* (spark_jobs/training_tables.py). At serving time the same inputs come from
the user's profile cells:

==================  ===========================================================================
model input         profile cell
==================  ===========================================================================
gender, age_band,   ``a:gender``, ``a:age_band``, ``a:city``
city
frequency,          ``f:rfm_frequency``, ``f:rfm_monetary``
monetary
recency_band        ``f:rfm_recency_days`` plus the days since ``f:rfm_as_of``
top_category,       the first of ``t:top_categories`` and its share of the listed scores
top_category_share
events_recent       none: the profile's real-time counters are lifetime totals, not the
                    30-day count the model learnt, so the input is left unknown (scored as 0
                    events). A known training/serving gap (docs/serving.md).
==================  ===========================================================================

A user without a profile is scored on the ad and its context alone (every user input
unknown), as the model saw impressions of users it knew nothing about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

from cluster.contract import has_control_chars
from cluster.errors import InvalidArgument
from cluster.feature_io import recency_band
from cluster.storage import ProfileStore, decode_float, decode_ranked, decode_str
from protos.marketing.v1 import ctr_pb2
from ray_apps.ctr.model import CtrModel
from ray_apps.registry import ModelVersion
from ray_apps.segments.service import validate_user_id

__all__ = ["CtrScorer", "USER_CELLS", "MODEL_NAME", "user_features"]

MODEL_NAME = "ctr"
USER_CELLS = ("a:gender", "a:age_band", "a:city", "f:rfm_frequency", "f:rfm_monetary", "f:rfm_recency_days",
              "f:rfm_as_of", "t:top_categories")
_MAX_ID = 128


def user_features(cells: Mapping[str, bytes] | None, today: date) -> dict[str, Any]:
    """The model's user inputs from profile cells (``{}`` for an unknown user)."""
    if not cells:
        return {}
    out: dict[str, Any] = {}
    for col in ("gender", "age_band", "city"):
        if f"a:{col}" in cells:
            out[col] = decode_str(cells[f"a:{col}"]) or None
    out["frequency"] = decode_float(cells["f:rfm_frequency"]) if "f:rfm_frequency" in cells else 0.0
    out["monetary"] = decode_float(cells["f:rfm_monetary"]) if "f:rfm_monetary" in cells else 0.0
    days = None
    if "f:rfm_recency_days" in cells:
        days = decode_float(cells["f:rfm_recency_days"])
        if "f:rfm_as_of" in cells:
            try:
                days += max((today - date.fromisoformat(decode_str(cells["f:rfm_as_of"]))).days, 0)
            except ValueError:
                pass
    out["recency_band"] = recency_band(days)
    if "t:top_categories" in cells:
        ranked = decode_ranked(cells["t:top_categories"]) or []
        total = sum(s for _, s in ranked)
        if ranked and total > 0:
            out["top_category"], out["top_category_share"] = ranked[0][0], ranked[0][1] / total
    return out


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
            position = c.get("ad_position") or 0
            if not isinstance(position, int) or not 0 <= position <= 1000:
                raise InvalidArgument(f"{where}.ad_position must be 0..1000", field=f"{where}.ad_position")
            records.append({
                "ad_id": _text(c.get("ad_id") or "", f"{where}.ad_id", required=True),
                "campaign_id": _text(c.get("campaign_id") or "", f"{where}.campaign_id") or None,
                "channel": _text(c.get("channel") or "", f"{where}.channel") or None,
                "ad_position": position or None,
                "device_type": _text(c.get("device_type") or "", f"{where}.device_type") or None,
            })
        today = today or datetime.now(timezone.utc).date()
        users: dict[str, dict[str, Any]] = {}
        for c in candidates:
            uid = c["user_id"]
            if uid not in users:
                users[uid] = user_features(self.store.read(uid, USER_CELLS), today)
        rows = [{**users[c["user_id"]], **r} for c, r in zip(candidates, records)]
        p = self.model.predict_proba_records(rows)
        return ctr_pb2.ScoreBatchResponse(
            scores=[ctr_pb2.CtrScore(index=i, p_click=float(p[i]), user_known=bool(users[c["user_id"]]))
                    for i, c in enumerate(candidates)],
            model_version=self.version.ref,
        )
