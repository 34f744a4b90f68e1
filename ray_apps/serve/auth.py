"""API keys: which clients may call the API, checked on both transports.

Keys never live in the settings file. ``serve.auth`` names where they come from, as
``privacy`` does for the encryption keys:

* ``keys_env`` (default ``PMKT_API_KEYS``): ``client:key,client:key``;
* ``keys_file``: one entry per line (``#`` comments), mode 0600.

An entry is ``client:key`` (every scope, as before scopes existed) or ``client:key:scope+scope``
with scopes from :data:`SCOPES`; an unknown scope is a ConfigError naming the client. Each RPC
and HTTP route declares the one scope it needs (:mod:`ray_apps.serve.services`), so both
transports check the same thing.

With no key configured the API is open, which is the embedded default for a laptop; it logs a
warning at every start (:func:`warn_if_open`), and ``serve.auth.required: true`` refuses to start
that way. With keys, every call must carry ``authorization: Bearer <key>`` (gRPC metadata or HTTP
header): a missing or unknown key is UNAUTHENTICATED / 401, a key without the call's scope
PERMISSION_DENIED / 403. ``grpc.health.v1.Health/Check`` and the OpenAPI pages stay open so
probes and people can reach them. Keys are compared as SHA-256 digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.core.errors import ConfigError, PermissionDenied, Unauthenticated
from cluster.core.keyfiles import read_private_file

__all__ = ["ADMIN", "SCOPES", "ApiKeys", "ClientKey", "bearer", "parse_keys", "warn_if_open"]

log = logging.getLogger(__name__)
#: Shortest key accepted: shorter ones are guessable.
MIN_KEY_LENGTH = 16
#: The scope that implies every other one.
ADMIN = "admin"
#: Scope -> what it lets a client call (docs/api.md#authentication has the RPCs of each).
SCOPES: Mapping[str, str] = {
    "read": "profiles, segments, scores, recommendations, churn, funnels, forecasts, experiment analyses",
    "events": "TrackEvents and ReportOutcome: writes of behaviour and outcomes",
    "decide": "GenerateOffer, ChooseChannel, OptimizeBudget, ProposeDiscounts: decisions that spend or contact",
    ADMIN: "every scope",
}


@dataclass(frozen=True)
class ClientKey:
    """One client's key and the scopes it grants."""

    key: str
    scopes: frozenset[str] = frozenset({ADMIN})


def parse_keys(text: str, source: str) -> dict[str, ClientKey]:
    """``client:key`` or ``client:key:scope+scope`` entries separated by commas or new lines
    -> {client: ClientKey}. An entry without scopes grants every scope (``admin``).

    Raises:
        ConfigError: a malformed entry, a short key, a client twice or an unknown scope, naming
            ``source`` and the client (never the key).
    """
    keys: dict[str, ClientKey] = {}
    for raw in text.replace(",", "\n").splitlines():
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        client, sep, rest = item.partition(":")
        key, has_scopes, scope_text = rest.partition(":")
        client, key = client.strip(), key.strip()
        if not sep or not client or not key:
            raise ConfigError(f"{source}: expected client:key, got an entry without both parts")
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"{source}: the key of client {client!r} is shorter than {MIN_KEY_LENGTH} characters")
        if client in keys:
            raise ConfigError(f"{source}: client {client!r} appears twice")
        scopes = frozenset({ADMIN})
        if has_scopes:
            names = [s.strip() for s in scope_text.split("+")]
            unknown = sorted({n for n in names if n not in SCOPES})
            if unknown or not scope_text.strip():
                raise ConfigError(f"{source}: client {client!r} has unknown scope(s) "
                                  f"{', '.join(map(repr, unknown)) or '(empty)'}; known: {', '.join(SCOPES)}")
            scopes = frozenset(names)
        keys[client] = ClientKey(key, scopes)
    return keys


def _read_file(path: Path) -> str:
    return read_private_file(path, "serve.auth.keys_file")


def bearer(metadata: Iterable[tuple[str, str]] | Mapping[str, str] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None."""
    items = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
    for name, value in items:
        if name.lower() == "authorization":
            scheme, _, token = str(value).strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class ApiKeys:
    """The configured clients' keys (as digests) and scopes.

    Args:
        keys: client -> key (every scope) or :class:`ClientKey`.
    """

    def __init__(self, keys: Mapping[str, str | ClientKey]) -> None:
        entries = {client: k if isinstance(k, ClientKey) else ClientKey(k) for client, k in keys.items()}
        self._digests = {client: hashlib.sha256(k.key.encode()).digest() for client, k in entries.items()}
        self._scopes = {client: k.scopes for client, k in entries.items()}

    @classmethod
    def from_settings(cls, auth: Any, env: Mapping[str, str] | None = None) -> ApiKeys:
        """The keys ``serve.auth`` points at (file, then environment; the environment wins per client).

        Raises:
            ConfigError: a bad key file or entry, or ``required`` without any key.
        """
        env = os.environ if env is None else env
        keys: dict[str, ClientKey] = {}
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

    def scopes_of(self, client: str) -> frozenset[str]:
        """The scopes ``client`` was given (``admin`` for an entry without scopes)."""
        return self._scopes[client]

    def authorize(self, token: str | None, scope: str | None) -> str | None:
        """:meth:`check` the token, then that its client holds ``scope`` (None: any key will do).

        Returns:
            The client, or None when auth is off.

        Raises:
            Unauthenticated: auth is on and the token is missing or unknown.
            PermissionDenied: the client's key lacks ``scope`` (the message names it).
        """
        client = self.check(token)
        if client is None or scope is None:
            return client
        held = self._scopes[client]
        if scope not in held and ADMIN not in held:
            raise PermissionDenied(f"the API key of client {client!r} lacks scope {scope!r}", field="authorization")
        return client


def warn_if_open(keys: ApiKeys, serve_settings: Any) -> bool:
    """Log a WARNING when the API runs without keys (every replica start and every ``pmkt serve``:
    an open API must not go unnoticed in the logs). Returns whether it is open."""
    if keys.enabled:
        return False
    log.warning("API keys are off: anyone who reaches ports %d/%d can read profiles; set serve.auth "
                "(docs/security.md)", serve_settings.http_port, serve_settings.grpc_port)
    return True
