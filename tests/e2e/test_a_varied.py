"""`pmkt demo --input` on a varied data set: other shapes the data contract allows (placement names as
ad positions, other id patterns and lengths, all three timestamp styles, BOM and CRLF, cities and
channels outside the generator's lists, users without orders) run end to end.

This module runs first (its name sorts first): the demo starts and stops its own Ray before the
in-process chain of the other modules starts one. Its lake, registry and profiles serve the parity
tests (tests/e2e/test_parity*.py) as the `varied_chain` environment.
"""

from __future__ import annotations

import pytest


def _output(run) -> str:
    return (run.stdout or "") + (run.stderr or "")


def test_varied_data_is_generated(varied_chain):
    run = varied_chain["generate"]
    assert run.returncode == 0, _output(run)[-3000:]
    assert varied_chain["manifest"].get("style") == "varied"


def test_demo_on_varied_input_runs_end_to_end_and_prints_its_summary(varied_chain):
    run = varied_chain["demo"]
    out = _output(run)
    assert "Traceback" not in out, out[-5000:]
    assert run.returncode == 0, out[-5000:]
    assert "demo summary" in run.stdout
    assert "report with" in run.stdout and "plots" in run.stdout
    # every family was tuned: none was skipped for the data's shape
    assert "skipping" not in out, out[-5000:]


def test_varied_ingest_accounts_for_every_row_as_the_truth_says(varied_chain):
    from cluster.core.storage import Zone, open_lake

    if varied_chain["demo"].returncode != 0:
        pytest.fail("the demo failed; see test_demo_on_varied_input_runs_end_to_end_and_prints_its_summary")
    report = open_lake(varied_chain["settings"]).read_json(Zone.REPORTS, "ingest", "latest.json")
    expected = varied_chain["manifest"]["expected"]
    for name, counts in expected.items():
        got = report["files"][name]
        for key, value in counts.items():
            assert got[key] == value, (name, key, got[key], value)
