"""The API's Prometheus metrics, recorded in the replicas through Ray's metrics agent.

Ray exports them, with Serve's own (``ray_serve_*``: requests, errors, latency and queue per
deployment, replica counts), on every node's metrics export port (``ray.metrics_export_port``
for the embedded profile, ``ray_metrics_export_port`` in the Ansible inventory): scrape
``http://<node>:<port>/metrics``. Ray prefixes application metrics with ``ray_``:

==========================================  =======================================================
metric                                      meaning
==========================================  =======================================================
``ray_pmkt_api_requests_total``             calls answered, by ``method``, ``transport`` (grpc,
                                            http) and ``code`` (gRPC status name / HTTP status)
``ray_pmkt_api_request_seconds``            time in the replica per call (histogram), by
                                            ``method`` and ``transport``
``ray_pmkt_events_total``                   real-time events, by ``outcome`` (accepted,
                                            duplicate, quarantined)
==========================================  =======================================================
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["record_request", "record_events", "BOUNDARIES_S"]

log = logging.getLogger(__name__)
#: Histogram buckets, seconds: the SLO is 10 ms at p99 for lookups.
BOUNDARIES_S = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None


def _get() -> dict[str, Any] | None:
    """Create the metrics once per process; None outside a Ray worker (unit tests, scripts)."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                try:
                    from ray.util import metrics

                    _metrics = {
                        "requests": metrics.Counter(
                            "pmkt_api_requests_total", description="API calls answered",
                            tag_keys=("method", "transport", "code")),
                        "seconds": metrics.Histogram(
                            "pmkt_api_request_seconds", description="time to answer an API call in the replica",
                            boundaries=BOUNDARIES_S, tag_keys=("method", "transport")),
                        "events": metrics.Counter(
                            "pmkt_events_total", description="real-time events by outcome", tag_keys=("outcome",)),
                    }
                except Exception:  # noqa: BLE001 - no Ray worker here: metrics are off
                    log.debug("Ray metrics unavailable", exc_info=True)
                    _metrics = {}
    return _metrics or None


def record_request(method: str, transport: str, code: str, seconds: float) -> None:
    """Count one answered call and its duration (never raises: a metric must not fail a call)."""
    m = _get()
    if m is None:
        return
    try:
        m["requests"].inc(1, tags={"method": method, "transport": transport, "code": code})
        m["seconds"].observe(seconds, tags={"method": method, "transport": transport})
    except Exception:  # noqa: BLE001
        log.debug("recording a request metric failed", exc_info=True)


def record_events(accepted: int, duplicate: int, quarantined: int) -> None:
    """Count the outcome of a batch of real-time events (never raises)."""
    m = _get()
    if m is None:
        return
    try:
        for outcome, n in (("accepted", accepted), ("duplicate", duplicate), ("quarantined", quarantined)):
            if n:
                m["events"].inc(n, tags={"outcome": outcome})
    except Exception:  # noqa: BLE001
        log.debug("recording an events metric failed", exc_info=True)
