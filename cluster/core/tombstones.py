"""Tombstones of forgotten users (right to erasure, PIPL art. 47 / GDPR art. 17).

``pmkt privacy forget USER_ID`` deletes the user's profile and counters and writes a
tombstone to the lake (:data:`cluster.core.catalog.TOMBSTONES`, one ``<sha256 of the id>.json``
per user). Every later build excludes tombstoned users from the catalog's personal tables
(:func:`spark_jobs.common.exclude_forgotten`), and the real-time intake rejects their events, so
a forgotten user does not come back with the next run. The tombstone holds the platform's user
id (a pseudonymous key), never personal data.

It lives above :mod:`cluster.core.storage` because it names its folder through the catalog,
which itself builds on the storage back-ends.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from cluster.core.catalog import TOMBSTONES
from cluster.core.errors import NotFound
from cluster.core.storage.lake import Lake

__all__ = ["Tombstones"]


def _name(user_id: str) -> str:
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:32] + ".json"


class Tombstones:
    """Read and write tombstones; ``contains`` is cached for ``ttl_s`` seconds."""

    def __init__(self, lake: Lake, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.lake = lake
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: set[str] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def add(self, user_id: str, reason: str = "data subject request") -> bool:
        """Record the tombstone; False if the user was already forgotten (idempotent)."""
        if TOMBSTONES.exists(self.lake, _name(user_id)):
            return False
        TOMBSTONES.write_json(
            self.lake,
            {"user_id": user_id, "forgotten_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "reason": reason},
            _name(user_id),
        )
        with self._lock:
            if self._cache is not None:
                self._cache.add(user_id)
        return True

    def is_forgotten(self, user_id: str) -> bool:
        """Uncached check (one lake lookup)."""
        return TOMBSTONES.exists(self.lake, _name(user_id))

    def records(self) -> list[dict]:
        """Every tombstone: ``user_id``, ``forgotten_at`` (ISO-8601 UTC) and ``reason``."""
        out = []
        for name in TOMBSTONES.list_dir(self.lake):
            if name.endswith(".json"):
                try:
                    out.append(TOMBSTONES.read_json(self.lake, name))
                except NotFound:
                    continue
        return out

    def all(self) -> set[str]:
        """Every forgotten user id."""
        return {r["user_id"] for r in self.records()}

    def contains(self, user_id: str) -> bool:
        """Cached membership (refreshed every ``ttl_s``), for the real-time path."""
        with self._lock:
            stale = self._cache is None or self.clock() - self._loaded_at >= self.ttl_s
        if stale:
            fresh = self.all()
            with self._lock:
                self._cache, self._loaded_at = fresh, self.clock()
        with self._lock:
            return user_id in self._cache

    def uri(self) -> str:
        """Where Spark reads the tombstones (JSON files)."""
        return TOMBSTONES.uri(self.lake)

    def exists(self) -> bool:
        return bool(TOMBSTONES.list_dir(self.lake))
