"""An attacker on the cluster network, without credentials (docs/security.md).

A fresh network namespace, ``pm-attacker``, joins the cluster's bridge like any machine on the
LAN. From it, with no Ray token, no API key and no Spark secret (its own empty HOME and an
environment scrubbed of them), this test reaches each port and shows it refuses: Ray's GCS and
Ray Client (UNAUTHENTICATED), the Jobs API (401), the platform's gRPC and HTTP API (health open,
the rest UNAUTHENTICATED / 401, an oversized keyless body refused from its headers, measured),
and a Spark application (never registered with the master). From the client side it then shows
scopes and the message cap with the inventory's keys. Every figure is printed (pytest -s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

NS = "pm-attacker"
VETH = "pmv-attacker"
ADDRESS = "10.77.0.66"
BRIDGE = "pmbr0"
#: Ports that authenticate nobody (ZooKeeper, HDFS, HBase and its Thrift server, the Spark UIs),
#: where a daemon listens on the local inventory: the firewall role lets only the nodes and the
#: client host reach them (docs/security.md#firewall).
STORAGE_PORTS = [("pm-master", p) for p in (2181, 8020, 9870, 16000, 16010, 9090, 9095, 8080)] + [
    ("pm-worker1", p) for p in (9864, 9866, 9867, 16020, 16030, 8081)]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def attacker(cluster_settings, tmp_path_factory):
    """The namespace (removed afterwards, so teardown finds no namespace left) and a runner of
    Python code inside it with a scrubbed environment."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    home = tmp_path_factory.mktemp("attacker-home")
    etc = Path("/etc/netns") / NS
    _ip("netns", "add", NS)
    try:
        _ip("link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", NS)
        _ip("link", "set", VETH, "master", BRIDGE)
        _ip("link", "set", VETH, "up")
        _ip("-n", NS, "link", "set", "lo", "up")
        _ip("-n", NS, "addr", "add", f"{ADDRESS}/24", "dev", "eth0")
        _ip("-n", NS, "link", "set", "eth0", "up")
        etc.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path("/etc/netns/pm-master/hosts"), etc / "hosts")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        keep = ("PATH", "LANG", "JAVA_HOME")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", GRPC_DNS_RESOLVER="native",
                   PYTHONPATH=str(Path(__file__).resolve().parents[2]))

        def run(code: str, timeout: float = 120) -> dict:
            proc = subprocess.run(["ip", "netns", "exec", NS, sys.executable, "-c", textwrap.dedent(code)],
                                  env=env, capture_output=True, text=True, timeout=timeout)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
            return json.loads(proc.stdout.strip().splitlines()[-1])

        yield run
    finally:
        subprocess.run(["ip", "netns", "delete", NS], capture_output=True)
        subprocess.run(["ip", "link", "delete", VETH], capture_output=True)
        shutil.rmtree(etc, ignore_errors=True)


def _reachable(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=5).close()
        return True
    except OSError:
        return False


