"""A model registry in the lake (:data:`cluster.core.catalog.REGISTRY`): ``<model>/vNNNN/`` plus a
``current.json`` pointer; the file names are the catalog's ``MODEL_*`` constants.

Each version holds ``model.pkl`` (joblib), ``metrics.json``, ``params.json``, optional
extras (``tuning.json``: the search that produced it) and ``meta.json`` (created_at, feature
run id, code version). A version is written completely before the pointer moves, so a reader
never sees a half-written model.

``current.json`` is ``{"version": ..., "stack": [...], "log": [...]}``: ``stack`` holds the
versions that were made current, oldest first, its top is the serving version; ``promote``
pushes, ``rollback`` pops back to the version served before (repeatedly, down to the first);
``log`` records every change with its time and reason. Serving replicas re-read the pointer
every ``serve.model_refresh_s`` seconds, so a promote or rollback needs no restart.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib

from cluster.core.catalog import (
    MODEL_CURRENT,
    MODEL_FILE,
    MODEL_META,
    MODEL_METRICS,
    MODEL_PARAMS,
    REGISTRY,
)
from cluster.core.errors import FailedPrecondition, InvalidArgument, NotFound
from cluster.core.storage import Lake

__all__ = ["ModelRegistry", "ModelVersion", "code_version"]

log = logging.getLogger(__name__)
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def code_version() -> str:
    """The git commit of the running code (``-dirty`` if modified), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=root, capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("precision-marketing")
        except PackageNotFoundError:
            return "unknown"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version's metadata (the model itself is loaded on demand)."""

    name: str
    version: str
    created_at: str
    metrics: dict[str, Any]
    params: dict[str, Any]
    feature_run_id: str | None
    code_version: str

    @property
    def ref(self) -> str:
        """``<name>/<version>``, the string responses carry."""
        return f"{self.name}/{self.version}"


