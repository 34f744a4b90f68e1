"""GetProfile's business logic, independent of the transport.

Profile cells (docs/profile-store.md) map onto the ``Profile`` message:

=============  =========================================================================
field          cells
=============  =========================================================================
attributes     ``a:gender``, ``a:age_band``, ``a:city``, ``a:phone_masked``,
               ``a:has_id_number``, ``a:signup_time`` (the encrypted ID number is never read)
consent        ``a:opt_in_sms``, ``a:opt_in_push``, ``a:opt_in_email``
counters       every ``c:`` counter (real-time intake)
tags           ``t:tfidf_top``: JSON ``[["<kind>:<tag>", weight], ...]`` (TF-IDF weights,
               spark_jobs/tags.py), split into kind and tag
behaviour      every other ``t:`` cell, as text (top categories/brands, last viewed,
               cart abandonments, purchases per category; docs/features-tags.md)
rfm            ``f:rfm_recency_days``, ``f:rfm_frequency``, ``f:rfm_monetary``, ``f:rfm_as_of``,
               ``f:avg_monthly_spend``, ``t:consumption_level``
scores         ``m:clv_historic``, ``m:clv_predicted``, ``m:p_alive``,
               ``m:expected_purchases``, ``m:churn_risk``
updated        ``f:profile_built_at``
segment        computed from ``rfm`` with the currently served segmentation model; a profile
               without RFM (no paid order) is in the reserved ``no_purchases`` segment (id -1)
predicted      ``m:predicted_<name>`` (JSON, :mod:`ray_apps.attributes.cells`) for each
               predictable attribute, listed only while ``a:<name>`` is empty: a declared
               value always wins, even before the next prediction run retracts the cell
=============  =========================================================================
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from cluster.core.contract import validate_user_id
from cluster.core.errors import InvalidArgument, NotFound
from cluster.core.storage import ProfileStore, decode_counter, decode_flag, decode_float, decode_str
from protos.marketing.v1 import profile_pb2
from ray_apps.attributes.cells import PREDICTABLE, decode_prediction, predicted_cell
from ray_apps.segments.service import (
    EXTRA_CELLS,
    KNOWN_USER_CELLS,
    RFM_CELLS,
    CurrentSegmentModel,
)

__all__ = ["ProfileLookup", "PROFILE_FIELDS", "ATTRIBUTE_CELLS", "CONSENT_CELLS", "SCORE_CELLS"]

log = logging.getLogger(__name__)

ATTRIBUTE_CELLS = ("gender", "age_band", "city", "phone_masked", "has_id_number", "signup_time")
CONSENT_CELLS = {"sms": "a:opt_in_sms", "push": "a:opt_in_push", "email": "a:opt_in_email"}
SCORE_CELLS = ("clv_historic", "clv_predicted", "p_alive", "expected_purchases", "churn_risk")
#: Top-level Profile fields a field mask may name, and what each needs from the store.
PROFILE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # field: (columns, families)
    "attributes": (tuple(f"a:{c}" for c in ATTRIBUTE_CELLS), ()),
    "consent": (tuple(CONSENT_CELLS.values()), ()),
    "counters": ((), ("c",)),
    "tags": ((), ("t",)),
    "behaviour": ((), ("t",)),
    "rfm": ((*RFM_CELLS, "f:avg_monthly_spend", "t:consumption_level"), ()),
    "scores": (tuple(f"m:{c}" for c in SCORE_CELLS), ()),
    "updated": (("f:profile_built_at",), ()),
    # The known-user cells spare a second read to tell "no RFM" from "no profile" (see get).
    "segment": ((*RFM_CELLS, *EXTRA_CELLS.values(), *KNOWN_USER_CELLS), ()),
    # The declared cells come along: a prediction is shown only while its attribute is undeclared.
    "predicted": ((*(predicted_cell(n) for n in PREDICTABLE), *(f"a:{n}" for n in PREDICTABLE)), ()),
}
WEIGHTED_CELL = "t:tfidf_top"


class ProfileLookup:
    """Answers GetProfile from the profile store (and the served segments model)."""

    def __init__(self, store: ProfileStore, segments: CurrentSegmentModel | None, max_user_id_length: int,
                 max_tags: int = 50) -> None:
        self.store = store
        self.segments = segments
        self.max_user_id_length = max_user_id_length
        self.max_tags = max_tags

    @staticmethod
    def resolve_mask(paths: Sequence[str]) -> list[str]:
        """The requested top-level fields (all when ``paths`` is empty).

        Raises:
            InvalidArgument: a path is not a top-level Profile field (``field_mask``).
        """
        if not paths:
            return list(PROFILE_FIELDS)
        unknown = [p for p in paths if p not in PROFILE_FIELDS]
        if unknown:
            raise InvalidArgument(
                f"field_mask names unknown field(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(PROFILE_FIELDS)}", field="field_mask")
        return list(dict.fromkeys(paths))

    def get(self, user_id: str, paths: Sequence[str] = ()) -> profile_pb2.Profile:
        """The user's profile, limited to the masked fields.

        Raises:
            InvalidArgument: malformed user id or field mask.
            NotFound: no profile for the user (never seen, or forgotten).
        """
        validate_user_id(user_id, self.max_user_id_length)
        fields = self.resolve_mask(paths)
        columns = sorted({c for f in fields for c in PROFILE_FIELDS[f][0]})
        families = sorted({fam for f in fields for fam in PROFILE_FIELDS[f][1]})
        cells = self.store.read(user_id, columns=columns, families=families) or {}
        if not cells and not self._exists(user_id, fields):
            raise NotFound(f"no profile for user {user_id!r}")
        profile = profile_pb2.Profile(user_id=user_id)
        for field in fields:
            getattr(self, f"_fill_{field}")(profile, cells)
        return profile

    def _exists(self, user_id: str, fields: list[str]) -> bool:
        # A masked read can come back empty for a user who has other cells.
        if set(fields) == set(PROFILE_FIELDS):
            return False
        return self.store.read(user_id) is not None

    # -- one filler per top-level field ------------------------------------------------------
    def _fill_attributes(self, p: profile_pb2.Profile, cells: dict[str, bytes]) -> None:
        a = p.attributes
        for name in ("gender", "age_band", "city", "phone_masked", "signup_time"):
            if f"a:{name}" in cells:
                setattr(a, name, decode_str(cells[f"a:{name}"]))
        a.has_id_number = decode_flag(cells.get("a:has_id_number"))

    def _fill_consent(self, p: profile_pb2.Profile, cells: dict[str, bytes]) -> None:
        for name, col in CONSENT_CELLS.items():
            setattr(p.consent, name, decode_flag(cells.get(col)))

    def _fill_counters(self, p: profile_pb2.Profile, cells: dict[str, bytes]) -> None:
        for col, raw in cells.items():
            if col.startswith("c:"):
                p.counters[col[2:]] = decode_counter(raw)

    def _fill_tags(self, p: profile_pb2.Profile, cells: dict[str, bytes]) -> None:
        tags = []
        if WEIGHTED_CELL in cells:
            try:
                for name, weight in json.loads(decode_str(cells[WEIGHTED_CELL])):
                    kind, sep, tag = str(name).partition(":")
                    tags.append((kind, tag, float(weight)) if sep else ("", kind, float(weight)))
            except (ValueError, TypeError):
                log.warning("profile cell %s is not a JSON list of [tag, weight]; skipped", WEIGHTED_CELL)
        tags.sort(key=lambda t: (-t[2], t[0], t[1]))
        p.tags.extend(profile_pb2.WeightedTag(kind=k, tag=t, weight=w) for k, t, w in tags[: self.max_tags])

    def _fill_behaviour(self, p: profile_pb2.Profile, cells: dict[str, bytes]) -> None:
        for col, raw in cells.items():
            if col.startswith("t:") and col != WEIGHTED_CELL:
                p.behaviour[col[2:]] = decode_str(raw)

    def _fill_rfm(self, p: profile_pb2.Profile, cells: dict[str, bytes]) -> None:
        if not all(c in cells for c in RFM_CELLS[:3]):
            return
        p.rfm.recency_days = int(decode_float(cells["f:rfm_recency_days"]))
        p.rfm.frequency = int(decode_float(cells["f:rfm_frequency"]))
        p.rfm.monetary = round(decode_float(cells["f:rfm_monetary"]), 2)
        if "f:rfm_as_of" in cells:
            p.rfm.as_of = decode_str(cells["f:rfm_as_of"])
        if "t:consumption_level" in cells:
            p.rfm.consumption_level = decode_str(cells["t:consumption_level"])
        if "f:avg_monthly_spend" in cells:
            p.rfm.avg_monthly_spend = round(decode_float(cells["f:avg_monthly_spend"]), 2)

    def _fill_scores(self, p: profile_pb2.Profile, cells: dict[str, bytes]) -> None:
        for name in SCORE_CELLS:
            if f"m:{name}" in cells:
                setattr(p.scores, name, decode_float(cells[f"m:{name}"]))

    def _fill_updated(self, p: profile_pb2.Profile, cells: dict[str, bytes]) -> None:
        if "f:profile_built_at" in cells:
            p.updated = decode_str(cells["f:profile_built_at"])

    def _fill_predicted(self, p: profile_pb2.Profile, cells: dict[str, bytes]) -> None:
        for name in sorted(PREDICTABLE):
            declared = cells.get(f"a:{name}")
            if declared is not None and decode_str(declared).strip():
                continue  # the user's own value stands; the prediction is stale
            pred = decode_prediction(cells.get(predicted_cell(name)))
            if pred is not None:
                p.predicted.append(profile_pb2.PredictedAttribute(name=name, **pred))

    def _fill_segment(self, p: profile_pb2.Profile, cells: dict[str, bytes]) -> None:
        # Called only for a user with a profile: without RFM, that is the no_purchases segment.
        if self.segments is None:
            return
        try:
            lookup = self.segments.lookup()
        except Exception:  # noqa: BLE001 - no model yet: the profile is still useful without it
            return
        try:
            seg = lookup.from_cells(p.user_id, cells, known=True)
        except NotFound:  # an input the model needs (CLV) is missing: no segment, the rest stands
            return
        p.segment.segment_id = seg.segment_id
        p.segment.segment_name = seg.segment_name
        p.segment.model_version = seg.model_version
