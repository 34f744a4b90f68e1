"""``pmkt tune recs``: the recommendations family as the generic Tune runner sees it (:data:`SPEC`).

* :func:`load` reads the interaction matrix (``features/interactions``), the users' top
  categories (``features/tags``) and the item -> category map (raw orders and events), and holds
  out a seeded 25 % of every user's interactions for validation (:func:`split_matrix`, the
  Microsoft Recommenders stratified split);
* :func:`space` is one list of model specs (``"ease:l2=200,dropout=0.25"``): a flat list keeps
  the grid free of combinations where a parameter means nothing to the algorithm;
* :func:`trial` fits one spec on the training side and yields the validation metrics once
  (every model here is closed form or a single pass, so there is nothing for ASHA to stop);
* :func:`fit` refits the best spec on every interaction, picks the cold-start threshold on the
  validation side and returns a :class:`RecModel` with the validation metrics of the model, of
  popularity and of category popularity.

The search maximises validation NDCG@10: it rewards hits by rank (precision@10 does not) and,
unlike MAP, does not shrink with the number of held-out items, so heavy and light users
weigh alike; on MovieLens it orders the models as precision@10 and MAP do (docs/models-recs.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cluster.core.catalog import INTERACTIONS, RAW, RT_EVENTS, TAGS
from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.feature_io import load_interactions, load_latest
from cluster.core.settings import Settings
from cluster.core.storage import Lake, open_lake
from ray_apps.recs.model import (
    ALGORITHMS,
    RecModel,
    category_fallback_top_n,
    make_estimator,
    ranking_metrics,
    recommend_top_n,
    split_matrix,
)
from ray_apps.tuning import Dataset, Fitted, family_spec

__all__ = [
    "MODEL_NAME",
    "SEED",
    "SPEC",
    "VALIDATION_SHARE",
    "K",
    "RecsData",
    "fit",
    "load",
    "load_item_categories",
    "parse_model",
    "space",
    "trial",
]

log = logging.getLogger(__name__)

MODEL_NAME = "recs"
#: List length of every metric.
K = 10
#: Seed of the validation split (and of the smoke-test user sample).
SEED = 42
#: Share of each user's interactions held out for validation.
VALIDATION_SHARE = 0.25
#: Users kept by a smoke test.
SMOKE_USERS = 3000
#: Cold-start thresholds tried by :func:`fit`: users with fewer interactions get the fallback.
MIN_INTERACTIONS_CHOICES = (1, 2, 3, 5)
#: Raw-zone tables the item -> category map is read from, by folder name.
_CATEGORY_SOURCES = {t.path: t for t in (RAW["orders"], RAW["events"], RT_EVENTS)}

#: The full search: popularity (the baseline), item-kNN, RP3beta and EASE.
FULL_SPACE = (
    "popularity",
    *(f"itemknn:n_neighbours={k}" for k in ("20", "50", "100", "none")),
    *(f"rp3beta:alpha=1.0,beta={b},n_neighbours=100" for b in ("0.3", "0.5", "0.7")),
    *(f"ease:l2={l2},dropout={p}" for l2 in ("50", "100", "200", "500", "1000", "2000")
      for p in ("0.0", "0.5", "0.8")),
)
SMOKE_SPACE = ("popularity", "itemknn:n_neighbours=50", "ease:l2=200,dropout=0.0")


@dataclass
class RecsData:
    """What every trial gets: plain arrays and dicts, so it pickles into the object store."""

    #: users x items, every interaction (value 1 view/click/favorite/cart, 2 purchase).
    full: sp.csr_matrix
    #: The training side of the validation split, and the held-out side.
    train: sp.csr_matrix
    validation: sp.csr_matrix
    user_ids: list[str]
    item_ids: list[str]
    #: item id -> category (most frequent category of the item in orders and events).
    item_category: dict[str, str] = field(default_factory=dict)
    #: user id -> [(category, score), ...] best first (``features/tags`` ``top_categories``).
    user_categories: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
    """``"ease:l2=200,dropout=0.25"`` -> ``("ease", {"l2": 200, "dropout": 0.25})``.

    Values are ints, floats or ``none``; the algorithm must be one of :data:`ALGORITHMS`.

    Raises:
        InvalidArgument: the spec does not parse or names an unknown algorithm or parameter.
    """
    name, _, rest = str(spec).partition(":")
    if name not in ALGORITHMS:
        raise InvalidArgument(f"unknown recommender {name!r}; expected one of {sorted(ALGORITHMS)}", field="model")
    accepted = ALGORITHMS[name]().get_params()
    params: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, eq, raw = part.partition("=")
        if not eq or key not in accepted:
            raise InvalidArgument(f"bad parameter {part!r} in {spec!r}; {name} takes {sorted(accepted)}",
                                  field="model")
        if raw.lower() == "none":
            params[key] = None
        else:
            try:
                value = float(raw)
            except ValueError as e:
                raise InvalidArgument(f"parameter {key} of {spec!r} is not a number", field="model") from e
            params[key] = int(value) if value.is_integer() and "." not in raw else value
    return name, params


def _estimator(spec: str):
    name, params = parse_model(spec)
    return make_estimator(name, **params)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_item_categories(lake: Lake, items: Collection[str] | None = None) -> dict[str, str]:
    """Item -> category from the raw zone's orders and events (delivered and real-time).

    Partitions are read newest day first and the scan stops once every item of ``items`` has a
    category, so an item takes its newest category (the one of its most frequent rows on the
    newest day it appears) and a long history is not read for nothing.

    Args:
        lake: The lake.
        items: The items that need a category (default: read everything).
    """
    wanted = None if items is None else set(items)
    parts = sorted(
        ((part, name) for name, table in _CATEGORY_SOURCES.items() for part in table.list_dir(lake)
         if part.startswith("dt=")),
        reverse=True,
    )
    found: dict[str, str] = {}
    for day in sorted({p for p, _ in parts}, reverse=True):
        frames = [lake.read_parquet(*_CATEGORY_SOURCES[name].parts(p), columns=["item_id", "category"])
                  for p, name in parts if p == day]
        frame = pd.concat(frames).dropna()
        frame = frame[~frame["item_id"].isin(found.keys())]
        if wanted is not None:
            frame = frame[frame["item_id"].isin(wanted)]
        if frame.empty:
            continue
        counts = frame.value_counts().rename("n").reset_index()
        best = counts.sort_values(["item_id", "n", "category"], ascending=[True, False, True])
        best = best.drop_duplicates("item_id")
        found.update(zip(best["item_id"], best["category"]))
        if wanted is not None and wanted <= found.keys():
            break
    return found


def _user_categories(frame) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for user, cats in zip(frame["user_id"], frame["top_categories"]):
        if cats is not None and len(cats):
            out[str(user)] = [(str(c["name"]), float(c["score"])) for c in cats]
    return out


def load(settings: Settings, smoke_test: bool = False) -> Dataset:
    """The interaction matrix, its validation split and what the fallbacks need.

    Args:
        settings: Platform settings (the lake).
        smoke_test: Keep a seeded sample of :data:`SMOKE_USERS` users.

    Raises:
        FailedPrecondition: the interaction matrix or the tags table has not been built
            (``pmkt features tags`` builds both), or it has no interactions.
    """
    lake = open_lake(settings)
    INTERACTIONS.require_latest(lake)  # FailedPrecondition naming `pmkt features tags` before the first build
    inter = load_interactions(lake)
    tags, _ = load_latest(lake, TAGS, ["user_id", "top_categories"])
    matrix, user_ids = inter.matrix.tocsr(), list(inter.user_ids)
    if smoke_test and matrix.shape[0] > SMOKE_USERS:
        keep = np.sort(np.random.default_rng(SEED).choice(matrix.shape[0], SMOKE_USERS, replace=False))
        matrix, user_ids = matrix[keep], [user_ids[i] for i in keep]
    if matrix.nnz == 0:
        raise FailedPrecondition("the interaction matrix is empty: run `pmkt features tags` on ingested data")
    train, validation = split_matrix(matrix, 1.0 - VALIDATION_SHARE, SEED)
    item_category = load_item_categories(lake, set(inter.item_ids))
    user_categories = _user_categories(tags)
    data = RecsData(matrix, train, validation, user_ids, list(inter.item_ids), item_category, user_categories)
    info = {
        "as_of": inter.meta.get("as_of"),
        "users": len(user_ids),
        "items": len(inter.item_ids),
        "interactions": int(matrix.nnz),
        "train_interactions": int(train.nnz),
        "validation_interactions": int(validation.nnz),
        "validation_users": int((np.diff(validation.indptr) > 0).sum()),
        "items_with_category": len(item_category),
        "users_with_categories": len(user_categories),
        "split": f"per-user stratified {1 - VALIDATION_SHARE:.0%}/{VALIDATION_SHARE:.0%}, seed {SEED}",
        "smoke_test": smoke_test,
    }
    log.info("recs data: %d users, %d items, %d interactions (%d held out)", info["users"], info["items"],
             info["interactions"], info["validation_interactions"])
    return Dataset(data=data, feature_run_id=inter.meta["run_id"], info=info)


def space(settings: Settings, smoke_test: bool = False) -> Mapping[str, list[str]]:
    """One parameter, ``model``: the specs of :data:`FULL_SPACE` (or :data:`SMOKE_SPACE`)."""
    return {"model": list(SMOKE_SPACE if smoke_test else FULL_SPACE)}


# ---------------------------------------------------------------------------------------------
# Trial and refit
# ---------------------------------------------------------------------------------------------


def _val_metrics(metrics: Mapping[str, float], prefix: str = "val_") -> dict[str, float]:
    return {
        f"{prefix}precision_at_{K}": metrics["precision_at_k"],
        f"{prefix}recall_at_{K}": metrics["recall_at_k"],
        f"{prefix}ndcg_at_{K}": metrics["ndcg_at_k"],
        f"{prefix}map_at_{K}": metrics["map_at_k"],
        f"{prefix}map_at_{K}_capped": metrics["map_at_k_capped"],
    }


def trial(config: dict, data: RecsData) -> Iterator[dict]:
    """Fit ``config["model"]`` on the training side; yield its validation metrics once."""
    began = time.perf_counter()
    est = _estimator(config["model"]).fit(data.train)
    fit_seconds = time.perf_counter() - began
    metrics = ranking_metrics(recommend_top_n(est, data.train, K), data.validation, K)
    yield {**_val_metrics(metrics), "val_users": metrics["users"], "fit_seconds": round(fit_seconds, 3)}


def _category_fallback_lists(data: RecsData) -> np.ndarray:
    """Top-K category-popularity lists for every user, categories taken from the training side.

    Validation cannot use the tags table's top categories: they were computed from every
    interaction, the held-out ones included. A user's category shares here are the user's
    training interactions (strength-weighted) per category: :func:`history_category_shares`, the
    same function :class:`RecModel` serves a user below the chosen threshold with.
    """
    names = sorted({c for c in data.item_category.values() if c is not None})
    index = {c: i for i, c in enumerate(names)}
    item_cat = np.array([index.get(data.item_category.get(t), -1) for t in data.item_ids], dtype=np.int64)
    popularity = np.asarray((data.train > 0).sum(axis=0)).ravel().astype(np.float64)
    return category_fallback_top_n(data.train, item_cat, len(names), popularity, K)


def fit(best_config: dict, data: RecsData, trial_rows: list[dict]) -> Fitted:
    """Refit the chosen spec on every interaction and build the serving :class:`RecModel`.

    The cold-start threshold (``min_interactions``) is the one of :data:`MIN_INTERACTIONS_CHOICES`
    with the best validation NDCG@10 when users below it get the category-popularity list
    instead of the model's (ties: the smallest).
    """
    spec = best_config["model"]
    name, params = parse_model(spec)
    trained = _estimator(spec).fit(data.train)
    model_lists = recommend_top_n(trained, data.train, K)
    model_m = ranking_metrics(model_lists, data.validation, K, per_user=True)
    popularity = make_estimator("popularity").fit(data.train)
    pop_m = ranking_metrics(recommend_top_n(popularity, data.train, K), data.validation, K)
    fallback_lists = _category_fallback_lists(data)
    cat_m = ranking_metrics(fallback_lists, data.validation, K, per_user=True)

    # Per validation user: which list wins below each threshold.
    users = model_m["users_evaluated"]
    train_counts = np.diff(data.train.indptr)[users]
    by_threshold = {}
    for t in MIN_INTERACTIONS_CHOICES:
        use_fallback = train_counts < t
        by_threshold[t] = float(np.where(use_fallback, cat_m["ndcg_per_user"], model_m["ndcg_per_user"]).mean())
    best_t = max(MIN_INTERACTIONS_CHOICES, key=lambda t: (round(by_threshold[t], 6), -t))

    began = time.perf_counter()
    final = _estimator(spec).fit(data.full)
    refit_seconds = time.perf_counter() - began
    rec_model = RecModel(final, data.full, data.user_ids, data.item_ids, data.item_category,
                         data.user_categories, min_interactions=best_t)
    metrics = {
        **_val_metrics(model_m),
        **_val_metrics(pop_m, "popularity_val_"),
        **_val_metrics(cat_m, "category_popularity_val_"),
        f"val_ndcg_at_{K}_lift_over_popularity": (model_m["ndcg_at_k"] / pop_m["ndcg_at_k"]
                                                  if pop_m["ndcg_at_k"] > 0 else None),
        f"val_ndcg_at_{K}_by_min_interactions": {str(t): v for t, v in by_threshold.items()},
        "min_interactions": best_t,
        "val_users": model_m["users"],
        "users": len(data.user_ids),
        "items": len(data.item_ids),
        "interactions": int(data.full.nnz),
        "refit_seconds": round(refit_seconds, 3),
        "trials": len(trial_rows),
    }
    fitted_params = {
        "model": spec,
        "algorithm": name,
        **params,
        "k": K,
        "validation_share": VALIDATION_SHARE,
        "seed": SEED,
        "min_interactions": best_t,
        "binary_input": bool(getattr(final, "binary", True)),
    }
    log.info("recs: %s val NDCG@%d %.4f (popularity %.4f), min_interactions %d", spec, K, model_m["ndcg_at_k"],
             pop_m["ndcg_at_k"], best_t)
    return Fitted(model=rec_model, metrics=metrics, params=fitted_params)


SPEC = family_spec(__name__, MODEL_NAME, metric=f"val_ndcg_at_{K}", mode="max",
                   description="Top-10 recommendations: popularity, item-kNN, RP3beta, EASE; chosen by validation "
                               "NDCG@10.")
