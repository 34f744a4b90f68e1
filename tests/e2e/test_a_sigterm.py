"""`pmkt serve` stopped with SIGTERM under load, as systemd and Kubernetes stop it.

The embedded default serves the varied data set's lake (`varied_chain`) in its own process, with
its own private Ray. Four clients call it without pause: profiles over gRPC and HTTP, events over
gRPC. Then the process gets SIGTERM. The test shows that every call the server accepted was
answered (what it refused while draining is UNAVAILABLE / 503, which clients retry elsewhere,
and nothing else), that every event acknowledged is in the lake, that the process exits 0 on its
own, and that no process of its Ray is left. It runs before the in-process chain starts Ray (a
test_a_ module), so the only Ray processes on the machine are the server's.
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest


def _ray_processes(ray_tmp: str) -> list[str]:
    """Processes of the Ray started with ``RAY_TMPDIR=ray_tmp``: every one of them inherits the
    variable, also the workers that rename themselves ``ray::...`` (so their command line no
    longer names the folder)."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name} {command}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _events_in_lake(settings) -> set[str]:
    import pyarrow.parquet as pq

    from cluster.core.catalog import RT_EVENTS
    from cluster.core.storage import open_lake

    lake = open_lake(settings)
    ids: set[str] = set()
    for rel in lake.files(*RT_EVENTS.parts()):
        if rel.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(lake.read_bytes(*RT_EVENTS.parts(*rel.split("/")))), columns=["event_id"])
            ids.update(table.column("event_id").to_pylist())
    return ids


def _a_user(settings) -> str:
    """A user with a profile: the first of the RFM table."""
    from cluster.core.storage import Zone, open_lake

    lake = open_lake(settings)
    rfm = lake.read_json(Zone.FEATURES, "rfm", "latest.json")
    return str(lake.read_parquet(rfm["path"], columns=["user_id"])["user_id"].iloc[0])


def test_sigterm_under_load_drains_flushes_and_leaves_no_process(varied_chain, tmp_path):
    import grpc

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protos.marketing.v1 import events_pb2, events_pb2_grpc, profile_pb2, profile_pb2_grpc

    if varied_chain["demo"].returncode != 0:
        pytest.skip("the varied demo failed (test_a_varied says why)")
    settings, env = varied_chain["settings"], dict(varied_chain["env"])
    sv = settings.serve
    # This server's Ray only: its processes carry the folder in their arguments. Short, for Ray's
    # socket paths (107 bytes at most).
    ray_tmp = Path(tempfile.mkdtemp(prefix="pmkt-sigterm-", dir="/tmp"))
    env.update(RAY_TMPDIR=str(ray_tmp), PMKT_SERVE__DRAIN_S="10")
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        channel = grpc.insecure_channel(f"{sv.grpc_client_host}:{sv.grpc_port}")
        profiles = profile_pb2_grpc.ProfileServiceStub(channel)
        events = events_pb2_grpc.EventServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        deadline, serving = time.monotonic() + 240, False
        while not serving and time.monotonic() < deadline and proc.poll() is None:
            try:
                serving = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
            except grpc.RpcError:
                time.sleep(1)
        assert serving, (tmp_path / "serve.log").read_text()[-3000:]
        user = _a_user(settings)

        # Per transport: (seconds since the test started, outcome) of every call.
        outcomes: dict[str, list[tuple[float, str]]] = {"grpc_profile": [], "http_profile": [], "events": []}
        t0 = time.monotonic()

        def note(kind: str, outcome: str) -> None:
            outcomes[kind].append((time.monotonic() - t0, outcome))

        acknowledged: list[str] = []
        stop = threading.Event()
        http_base = f"http://{sv.http_client_host}:{sv.http_port}"

        def grpc_profiles() -> None:
            while not stop.is_set():
                try:
                    profiles.GetProfile(profile_pb2.GetProfileRequest(user_id=user), timeout=15)
                    note("grpc_profile", "OK")
                except grpc.RpcError as err:
                    note("grpc_profile", err.code().name)
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        time.sleep(0.05)

        def http_profiles() -> None:
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(f"{http_base}/v1/users/{user}/profile", timeout=15) as resp:
                        note("http_profile", str(resp.status))
                except urllib.error.HTTPError as err:
                    note("http_profile", str(err.code))
                except (OSError, http.client.HTTPException) as err:  # the proxy closed or its port did
                    note("http_profile", "refused" if "refused" in str(err).lower() else
                         "closed" if isinstance(err, http.client.RemoteDisconnected) else repr(err))
                    time.sleep(0.05)

        def track() -> None:
            while not stop.is_set():
                batch = [events_pb2.Event(event_id=f"sigterm-{uuid.uuid4().hex}", user_id=user, action="view",
                                          ts=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                                          item_id="sku00001", category="手机")
                         for _ in range(5)]
                try:
                    resp = events.TrackEvents(events_pb2.TrackEventsRequest(events=batch), timeout=15)
                    note("events", "OK")
                    rejected = {r.index for r in resp.rejected}
                    acknowledged.extend(e.event_id for i, e in enumerate(batch) if i not in rejected)
                except grpc.RpcError as err:
                    note("events", err.code().name)
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        time.sleep(0.05)

        workers = [threading.Thread(target=f, daemon=True)
                   for f in (grpc_profiles, grpc_profiles, http_profiles, track)]
        for w in workers:
            w.start()
        time.sleep(4)  # calls in flight on every transport
        before = {k: len(v) for k, v in outcomes.items()}
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            rc = None
        exited_s = time.monotonic() - sent
        sent -= t0
        stop.set()
        for w in workers:
            w.join(timeout=20)
        channel.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    out = (tmp_path / "serve.log").read_text()
    summary = {k: {when: {c: sum(1 for t, o in v if o == c and (t < sent) == (when == "before"))
                          for c in sorted({o for _, o in v})} for when in ("before", "after")}
               for k, v in outcomes.items()}
    print(f"\nSIGTERM after {before} calls; exited {rc} in {exited_s:.1f} s; outcomes {summary}; "
          f"{len(acknowledged)} events acknowledged")
    assert rc == 0, out[-3000:]
    assert "drained" in out and "Traceback" not in out and "SIGTERM received" not in out, out[-3000:]
    # Before the signal every call succeeded; after it, each was answered, or refused as a
    # retryable "not here" (UNAVAILABLE / 503 from a draining replica, then a closed port).
    assert all(o in ("OK", "200") for v in outcomes.values() for t, o in v if t < sent), summary
    allowed = {"grpc_profile": {"OK", "UNAVAILABLE"}, "events": {"OK", "UNAVAILABLE"},
               "http_profile": {"200", "503", "refused", "closed"}}
    assert all(o in allowed[k] for k, v in outcomes.items() for t, o in v if t >= sent), summary
    assert all(before[k] > 0 for k in before), before  # load reached every transport before the signal
    # Every acknowledged event reached the lake.
    missing = set(acknowledged) - _events_in_lake(settings)
    assert acknowledged and not missing, f"{len(missing)} of {len(acknowledged)} acknowledged events not in the lake"
    # Nothing of the server's Ray is left (workers included), within a few seconds.
    deadline, left = time.monotonic() + 10, ["?"]
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _ray_processes(str(ray_tmp))
    assert left == [], left
    shutil.rmtree(ray_tmp, ignore_errors=True)
