"""Real-time intake: events per second sustained, and the time from an event's acceptance to
its counter being visible in GetProfile, through Ray Serve's gRPC proxy, one run.

Baseline in the same process: the same EventIntake called directly (no Serve, no network)
on the same kind of SQLite store, so the ratio is the serving layer's cost.

    make bench-events     # or: .venv/bin/python tests/benchmarks/bench_events.py --seconds 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.ports import free_port


def _batch(prefix: str, n: int, users: int, start: int) -> list[dict]:
    return [{"event_id": f"{prefix}-{start + i}", "user_id": f"u{(start + i) % users:06d}",
             "ts": "2026-06-30 10:00:00", "action": ("view", "click", "cart")[i % 3], "category": "手机"}
            for i in range(n)]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def baseline(home: Path, seconds: float, batch: int, users: int) -> float:
    """Events/s of EventIntake.track called in-process on SQLite."""
    from cluster.core.storage import LocalLake, SqliteProfileStore
    from ray_apps.events.intake import EventIntake

    intake = EventIntake(SqliteProfileStore(home / "base.sqlite"), LocalLake(home / "base-lake"),
                         source_tz="Asia/Shanghai", flush_rows=5000)
    sent, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sent += intake.track(_batch("b", batch, users, sent)).accepted
    intake.flush()
    return sent / (time.perf_counter() - start)


def through_serve(settings, seconds: float, batch: int, users: int, clients: int, probes: int) -> dict:
    from ray_apps.client import MarketingClient

    counts = [0] * clients
    stop = threading.Event()

    def pump(k: int) -> None:
        with MarketingClient.from_settings(settings, timeout_s=30) as client:
            n = 0
            while not stop.is_set():
                n += client.track_events(_batch(f"c{k}", batch, users, n)).accepted
            counts[k] = n

    threads = [threading.Thread(target=pump, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    rate = sum(counts) / (time.perf_counter() - start)

    visible_ms, accept_ms = [], []
    with MarketingClient.from_settings(settings, timeout_s=30) as client:
        for i in range(probes):
            uid = f"probe{i % 10}"
            before = client.get_profile(uid, ["counters"]).counters.get("click", 0) if i >= 10 else 0
            t0 = time.perf_counter()
            res = client.track_events([{"event_id": f"p-{i}", "user_id": uid, "ts": "2026-06-30 10:00:00",
                                        "action": "click"}])
            accepted_at = time.perf_counter()
            assert res.accepted == 1, res
            while client.get_profile(uid, ["counters"]).counters.get("click", 0) <= before:
                pass
            visible_ms.append((time.perf_counter() - accepted_at) * 1000)
            accept_ms.append((accepted_at - t0) * 1000)
    return {"rate": rate, "visible_ms": visible_ms, "accept_ms": accept_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="load duration per measurement")
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--users", type=int, default=10_000, help="distinct users the events spread over")
    parser.add_argument("--probes", type=int, default=200, help="acceptance-to-visible probes")
    args = parser.parse_args()

    from cluster.core.settings import load_settings
    from ray_apps.runtime import shutdown_ray
    from ray_apps.serve.launcher import start_serving

    with tempfile.TemporaryDirectory(prefix="pmkt-bench-events-") as tmp:
        home = Path(tmp)
        base = baseline(home, args.seconds, args.batch, args.users)
        settings = load_settings(env={**os.environ, "PMKT_HOME": str(home),
                                      "PMKT_SERVE__HTTP_PORT": str(free_port()),
                                      "PMKT_SERVE__GRPC_PORT": str(free_port())})
        start_serving(settings)
        try:
            served = through_serve(settings, args.seconds, args.batch, args.users, args.clients, args.probes)
        finally:
            shutdown_ray()
    vis, acc = served["visible_ms"], served["accept_ms"]
    print(f"real-time intake, batches of {args.batch} events, {args.clients} gRPC clients, {args.seconds:.0f}s each")
    print(f"  baseline (EventIntake in-process, SQLite): {base:10,.0f} events/s")
    print(f"  through Ray Serve gRPC:                    {served['rate']:10,.0f} events/s"
          f"  (ratio Serve/baseline {served['rate'] / base:.2f})")
    print(f"  single-event TrackEvents round trip:       p50 {statistics.median(acc):.2f} ms  p99 {_pct(acc, 0.99):.2f} ms")
    print(f"  acceptance -> counter visible in GetProfile: p50 {statistics.median(vis):.2f} ms  "
          f"p99 {_pct(vis, 0.99):.2f} ms  (n={len(vis)})")


if __name__ == "__main__":
    main()
