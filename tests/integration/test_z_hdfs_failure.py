"""Replication 2 on two distinct DataNodes, and the lake surviving the loss of one.

Runs last (file name): it kills a DataNode, then `site.yml` brings it back.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import httpx
import pytest

from cluster.storage import HdfsLake, open_lake

pytestmark = pytest.mark.cluster


def _lake_files(lake: HdfsLake) -> list[str]:
    return [f"{root}/{name}" for root, _dirs, files in lake.client.walk(str(lake.root)) for name in files]


def _block_hosts(lake: HdfsLake, path: str) -> list[set[str]]:
    resp = httpx.get(f"{lake.webhdfs_url}/webhdfs/v1{path}",
                     params={"op": "GETFILEBLOCKLOCATIONS", "user.name": lake.user}, timeout=30)
    resp.raise_for_status()
    return [set(b["names"]) for b in resp.json()["BlockLocations"]["BlockLocation"]]


def _live_datanodes(lake: HdfsLake) -> int:
    resp = httpx.get(f"{lake.webhdfs_url}/jmx", params={"qry": "Hadoop:service=NameNode,name=FSNamesystemState"},
                     timeout=10)
    return int(resp.json()["beans"][0]["NumLiveDataNodes"])


@pytest.fixture(scope="module")
def lake(cluster_settings, run_tag) -> HdfsLake:
    lake = open_lake(cluster_settings)
    # Make sure there is something of every kind to check, even if run alone.
    lake.write_bytes(os.urandom(3 * 1024 * 1024), "itest", run_tag, "blob.bin")
    lake.write_json({"tag": run_tag}, "itest", run_tag, "meta.json")
    return lake


def test_every_lake_file_has_two_replicas_on_distinct_datanodes(lake):
    files = _lake_files(lake)
    assert len(files) >= 2
    for path in files:
        status = lake.client.status(path)
        assert status["replication"] == 2, path
        for hosts in _block_hosts(lake, path):
            assert len(hosts) == 2, f"{path}: block on {hosts}"


def _datanode_pids() -> dict[str, int]:
    """DataNode JVMs by the network namespace ("host") they run in."""
    out = subprocess.run(["pgrep", "-f", "org.apache.hadoop.hdfs.server.datanode.DataNode"],
                         capture_output=True, text=True).stdout.split()
    pids = {}
    for pid in map(int, out):
        ns = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True).stdout.strip()
        if ns:
            pids[ns] = pid
    return pids


def test_lake_reads_back_identically_without_one_datanode(lake, cluster_settings):
    from cluster.provision import run_playbook

    files = _lake_files(lake)
    rel = [p[len(str(lake.root)) + 1:] for p in files]
    before = {p: hashlib.sha256(lake.read_bytes(p)).hexdigest() for p in rel}
    pids = _datanode_pids()
    assert len(pids) == 2, f"expected two DataNodes in two namespaces, found {pids}"
    victim_ns, victim = sorted(pids.items())[-1]
    os.kill(victim, signal.SIGKILL)
    try:
        # WebHDFS picks the DataNode a read is redirected to; wait until the NameNode has
        # declared the killed one dead so no redirect points at it.
        deadline = time.monotonic() + 180
        while _live_datanodes(lake) != 1:
            assert time.monotonic() < deadline, "the NameNode never noticed the dead DataNode"
            time.sleep(2)
        after = {p: hashlib.sha256(lake.read_bytes(p)).hexdigest() for p in rel}
        assert after == before
    finally:
        run_playbook(cluster_settings, "site.yml")  # brings the DataNode back
    assert _live_datanodes(lake) == 2
