"""``pmkt train segments``: a Ray Tune search over k, chosen by silhouette.

Each trial fits :class:`RFMSegmenter` for one k and reports the silhouette (on a fixed
sample: the full score is quadratic in users) and the inertia (the elbow curve). The best
k is refitted on all users and registered with its metrics.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cluster.errors import FailedPrecondition
from cluster.settings import Settings
from cluster.storage import Zone, open_lake
from ray_apps.registry import ModelRegistry, ModelVersion
from ray_apps.segments.model import FEATURES, RFMSegmenter
from ray_apps.segments.service import MODEL_NAME

__all__ = ["load_rfm", "segment_trial", "train_segments", "MODEL_NAME"]

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]


def load_rfm(settings: Settings) -> tuple[pd.DataFrame, dict]:
    """The latest RFM feature table and its run metadata, read from the lake.

    Raises:
        FailedPrecondition: no RFM run exists yet.
    """
    lake = open_lake(settings)
    if not lake.exists(Zone.FEATURES, "rfm", "latest.json"):
        raise FailedPrecondition("no RFM features yet: run `pmkt features rfm` first")
    meta = lake.read_json(Zone.FEATURES, "rfm", "latest.json")
    frame = lake.read_parquet(meta["path"], columns=["user_id", *FEATURES])
    return frame, meta


def _silhouette_sample(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def segment_trial(config: dict, data: np.ndarray, sample: np.ndarray, seed: int) -> dict:
    """Fit one k and score it. Plain function: Tune runs it, tests call it directly."""
    from sklearn.metrics import silhouette_score

    model = RFMSegmenter(n_clusters=int(config["k"]), random_state=seed).fit(data)
    Z = model.standardised(data)
    return {
        "k": int(config["k"]),
        "silhouette": float(silhouette_score(Z[sample], model.labels_[sample])),
        "inertia": float(model.kmeans_.inertia_),
    }


def _tune_trainable(config: dict, data: np.ndarray, sample: np.ndarray, seed: int) -> None:
    import ray
    from ray import tune

    # Where the trial ran: the registry records how the search spread over the Ray nodes.
    tune.report({**segment_trial(config, data, sample, seed), "node_id": ray.get_runtime_context().get_node_id()})


def train_segments(settings: Settings, *, smoke_test: bool = False, progress: Progress | None = None) -> ModelVersion:
    """Search k with Ray Tune, refit the best and register it.

    Args:
        settings: Platform settings (segment search space, Ray, lake).
        smoke_test: Search only k in {k_min, k_min+1, k_min+2} for fast tests.
        progress: Optional ``(step, fraction)`` callback.

    Returns:
        The registered model version (metrics include the elbow curve and the chosen k).
    """
    import os

    # The new console output ignores verbose=0 and prints boxes into the CLI's progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    from ray_apps.runtime import ensure_ray

    step = progress or (lambda _s, _f: None)
    seg = settings.segments
    step("loading RFM features", 0.0)
    frame, meta = load_rfm(settings)
    data = frame[list(FEATURES)].to_numpy(dtype=float)
    k_max = min(seg.k_max, seg.k_min + 2) if smoke_test else seg.k_max
    k_max = min(k_max, len(data) - 1)
    if k_max < seg.k_min:
        raise FailedPrecondition(f"only {len(data)} users have RFM features; need more than {seg.k_min}")
    ks = list(range(seg.k_min, k_max + 1))
    sample = _silhouette_sample(len(data), seg.silhouette_sample, seg.seed)

    ensure_ray(settings)
    step(f"tuning k in {ks[0]}..{ks[-1]} ({len(ks)} trials)", 0.1)
    storage = Path(settings.ray.tune_storage)
    storage.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(_tune_trainable, data=data, sample=sample, seed=seg.seed), {"cpu": 1}
        ),
        param_space={"k": tune.grid_search(ks)},
        tune_config=tune.TuneConfig(metric="silhouette", mode="max"),
        run_config=tune.RunConfig(
            name=f"segments-{meta['run_id']}",
            storage_path=str(storage),
            verbose=0,
        ),
    )
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise FailedPrecondition(f"{len(errors)} of {len(ks)} segment trials failed; first: {errors[0]}")
    curve = sorted(
        ({"k": r.metrics["k"], "silhouette": r.metrics["silhouette"], "inertia": r.metrics["inertia"],
          "node_id": r.metrics.get("node_id", "")} for r in results),
        key=lambda row: row["k"],
    )
    best = max(curve, key=lambda row: row["silhouette"])
    step(f"refitting k={best['k']} on {len(data)} users", 0.8)
    model = RFMSegmenter(n_clusters=best["k"], random_state=seg.seed).fit(data)
    metrics = {
        "chosen_k": best["k"],
        "silhouette": best["silhouette"],
        "inertia": float(model.kmeans_.inertia_),
        "elbow": curve,
        "trial_nodes": len({row["node_id"] for row in curve}),
        "users": int(len(data)),
        "segments": model.describe(),
        "as_of": meta["as_of"],
    }
    params = {
        "k_range": [ks[0], ks[-1]],
        "silhouette_sample": int(len(sample)),
        "seed": seg.seed,
        "features": [f"log1p({f})" for f in FEATURES],
        "scaling": "standard",
        "tune_trials": len(ks),
    }
    mv = ModelRegistry(open_lake(settings)).register(
        MODEL_NAME, model, metrics=metrics, params=params, feature_run_id=meta["run_id"]
    )
    step("registered " + mv.ref, 1.0)
    return mv
