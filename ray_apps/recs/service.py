"""Recommend's business logic, independent of the transport.

The model holds the training histories, so the items a user has seen are excluded without
a store read, and a user with too short a history gets the category fallback from the shares of
that history, as the training validated it. The profile store is read only for a user outside
the training matrix: their ``t:top_categories`` steer the category fallback when the cell comes
from another tags run than the model's (a fresher profile); from the same run the model's own
copy of the tags table is used, so the served list is the model's batch list (the store keeps
the scores rounded to 4 places).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cluster.core.contract import validate_user_id
from cluster.core.errors import InvalidArgument
from cluster.core.storage import ProfileStore, decode_ranked, decode_str
from protos.marketing.v1 import recommend_pb2
from ray_apps.recs.model import ALGORITHMS, RecModel
from ray_apps.registry import ModelVersion

__all__ = ["Recommender", "MODEL_NAME", "DEFAULT_N", "MAX_N"]

MODEL_NAME = "recs"
DEFAULT_N = 10
MAX_N = 100
#: Profile cells of the category fallback (written by spark_jobs/tags.py).
CATEGORIES_CELL = "t:top_categories"
RUN_CELL = "t:run"


class Recommender:
    def __init__(self, store: ProfileStore, model: RecModel, version: ModelVersion, *, max_exclude: int,
                 max_user_id_length: int, forgotten: Callable[[str], bool] = lambda _user_id: False) -> None:
        self.store = store
        #: Forgotten users (tombstones) get the list of a stranger: the model's copy of their
        #: history is never used for them, until the next training leaves them out.
        self.forgotten = forgotten
        self.model = model
        self.version = version
        self.max_exclude = max_exclude
        self.max_user_id_length = max_user_id_length
        names = {cls: name for name, cls in ALGORITHMS.items()}
        self.algorithm = names.get(type(model.estimator), type(model.estimator).__name__.lower())

    def _categories(self, user_id: str) -> list[tuple[str, float]] | None:
        """The user's top categories from a newer tags run than the model's; None to use the model's."""
        cells = self.store.read(user_id, [CATEGORIES_CELL, RUN_CELL]) or {}
        if CATEGORIES_CELL not in cells:
            return None
        if RUN_CELL in cells and decode_str(cells[RUN_CELL]) == self.version.feature_run_id:
            return None  # the run the model was trained on: its copy is the unrounded one
        return decode_ranked(cells[CATEGORIES_CELL])

    def recommend(self, user_id: str, n: int = 0, exclude: Sequence[str] = ()) -> recommend_pb2.RecommendResponse:
        """The ``n`` (default 10) best unseen items and the reason.

        Raises:
            InvalidArgument: bad user_id, ``n`` outside 0..100, too many exclusions.
        """
        validate_user_id(user_id, self.max_user_id_length)
        if not 0 <= n <= MAX_N:
            raise InvalidArgument(f"n must be 1..{MAX_N} (0 for {DEFAULT_N}), got {n}", field="n")
        if len(exclude) > self.max_exclude:
            raise InvalidArgument(f"at most {self.max_exclude} exclude_item_ids, got {len(exclude)}",
                                  field="exclude_item_ids")
        n = n or DEFAULT_N
        if self.forgotten(user_id):
            recs = self.model.recommend(user_id, n, exclude=exclude, anonymous=True)
        else:
            # A user with a history gets the model or the fallback from that history: no store read.
            categories = None if self.model.interactions_of(user_id) else self._categories(user_id)
            recs = self.model.recommend(user_id, n, exclude=exclude, categories=categories)
        return recommend_pb2.RecommendResponse(
            user_id=user_id,
            items=[recommend_pb2.RecommendedItem(item_id=i, score=float(s)) for i, s in recs.items],
            reason=recs.reason, algorithm=self.algorithm, model_version=self.version.ref,
        )
