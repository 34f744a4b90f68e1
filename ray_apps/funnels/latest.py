"""The newest funnel table as a serving replica holds it: re-read when a newer run is published
(checked at most every ``refresh_s``), with the users' segments cached per model version."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pandas as pd

from cluster.core.catalog import FUNNELS
from cluster.core.storage import Lake
from ray_apps.funnels.funnel import FunnelTable, load_funnel_table

__all__ = ["LatestFunnels"]


class LatestFunnels:
    def __init__(self, lake: Lake, refresh_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lake, self._refresh_s, self._clock = lake, refresh_s, clock
        self._table: FunnelTable | None = None
        self._checked = float("-inf")
        self._segments: tuple[str, pd.Series] | None = None
        self._lock = threading.Lock()

    def get(self) -> FunnelTable:
        """The newest table.

        Raises:
            FailedPrecondition: no funnel table yet (names ``pmkt features funnels``).
        """
        with self._lock:
            now = self._clock()
            if self._table is None or now - self._checked >= self._refresh_s:
                self._checked = now
                newest = None if self._table is None else FUNNELS.latest(self._lake)
                if self._table is None or (newest is not None and newest["run_id"] != self._table.run_id):
                    self._table = load_funnel_table(self._lake)
            return self._table

    def segments(self, model_ref: str, compute: Callable[[], pd.Series]) -> pd.Series:
        """user_id -> segment name for the model ``model_ref`` (computed once per model and table)."""
        key = f"{model_ref}@{self.get().run_id}"
        with self._lock:
            if self._segments is None or self._segments[0] != key:
                self._segments = (key, compute())
            return self._segments[1]
