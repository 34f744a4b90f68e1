import subprocess
import sys

import pytest

from cluster.cli import main


def test_help_lists_the_chain(capsys):
    with pytest.raises(SystemExit) as exit_:
        from cluster.cli import cli

        cli.main(args=["--help"], prog_name="pmkt")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "ingest", "features", "train", "serve", "demo"):
        assert command in out


def test_platform_error_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "--profile", "nope", "settings", "show"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown settings profile 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_rfm_is_a_clear_precondition(tmp_path, monkeypatch):
    monkeypatch.setenv("PMKT_HOME", str(tmp_path))
    assert main(["train", "segments", "--smoke-test"]) == 2


def test_tune_without_features_names_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PMKT_HOME", str(tmp_path))
    assert main(["tune", "churn", "--smoke-test"]) == 2
    assert "pmkt features tables" in capsys.readouterr().err


def test_models_commands_move_the_serving_version(tmp_path, monkeypatch, capsys):
    import numpy as np

    from cluster.core.settings import load_settings
    from cluster.core.storage import open_lake
    from ray_apps.registry import open_registry
    from ray_apps.segments.model import RFMSegmenter

    monkeypatch.setenv("PMKT_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    reg = open_registry(load_settings("embedded"))
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.integers(1, 200, 300), rng.integers(1, 20, 300), rng.gamma(2, 300, 300)]).astype(float)
    for k in (3, 4):
        reg.register("segments", RFMSegmenter(n_clusters=k).fit(X), metrics={"silhouette": 0.1 * k, "chosen_k": k},
                     params={}, feature_run_id=f"run-{k}")
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "v0001" in out and "v0002" in out and "run-4" in out
    assert main(["models", "rollback", "segments"]) == 0
    assert "segments/v0001 is current" in capsys.readouterr().out
    assert reg.current_version("segments") == "v0001"
    assert main(["models", "promote", "segments", "v0002"]) == 0
    assert reg.current_version("segments") == "v0002"
    assert main(["models", "promote", "segments", "v0009"]) == 2
    assert "no version v0009" in capsys.readouterr().err
    assert main(["models", "show", "segments", "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "segments/v0002" and doc["current"] and len(doc["history"]) == 4
