"""Replication 2 on two distinct DataNodes for every lake file, and the lake survives the
loss of one DataNode: every file reads back byte-identical through the platform's own
WebHDFS client, both before and after the NameNode has noticed the death.

Runs last (it kills a DataNode) and restarts the DataNode afterwards. The kill needs the
local inventory's pidfiles; on another inventory the loss test is skipped.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from cluster.core.storage import HdfsLake, open_lake
from cluster.provision import _jmx

pytestmark = pytest.mark.cluster


#: Files checked at once (each check is one or two WebHDFS round trips).
PARALLEL = 8


def _lake_files(lake: HdfsLake) -> list[str]:
    return [f"{root}/{name}" for root, _dirs, files in lake.client.walk(str(lake.root)) for name in files]


def _each(fn, items):
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(fn, items))


def _block_hosts(lake: HdfsLake, path: str) -> list[set[str]]:
    resp = httpx.get(f"{lake.webhdfs_url}/webhdfs/v1{path}",
                     params={"op": "GETFILEBLOCKLOCATIONS", "user.name": lake.user}, timeout=30)
    resp.raise_for_status()
    return [set(b["names"]) for b in resp.json()["BlockLocations"]["BlockLocation"]]


@pytest.fixture(scope="module")
def lake(cluster_settings, run_tag) -> HdfsLake:
    lake = open_lake(cluster_settings)
    # Make sure there is something of every kind to check, even if run alone.
    lake.write_bytes(os.urandom(3 * 1024 * 1024), "itest", run_tag, "blob.bin")
    lake.write_json({"tag": run_tag}, "itest", run_tag, "meta.json")
    return lake


#: Files whose block locations are listed one by one; every other file is covered by the
#: NameNode's own count of blocks below their replication factor.
SAMPLE = 96


def test_every_lake_file_has_two_replicas_on_distinct_datanodes(lake):
    # One LISTSTATUS per folder gives every file's replication factor.
    files = [(f"{root}/{name}", st) for (root, _rs), _dirs, entries in lake.client.walk(str(lake.root), status=True)
             for name, st in entries]
    assert len(files) >= 2
    assert [path for path, st in files if st["replication"] != 2] == []
    # The NameNode counts every block with fewer live replicas than its file's factor: none.
    bean = _jmx(lake.webhdfs_url, "Hadoop:service=NameNode,name=FSNamesystem", 10)
    counts = {k: bean[k] for k in
              ("UnderReplicatedBlocks", "MissingBlocks", "CorruptBlocks", "PendingReplicationBlocks")}
    assert counts == dict.fromkeys(counts, 0), counts
    assert bean["BlocksTotal"] >= len([1 for _, st in files if st["length"] > 0])
    # And where they are, for a spread of files (the test's own 3 MiB blob among them).
    paths = sorted(path for path, _ in files)
    sample = set(paths[:: max(1, len(paths) // SAMPLE)]) | {p for p in paths if p.endswith("/blob.bin")}
    placed = _each(lambda path: (path, _block_hosts(lake, path)), sorted(sample))
    assert [f"{path}: block on {hosts}" for path, blocks in placed for hosts in blocks if len(hosts) != 2] == []
    print(f"\n{len(files)} lake files at replication 2, {bean['BlocksTotal']} blocks, none under-replicated; "
          f"{len(sample)} files' block locations listed")


def _live_datanodes(lake: HdfsLake) -> int:
    bean = _jmx(lake.webhdfs_url, "Hadoop:service=NameNode,name=FSNamesystemState", 10)
    return int(bean["NumLiveDataNodes"])


def _read_all(lake: HdfsLake, files: list[str]) -> dict[str, str]:
    prefix = str(lake.root).rstrip("/") + "/"
    digests = _each(lambda path: hashlib.sha256(lake.read_bytes(path[len(prefix):])).hexdigest(), files)
    return dict(zip(files, digests))


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(2)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


def test_every_lake_file_reads_back_identical_after_a_datanode_is_killed(cluster_settings, lake):
    state = Path(cluster_settings.source).parent  # var/cluster for the local inventory
    pidfile = state / "run" / "pm-worker2" / "datanode.pid"
    spec = state / "conf" / "pm-worker2" / "services" / "datanode.sh"
    launcher = state / "bin" / "pmkt-service"
    if not (pidfile.is_file() and spec.is_file() and launcher.is_file()):
        pytest.skip(f"no local-inventory pidfile at {pidfile}: cannot kill a DataNode here")
    files = _lake_files(lake)
    prefix = str(lake.root).rstrip("/") + "/"
    files = [f for f in files if f.startswith(prefix)]
    before = _read_all(lake, files)
    assert _live_datanodes(lake) == 2

    pid = int(pidfile.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    try:
        # At once: the NameNode still believes in the dead node and sends reads to it.
        assert _read_all(lake, files) == before
        # Once the NameNode has declared it dead (heartbeat recheck, see the hdfs role).
        _wait(lambda: _live_datanodes(lake) == 1, 180, "the NameNode to declare pm-worker2's DataNode dead")
        assert _read_all(lake, files) == before
    finally:
        subprocess.run([str(launcher), "start", str(spec)], check=True, capture_output=True, timeout=120)
        _wait(lambda: _live_datanodes(lake) == 2, 180, "the restarted DataNode to register again")
