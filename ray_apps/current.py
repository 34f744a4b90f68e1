"""The registry's current version of a model, as a serving replica holds it.

A replica re-reads the model's ``current.json`` pointer at most every ``refresh_s`` seconds
and loads a new version when the pointer moved (``pmkt models promote`` / ``rollback``, a
new ``pmkt tune``): no redeploy. Before the first version exists it answers
FAILED_PRECONDITION naming the command that trains one; if the registry cannot be read it
keeps answering with the version it has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cluster.core.errors import FailedPrecondition, NotFound, PlatformError
from ray_apps.registry import ModelRegistry, ModelVersion

__all__ = ["CurrentModel"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class CurrentModel(Generic[T]):
    """Holds ``build(model, version)`` for the current version of ``name``.

    Args:
        registry: Where the versions live.
        name: The model family (``segments``, ``ctr``, ``recs``, ``churn``).
        build: Turns a loaded model and its version into what the service uses.
        refresh_s: Least seconds between two reads of the pointer.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(self, registry: ModelRegistry, name: str, build: Callable[[Any, ModelVersion], T], *,
                 refresh_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self.name = name
        self._build = build
        self._refresh_s = refresh_s
        self._clock = clock
        self._held: tuple[ModelVersion, T] | None = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()  # one load at a time; readers use the held pair
        self.refresh()

    @property
    def version(self) -> ModelVersion | None:
        return self._held[0] if self._held else None

    def refresh(self, force: bool = False) -> None:
        """Load the current version if it changed since the last check (rate-limited)."""
        now = self._clock()
        if not force and self._checked_at is not None and now - self._checked_at < self._refresh_s:
            return
        if not self._lock.acquire(blocking=self._held is None):
            return  # another request is loading; keep answering with the held version
        try:
            self._checked_at = now
            version = self._registry.current_version(self.name)
            if self._held is not None and self._held[0].version == version:
                return
            model, mv = self._registry.load(self.name, version)
            self._held = (mv, self._build(model, mv))
            log.info("serving %s", mv.ref)
        except NotFound:
            return
        except PlatformError as exc:  # registry unreachable: keep answering with what we have
            log.warning("cannot check the model registry (keeping %s): %s",
                        self._held[0].ref if self._held else f"no {self.name} model", exc.message)
        finally:
            self._lock.release()

    def get(self) -> T:
        """What ``build`` made of the current version.

        Raises:
            FailedPrecondition: no version of the model has been trained yet.
        """
        self.refresh()
        held = self._held
        if held is None:
            raise FailedPrecondition(f"no {self.name} model has been trained yet: run `pmkt tune {self.name}`")
        return held[1]
