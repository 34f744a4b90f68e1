"""A second `site.yml` run on a healthy cluster changes nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def test_second_site_run_reports_no_changes(cluster_settings):
    from cluster.provision import ansible_dir

    folder = ansible_dir()
    exe = Path(sys.executable).with_name("ansible-playbook")
    proc = subprocess.run(
        # The Spark and Ray smoke jobs (about a minute here) ran in `pmkt cluster up`'s run and
        # never report a change (changed_when: false): this run checks what could change.
        [str(exe), "-i", str(folder / cluster_settings.cluster.inventory), str(folder / "site.yml"),
         "-e", "spark_smoke_test=false", "-e", "ray_smoke_test=false"],
        cwd=folder, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    recap = RECAP.findall(proc.stdout)
    assert {host for host, *_ in recap} >= {"pm-master", "pm-worker1", "pm-worker2"}, proc.stdout[-2000:]
    changed = {host: int(c) for host, _ok, c, _u, _f in recap if int(c)}
    assert changed == {}, proc.stdout[-4000:]
