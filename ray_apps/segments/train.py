"""Segmentation as a Ray Tune search over k (``pmkt tune segments``), chosen by silhouette.

Each trial fits :class:`RFMSegmenter` for one k and reports the silhouette (on a fixed
sample: the full score is quadratic in users) and the inertia (the elbow curve). The best
k is refitted on all users and registered with its metrics, among them a one-way ANOVA and
a Kruskal-Wallis test of CLV across the segments: do the segments differ in customer value,
as their names claim? (Kruskal-Wallis because CLV is heavily skewed; ANOVA as the article
reports it.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from cluster.core.catalog import CLV, RFM
from cluster.core.errors import FailedPrecondition
from cluster.core.feature_io import load_latest
from cluster.core.settings import Settings
from cluster.core.storage import open_lake
from ray_apps.registry import ModelVersion
from ray_apps.segments.model import FEATURES, FEATURES_WITH_CLV, RFMSegmenter
from ray_apps.segments.service import MODEL_NAME
from ray_apps.tuning import Dataset, Fitted, family_spec, run_tune

__all__ = ["SPEC", "load_features", "load", "space", "trial", "fit", "clv_tests", "train_segments", "MODEL_NAME"]

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]


def load_features(settings: Settings) -> tuple[pd.DataFrame, dict, tuple[str, ...]]:
    """The latest RFM table joined with the latest CLV table (when ``segments.with_clv``).

    Returns:
        The frame (``user_id`` and the feature columns), the RFM run metadata, the features used.

    Raises:
        FailedPrecondition: no RFM run, or no CLV run while ``segments.with_clv`` is set.
    """
    lake = open_lake(settings)
    frame, meta = load_latest(lake, RFM, ["user_id", *FEATURES])
    if not settings.segments.with_clv:
        return frame, meta, FEATURES
    try:
        clv, clv_meta = load_latest(lake, CLV, ["user_id", "clv_predicted"])
    except FailedPrecondition:
        raise FailedPrecondition(
            "no CLV features yet: run `pmkt features clv` first (or set segments.with_clv: false to "
            "segment on RFM alone)") from None
    joined = frame.merge(clv, on="user_id", how="inner")
    if len(joined) < 0.95 * len(frame):
        raise FailedPrecondition(
            f"only {len(joined)} of {len(frame)} RFM users have a CLV in run {clv_meta['run_id']}: "
            "re-run `pmkt features clv` on the same orders")
    joined["clv_predicted"] = joined["clv_predicted"].fillna(0.0).clip(lower=0.0)
    return joined, {**meta, "clv_run_id": clv_meta["run_id"]}, FEATURES_WITH_CLV


def load(settings: Settings, smoke_test: bool = False) -> Dataset:
    """The RFM (+ CLV) features as a matrix, the silhouette sample and the seed."""
    seg = settings.segments
    frame, meta, features = load_features(settings)
    data = frame[list(features)].to_numpy(dtype=float)
    if len(data) <= seg.k_min:
        raise FailedPrecondition(f"only {len(data)} users have RFM features; need more than {seg.k_min}")
    rng = np.random.default_rng(seg.seed)
    sample = np.sort(rng.choice(len(data), size=min(len(data), seg.silhouette_sample), replace=False))
    clv = frame["clv_predicted"].to_numpy(dtype=float) if "clv_predicted" in frame else None
    payload = {"X": data, "sample": sample, "seed": seg.seed, "features": features, "clv": clv,
               "as_of": meta["as_of"]}
    run = meta["run_id"] + (f"+clv={meta['clv_run_id']}" if "clv_run_id" in meta else "")
    return Dataset(payload, run, {"users": int(len(data)), "as_of": meta["as_of"]})


def space(settings: Settings, smoke_test: bool = False) -> dict[str, list[int]]:
    """k from ``segments.k_min`` to ``k_max`` (three values in the smoke test)."""
    seg = settings.segments
    k_max = min(seg.k_max, seg.k_min + 2) if smoke_test else seg.k_max
    return {"k": list(range(seg.k_min, k_max + 1))}


def trial(config: dict, data: dict) -> Iterator[dict]:
    """Fit one k and score it (one iteration: K-means has nothing for ASHA to stop early)."""
    from sklearn.metrics import silhouette_score

    k = int(config["k"])
    if k >= len(data["X"]):
        raise FailedPrecondition(f"k={k} needs more than {len(data['X'])} users")
    model = RFMSegmenter(n_clusters=k, random_state=data["seed"], features=data["features"]).fit(data["X"])
    Z = model.standardised(data["X"])
    sample = data["sample"]
    yield {
        "k": k,
        "silhouette": float(silhouette_score(Z[sample], model.labels_[sample])),
        "inertia": float(model.kmeans_.inertia_),
    }


def clv_tests(clv: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """One-way ANOVA and Kruskal-Wallis of CLV across segments (F / H statistic and p-value)."""
    from scipy import stats

    groups = [clv[labels == g] for g in np.unique(labels)]
    groups = [g for g in groups if len(g) > 1]
    if len(groups) < 2:
        return {}
    f, p_f = stats.f_oneway(*groups)
    h, p_h = stats.kruskal(*groups)
    # Share of CLV variance the segments explain (eta squared), the effect size next to the p-value.
    grand = clv.mean()
    between = sum(len(g) * (g.mean() - grand) ** 2 for g in groups)
    total = float(((clv - grand) ** 2).sum()) or 1.0
    return {"anova_f": float(f), "anova_p": float(p_f), "kruskal_h": float(h), "kruskal_p": float(p_h),
            "eta_squared": float(between / total)}


def fit(config: dict, data: dict, trials: list[dict]) -> Fitted:
    """Refit the chosen k on every user; the elbow curve and the CLV tests go into the metrics."""
    k = int(config["k"])
    model = RFMSegmenter(n_clusters=k, random_state=data["seed"], features=data["features"]).fit(data["X"])
    curve = sorted(
        ({"k": r["config"]["k"], "silhouette": r["metrics"]["silhouette"], "inertia": r["metrics"]["inertia"],
          "node_id": r["node_id"]} for r in trials),
        key=lambda row: row["k"],
    )
    segments = model.describe()
    clv = data["clv"]
    stats = clv_tests(clv, model.labels_) if clv is not None else {}
    if clv is not None:
        for row in segments:
            row["clv_mean"] = round(float(clv[model.labels_ == row["segment_id"]].mean()), 2)
    metrics = {
        "chosen_k": k,
        "silhouette": next(r["silhouette"] for r in curve if r["k"] == k),
        "inertia": float(model.kmeans_.inertia_),
        "elbow": curve,
        "users": int(len(data["X"])),
        "segments": segments,
        "clv_across_segments": stats,
        "as_of": data["as_of"],
    }
    params = {
        "k_range": [curve[0]["k"], curve[-1]["k"]],
        "silhouette_sample": int(len(data["sample"])),
        "seed": data["seed"],
        "features": [f"log1p({f})" for f in data["features"]],
        "scaling": "standard",
        "tune_trials": len(curve),
    }
    return Fitted(model, metrics, params)


SPEC = family_spec(__name__, MODEL_NAME, metric="silhouette", mode="max", default_trials=6,
                   description="K-means on standardised log RFM + CLV; k by silhouette, elbow recorded, CLV "
                               "ANOVA/Kruskal-Wallis")


def train_segments(settings: Settings, *, smoke_test: bool = False, progress: Progress | None = None) -> ModelVersion:
    """Grid-search k with Ray Tune, refit the best and register it as the current version.

    Returns:
        The registered model version (metrics include the elbow curve and the chosen k).
    """
    return run_tune(settings, SPEC, scheduler="grid", smoke_test=smoke_test, progress=progress).version
