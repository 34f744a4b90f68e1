"""``pmkt tune MODEL``: one Ray Tune runner for every model family.

A model family describes itself with a :class:`TuneSpec`: how to load its training data, its
search space, one trial (a generator that yields metrics after each training iteration, so ASHA
can stop a poor trial early) and how to refit the best configuration into the object that goes
into the registry. Every family has the same shape: a package with ``model.py`` (the estimator),
``service.py`` (what serves or applies it) and ``train.py``, whose four steps are named ``load``,
``space``, ``trial`` and ``fit`` and declared with :func:`family_spec`. :func:`run_tune` does the
rest for every family alike:

* ``grid`` runs every combination of the space to completion (FIFO); ``asha`` samples
  ``trials`` configurations from the same value lists and stops the weak ones early
  (asynchronous successive halving over the trial's iterations);
* each trial records the Ray node it ran on, so a cluster run shows how the search spread;
* the experiment keeps its state under ``ray.tune_storage/<model>-<feature run>-<scheduler>``;
  re-running the same command resumes an interrupted search (finished trials are not re-run)
  unless ``fresh`` is asked for;
* the trial table, the best configuration and the compute used (trial iterations and
  seconds) are stored with the registered version (``tuning.json``).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.core.catalog import MODEL_TUNING
from cluster.core.errors import FailedPrecondition, InvalidArgument, describe
from cluster.core.settings import Settings

__all__ = ["FAMILIES", "Family", "Dataset", "Fitted", "TuneSpec", "TuneOutcome", "SCHEDULERS", "STEPS", "family_spec",
           "get_spec", "grid_configs", "run_trial", "run_tune"]

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]
SCHEDULERS = ("asha", "grid")


@dataclass
class Dataset:
    """What a family's ``load`` returns: the data every trial gets (shipped once through the
    object store) and where it came from."""

    data: Any
    #: The feature run the data was read from (recorded with the model version).
    feature_run_id: str
    #: Anything worth recording with the version: row counts, as-of day, split sizes.
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fitted:
    """What a family's ``fit`` returns: the model to register, its metrics and parameters."""

    model: Any
    metrics: dict[str, Any]
    params: dict[str, Any]


@dataclass(frozen=True)
class TuneSpec:
    """A model family as the tuner sees it.

    Attributes:
        name: Registry name (``segments``, ``ctr``, ``recs``, ``churn``).
        metric: The metric every trial reports and the search optimises.
        mode: ``max`` or ``min``.
        load: ``load(settings, smoke_test) -> Dataset``; raises FailedPrecondition when the
            features it needs have not been built (naming the command that builds them).
        space: ``space(settings, smoke_test) -> {param: [values, ...]}``; the grid is their
            product, ASHA samples from the same lists.
        trial: ``trial(config, data) -> iterator of metric dicts``, one per training iteration
            (at least one; the last is the trial's result). Must be a module-level function.
        fit: ``fit(best_config, data, trial_rows) -> Fitted``: refit the chosen configuration
            on the training data and compute the version's metrics.
        max_iterations: Iterations a full trial yields (ASHA's ``max_t``).
        default_trials: ASHA samples when ``--trials`` is not given.
        description: One line for ``pmkt tune --help``.
    """

    name: str
    metric: str
    mode: str
    load: Callable[[Settings, bool], Dataset]
    space: Callable[[Settings, bool], Mapping[str, Sequence[Any]]]
    trial: Callable[[dict, Any], Iterator[dict]]
    fit: Callable[[dict, Any, list[dict]], Fitted]
    max_iterations: int = 1
    default_trials: int = 8
    description: str = ""


#: The functions every family's ``train`` module defines, in the order the runner calls them.
STEPS = ("load", "space", "trial", "fit")


def family_spec(module: str, name: str, *, metric: str, mode: str, max_iterations: int = 1,
                default_trials: int = 8, description: str = "") -> TuneSpec:
    """The TuneSpec of a family from the four :data:`STEPS` its ``train`` module defines.

    Called at the end of the module (``SPEC = family_spec(__name__, ...)``), once the steps exist.

    Args:
        module: The ``train`` module's ``__name__``.
        name: Registry name; ``metric``, ``mode``, ``max_iterations``, ``default_trials`` and
            ``description`` as in :class:`TuneSpec`.

    Raises:
        TypeError: the module lacks one of the steps (a programming error, found at import).
    """
    steps = vars(sys.modules[module])
    missing = [s for s in STEPS if not callable(steps.get(s))]
    if missing:
        raise TypeError(f"{module} must define {', '.join(missing)} before family_spec")
    return TuneSpec(name, metric, mode, *(steps[s] for s in STEPS), max_iterations=max_iterations,
                    default_trials=default_trials, description=description)