def _hostport(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
    return host, int(port)


def test_an_attacker_without_credentials_is_refused_by_every_service(cluster_settings, attacker):
    s = cluster_settings
    gcs_host, gcs_port = s.ray.address.removeprefix("ray://").rpartition(":")[0], 6379
    client_host, client_port = _hostport(s.ray.address)
    dashboard = f"http://{gcs_host}:8265"
    spark_host, spark_port = _hostport(s.spark.master)
    sv = s.serve
    spark_code = textwrap.dedent(f"""
        import os
        os.environ["SPARK_LOCAL_IP"] = {ADDRESS!r}
        from pyspark.sql import SparkSession
        s = (SparkSession.builder.appName("pmkt-attacker").master({s.spark.master!r})
             .config("spark.driver.host", {ADDRESS!r}).config("spark.ui.enabled", "false").getOrCreate())
        print("SPARK-ACCEPTED", s.sparkContext.parallelize(range(10)).count())
    """)
    got = attacker(f"""
        import json, socket, subprocess, sys, time, urllib.error, urllib.request
        import grpc

        out = {{}}

        def reachable(host, port, timeout=5):
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                return True
            except OSError:
                return False

        def rpc(name, call):
            t = time.perf_counter()
            try:
                call()
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
            out[name] = {{"code": code, "ms": round((time.perf_counter() - t) * 1000, 1)}}

        # A Spark application without the secret, started first: it takes longest to give up.
        spark = subprocess.Popen([sys.executable, "-c", {spark_code!r}], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        from ray.core.generated import gcs_service_pb2 as gp, gcs_service_pb2_grpc as gg
        from ray.core.generated import ray_client_pb2 as cp, ray_client_pb2_grpc as cg
        out["reachable"] = {{p: reachable(h, n) for p, (h, n) in {{
            "gcs": ({gcs_host!r}, {gcs_port}), "ray_client": ({client_host!r}, {client_port}),
            "dashboard": ({gcs_host!r}, 8265), "spark": ({spark_host!r}, {spark_port}),
            "grpc_api": ({sv.grpc_client_host!r}, {sv.grpc_port}),
            "http_api": ({sv.http_client_host!r}, {sv.http_port})}}.items()}}
        out["storage"] = {{f"{{h}}:{{p}}": reachable(h, p, timeout=2) for h, p in {STORAGE_PORTS!r}}}
        rpc("gcs", lambda: gg.NodeInfoGcsServiceStub(grpc.insecure_channel("{gcs_host}:{gcs_port}"))
            .GetAllNodeInfo(gp.GetAllNodeInfoRequest(), timeout=10))
        rpc("gcs_wrong_token", lambda: gg.NodeInfoGcsServiceStub(grpc.insecure_channel("{gcs_host}:{gcs_port}"))
            .GetAllNodeInfo(gp.GetAllNodeInfoRequest(), timeout=10, metadata=[("authorization", "Bearer " + "0" * 64)]))
        rpc("ray_client", lambda: cg.RayletDriverStub(grpc.insecure_channel("{client_host}:{client_port}"))
            .ClusterInfo(cp.ClusterInfoRequest(type=cp.ClusterInfoType.PING), timeout=10))
        for path, body in (("/api/jobs/", None),
                           ("/api/jobs/", json.dumps({{"entrypoint": "id"}}).encode())):
            req = urllib.request.Request("{dashboard}" + path, data=body, method="POST" if body else "GET",
                                         headers={{"Content-Type": "application/json"}})
            try:
                status = urllib.request.urlopen(req, timeout=10).status
            except urllib.error.HTTPError as err:
                status = err.code
            out["jobs_" + ("submit" if body else "list")] = status

        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from protos.marketing.v1 import profile_pb2, profile_pb2_grpc
        api = grpc.insecure_channel("{sv.grpc_client_host}:{sv.grpc_port}")
        rpc("grpc_health", lambda: health_pb2_grpc.HealthStub(api).Check(health_pb2.HealthCheckRequest(), timeout=10))
        rpc("grpc_profile", lambda: profile_pb2_grpc.ProfileServiceStub(api).GetProfile(
            profile_pb2.GetProfileRequest(user_id="1"), timeout=10))
        try:
            urllib.request.urlopen("http://{sv.http_client_host}:{sv.http_port}/v1/users/1/profile", timeout=10)
            out["http_profile"] = 200
        except urllib.error.HTTPError as err:
            out["http_profile"] = err.code
        # 64 MiB declared, nothing sent: the answer proves the body was not waited for.
        sock = socket.create_connection(("{sv.http_client_host}", {sv.http_port}), timeout=10)
        t = time.perf_counter()
        sock.sendall(b"POST /v1/events HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
                     b"Content-Length: 67108864\\r\\n\\r\\n")
        head = sock.recv(200)
        out["oversized_keyless"] = {{"status": int(head.split(b" ", 2)[1]),
                                    "ms": round((time.perf_counter() - t) * 1000, 1)}}
        sock.close()

        try:
            spark_out, _ = spark.communicate(timeout=90)
            out["spark_waited"] = "exited"
        except subprocess.TimeoutExpired:
            spark.kill()
            spark_out, _ = spark.communicate()
            out["spark_waited"] = "killed after 90 s without an answer"
        out["spark_accepted"] = "SPARK-ACCEPTED" in spark_out
        out["spark_refused_sasl"] = "SaslMessage" in spark_out  # the master wants the shared secret
        out["spark_tail"] = [l for l in spark_out.splitlines() if "Exception" in l or "ERROR" in l][-3:]
        print(json.dumps(out))
    """, timeout=240)
    print("\nattacker at", ADDRESS, json.dumps(got, indent=1))
    assert all(got["reachable"].values()), got["reachable"]  # reachable, so refusals are the services'
    # The storage ports: open from the client host (so a daemon listens), closed to the attacker.
    from_client = {f"{h}:{p}": _reachable(h, p) for h, p in STORAGE_PORTS}
    assert all(from_client.values()), from_client
    assert not any(got["storage"].values()), got["storage"]
    assert got["gcs"]["code"] == got["gcs_wrong_token"]["code"] == "UNAUTHENTICATED"
    assert got["ray_client"]["code"] == "UNAUTHENTICATED"
    assert got["jobs_list"] == got["jobs_submit"] == 401
    assert got["grpc_health"]["code"] == "OK"
    assert got["grpc_profile"]["code"] == "UNAUTHENTICATED"
    assert got["http_profile"] == 401
    assert got["oversized_keyless"]["status"] == 401
    assert not got["spark_accepted"]
    # refused by the master's authentication, not stopped by a mistake of the test's own driver
    assert got["spark_refused_sasl"], got["spark_tail"]
    with urllib.request.urlopen(f"{s.cluster.spark_master_http}/json/", timeout=10) as resp:
        apps = json.load(resp)
    names = [a["name"] for a in apps.get("activeapps", []) + apps.get("completedapps", [])]
    assert "pmkt-attacker" not in names, names


def test_keys_are_held_to_their_scopes_and_messages_to_the_cap(cluster_settings, pipeline):
    from cluster.core.errors import PermissionDenied, ResourceExhausted
    from ray_apps.client import MarketingClient
    from tests.integration.conftest import api_keys

    keys = api_keys(cluster_settings)
    lp = [{"name": "a", "cost_per_placement": 1, "roi": 1, "max_placements": 1}]
    with MarketingClient.from_settings(cluster_settings, api_key=keys["reader"], retries=0, timeout_s=30) as c:
        for call in (c.optimize_budget, c.optimize_budget_http):
            t = time.perf_counter()
            with pytest.raises(PermissionDenied, match="lacks scope 'decide'"):
                call(lp, 1)
            print(f"\nreader key, OptimizeBudget: PERMISSION_DENIED in {(time.perf_counter() - t) * 1000:.1f} ms")
    with MarketingClient.from_settings(cluster_settings, api_key=keys["ops"], retries=0, timeout_s=30) as c:
        assert c.optimize_budget(lp, 1) is not None
        big = [{"user_id": "u-cap", "action": "view", "item_id": "x" * 1000}] * (
            cluster_settings.serve.max_message_bytes // 1000 + 10)
        for call in (c.track_events, c.track_events_http):
            with pytest.raises(ResourceExhausted):
                call(big)
