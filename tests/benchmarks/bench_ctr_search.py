"""CTR hyper-parameter search: ASHA against the full grid, on the same data, in one run.

Builds its own data in a temporary folder (generate -> ingest -> training tables, embedded
profile), loads the CTR data set once and runs ``pmkt tune ctr``'s runner twice without
registering: the grid (every configuration to convergence) as the baseline, then ASHA with
``--trials`` samples. For each: trials, trial iterations (the compute: L-BFGS rounds reported),
trial-seconds, wall seconds, the best validation AUC and the test AUC of the best configuration
refitted on the train split (with the generator's true click probabilities as the ceiling).

    .venv/bin/python tests/benchmarks/bench_ctr_search.py --users 8000 --trials 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _settings(home: Path):
    from cluster.core.settings import load_settings

    env = {**os.environ, "PMKT_HOME": str(home), "PMKT_SPARK__SHUFFLE_PARTITIONS": "2"}
    env.pop("PMKT_SETTINGS", None)
    env.pop("PMKT_PROFILE", None)
    return load_settings("embedded", env=env)


def build_tables(settings, home: Path, users: int, days: int, seed: int) -> Path:
    """Generated data through ingest and the training-tables job; returns the truth folder."""
    from cluster.datagen import generate
    from spark_jobs import ingest
    from spark_jobs import training_tables as tt

    started = time.perf_counter()
    generate(home / "input", users=users, days=days, seed=seed)
    ingest.main(settings, home / "input", run_id="bench-ingest")
    meta = tt.main(settings, run_id="bench-tables")["ctr"]
    print(f"data: {users:,} users x {days} days (seed {seed}): {meta['rows_train']:,} train / "
          f"{meta['rows_test']:,} test impressions, click rate {meta['positive_rate']:.4f}, "
          f"built in {time.perf_counter() - started:.0f} s")
    return home / "input" / "_truth"


def search(settings, dataset, scheduler: str, trials: int | None) -> dict:
    """One search through the runner, and the test AUC of its best configuration."""
    from ray_apps.ctr.train import SPEC
    from ray_apps.tuning import run_tune

    outcome = run_tune(settings, SPEC, scheduler=scheduler, trials=trials, smoke_test=False, fresh=True,
                       register=False, dataset=dataset)
    fitted = SPEC.fit(dict(outcome.best_config), dataset.data, outcome.trials)
    return {"outcome": outcome, "test_auc": fitted.metrics["test_auc"], "config": outcome.best_config}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8000, help="generated users")
    parser.add_argument("--days", type=int, default=180, help="generated days")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--trials", type=int, default=None, help="ASHA samples (default: the family's)")
    args = parser.parse_args()

    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from ray_apps.ctr.train import SPEC
    from ray_apps.runtime import shutdown_ray
    from ray_apps.tuning import grid_configs

    with tempfile.TemporaryDirectory(prefix="pmkt-bench-ctr-") as tmp:
        home = Path(tmp)
        settings = _settings(home)
        truth = build_tables(settings, home, args.users, args.days, args.seed)
        dataset = SPEC.load(settings, False)
        data = dataset.data
        p_true = pd.read_csv(truth / "impressions.csv").set_index("impression_id")["p_click"]
        oracle = roc_auc_score(data.y_test, p_true.loc[data.test_ids].to_numpy())
        try:
            grid = search(settings, dataset, "grid", None)
            asha = search(settings, dataset, "asha", args.trials or SPEC.default_trials)
        finally:
            shutdown_ray()

    space = SPEC.space(settings, False)
    print(f"CTR search space: {len(grid_configs(space))} configurations, {SPEC.max_iterations} reports "
          f"per full trial; test AUC of the true p_click (oracle) {oracle:.4f}")
    print(f"  {'':6s} {'trials':>6s} {'iterations':>10s} {'trial-s':>8s} {'wall-s':>7s} {'best val AUC':>12s} "
          f"{'test AUC':>9s} {'/oracle':>8s}  best configuration")
    for name, r in (("grid", grid), ("asha", asha)):
        c = r["outcome"].compute
        print(f"  {name:6s} {c['trials']:6d} {c['iterations']:10.0f} {c['trial_seconds']:8.1f} "
              f"{c['wall_seconds']:7.1f} {r['outcome'].best_score:12.4f} {r['test_auc']:9.4f} "
              f"{r['test_auc'] / oracle:8.4f}  {r['config']}")
    g, a = grid["outcome"].compute, asha["outcome"].compute
    print(f"  ASHA / grid: iterations {a['iterations'] / g['iterations']:.2f}, "
          f"trial-seconds {a['trial_seconds'] / g['trial_seconds']:.2f}, "
          f"wall {a['wall_seconds'] / g['wall_seconds']:.2f}; "
          f"best val AUC {asha['outcome'].best_score - grid['outcome'].best_score:+.4f}, "
          f"test AUC {asha['test_auc'] - grid['test_auc']:+.4f}")


if __name__ == "__main__":
    main()