@dataclass
class TuneOutcome:
    """The result of :func:`run_tune`."""

    best_config: dict[str, Any]
    best_score: float
    #: One row per trial: its config, final metrics, iterations run, seconds, node.
    trials: list[dict[str, Any]]
    #: ``iterations`` (sum over trials), ``trial_seconds`` (sum), ``wall_seconds``, ``trials``.
    compute: dict[str, float]
    experiment: str
    resumed: bool
    #: Every trial finished (``False`` after an interruption (Ctrl-C); nothing was registered).
    complete: bool = True
    fitted: Fitted | None = None
    version: Any = None  # ray_apps.registry.ModelVersion when registered


def grid_configs(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the space, in a stable order."""
    keys = sorted(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def run_trial(spec: TuneSpec, config: dict, data: Any) -> list[dict]:
    """Run one trial in this process (tests and the in-process baseline): every iteration's metrics."""
    rows = list(spec.trial(config, data))
    if not rows:
        raise FailedPrecondition(f"{spec.name} trial yielded no metrics for {config}")
    return rows


def _trainable(config: dict, spec: TuneSpec, data: Any) -> None:
    import ray
    from ray import tune

    node = ray.get_runtime_context().get_node_id()
    start = time.perf_counter()
    for metrics in spec.trial(config, data):
        tune.report({**metrics, "node_id": node, "trial_seconds": time.perf_counter() - start})


def _experiment_name(spec: TuneSpec, dataset: Dataset, scheduler: str, trials: int | None,
                     space: Mapping[str, Sequence[Any]], smoke_test: bool) -> str:
    """Same model, features, scheduler, space and budget -> same experiment (so it can resume)."""
    import hashlib
    import json

    key = json.dumps({"space": {k: list(map(repr, v)) for k, v in sorted(space.items())},
                      "trials": trials, "smoke": smoke_test, "max_t": spec.max_iterations}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    run = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset.feature_run_id)[:40]
    return f"{spec.name}-{run}-{scheduler}-{digest}"


def _trial_rows(results, metric: str) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        m = r.metrics or {}
        if r.error or metric not in m:  # failed, or never ran (a stopped search)
            continue
        rows.append({
            "config": dict(r.config),
            metric: m.get(metric),
            "metrics": {k: v for k, v in m.items()
                        if isinstance(v, (int, float)) and not k.startswith(("time_", "timestamp", "pid"))
                        and k not in ("done", "training_iteration", "trial_seconds")},
            "iterations": int(m.get("training_iteration", 0)),
            "seconds": round(float(m.get("trial_seconds", 0.0)), 3),
            "node_id": m.get("node_id", ""),
        })
    return rows


@dataclass(frozen=True)
class _Plan:
    """How Tune runs the search: its param space and options, and the trials planned."""

    param_space: dict[str, Any]
    tune_kwargs: dict[str, Any]
    #: Trials planned: every combination (grid) or the ASHA samples.
    budget: int
    #: Size of the space (its combinations), for the progress line.
    n_grid: int


def _check_arguments(scheduler: str, trials: int | None) -> None:
    if scheduler not in SCHEDULERS:
        raise InvalidArgument(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}",
                              field="scheduler")
    if trials is not None and trials < 1:
        raise InvalidArgument(f"trials must be at least 1, got {trials}", field="trials")


def _search_space(settings: Settings, spec: TuneSpec, smoke_test: bool) -> dict[str, Sequence[Any]]:
    space = dict(spec.space(settings, smoke_test))
    if not space:
        raise FailedPrecondition(f"{spec.name} has an empty search space")
    return space


def _plan(spec: TuneSpec, space: Mapping[str, Sequence[Any]], scheduler: str, trials: int | None,
          seed: int) -> _Plan:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    n_grid = len(grid_configs(space))
    if scheduler == "grid":
        return _Plan({k: tune.grid_search(list(v)) for k, v in space.items()},
                     {"scheduler": FIFOScheduler(), "num_samples": 1}, n_grid, n_grid)
    budget = trials or spec.default_trials
    return _Plan({k: tune.choice(list(v)) for k, v in space.items()}, {
        "scheduler": ASHAScheduler(max_t=max(spec.max_iterations, 1), grace_period=1, reduction_factor=3),
        "num_samples": budget,
        # Seeded sampling: the same command samples the same configurations.
        "search_alg": BasicVariantGenerator(random_state=seed),
    }, budget, n_grid)


