"""Stopping the API without failing a call it accepted (docs/api.md#deploying-it).

When ``pmkt serve`` gets SIGTERM or Ctrl-C it drains before it stops Ray:

1. :func:`start_drain` (the driver) sets one key in Ray's GCS key-value store;
2. every replica's :func:`watch` thread sees it within :data:`POLL_S` and closes its
   :class:`DrainGate`: a call that arrives after that is answered ``UNAVAILABLE`` / 503 at once
   (the client retries it on another address), a call already admitted runs to its end;
3. once no admitted call is left (at most ``serve.drain_s``), the replica appends its buffered
   real-time events to the lake and reports under its own key;
4. :func:`wait_drained` (the driver) returns when every replica reported, or at the deadline;
   then Serve and the private Ray stop.

The gate is per replica and costs an integer increment per call; the key is read by one thread
per replica, five times a second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cluster.core.errors import Unavailable

__all__ = ["DRAINING_MESSAGE", "DrainGate", "DrainReport", "clear", "start_drain", "wait_drained", "watch"]

log = logging.getLogger(__name__)

#: Ray internal key-value namespace and keys.
NAMESPACE = "pmkt-serve"
DRAIN_KEY = b"draining"
DRAINED_PREFIX = b"drained:"
#: Seconds between a replica's reads of the drain key.
POLL_S = 0.2
DRAINING_MESSAGE = "the server is shutting down; retry the call on another address"


class DrainGate:
    """Counts the calls a replica admitted and, once closed, refuses new ones."""

    def __init__(self) -> None:
        self._closed = False
        self._in_flight = 0
        self._lock = threading.Lock()

    def admit(self) -> None:
        """Count a call in, or raise Unavailable when the gate is closed (the call did nothing)."""
        with self._lock:
            if self._closed:
                raise Unavailable(DRAINING_MESSAGE)
            self._in_flight += 1

    def done(self) -> None:
        """Count an admitted call out."""
        with self._lock:
            self._in_flight -= 1

    def close(self) -> None:
        with self._lock:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def wait_idle(self, timeout_s: float) -> int:
        """Wait until no admitted call is left, at most ``timeout_s``; returns how many are left."""
        deadline = time.monotonic() + timeout_s
        while self._in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._in_flight


@dataclass(frozen=True)
class DrainReport:
    """What :func:`wait_drained` saw: replicas expected and reported, calls cut at the deadline,
    events appended to the lake by the final flushes, seconds taken."""

    replicas: int
    drained: int
    calls_cut: int
    events_flushed: int
    seconds: float


def _kv():
    from ray.experimental import internal_kv

    return internal_kv


def clear() -> None:
    """Remove the drain keys (before deploying, so a new application starts open)."""
    kv = _kv()
    kv._internal_kv_del(DRAIN_KEY, namespace=NAMESPACE)
    kv._internal_kv_del(DRAINED_PREFIX, del_by_prefix=True, namespace=NAMESPACE)


def start_drain() -> None:
    """Tell every replica to stop admitting calls (the driver side)."""
    _kv()._internal_kv_put(DRAIN_KEY, b"1", overwrite=True, namespace=NAMESPACE)


def wait_drained(replicas: int, timeout_s: float) -> DrainReport:
    """Wait until ``replicas`` replicas reported their drain, at most ``timeout_s``."""
    kv = _kv()
    started = time.monotonic()
    keys = kv._internal_kv_list(DRAINED_PREFIX, namespace=NAMESPACE)
    while len(keys) < replicas and time.monotonic() - started <= timeout_s:
        time.sleep(0.05)
        keys = kv._internal_kv_list(DRAINED_PREFIX, namespace=NAMESPACE)
    reports = [json.loads(kv._internal_kv_get(k, namespace=NAMESPACE) or b"{}") for k in keys]
    return DrainReport(replicas=replicas, drained=len(reports), calls_cut=sum(r.get("left", 0) for r in reports),
                       events_flushed=sum(r.get("events", 0) for r in reports),
                       seconds=round(time.monotonic() - started, 2))


def watch(gate: DrainGate, flush: Callable[[], int], replica: str, drain_s: float,
          stop: threading.Event) -> None:
    """A replica's thread: wait for the drain key, close the gate, wait for the admitted calls,
    flush (``flush`` logs its own failure and returns the events written), report. Returns when
    reported or when ``stop`` is set (the replica stops otherwise)."""
    kv = _kv()
    while not stop.wait(POLL_S):
        try:
            if kv._internal_kv_get(DRAIN_KEY, namespace=NAMESPACE) is None:
                continue
        except Exception:  # noqa: BLE001 - the GCS is briefly unreachable: look again
            log.debug("reading the drain key failed", exc_info=True)
            continue
        gate.close()
        left = gate.wait_idle(drain_s)
        events = flush()
        log.info("drained: %d call(s) cut at serve.drain_s, %d event(s) appended to the lake", left, events)
        kv._internal_kv_put(DRAINED_PREFIX + replica.encode(), json.dumps({"left": left, "events": events}).encode(),
                            overwrite=True, namespace=NAMESPACE)
        return
