"""The registry signing key and the signatures of model artifacts (docs/security.md#signed-model-artifacts).

Unpickling a model runs code, so serving must only unpickle what the platform itself registered.
The registry records every file's SHA-256 and an HMAC-SHA256 over the version's metadata (its
name, version, creation time, feature run, code version and the digests) with the **registry
signing key**, and checks both before it unpickles anything. Whoever may write the lake but not
read the key cannot forge a version.

The key comes from settings (``registry``), as the PII keys do (:mod:`cluster.core.privacy`): an
environment variable (``PMKT_REGISTRY_KEY``, base64 or hex, at least 32 bytes) wins; otherwise a
key file (mode 0600; the embedded profile creates it with a random key). It is a separate key:
publishing models does not need the keys that decrypt ID numbers, nor the other way round.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.core.errors import ConfigError, FailedPrecondition
from cluster.core.keyfiles import create_private_file, read_private_file

if TYPE_CHECKING:
    from cluster.core.settings import RegistrySettings

__all__ = [
    "ALGORITHM",
    "MIN_KEY_BYTES",
    "SigningKey",
    "VerificationFailed",
    "canonical_json",
    "init_registry_key_file",
    "load_registry_key",
    "sha256_hex",
]

log = logging.getLogger(__name__)

#: Recorded in every signature, so a later algorithm can be told apart.
ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 32
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class VerificationFailed(FailedPrecondition):
    """A model version's files or signature do not verify with the registry key: it is not loaded.

    Args:
        ref: ``<model>/<version>``.
        reason: What failed ("model.pkl digest does not match its signature").
    """

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"model {ref} is refused: {reason}", field="version")
        self.ref = ref
        self.reason = reason


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """The one byte string a JSON document is signed as (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class SigningKey:
    """An HMAC-SHA256 key. Its repr and :attr:`key_id` never reveal the key.

    Args:
        key: At least :data:`MIN_KEY_BYTES` random bytes.

    Raises:
        ValueError: the key is shorter than :data:`MIN_KEY_BYTES`.
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a registry key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    @property
    def key_id(self) -> str:
        """A short fingerprint naming the key in signatures and errors (a hash, not the key)."""
        return hashlib.sha256(b"pmkt-registry-key-id\x00" + self._key).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    def sign(self, payload: Mapping[str, Any]) -> str:
        """The HMAC-SHA256 of :func:`canonical_json` of ``payload``, as hex."""
        return hmac.new(self._key, b"pmkt-registry-v1\x00" + canonical_json(payload), hashlib.sha256).hexdigest()

    def verifies(self, payload: Mapping[str, Any], mac: str) -> bool:
        """Whether ``mac`` is this key's signature of ``payload`` (constant-time comparison)."""
        return isinstance(mac, str) and hmac.compare_digest(self.sign(payload), mac)


def _parse_key(text: str, where: str, field: str) -> SigningKey:
    """Key text (hex or base64) -> key. Errors name the source, never the content."""
    text = text.strip()
    try:
        if _HEX.match(text) and len(text) % 2 == 0:
            key = binascii.unhexlify(text)
        else:
            key = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the registry key is neither hex nor base64", field=field) from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{where}: the registry key is {len(key)} bytes; at least {MIN_KEY_BYTES} are needed",
                          field=field)
    return SigningKey(key)


def _read_key_file(path: Path) -> str:
    """The key file's text, refusing a file that group or others may read."""
    return read_private_file(path, "registry.key_file",
                             missing_hint="provision the registry signing key (docs/security.md#signed-model-artifacts)")


def init_registry_key_file(path: Path) -> bool:
    """Create a key file holding a random 32-byte key (base64), mode 0600, unless it exists.

    The file appears atomically (written aside, then hard-linked into place), so two processes
    racing to create it end up sharing one key.

    Returns:
        True if the file was created, False if it already existed (it is left as it is).
    """
    text = (
        "# The key that signs model artifacts (docs/security.md#signed-model-artifacts). Never commit,\n"
        "# copy into tickets or print this file; replacing it invalidates every signature.\n"
        f"{base64.b64encode(secrets.token_bytes(MIN_KEY_BYTES)).decode('ascii')}\n"
    )
    if not create_private_file(Path(path), text):
        return False
    log.info("created registry key file %s", path)
    return True


def load_registry_key(registry: RegistrySettings, env: Mapping[str, str] | None = None,
                      create: bool | None = None) -> SigningKey:
    """The registry signing key the settings point at.

    The environment variable ``registry.key_env`` wins when it is set and not empty; otherwise
    the key file ``registry.key_file`` is read (created first when it is absent and
    ``registry.create_key_file`` is true).

    Args:
        registry: ``settings.registry``.
        env: Environment to read (default ``os.environ``).
        create: Override ``registry.create_key_file``.

    Raises:
        ConfigError: no key source, a missing, unreadable or group/other-readable key file, or a
            malformed or short key; the message names the setting and never contains the key.
    """
    env = os.environ if env is None else env
    text = env.get(registry.key_env, "").strip()
    if text:
        return _parse_key(text, f"environment variable {registry.key_env}", "registry.key_env")
    if registry.key_file is None:
        raise ConfigError(
            f"no registry signing key: set the environment variable {registry.key_env} (base64 or hex, at least "
            f"{MIN_KEY_BYTES} bytes) or registry.key_file (docs/security.md#signed-model-artifacts)",
            field="registry.key_file",
        )
    path = Path(registry.key_file)
    if (registry.create_key_file if create is None else create) and not path.exists():
        init_registry_key_file(path)
    lines = [ln for ln in _read_key_file(path).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        raise ConfigError(f"registry.key_file {path} must hold exactly one key line (it has {len(lines)})",
                          field="registry.key_file")
    return _parse_key(lines[0], f"registry.key_file {path}", "registry.key_file")