class ModelRegistry:
    """Register, list and load model versions stored in the lake."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME_RE.match(name):
            raise InvalidArgument(f"model name {name!r} must match {_NAME_RE.pattern}", field="model")

    def versions(self, name: str) -> list[str]:
        """Registered versions of a model, oldest first."""
        self._check_name(name)
        found = [n for n in REGISTRY.list_dir(self.lake, name) if _VERSION_RE.match(n)]
        return sorted(found, key=lambda v: int(v[1:]))

    def register(
        self,
        name: str,
        model: Any,
        *,
        metrics: dict[str, Any],
        params: dict[str, Any],
        feature_run_id: str | None,
        make_current: bool = True,
        extras: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Store a new version and (by default) make it the current one.

        Returns:
            The new version's metadata.
        """
        self._check_name(name)
        existing = self.versions(name)
        number = int(existing[-1][1:]) + 1 if existing else 1
        version = f"v{number:04d}"
        buf = io.BytesIO()
        joblib.dump(model, buf, compress=3)
        meta = {
            "name": name,
            "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "feature_run_id": feature_run_id,
            "code_version": code_version(),
        }
        self.lake.write_bytes(buf.getvalue(), *REGISTRY.parts(name, version, MODEL_FILE))
        REGISTRY.write_json(self.lake, metrics, name, version, MODEL_METRICS)
        REGISTRY.write_json(self.lake, params, name, version, MODEL_PARAMS)
        for file, content in (extras or {}).items():
            REGISTRY.write_json(self.lake, content, name, version, file)
        # meta.json last: a version folder without it is incomplete and ignored by readers.
        REGISTRY.write_json(self.lake, meta, name, version, MODEL_META)
        if make_current:
            self._move(name, version, push=True, reason="registered")
        log.info("registered %s/%s", name, version)
        return self.get(name, version)

    def _pointer(self, name: str) -> dict[str, Any]:
        try:
            pointer = REGISTRY.read_json(self.lake, name, MODEL_CURRENT)
        except NotFound:
            return {"version": None, "stack": [], "log": []}
        # Pointers written before promote/rollback existed hold only "version".
        pointer.setdefault("stack", [pointer["version"]] if pointer.get("version") else [])
        pointer.setdefault("log", [])
        return pointer

    def _move(self, name: str, version: str, *, push: bool, reason: str,
              pointer: dict[str, Any] | None = None) -> dict[str, Any]:
        """Point serving at ``version`` (pushed on the stack if ``push``), log it, write the pointer."""
        pointer = pointer if pointer is not None else self._pointer(name)
        before = pointer["version"]
        if push:
            pointer["stack"].append(version)
        pointer["version"] = version
        pointer["log"].append({"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "from": before, "to": version, "reason": reason})
        pointer["log"] = pointer["log"][-200:]
        REGISTRY.write_json(self.lake, pointer, name, MODEL_CURRENT)
        return pointer

    def models(self) -> list[str]:
        """Names of the models with at least one version."""
        return sorted(n for n in REGISTRY.list_dir(self.lake) if _NAME_RE.match(n) and self.versions(n))

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every change of the current version, oldest first (``at``, ``from``, ``to``, ``reason``)."""
        self._check_name(name)
        return list(self._pointer(name)["log"])

    def promote(self, name: str, version: str, *, reason: str = "promoted") -> ModelVersion:
        """Make ``version`` the one serving uses (serving picks it up within ``model_refresh_s``).

        Raises:
            NotFound: no such version.
        """
        mv = self.get(name, version)  # validates the name and that the version is complete
        pointer = self._pointer(name)
        if pointer["version"] == mv.version:
            return mv
        self._move(name, mv.version, push=True, reason=reason, pointer=pointer)
        log.info("promoted %s", mv.ref)
        return mv

    def rollback(self, name: str, *, reason: str = "rolled back") -> ModelVersion:
        """Return to the version that was current before the current one.

        Raises:
            NotFound: the model has never been trained.
            FailedPrecondition: the current version is the first one ever made current.
        """
        self._check_name(name)
        pointer = self._pointer(name)
        if pointer["version"] is None:
            raise NotFound(f"no {name} model has been trained yet: run `pmkt tune {name}`")
        stack = pointer["stack"]
        if len(stack) < 2:
            raise FailedPrecondition(f"{name}/{pointer['version']} is the first version served; nothing to roll back to")
        # The top of the stack is the serving version (register, promote and rollback keep it so).
        stack.pop()
        target = stack[-1]
        self._move(name, target, push=False, reason=reason, pointer=pointer)
        log.info("rolled %s back to %s", name, target)
        return self.get(name, target)

    def extra(self, name: str, version: str, file: str) -> Any:
        """An extra JSON file of a version (``catalog.MODEL_TUNING``).

        Raises:
            NotFound: the version has no such file.
        """
        self._check_name(name)
        return REGISTRY.read_json(self.lake, name, version, file)

    def current_version(self, name: str) -> str:
        """The version serving should use.

        Raises:
            NotFound: the model has never been trained.
        """
        self._check_name(name)
        version = self._pointer(name)["version"]
        if version is None:
            raise NotFound(f"no {name} model has been trained yet: run `pmkt tune {name}`")
        return version

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """Metadata of a version (default: the current one)."""
        version = version or self.current_version(name)
        if not _VERSION_RE.match(version):
            raise InvalidArgument(f"version {version!r} must look like v0001", field="version")
        try:
            meta = REGISTRY.read_json(self.lake, name, version, MODEL_META)
        except NotFound:
            known = self.versions(name)
            older = f" and {len(known) - 5} older" if len(known) > 5 else ""
            hint = (f"its versions: {', '.join(known[-5:])}{older}" if known
                    else f"none was trained yet: run `pmkt tune {name}`")
            raise NotFound(f"model {name} has no version {version} ({hint})", field="version") from None
        return ModelVersion(
            name=name,
            version=version,
            created_at=meta["created_at"],
            metrics=REGISTRY.read_json(self.lake, name, version, MODEL_METRICS),
            params=REGISTRY.read_json(self.lake, name, version, MODEL_PARAMS),
            feature_run_id=meta.get("feature_run_id"),
            code_version=meta.get("code_version", "unknown"),
        )

    def load(self, name: str, version: str | None = None) -> tuple[Any, ModelVersion]:
        """The model object and its metadata (default: the current version)."""
        mv = self.get(name, version)
        model = joblib.load(io.BytesIO(self.lake.read_bytes(*REGISTRY.parts(name, mv.version, MODEL_FILE))))
        return model, mv
