"""A model registry in the lake (:data:`cluster.core.catalog.REGISTRY`): ``<model>/vNNNN/`` plus a
``current.json`` pointer; the file names are the catalog's ``MODEL_*`` constants.

Each version holds ``model.pkl`` (joblib), ``metrics.json``, ``params.json``, optional
extras (``tuning.json``: the search that produced it), ``signature.json`` and ``meta.json``
(created_at, feature run id, code version). A version is written completely before the pointer
moves, so a reader never sees a half-written model.

Signed artifacts (docs/security.md#signed-model-artifacts): ``signature.json`` records every
file's SHA-256 and an HMAC-SHA256 over the version's metadata and those digests with the
registry signing key (:mod:`cluster.core.signing`). :meth:`ModelRegistry.load` checks them on the
very bytes it then unpickles, and promote and rollback check their target, so a file changed in
the lake, an unsigned version or one signed with another key is refused with
:class:`~cluster.core.signing.VerificationFailed` and never unpickled. Build a registry with
:func:`open_registry`; one without a key loads nothing.

``current.json`` is ``{"version": ..., "stack": [...], "log": [...]}``: ``stack`` holds the
versions that were made current, oldest first, its top is the serving version; ``promote``
pushes, ``rollback`` pops back to the version served before (repeatedly, down to the first);
``log`` records every change with its time and reason. Serving replicas re-read the pointer
every ``serve.model_refresh_s`` seconds, so a promote or rollback needs no restart.
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib

from cluster.core.catalog import (
    MODEL_CURRENT,
    MODEL_FILE,
    MODEL_META,
    MODEL_METRICS,
    MODEL_PARAMS,
    MODEL_SIGNATURE,
    REGISTRY,
)
from cluster.core.errors import FailedPrecondition, InvalidArgument, NotFound
from cluster.core.signing import ALGORITHM, SigningKey, VerificationFailed, load_registry_key, sha256_hex
from cluster.core.storage import Lake

if TYPE_CHECKING:
    from cluster.core.settings import Settings

__all__ = ["ModelRegistry", "ModelVersion", "VerificationFailed", "code_version", "open_registry"]

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



#: Files every signed version has; extras (``tuning.json``) are signed when present.
_REQUIRED = (MODEL_FILE, MODEL_METRICS, MODEL_PARAMS, MODEL_META)
#: Metadata fields the signature covers besides the file digests.
_SIGNED_META = ("name", "version", "created_at", "feature_run_id", "code_version")


def _json_bytes(obj: Any) -> bytes:
    # As Lake.write_json writes it; serialised here because the signature covers these very bytes.
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")


def open_registry(settings: Settings, lake: Lake | None = None) -> ModelRegistry:
    """The registry of ``settings``' lake with the registry signing key of ``settings.registry``.

    Args:
        settings: Where the lake and the key are.
        lake: An already open lake of the same settings (default: open one).

    Raises:
        ConfigError: no usable registry key (:func:`cluster.core.signing.load_registry_key`).
    """
    from cluster.core.storage import open_lake

    key = load_registry_key(settings.registry)
    return ModelRegistry(lake if lake is not None else open_lake(settings), key)


class ModelRegistry:
    """Register, list, verify and load model versions stored in the lake.

    Args:
        lake: Where the registry lives.
        key: The registry signing key; without one nothing can be registered, signed or loaded
            (metadata can still be listed with ``verify=False``).
    """

    def __init__(self, lake: Lake, key: SigningKey | None) -> None:
        self.lake = lake
        self.key = key

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME_RE.match(name):
            raise InvalidArgument(f"model name {name!r} must match {_NAME_RE.pattern}", field="model")

    def _need_key(self, doing: str) -> SigningKey:
        if self.key is None:
            raise FailedPrecondition(f"cannot {doing} without the registry signing key "
                                     "(settings registry.key_env / registry.key_file)", field="registry.key_file")
        return self.key

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
        """Store and sign a new version and (by default) make it the current one.

        Returns:
            The new version's metadata.

        Raises:
            FailedPrecondition: the registry has no signing key.
        """
        self._check_name(name)
        self._need_key(f"register a {name} model")
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
        blobs = {MODEL_FILE: buf.getvalue(), MODEL_METRICS: _json_bytes(metrics), MODEL_PARAMS: _json_bytes(params)}
        blobs.update({file: _json_bytes(content) for file, content in (extras or {}).items()})
        blobs[MODEL_META] = _json_bytes(meta)
        for file, data in blobs.items():
            if file != MODEL_META:
                self.lake.write_bytes(data, *REGISTRY.parts(name, version, file))
        self._write_signature(name, version, meta, blobs)
        # meta.json last: a version folder without it is incomplete and ignored by readers.
        self.lake.write_bytes(blobs[MODEL_META], *REGISTRY.parts(name, version, MODEL_META))
        if make_current:
            self._move(name, version, push=True, reason="registered")
        log.info("registered %s/%s", name, version)
        return self.get(name, version)

    def _write_signature(self, name: str, version: str, meta: dict[str, Any], blobs: dict[str, bytes]) -> None:
        key = self._need_key(f"sign {name}/{version}")
        signed = {field: meta.get(field) for field in _SIGNED_META}
        signed.update(name=name, version=version,
                      files={file: sha256_hex(data) for file, data in sorted(blobs.items())})
        signature = {"algorithm": ALGORITHM, "key_id": key.key_id, "signed": signed, "hmac": key.sign(signed)}
        REGISTRY.write_json(self.lake, signature, name, version, MODEL_SIGNATURE)

    def _signed_files(self, name: str, version: str) -> dict[str, str]:
        """The file digests of a version's signature, once the signature verifies.

        Raises:
            VerificationFailed: no key, no signature, or one this key did not make for this version.
        """
        ref = f"{name}/{version}"
        if self.key is None:
            raise VerificationFailed(ref, "no registry signing key to verify it with "
                                          "(settings registry.key_env / registry.key_file)")
        try:
            signature = REGISTRY.read_json(self.lake, name, version, MODEL_SIGNATURE)
        except NotFound:
            raise VerificationFailed(ref, f"the version is unsigned (no {MODEL_SIGNATURE}); register it again, "
                                          f"or re-sign it after checking it: `pmkt models sign {name} {version} "
                                          "--trust-content`") from None
        except ValueError:  # not JSON
            raise VerificationFailed(ref, f"{MODEL_SIGNATURE} is not valid JSON") from None
        signed = signature.get("signed") if isinstance(signature, dict) else None
        if not isinstance(signed, dict) or not self.key.verifies(signed, signature.get("hmac")):
            key_id = signature.get("key_id") if isinstance(signature, dict) else None
            other = (f" (it was signed with key {key_id}; the registry key is {self.key.key_id})"
                     if isinstance(key_id, str) and key_id != self.key.key_id else "")
            raise VerificationFailed(ref, f"the signature does not verify with the registry key{other}")
        if (signed.get("name"), signed.get("version")) != (name, version):
            raise VerificationFailed(ref, f"the signature is for {signed.get('name')}/{signed.get('version')}")
        files = signed.get("files")
        if not isinstance(files, dict) or any(f not in files for f in _REQUIRED):
            raise VerificationFailed(ref, "the signature does not cover every file of the version")
        return files

    def _read(self, name: str, version: str, files: tuple[str, ...], *, verify: bool) -> dict[str, bytes]:
        """``meta.json`` and ``files`` of a version, checked against its signature if ``verify``.

        The bytes returned are the bytes checked, so nothing can change between check and use.

        Raises:
            NotFound: no such (complete) version.
            VerificationFailed: ``verify`` and a file or the signature does not verify.
        """
        self._check_name(name)
        if not _VERSION_RE.match(version):
            raise InvalidArgument(f"version {version!r} must look like v0001", field="version")
        try:
            blobs = {MODEL_META: self.lake.read_bytes(*REGISTRY.parts(name, version, MODEL_META))}
        except NotFound:
            known = self.versions(name)
            older = f" and {len(known) - 5} older" if len(known) > 5 else ""
            hint = (f"its versions: {', '.join(known[-5:])}{older}" if known
                    else f"none was trained yet: run `pmkt tune {name}`")
            raise NotFound(f"model {name} has no version {version} ({hint})", field="version") from None
        digests = self._signed_files(name, version) if verify else {}
        ref = f"{name}/{version}"
        for file in files:
            if verify and file not in digests:
                raise VerificationFailed(ref, f"{file} is not signed")
            try:
                blobs[file] = self.lake.read_bytes(*REGISTRY.parts(name, version, file))
            except NotFound:
                if verify:
                    raise VerificationFailed(ref, f"{file} is missing") from None
                raise
        if verify:
            for file, data in blobs.items():
                if sha256_hex(data) != digests[file]:
                    raise VerificationFailed(ref, f"{file} digest does not match its signature")
        return blobs

    @staticmethod
    def _version(name: str, version: str, blobs: dict[str, bytes]) -> ModelVersion:
        meta = json.loads(blobs[MODEL_META])
        return ModelVersion(
            name=name,
            version=version,
            created_at=meta["created_at"],
            metrics=json.loads(blobs[MODEL_METRICS]),
            params=json.loads(blobs[MODEL_PARAMS]),
            feature_run_id=meta.get("feature_run_id"),
            code_version=meta.get("code_version", "unknown"),
        )

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

    def verify(self, name: str, version: str) -> ModelVersion:
        """Check every file of a version against its signature (the model included).

        Returns:
            The version's metadata.

        Raises:
            NotFound: no such version.
            VerificationFailed: a file was changed, added or removed, the version is unsigned, or
                its signature does not verify with the registry key.
        """
        self._check_name(name)
        present = REGISTRY.list_dir(self.lake, name, version) if _VERSION_RE.match(version) else []
        extras = sorted(f for f in present if f not in _REQUIRED and f != MODEL_SIGNATURE and not f.startswith("."))
        blobs = self._read(name, version, (MODEL_METRICS, MODEL_PARAMS, MODEL_FILE, *extras), verify=True)
        return self._version(name, version, blobs)

    def problem(self, name: str, version: str) -> str | None:
        """Why ``version`` does not verify (``VerificationFailed.reason``), or None if it does."""
        try:
            self.verify(name, version)
        except VerificationFailed as exc:
            return exc.reason
        return None

    def sign(self, name: str, version: str) -> ModelVersion:
        """(Re-)sign a version as it is now in the lake, with this registry's key.

        For versions registered before signing existed and after a key rotation: it vouches for
        whatever the files hold now, so check them first (docs/security.md#signed-model-artifacts).

        Raises:
            NotFound: no such version.
            FailedPrecondition: the registry has no signing key.
        """
        self._need_key(f"sign {name}/{version}")
        self._read(name, version, (), verify=False)  # validates name and version, NotFound with a hint
        files = [f for f in REGISTRY.list_dir(self.lake, name, version)
                 if f != MODEL_SIGNATURE and not f.startswith(".")]
        blobs = {f: self.lake.read_bytes(*REGISTRY.parts(name, version, f)) for f in files}
        missing = [f for f in _REQUIRED if f not in blobs]
        if missing:
            raise FailedPrecondition(f"{name}/{version} has no {missing[0]}; it cannot be signed", field="version")
        self._write_signature(name, version, json.loads(blobs[MODEL_META]), blobs)
        log.warning("re-signed %s/%s with registry key %s", name, version, self.key.key_id if self.key else "-")
        return self.verify(name, version)

    def promote(self, name: str, version: str, *, reason: str = "promoted") -> ModelVersion:
        """Make ``version`` the one serving uses (serving picks it up within ``model_refresh_s``).

        Raises:
            NotFound: no such version.
            VerificationFailed: the version does not verify (see :meth:`verify`).
        """
        mv = self.verify(name, version)  # validates the name and that the version is complete and intact
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
            VerificationFailed: the version to return to does not verify (nothing changes).
        """
        self._check_name(name)
        pointer = self._pointer(name)
        if pointer["version"] is None:
            raise NotFound(f"no {name} model has been trained yet: run `pmkt tune {name}`")
        stack = pointer["stack"]
        if len(stack) < 2:
            raise FailedPrecondition(f"{name}/{pointer['version']} is the first version served; nothing to roll back to")
        # The top of the stack is the serving version (register, promote and rollback keep it so).
        target = stack[-2]
        mv = self.verify(name, target)
        stack.pop()
        self._move(name, target, push=False, reason=reason, pointer=pointer)
        log.info("rolled %s back to %s", name, target)
        return mv

    def extra(self, name: str, version: str, file: str, *, verify: bool = True) -> Any:
        """An extra JSON file of a version (``catalog.MODEL_TUNING``), checked against the signature.

        Raises:
            NotFound: the version has no such file.
            VerificationFailed: ``verify`` and the file or the signature does not verify.
        """
        self._check_name(name)
        if not REGISTRY.exists(self.lake, name, version, file):
            raise NotFound(f"model {name}/{version} has no {file}", field="version")
        return json.loads(self._read(name, version, (file,), verify=verify)[file])

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

    def get(self, name: str, version: str | None = None, *, verify: bool = True) -> ModelVersion:
        """Metadata of a version (default: the current one).

        Args:
            verify: Check the signature and the digests of the metadata files read (not of the
                model: :meth:`load` and :meth:`verify` do that). ``False`` only to list versions.

        Raises:
            NotFound: no such version.
            VerificationFailed: ``verify`` and the signature or a metadata file does not verify.
        """
        version = version or self.current_version(name)
        return self._version(name, version, self._read(name, version, (MODEL_METRICS, MODEL_PARAMS), verify=verify))

    def load(self, name: str, version: str | None = None) -> tuple[Any, ModelVersion]:
        """The model object and its metadata (default: the current version), verified first.

        Raises:
            NotFound: no such version.
            VerificationFailed: the version does not verify; the model is not unpickled.
        """
        version = version or self.current_version(name)
        blobs = self._read(name, version, (MODEL_METRICS, MODEL_PARAMS, MODEL_FILE), verify=True)
        model = joblib.load(io.BytesIO(blobs[MODEL_FILE]))
        return model, self._version(name, version, blobs)
