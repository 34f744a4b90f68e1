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
