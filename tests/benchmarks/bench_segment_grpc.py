"""GetSegment latency: Ray Serve's gRPC proxy against a plain grpcio server, one run.

Both answer with the same SegmentLookup over the same SQLite profile store and the same
registered model; only the serving layer differs. 1,000 sequential calls each from one
client (after a warm-up), then p50/p99/mean and the ratio Serve / plain.

    make bench          # or: .venv/bin/python tests/benchmarks/bench_segment_grpc.py --calls 1000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.ports import free_port


def _prepare(home: Path, users: int) -> list[str]:
    """Profiles with RFM for ``users`` users and one registered segments model."""
    from cluster.core.settings import load_settings
    from cluster.core.storage import open_lake, open_profile_store
    from ray_apps.registry import open_registry
    from ray_apps.segments.model import RFMSegmenter

    settings = load_settings(env={**os.environ, "PMKT_HOME": str(home)})
    rng = np.random.default_rng(0)
    rfm = np.column_stack(
        [rng.integers(1, 180, users), rng.integers(1, 30, users), rng.gamma(2.0, 400.0, users).round(2)]
    ).astype(float)
    ids = [f"u{i:06d}" for i in range(users)]
    store = open_profile_store(settings)
    store.write_batch(
        (uid, {"f:rfm_recency_days": int(r), "f:rfm_frequency": int(f), "f:rfm_monetary": float(m),
               "f:rfm_as_of": "2026-07-01"})
        for uid, (r, f, m) in zip(ids, rfm)
    )
    store.close()
    model = RFMSegmenter(n_clusters=5).fit(rfm)
    open_registry(settings).register("segments", model, metrics={}, params={}, feature_run_id="bench")
    return ids


def _plain_server(home: str, port: int, ready) -> None:
    """A plain grpcio server doing the same work as the Serve deployment."""
    import grpc

    from cluster.core.errors import PlatformError
    from cluster.core.settings import load_settings
    from cluster.core.storage import open_lake, open_profile_store
    from protos.marketing.v1 import segment_pb2_grpc
    from ray_apps.registry import open_registry
    from ray_apps.segments.service import SegmentLookup

    settings = load_settings(env={**os.environ, "PMKT_HOME": home})
    model, mv = open_registry(settings).load("segments")
    lookup = SegmentLookup(open_profile_store(settings), model, mv, settings.serve.max_user_id_length)

    class Servicer(segment_pb2_grpc.SegmentServiceServicer):
        def GetSegment(self, request, context):
            try:
                return lookup.get(request.user_id)
            except PlatformError as err:
                context.abort(err.grpc_status_code(), err.message)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    segment_pb2_grpc.add_SegmentServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready.set()
    server.wait_for_termination()


def _measure(target: str, ids: list[str], calls: int, warmup: int = 100) -> dict[str, float]:
    import grpc

    from protos.marketing.v1 import segment_pb2, segment_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = segment_pb2_grpc.SegmentServiceStub(channel)
        rng = np.random.default_rng(1)
        picks = [ids[i] for i in rng.integers(0, len(ids), calls + warmup)]
        for uid in picks[:warmup]:
            stub.GetSegment(segment_pb2.GetSegmentRequest(user_id=uid), timeout=10)
        times = []
        start = time.perf_counter()
        for uid in picks[warmup:]:
            t0 = time.perf_counter()
            stub.GetSegment(segment_pb2.GetSegmentRequest(user_id=uid), timeout=10)
            times.append((time.perf_counter() - t0) * 1000)
        wall = time.perf_counter() - start
    times.sort()
    return {
        "calls": calls,
        "p50_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))],
        "mean_ms": statistics.fmean(times),
        "req_per_s": calls / wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per server (default 1000)")
    parser.add_argument("--users", type=int, default=20_000, help="profiles in the store (default 20000)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pmkt-bench-") as tmp:
        home = Path(tmp)
        ids = _prepare(home, args.users)
        results: dict[str, dict[str, float]] = {}

        # Baseline: plain grpcio in its own process.
        port = free_port()
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        proc = ctx.Process(target=_plain_server, args=(str(home), port, ready), daemon=True)
        proc.start()
        try:
            if not ready.wait(60):
                raise RuntimeError("plain grpcio server did not start")
            results["plain grpcio"] = _measure(f"127.0.0.1:{port}", ids, args.calls)
        finally:
            proc.terminate()
            proc.join(10)

        # Ray Serve through its gRPC proxy, same lookup.
        from cluster.core.settings import load_settings
        from ray_apps.runtime import shutdown_ray
        from ray_apps.serve.launcher import start_serving

        grpc_port, http_port = free_port(), free_port()
        settings = load_settings(env={**os.environ, "PMKT_HOME": str(home), "PMKT_SERVE__GRPC_PORT": str(grpc_port),
                                      "PMKT_SERVE__HTTP_PORT": str(http_port)})
        try:
            start_serving(settings)
            results["Ray Serve gRPC proxy"] = _measure(f"{settings.serve.grpc_client_host}:{grpc_port}", ids, args.calls)
        finally:
            shutdown_ray()

    print(f"\nGetSegment, {args.calls} sequential calls per server, {args.users:,} profiles (SQLite), one client")
    print(f"{'server':<24}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'req/s':>9}")
    for name, r in results.items():
        print(f"{name:<24}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['mean_ms']:>9.2f}{r['req_per_s']:>9.0f}")
    serve, plain = results["Ray Serve gRPC proxy"], results["plain grpcio"]
    print(f"ratio Serve / plain: p50 x{serve['p50_ms'] / plain['p50_ms']:.1f}, "
          f"p99 x{serve['p99_ms'] / plain['p99_ms']:.1f}, throughput x{serve['req_per_s'] / plain['req_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
