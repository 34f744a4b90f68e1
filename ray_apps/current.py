"""The registry's current version of a model, as a serving replica holds it.

A replica re-reads the model's ``current.json`` pointer at most every ``refresh_s`` seconds
and loads a new version when the pointer moved (``pmkt models promote`` / ``rollback``, a
new ``pmkt tune``): no redeploy. Before the first version exists it answers
FAILED_PRECONDITION naming the command that trains one; if the registry cannot be read it
keeps answering with the version it has.

A current version that fails verification (docs/security.md#signed-model-artifacts: a changed
file, no signature, another key) is never unpickled: the replica keeps answering with the version
it has, logs a warning, holds the reason in :attr:`CurrentModel.refused` (the API's health
reports it) and sets the gauge ``pmkt_model_verification_failed{model=...}`` to 1 (Ray exports it
as ``ray_pmkt_model_verification_failed``); it retries at every refresh, so a fixed version is
picked up without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cluster.core.errors import FailedPrecondition, NotFound, PlatformError
from ray_apps.registry import ModelRegistry, ModelVersion, VerificationFailed

__all__ = ["CurrentModel", "VERIFICATION_GAUGE"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: 1 while the registry's current version of ``model`` fails verification in this replica, else 0.
VERIFICATION_GAUGE = "pmkt_model_verification_failed"
_gauge_lock = threading.Lock()
_gauge: list[Any] = []  # [] not created yet, [None] no Ray metrics here, [Gauge]


def _set_verification_gauge(model: str, failed: bool) -> None:
    """Set the gauge (never raises: a metric must not stop serving; off outside a Ray worker)."""
    with _gauge_lock:
        if not _gauge:
            try:
                from ray.util import metrics

                _gauge.append(metrics.Gauge(
                    VERIFICATION_GAUGE, tag_keys=("model",),
                    description="1 while the current version of the model fails verification and is not served"))
            except Exception:  # noqa: BLE001 - no Ray worker here: metrics are off
                _gauge.append(None)
    try:
        if _gauge[0] is not None:
            _gauge[0].set(1.0 if failed else 0.0, tags={"model": model})
    except Exception:  # noqa: BLE001
        log.debug("setting the verification gauge failed", exc_info=True)


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
        #: Why the registry's current version is not the one served (it failed verification), or None.
        self.refused: str | None = None
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
                self._set_refused(None)
                return
            model, mv = self._registry.load(self.name, version)
            self._held = (mv, self._build(model, mv))
            self._set_refused(None)
            log.info("serving %s", mv.ref)
        except NotFound:
            return
        except VerificationFailed as exc:  # never unpickled: keep answering with what we have
            keeping = f"keeping {self._held[0].ref}" if self._held else f"no {self.name} model to serve"
            if self.refused != f"{exc.message}; {keeping}":
                log.warning("%s; %s", exc.message, keeping)
            self._set_refused(f"{exc.message}; {keeping}")
        except PlatformError as exc:  # registry unreachable: keep answering with what we have
            log.warning("cannot check the model registry (keeping %s): %s",
                        self._held[0].ref if self._held else f"no {self.name} model", exc.message)
        finally:
            self._lock.release()

    def _set_refused(self, reason: str | None) -> None:
        if (reason is None) != (self.refused is None):
            _set_verification_gauge(self.name, reason is not None)
        self.refused = reason

    def get(self) -> T:
        """What ``build`` made of the current version.

        Raises:
            FailedPrecondition: no version of the model has been trained yet, or the only one
                there is fails verification.
        """
        self.refresh()
        held = self._held
        if held is None:
            if self.refused:
                raise FailedPrecondition(self.refused)
            raise FailedPrecondition(f"no {self.name} model has been trained yet: run `pmkt tune {self.name}`")
        return held[1]
