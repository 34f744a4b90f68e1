"""``pmkt cluster up | down | status``: the Ansible playbooks and a health report.

``up`` and ``down`` run ``ansible/site.yml`` and ``ansible/teardown.yml`` of this checkout
against ``cluster.inventory``. ``status`` asks every daemon for its health through the
endpoints in the settings and says, per check, what it expected and what it saw.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from cluster.core.errors import FailedPrecondition
from cluster.core.settings import Settings

__all__ = ["Check", "cluster_status", "run_playbook", "ansible_dir"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One health check's outcome."""

    name: str
    ok: bool
    detail: str


def ansible_dir() -> Path:
    """The checkout's ``ansible/`` folder.

    Raises:
        FailedPrecondition: the package runs from an installed wheel without the playbooks.
    """
    folder = Path(__file__).resolve().parents[2] / "ansible"
    if not (folder / "site.yml").is_file():
        raise FailedPrecondition(f"no playbooks at {folder}: run `pmkt cluster` from a checkout of the repository")
    return folder


def run_playbook(settings: Settings, playbook: str, extra_vars: dict[str, str] | None = None) -> None:
    """Run one playbook of ``ansible/`` with the configured inventory, streaming its output.

    Raises:
        FailedPrecondition: ansible-playbook is missing or the play failed.
    """
    folder = ansible_dir()
    exe = Path(sys.executable).with_name("ansible-playbook")
    if not exe.exists():
        found = shutil.which("ansible-playbook")
        if not found:
            raise FailedPrecondition("ansible-playbook is not installed: run `make install`")
        exe = Path(found)
    cmd = [str(exe), "-i", str(folder / settings.cluster.inventory), str(folder / playbook)]
    for key, value in (extra_vars or {}).items():
        cmd += ["-e", f"{key}={value}"]
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=folder)
    if proc.returncode != 0:
        raise FailedPrecondition(f"{playbook} failed (exit {proc.returncode}); the play's output above says where")


def _jmx(base: str, query: str, timeout: float) -> dict:
    resp = httpx.get(f"{base.rstrip('/')}/jmx", params={"qry": query}, timeout=timeout)
    resp.raise_for_status()
    beans = resp.json().get("beans", [])
    if not beans:
        raise ValueError(f"no JMX bean {query}")
    return beans[0]


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every failure is a failed check, reported as such
        return Check(name, False, f"unreachable: {type(exc).__name__}: {exc}"[:300])


def _tcp(host: str, port: int, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout):
        pass


def cluster_status(settings: Settings, timeout: float = 5.0) -> list[Check]:
    """Health of every daemon of the cluster profile.

    Raises:
        FailedPrecondition: the settings are not a cluster profile (no HDFS / HBase).
    """
    hd, hb, cl = settings.lake.hdfs, settings.profile_store.hbase, settings.cluster
    if hd is None or hb is None:
        raise FailedPrecondition("`pmkt cluster status` needs the cluster settings (lake.hdfs, profile_store.hbase)")
    checks: list[Check] = []

    def datanodes() -> Check:
        bean = _jmx(hd.webhdfs_url, "Hadoop:service=NameNode,name=FSNamesystemState", timeout)
        live = int(bean["NumLiveDataNodes"])
        return Check("HDFS DataNodes", live == cl.expected_datanodes, f"{live} live (expected {cl.expected_datanodes})")

    def webhdfs() -> Check:
        resp = httpx.get(f"{hd.webhdfs_url}/webhdfs/v1/", params={"op": "GETFILESTATUS", "user.name": hd.user},
                         timeout=timeout)
        return Check("WebHDFS", resp.status_code == 200, f"HTTP {resp.status_code} from {hd.webhdfs_url}")

    def regionservers() -> Check:
        if not cl.hbase_master_http:
            return Check("HBase RegionServers", False, "cluster.hbase_master_http is not set")
        bean = _jmx(cl.hbase_master_http, "Hadoop:service=HBase,name=Master,sub=Server", timeout)
        live = int(bean["numRegionServers"])
        active = str(bean.get("tag.isActiveMaster")).lower() == "true"
        ok = live == cl.expected_regionservers and active
        return Check("HBase RegionServers", ok,
                     f"{live} live (expected {cl.expected_regionservers}), master active: {active}")

    def thrift() -> Check:
        import happybase

        conn = happybase.Connection(hb.host, hb.port, timeout=int(timeout * 1000))
        try:
            tables = conn.tables()
        finally:
            conn.close()
        return Check("HBase Thrift", True, f"{hb.host}:{hb.port} answers ({len(tables)} tables)")

    def spark_workers() -> Check:
        if not cl.spark_master_http:
            return Check("Spark workers", False, "cluster.spark_master_http is not set")
        data = httpx.get(f"{cl.spark_master_http.rstrip('/')}/json/", timeout=timeout).json()
        alive = sum(1 for w in data.get("workers", []) if w.get("state") == "ALIVE")
        return Check("Spark workers", alive == cl.expected_spark_workers,
                     f"{alive} alive (expected {cl.expected_spark_workers}) at {settings.spark.master}")

    def ray_nodes() -> Check:
        address = settings.ray.address
        host, _, port = address.removeprefix("ray://").rpartition(":")
        _tcp(host, int(port), timeout)  # fail fast: ray.init retries a dead address for minutes
        if address.startswith("ray://"):
            init = f"ray.init(address={address!r}, logging_level='ERROR')"
        else:
            init = (f"ray.init(address={address!r}, _node_ip_address={settings.ray.node_ip!r}, "
                    "logging_level='ERROR', log_to_driver=False)")
        script = f"import json, ray; {init}; print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'])))"
        from ray_apps.runtime import ray_auth_env

        env = {**os.environ, **ray_auth_env(settings)}
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
        if proc.returncode != 0:
            return Check("Ray nodes", False, f"cannot join {address}: {proc.stderr.strip()[-200:]}")
        alive = json.loads(proc.stdout.strip().splitlines()[-1])
        return Check("Ray nodes", alive == cl.expected_ray_nodes, f"{alive} alive (expected {cl.expected_ray_nodes})")

    def serve() -> Check:
        sv = settings.serve
        base = f"http://{sv.http_client_host}:{sv.http_port}"
        resp = httpx.get(f"{base}/-/routes", timeout=timeout)
        routes = resp.json() if resp.status_code == 200 else {}
        ok = resp.status_code == 200 and bool(routes)
        _tcp(sv.grpc_client_host, sv.grpc_port, timeout)
        return Check("Serve applications", ok, f"HTTP {resp.status_code}, routes {sorted(routes)}; gRPC port open")

    for name, fn in (
        ("HDFS DataNodes", datanodes),
        ("WebHDFS", webhdfs),
        ("HBase RegionServers", regionservers),
        ("HBase Thrift", thrift),
        ("Spark workers", spark_workers),
        ("Ray nodes", ray_nodes),
        ("Serve applications", serve),
    ):
        checks.append(_guard(name, fn))
    return checks