def _tuner(settings: Settings, spec: TuneSpec, data: Dataset, plan: _Plan, name: str, *, scheduler: str,
           fresh: bool, step: Progress) -> tuple[Any, bool, Path]:
    """A new Tuner for the experiment, or the earlier run of it restored (unless ``fresh``).

    Returns:
        The tuner, whether it resumes an earlier run, and the experiment's folder.
    """
    from ray import tune

    from ray_apps.runtime import ensure_ray

    storage = Path(settings.ray.tune_storage).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    path = storage / name
    ensure_ray(settings)
    trainable = tune.with_resources(tune.with_parameters(_trainable, spec=spec, data=data.data), {"cpu": 1})
    if fresh and path.exists():
        shutil.rmtree(path)
    if path.exists() and tune.Tuner.can_restore(str(path)):
        step(f"resuming {name} (finished trials are kept)", 0.05)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True, param_space=plan.param_space)
        return tuner, True, path
    step(f"{scheduler}: {plan.budget} trials of {spec.name} (space of {plan.n_grid})", 0.05)
    tuner = tune.Tuner(
        trainable,
        param_space=plan.param_space,
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, **plan.tune_kwargs),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    )
    return tuner, False, path


def _compute(rows: list[dict[str, Any]], failed: int, wall: float) -> dict[str, float]:
    return {
        "trials": len(rows),
        "failed_trials": failed,
        "iterations": sum(r["iterations"] for r in rows),
        "trial_seconds": round(sum((r["seconds"] for r in rows), 0.0), 3),
        "wall_seconds": round(wall, 3),
        "nodes": len({r["node_id"] for r in rows}),
    }


def _outcome(spec: TuneSpec, results, wall: float, *, name: str, resumed: bool, budget: int, path: Path,
             step: Progress) -> TuneOutcome:
    """The search's outcome from Tune's results: the trial table, the best trial, the compute used.

    Raises:
        FailedPrecondition: every trial failed.
    """
    failed = [r for r in results if r.error]
    rows = _trial_rows(results, spec.metric)
    # An interrupted search lists trials that never reported: complete means every planned
    # trial reported (ASHA's early-stopped ones included) or failed.
    complete = len(rows) + len(failed) >= budget
    if not rows and not complete:
        step(f"stopped before any trial finished: run the same command again to resume {name}", 1.0)
        return TuneOutcome({}, float("nan"), [], _compute([], 0, wall), name, resumed, complete=False)
    if not rows:
        # One line, not the trial's traceback: the full error is in the trial's folder under ray.tune_storage.
        first = describe(failed[0].error) if failed else "no trial reported"
        raise FailedPrecondition(f"every {spec.name} trial failed ({len(failed)}); first: {first} "
                                 f"(trial logs under {path})")
    if failed:
        log.warning("%d of %d %s trials failed; first: %s", len(failed), len(results), spec.name, failed[0].error)
    scored = [r for r in rows if r[spec.metric] is not None]
    best = (max if spec.mode == "max" else min)(scored, key=lambda r: r[spec.metric])
    outcome = TuneOutcome(best["config"], float(best[spec.metric]), rows, _compute(rows, len(failed), wall), name,
                          resumed, complete)
    step(f"best {spec.metric}={outcome.best_score:.4f} with {best['config']}", 0.7)
    if not complete:
        step(f"stopped with {budget - len(rows) - len(failed)} of {budget} trials unfinished: "
             "run the same command again to resume", 1.0)
    return outcome


def _refit_and_register(settings: Settings, spec: TuneSpec, data: Dataset, outcome: TuneOutcome, *,
                        scheduler: str, space: Mapping[str, Sequence[Any]], smoke_test: bool, promote: bool,
                        step: Progress) -> None:
    """Refit the best configuration, register it with the trial table (``tuning.json``) and set
    ``outcome.fitted`` and ``outcome.version``."""
    from ray_apps.registry import open_registry

    step(f"refitting the best {spec.name} configuration", 0.75)
    best_config, compute = outcome.best_config, outcome.compute
    fitted = spec.fit(dict(best_config), data.data, outcome.trials)
    tuning = {
        "experiment": outcome.experiment,
        "scheduler": scheduler,
        "metric": spec.metric,
        "mode": spec.mode,
        "space": {k: list(v) for k, v in space.items()},
        "best_config": best_config,
        "best_score": outcome.best_score,
        "compute": compute,
        "resumed": outcome.resumed,
        "trials": outcome.trials,
    }
    metrics = {**fitted.metrics, "tune_best_" + spec.metric: outcome.best_score,
               "trial_nodes": compute["nodes"], **{f"data_{k}": v for k, v in data.info.items()
                                                   if isinstance(v, (int, float, str))}}
    params = {**fitted.params, "tuned": best_config, "scheduler": scheduler, "smoke_test": smoke_test}
    mv = open_registry(settings).register(
        spec.name, fitted.model, metrics=metrics, params=params, feature_run_id=data.feature_run_id,
        make_current=promote, extras={MODEL_TUNING: tuning},
    )
    outcome.fitted, outcome.version = fitted, mv
    step(f"registered {mv.ref}" + (" (current)" if promote else ""), 1.0)


