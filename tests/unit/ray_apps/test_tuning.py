"""The generic Ray Tune runner and the registry's promote / rollback, on the segments family.

One private local Ray for the module (about 10 s to start); the data is a planted RFM + CLV
population written into a temp lake, so the real ``load`` of the segments family runs.
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cluster.core.errors import FailedPrecondition, InvalidArgument, NotFound
from cluster.core.storage import LocalLake, Zone, open_lake
from ray_apps.registry import ModelRegistry, open_registry
from tests.registry_keys import TEST_REGISTRY_KEY
from ray_apps.segments.model import RFMSegmenter
from ray_apps.segments.train import SPEC, clv_tests
from ray_apps.tuning import get_spec, grid_configs, run_trial, run_tune

GROUPS = [(5, 20, 8000, 9000), (150, 1, 60, 20), (20, 6, 2000, 1500), (60, 3, 500, 300)]


def _write_features(lake, n_per=150, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for g, (r, f, m, clv) in enumerate(GROUPS):
        for i in range(n_per):
            rows.append({"user_id": f"u{g}{i:04d}", "recency_days": rng.lognormal(np.log(r), 0.2),
                         "frequency": max(1.0, round(rng.lognormal(np.log(f), 0.15))),
                         "monetary": rng.lognormal(np.log(m), 0.2), "clv_predicted": rng.lognormal(np.log(clv), 0.3),
                         "group": g})
    frame = pd.DataFrame(rows)
    for table, cols in (("rfm", ["user_id", "recency_days", "frequency", "monetary"]),
                        ("clv", ["user_id", "clv_predicted"])):
        rel = f"{table}/run=t1"
        lake.write_bytes(frame[cols].to_parquet(index=False), Zone.FEATURES, rel, "part-0.parquet")
        lake.write_json({"run_id": "t1", "as_of": "2026-06-30", "path": f"features/{rel}"},
                        Zone.FEATURES, table, "latest.json")
    return frame


@pytest.fixture(scope="module")
def tuned(settings_factory):
    from ray_apps.runtime import shutdown_ray

    settings = settings_factory(PMKT_SEGMENTS__K_MIN="2", PMKT_SEGMENTS__K_MAX="6", PMKT_RAY__NUM_CPUS="2")
    frame = _write_features(open_lake(settings))
    try:
        yield settings, frame
    finally:
        shutdown_ray()


def test_grid_space_is_every_combination():
    assert grid_configs({"b": [1, 2], "a": ["x"]}) == [{"a": "x", "b": 1}, {"a": "x", "b": 2}]
    with pytest.raises(InvalidArgument, match="model must be one of"):
        get_spec("kmeans")


def test_clv_differs_across_planted_segments_and_not_across_random_labels():
    rng = np.random.default_rng(1)
    clv = np.concatenate([rng.lognormal(np.log(c), 0.3, 200) for c in (100, 1000, 5000)])
    labels = np.repeat([0, 1, 2], 200)
    planted = clv_tests(clv, labels)
    assert planted["kruskal_p"] < 1e-10 and planted["anova_p"] < 1e-10 and planted["eta_squared"] > 0.3
    shuffled = clv_tests(clv, rng.permutation(labels))
    assert shuffled["kruskal_p"] > 1e-3 and shuffled["eta_squared"] < 0.05


def test_search_registers_the_best_k_with_clv_tests_and_the_trial_table(tuned):
    settings, frame = tuned
    outcome = run_tune(settings, SPEC, scheduler="grid")
    ks = sorted(r["config"]["k"] for r in outcome.trials)
    assert ks == [2, 3, 4, 5, 6] and outcome.complete
    # The search's best equals the best of the same trials run in this process.
    data = SPEC.load(settings, False).data
    local = {k: run_trial(SPEC, {"k": k}, data)[-1]["silhouette"] for k in ks}
    assert outcome.best_config["k"] == max(local, key=local.get) == 4  # four planted groups
    assert outcome.best_score == pytest.approx(local[4])
    mv = outcome.version
    assert mv.metrics["chosen_k"] == 4 and mv.params["features"][-1] == "log1p(clv_predicted)"
    assert mv.metrics["clv_across_segments"]["kruskal_p"] < 1e-6
    assert [row["k"] for row in mv.metrics["elbow"]] == ks
    inertia = [row["inertia"] for row in mv.metrics["elbow"]]
    assert inertia == sorted(inertia, reverse=True)  # the elbow curve falls with k
    reg = open_registry(settings)
    tuning = reg.extra("segments", mv.version, "tuning.json")
    assert tuning["compute"]["trials"] == 5 and tuning["best_config"] == {"k": 4}
    assert mv.feature_run_id == "t1+clv=t1" and reg.current_version("segments") == mv.version
    model, _ = reg.load("segments", mv.version)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(frame["group"], model.predict(frame[list(model.features_)])) > 0.95


def test_an_interrupted_search_resumes_without_rerunning_finished_trials(tmp_path):
    """Ctrl-C (SIGINT) on `pmkt tune`, then the same command again: it resumes the search."""
    import os
    import signal
    import subprocess
    import sys

    home = tmp_path / "home"
    env = {**os.environ, "PMKT_HOME": str(home), "PMKT_PROFILE": "embedded", "PMKT_SEGMENTS__K_MIN": "2",
           "PMKT_SEGMENTS__K_MAX": "6", "PMKT_RAY__NUM_CPUS": "2"}
    env.pop("PMKT_SETTINGS", None)
    from cluster.core.settings import load_settings

    settings = load_settings("embedded", env=env)
    _write_features(open_lake(settings), n_per=400)
    cmd = [sys.executable, "-c", "from cluster.cli import main; raise SystemExit(main())",
           "tune", "segments", "--scheduler", "asha", "--trials", "16"]
    tune_dir = Path(settings.ray.tune_storage)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    finished: dict[str, bytes] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        finished = {str(f.parent.name): f.read_bytes() for f in tune_dir.glob("*/_trainable*/result.json")
                    if f.stat().st_size > 0}
        if len(finished) >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the search finished before it could be interrupted: " + proc.stdout.read()[-2000:]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 3, out[-3000:]
    assert "was interrupted" in out and "nothing registered" in out
    with pytest.raises(NotFound):
        open_registry(settings).current_version("segments")

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(resumed)" in again.stdout and "16 trials" in again.stdout
    for trial, result in finished.items():  # a finished trial was not run again
        assert next(tune_dir.glob(f"*/{trial}/result.json")).read_bytes() == result
    reg = open_registry(settings)
    tuning = reg.extra("segments", reg.current_version("segments"), "tuning.json")
    assert tuning["resumed"] and tuning["compute"]["trials"] == 16


def test_missing_features_name_the_command(settings_factory):
    settings = settings_factory()
    with pytest.raises(FailedPrecondition, match="pmkt features rfm"):
        SPEC.load(settings, False)


def test_bad_scheduler_and_budget(tuned):
    settings, _ = tuned
    with pytest.raises(InvalidArgument, match="scheduler"):
        run_tune(settings, SPEC, scheduler="hyperband")
    with pytest.raises(InvalidArgument, match="trials"):
        run_tune(settings, SPEC, scheduler="asha", trials=0)


def _fit(seed):
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.integers(1, 200, 200), rng.integers(1, 20, 200), rng.gamma(2, 300, 200)]).astype(float)
    return RFMSegmenter(n_clusters=3, random_state=0).fit(X)


def test_promote_and_rollback_move_the_pointer_as_a_stack(tmp_path):
    reg = ModelRegistry(LocalLake(tmp_path), TEST_REGISTRY_KEY)
    with pytest.raises(NotFound):
        reg.rollback("segments")
    for i in range(3):
        reg.register("segments", _fit(i), metrics={}, params={}, feature_run_id=f"r{i}")
    reg.register("segments", _fit(9), metrics={}, params={}, feature_run_id="r9", make_current=False)
    assert reg.current_version("segments") == "v0003"
    assert reg.rollback("segments").version == "v0002"
    assert reg.rollback("segments").version == "v0001"
    with pytest.raises(FailedPrecondition, match="nothing to roll back"):
        reg.rollback("segments")
    assert reg.promote("segments", "v0004").version == "v0004"
    assert reg.promote("segments", "v0004").version == "v0004"  # idempotent: no second entry
    assert reg.rollback("segments").version == "v0001"
    with pytest.raises(NotFound):
        reg.promote("segments", "v0007")
    log = reg.history("segments")
    assert [(e["from"], e["to"]) for e in log] == [
        (None, "v0001"), ("v0001", "v0002"), ("v0002", "v0003"), ("v0003", "v0002"), ("v0002", "v0001"),
        ("v0001", "v0004"), ("v0004", "v0001"),
    ]
    assert reg.models() == ["segments"]


def test_pointer_written_before_promote_existed_still_reads(tmp_path):
    lake = LocalLake(tmp_path)
    reg = ModelRegistry(lake, TEST_REGISTRY_KEY)
    reg.register("segments", _fit(0), metrics={}, params={}, feature_run_id="r0")
    reg.register("segments", _fit(1), metrics={}, params={}, feature_run_id="r1", make_current=False)
    lake.write_json({"version": "v0001"}, Zone.REGISTRY, "segments", "current.json")  # the old format
    assert reg.current_version("segments") == "v0001"
    reg.promote("segments", "v0002")
    assert reg.rollback("segments").version == "v0001"


def test_served_lookup_follows_promote_and_rollback(tmp_path):
    from cluster.core.storage import SqliteProfileStore
    from ray_apps.segments.service import CurrentSegmentModel

    lake = LocalLake(tmp_path / "lake")
    reg = ModelRegistry(lake, TEST_REGISTRY_KEY)
    reg.register("segments", _fit(0), metrics={}, params={}, feature_run_id="r0")
    reg.register("segments", _fit(1), metrics={}, params={}, feature_run_id="r1")
    store = SqliteProfileStore(tmp_path / "p.db")
    now = [0.0]
    current = CurrentSegmentModel(reg, store, refresh_s=5, max_user_id_length=64, clock=lambda: now[0])
    assert current.lookup().version.version == "v0002"
    reg.rollback("segments")
    assert current.lookup().version.version == "v0002"  # not re-checked before refresh_s
    now[0] = 6.0
    assert current.lookup().version.version == "v0001"
    reg.promote("segments", "v0002")
    now[0] = 12.0
    assert current.lookup().version.version == "v0002"
