"""API keys: which clients may call the API, checked on both transports.

Keys never live in the settings file. ``serve.auth`` names where they come from, as
``privacy`` does for the encryption keys:

* ``keys_env`` (default ``PMKT_API_KEYS``): ``client:key,client:key``;
* ``keys_file``: one ``client:key`` per line (``#`` comments), mode 0600.

With no key configured the API is open, which is the embedded default for a laptop, and
``serve.auth.required: true`` refuses to start that way. With keys, every call must carry
``authorization: Bearer <key>`` (gRPC metadata or HTTP header): a missing or unknown key is
UNAUTHENTICATED / 401. ``grpc.health.v1.Health/Check`` and the OpenAPI pages stay open so
probes and people can reach them. Keys are compared as SHA-256 digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from cluster.core.errors import ConfigError, Unauthenticated

__all__ = ["ApiKeys", "bearer", "parse_keys"]

#: Shortest key accepted: shorter ones are guessable.
MIN_KEY_LENGTH = 16


def parse_keys(text: str, source: str) -> dict[str, str]:
    """``client:key`` pairs separated by commas or new lines -> {client: key}."""
    keys: dict[str, str] = {}
    for raw in text.replace(",", "\n").splitlines():
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        client, sep, key = item.partition(":")
        client, key = client.strip(), key.strip()
        if not sep or not client or not key:
            raise ConfigError(f"{source}: expected client:key, got an entry without both parts")
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"{source}: the key of client {client!r} is shorter than {MIN_KEY_LENGTH} characters")
        if client in keys:
            raise ConfigError(f"{source}: client {client!r} appears twice")
        keys[client] = key
    return keys


def _read_file(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ConfigError(f"serve.auth.keys_file {path} does not exist") from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"serve.auth.keys_file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others "
                          "may read it; chmod 600 it")
    return path.read_text(encoding="utf-8")


def bearer(metadata: Iterable[tuple[str, str]] | Mapping[str, str] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None."""
    items = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
    for name, value in items:
        if name.lower() == "authorization":
            scheme, _, token = str(value).strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class ApiKeys:
    """The configured clients' keys (as digests)."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._digests = {client: hashlib.sha256(key.encode()).digest() for client, key in keys.items()}

    @classmethod
    def from_settings(cls, auth, env: Mapping[str, str] | None = None) -> ApiKeys:
        env = os.environ if env is None else env
        keys: dict[str, str] = {}
        if auth.keys_file is not None:
            keys.update(parse_keys(_read_file(Path(auth.keys_file)), f"serve.auth.keys_file {auth.keys_file}"))
        if env.get(auth.keys_env):
            keys.update(parse_keys(env[auth.keys_env], f"${auth.keys_env}"))
        if auth.required and not keys:
            raise ConfigError(f"serve.auth.required is true but no API key is configured (set ${auth.keys_env} "
                              "or serve.auth.keys_file)")
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    @property
    def clients(self) -> list[str]:
        return sorted(self._digests)

    def check(self, token: str | None) -> str | None:
        """The client the token belongs to (None when auth is off).

        Raises:
            Unauthenticated: auth is on and the token is missing or unknown.
        """
        if not self._digests:
            return None
        if not token:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>'", field="authorization")
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for client, expected in self._digests.items():  # every key compared: no early exit to time
            if hmac.compare_digest(digest, expected):
                found = client
        if found is None:
            raise Unauthenticated("unknown API key", field="authorization")
        return found
