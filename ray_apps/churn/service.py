"""GetChurnRisk's business logic, independent of the transport.

The model scores a user from their row of the newest churn table (the features as of that
table's ``as_of`` day), which the service loads with the model and reloads when a new
model version is served. Day 0 of the survival curve is that ``as_of`` day. A newest table built
with another churn window (``inactivity_days``) than the model's ``offset_days`` defines churn and
duration differently from the rows the model learnt from; the service then serves the rows of the
run the model was trained on (its ``feature_run_id``), whose ``as_of`` the answers carry.
"""

from __future__ import annotations

from collections.abc import Callable

import logging
import math

import pandas as pd

from cluster.core.catalog import CHURN
from cluster.core.contract import validate_user_id
from cluster.core.errors import InvalidArgument, NotFound
from cluster.core.feature_io import load_churn_frame, load_run
from cluster.core.storage import Lake
from protos.marketing.v1 import churn_pb2
from ray_apps.churn.model import ChurnModel
from ray_apps.registry import ModelVersion

__all__ = ["ChurnScorer", "MODEL_NAME", "DEFAULT_STEP_DAYS", "MAX_STEP_DAYS"]

log = logging.getLogger(__name__)
MODEL_NAME = "churn"
DEFAULT_STEP_DAYS = 7
MAX_STEP_DAYS = 90


class ChurnScorer:
    def __init__(self, lake: Lake, model: ChurnModel, version: ModelVersion, *, max_user_id_length: int,
                 forgotten: Callable[[str], bool] = lambda _user_id: False) -> None:
        self.model = model
        #: Users forgotten since the churn table was built: answered as users it does not hold.
        self.forgotten = forgotten
        self.version = version
        self.max_user_id_length = max_user_id_length
        frame, meta = load_churn_frame(lake)
        window = meta.get("inactivity_days")
        if window is not None and int(window) != int(model.offset_days) and version.feature_run_id:
            log.warning("churn table %s has a %s-day window, %s was trained with %s days: serving its training "
                        "table %s", meta.get("run_id", "?"), window, version.ref, model.offset_days,
                        version.feature_run_id)
            frame, meta = load_run(lake, CHURN, version.feature_run_id)
        self.as_of = str(meta.get("as_of", ""))
        self.rows: dict[str, dict] = {
            str(r["user_id"]): r for r in frame.drop_duplicates("user_id").to_dict("records")
        }
        log.info("churn table %s: %d users", meta.get("run_id", "?"), len(self.rows))

    def risk(self, user_id: str, curve_step_days: int = 0) -> churn_pb2.ChurnRisk:
        """The user's churn outlook.

        Raises:
            InvalidArgument: bad user_id or ``curve_step_days`` outside 0..90.
            NotFound: the user is not in the churn table.
        """
        validate_user_id(user_id, self.max_user_id_length)
        if not 0 <= curve_step_days <= MAX_STEP_DAYS:
            raise InvalidArgument(f"curve_step_days must be 1..{MAX_STEP_DAYS} (0 for {DEFAULT_STEP_DAYS}), "
                                  f"got {curve_step_days}", field="curve_step_days")
        row = None if self.forgotten(user_id) else self.rows.get(user_id)
        if row is None:
            raise NotFound(f"user {user_id!r} is not in the churn table of {self.as_of or 'the newest run'}")
        out = self.model.predict_users(pd.DataFrame([row]), curve_step_days or DEFAULT_STEP_DAYS)[0]

        def opt(value) -> int | None:
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)

        curve = out["survival"]
        probability = 1.0 if out["status"] == "churned" else 1.0 - float(curve[-1][1])
        return churn_pb2.ChurnRisk(
            user_id=user_id, status=out["status"], churn_probability=min(max(probability, 0.0), 1.0),
            relative_risk=float(out["risk"]), horizon_days=int(out["horizon_days"]),
            tenure_days=int(out["tenure_days"]),
            survival=[churn_pb2.SurvivalPoint(day=int(d), survival=float(s)) for d, s in out["survival"]],
            median_days=opt(out.get("median_days")), peak_day=opt(out.get("peak_day")),
            contact_day=opt(out.get("contact_day")), as_of=self.as_of, model_version=self.version.ref,
        )