def run_tune(
    settings: Settings,
    spec: TuneSpec,
    *,
    scheduler: str = "grid",
    trials: int | None = None,
    smoke_test: bool = False,
    fresh: bool = False,
    register: bool = True,
    promote: bool = True,
    dataset: Dataset | None = None,
    progress: Progress | None = None,
) -> TuneOutcome:
    """Search a model family's space with Ray Tune, refit the best and register it.

    Args:
        settings: Platform settings (Ray, Tune storage, lake).
        spec: The model family.
        scheduler: ``grid`` (every combination, to completion) or ``asha`` (``trials`` samples,
            weak ones stopped early).
        trials: ASHA samples (default ``spec.default_trials``); ignored by ``grid``.
        smoke_test: The family's tiny space, for fast checks.
        fresh: Start over even if an earlier run of the same experiment exists.
        register: Refit the best configuration and register it (``False`` for benchmarks).
        promote: Make the new version the one serving uses.
        dataset: Data already loaded (benchmarks reuse one load for several searches).
        progress: Optional ``(step, fraction)`` callback.

    Returns:
        The outcome: best configuration and score, trial table, compute used, the version.

    Raises:
        InvalidArgument: unknown scheduler or a trial budget below 1.
        FailedPrecondition: the features are missing, or every trial failed.
    """
    _check_arguments(scheduler, trials)
    step = progress or (lambda _s, _f: None)
    step(f"loading {spec.name} training data", 0.0)
    # Before importing Ray Tune (seconds): missing features fail at once, with the command to run.
    data = dataset or spec.load(settings, smoke_test)
    # The new console output ignores verbose=0 and prints boxes into the CLI's progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    space = _search_space(settings, spec, smoke_test)
    plan = _plan(spec, space, scheduler, trials, settings.segments.seed)
    name = _experiment_name(spec, data, scheduler, plan.budget if scheduler == "asha" else None, space, smoke_test)
    tuner, resumed, path = _tuner(settings, spec, data, plan, name, scheduler=scheduler, fresh=fresh, step=step)
    started = time.perf_counter()
    results = tuner.fit()
    outcome = _outcome(spec, results, time.perf_counter() - started, name=name, resumed=resumed,
                       budget=plan.budget, path=path, step=step)
    if outcome.complete and register:
        _refit_and_register(settings, spec, data, outcome, scheduler=scheduler, space=space, smoke_test=smoke_test,
                            promote=promote, step=step)
    return outcome


@dataclass(frozen=True)
class Family:
    """A model family ``pmkt tune`` knows: where its TuneSpec is and one line for ``--help``."""

    spec: str  #: "module:attribute" of its TuneSpec (imported on use, so ``pmkt tune ctr`` does not import the recommender)
    summary: str


#: Model families ``pmkt tune`` knows, in the order ``--help`` lists them. The CLI reads its choices
#: and help from here; a new family is one entry (see docs/architecture.md).
FAMILIES: dict[str, Family] = {
    "segments": Family("ray_apps.segments.train:SPEC",
                       "K-means on log RFM + CLV; k by silhouette (grid over segments.k_min..k_max)"),
    "ctr": Family("ray_apps.ctr.train:SPEC", "logistic regression on the CTR table; L2 strength and class weights"),
    "recs": Family("ray_apps.recs.train:SPEC", "item-kNN (cosine) and EASE on the interaction matrix; NDCG@10"),
    "churn": Family("ray_apps.churn.train:SPEC", "Cox PH (penalizer) and Weibull AFT on the churn table; concordance"),
    "attributes": Family("ray_apps.attributes.train:SPEC",
                         "classifier of a static attribute (gender) from behaviour; held-out log loss"),
    "demand": Family("ray_apps.pricing.train:SPEC",
                     "Poisson demand per category x weekday x hour with price response; held-out deviance"),
}


def get_spec(name: str) -> TuneSpec:
    """The TuneSpec of a model family.

    Raises:
        InvalidArgument: not one of :data:`FAMILIES`.
    """
    import importlib

    if name not in FAMILIES:
        raise InvalidArgument(f"model must be one of {', '.join(FAMILIES)}, got {name!r}", field="model")
    module, attr = FAMILIES[name].spec.split(":")
    return getattr(importlib.import_module(module), attr)
