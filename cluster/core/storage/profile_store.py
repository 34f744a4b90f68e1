"""The online profile store: one row per user, ``family:qualifier`` columns.

One small interface and one class per back-end (SQLite embedded, HBase on the cluster).
Cells are bytes encoded by :mod:`cluster.core.storage.keys`; counters (family ``c``) are
8-byte big-endian integers incremented atomically. Beside the profiles, the store keeps
short-lived *claims* (:meth:`ProfileStore.claim`): the real-time intake claims each event id
there, so that a re-sent event is counted once whichever Serve replica receives it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cluster.core.errors import Unavailable
from cluster.core.settings import Settings
from cluster.core.storage.keys import (
    COUNTER_FAMILY,
    encode_counter,
    encode_value,
    split_column,
)

__all__ = [
    "INTERNAL_ROW_PREFIX", "ProfileStore", "SqliteProfileStore", "HBaseProfileStore", "open_profile_store", "CellValue",
]

CellValue = str | int | float | bool | bytes
#: First character of rows that hold shared state rather than a user; user ids cannot
#: contain control characters, so no user's row starts with it.
INTERNAL_ROW_PREFIX = "\x1f"


def _encode(column: str, value: CellValue) -> bytes:
    family, _ = split_column(column)
    if family == COUNTER_FAMILY:
        raise ValueError(f"counter column {column} is changed with increment(), not written")
    return value if isinstance(value, bytes) else encode_value(value)


def _check_family(family: str) -> None:
    from cluster.core.storage.keys import FAMILIES

    if family not in FAMILIES:
        raise ValueError(f"unknown column family {family!r}; families are {FAMILIES}")


class ProfileStore(ABC):
    """Read and write user profiles. Connections are opened lazily, on first use."""

    @abstractmethod
    def write_batch(self, rows: Iterable[tuple[str, Mapping[str, CellValue]]]) -> int:
        """Upsert cells for many users in batches; returns the number of users written."""

    @abstractmethod
    def read(self, user_id: str, columns: Sequence[str] | None = None,
             families: Sequence[str] | None = None) -> dict[str, bytes] | None:
        """The user's cells; ``None`` if the user has no row.

        Args:
            columns: Only these ``family:qualifier`` cells.
            families: Also (or, without ``columns``, only) every cell of these families.
                With neither, all cells.
        """

    @abstractmethod
    def increment(self, user_id: str, column: str, amount: int = 1) -> int:
        """Atomically add ``amount`` to a counter cell; returns the new value."""

    @abstractmethod
    def delete(self, user_id: str) -> None:
        """Remove every cell of the user."""

    @abstractmethod
    def claim(self, keys: Sequence[str]) -> list[bool]:
        """Claim each key for ``claim_ttl_s`` seconds, atomically for every client of the store.

        Returns, per key, True when this call claimed it (no live claim existed) and False when
        another call holds a live claim. If it raises, no key of this call stays claimed.
        """

    @abstractmethod
    def release(self, keys: Sequence[str]) -> None:
        """Drop claims, so the keys may be claimed again at once (idempotent)."""

    @abstractmethod
    def ensure_schema(self) -> bool:
        """Create the store's tables if they do not exist; True if anything was created."""

    @abstractmethod
    def count_users(self) -> int:
        """Number of users with at least one cell (for reports and tests). Rows whose key
        starts with :data:`INTERNAL_ROW_PREFIX` hold shared state (bandit counts), not users."""

    def close(self) -> None:
        """Release connections (safe to call twice)."""


class SqliteProfileStore(ProfileStore):
    """Profiles in a SQLite file: WAL mode, one connection per thread, batched upserts.

    Several processes may write at once (Spark's Python workers do); SQLite serialises
    writers and ``busy_timeout`` makes them wait rather than fail.
    """

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS cells ("
        " user_id TEXT NOT NULL, col TEXT NOT NULL, value BLOB NOT NULL, updated_ms INTEGER NOT NULL,"
        " PRIMARY KEY (user_id, col)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS counters ("
        " user_id TEXT NOT NULL, col TEXT NOT NULL, value INTEGER NOT NULL, updated_ms INTEGER NOT NULL,"
        " PRIMARY KEY (user_id, col)) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS claims (key TEXT NOT NULL PRIMARY KEY, expires_ms INTEGER NOT NULL) WITHOUT ROWID",
    )
    #: Expired claims are deleted at most this often (by the next claim call).
    PURGE_EVERY_S = 60.0

    def __init__(self, path: Path, batch_size: int = 1000, busy_timeout_ms: int = 30_000,
                 claim_ttl_s: float = 86_400.0) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.busy_timeout_ms = busy_timeout_ms
        self.claim_ttl_s = claim_ttl_s
        self._local = threading.local()
        self._schema_ready = False
        self._last_purge = 0.0

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
                # Switching to WAL takes an exclusive lock and SQLite answers "database is locked"
                # at once, without its busy handler, when another process (a Spark partition
                # writing the same store) holds one: retry within the busy timeout.
                self._retry_locked(conn, "PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                if not self._schema_ready:
                    for stmt in self._SCHEMA:
                        self._retry_locked(conn, stmt)
                    self._schema_ready = True
            except (sqlite3.Error, OSError) as exc:
                raise Unavailable(f"cannot open the SQLite profile store at {self.path}: {exc}") from exc
            self._local.conn = conn
        return conn

    def _retry_locked(self, conn: sqlite3.Connection, stmt: str) -> None:
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        delay = 0.01
        while True:
            try:
                conn.execute(stmt)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def write_batch(self, rows: Iterable[tuple[str, Mapping[str, CellValue]]]) -> int:
        conn = self._conn()
        users = 0
        batch: list[tuple[str, str, bytes, int]] = []

        def flush() -> None:
            if not batch:
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO cells (user_id, col, value, updated_ms) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (user_id, col) DO UPDATE SET value = excluded.value,"
                    " updated_ms = excluded.updated_ms",
                    batch,
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            batch.clear()

        now = int(time.time() * 1000)
        pending_users = 0
        for user_id, cells in rows:
            batch.extend((user_id, col, _encode(col, v), now) for col, v in cells.items())
            users += 1
            pending_users += 1
            if pending_users >= self.batch_size:
                flush()
                pending_users = 0
        flush()
        return users

    def read(self, user_id: str, columns: Sequence[str] | None = None,
             families: Sequence[str] | None = None) -> dict[str, bytes] | None:
        conn = self._conn()
        out: dict[str, bytes] = {}
        counters: list[tuple[str, int]] = []
        if columns is None and families is None:
            out.update(conn.execute("SELECT col, value FROM cells WHERE user_id = ?", (user_id,)).fetchall())
            counters = conn.execute("SELECT col, value FROM counters WHERE user_id = ?", (user_id,)).fetchall()
        else:
            columns = list(columns or [])
            plain = [c for c in columns if split_column(c)[0] != COUNTER_FAMILY]
            wanted = [c for c in columns if split_column(c)[0] == COUNTER_FAMILY]
            if plain:
                marks = ",".join("?" * len(plain))
                out.update(
                    conn.execute(
                        f"SELECT col, value FROM cells WHERE user_id = ? AND col IN ({marks})", (user_id, *plain)
                    ).fetchall()
                )
            if wanted:
                marks = ",".join("?" * len(wanted))
                counters = conn.execute(
                    f"SELECT col, value FROM counters WHERE user_id = ? AND col IN ({marks})", (user_id, *wanted)
                ).fetchall()
            for family in families or []:
                _check_family(family)
                # Range scan on the primary key: every qualifier of the family sorts between
                # "<family>:" and "<family>;" (";" follows ":" in ASCII).
                table = "counters" if family == COUNTER_FAMILY else "cells"
                found = conn.execute(
                    f"SELECT col, value FROM {table} WHERE user_id = ? AND col >= ? AND col < ?",
                    (user_id, f"{family}:", f"{family};"),
                ).fetchall()
                (counters.extend if family == COUNTER_FAMILY else out.update)(found)
        out.update((col, encode_counter(value)) for col, value in counters)
        return out or None

    def increment(self, user_id: str, column: str, amount: int = 1) -> int:
        family, _ = split_column(column)
        if family != COUNTER_FAMILY:
            raise ValueError(f"only counter columns ({COUNTER_FAMILY}:...) can be incremented, not {column}")
        row = self._conn().execute(
            "INSERT INTO counters (user_id, col, value, updated_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, col) DO UPDATE SET value = value + excluded.value,"
            " updated_ms = excluded.updated_ms RETURNING value",
            (user_id, column, amount, int(time.time() * 1000)),
        ).fetchone()
        return int(row[0])

    def claim(self, keys: Sequence[str]) -> list[bool]:
        if not keys:
            return []
        conn = self._conn()
        now_ms = int(time.time() * 1000)
        expires = now_ms + int(self.claim_ttl_s * 1000)
        conn.execute("BEGIN IMMEDIATE")
        try:
            # A row comes back when the key was inserted, or when its old claim had expired and
            # is taken over; a live claim makes the conditional update a no-op (no row).
            got = [
                conn.execute(
                    "INSERT INTO claims (key, expires_ms) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                    " SET expires_ms = excluded.expires_ms WHERE claims.expires_ms <= ? RETURNING 1",
                    (key, expires, now_ms),
                ).fetchone() is not None
                for key in keys
            ]
            if time.monotonic() - self._last_purge > self.PURGE_EVERY_S:
                conn.execute("DELETE FROM claims WHERE expires_ms <= ?", (now_ms,))
                self._last_purge = time.monotonic()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return got

    def release(self, keys: Sequence[str]) -> None:
        if keys:
            self._conn().executemany("DELETE FROM claims WHERE key = ?", [(k,) for k in keys])

    def delete(self, user_id: str) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM cells WHERE user_id = ?", (user_id,))
        conn.execute("DELETE FROM counters WHERE user_id = ?", (user_id,))
        conn.execute("COMMIT")

    def ensure_schema(self) -> bool:
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed:
            with sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000) as probe:
                names = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            existed = {"cells", "counters", "claims"} <= names
        self._conn()  # creates what is missing
        return not existed

    def count_users(self) -> int:
        return int(
            self._conn()
            .execute("SELECT COUNT(*) FROM (SELECT user_id FROM cells UNION SELECT user_id FROM counters) "
                     "WHERE substr(user_id, 1, 1) != char(31)")
            .fetchone()[0]
        )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class HBaseProfileStore(ProfileStore):
    """Profiles in HBase through its Thrift (v1) server, with happybase.

    One table ``<prefix>_profiles``; row key ``keys.row_key`` (salted user id); one column
    family per cell family (docs/profile-store.md). Claims live in ``<prefix>_claims``, one
    counter cell per key in a family whose cells HBase expires after ``claim_ttl_s`` (its TTL,
    fixed when the table is created). The tables are created on first use. A small
    connection pool serves concurrent callers (Serve replicas use threads).
    """

    #: Versions kept per family: attributes and model outputs keep history for audits.
    FAMILY_VERSIONS = {"a": 3, "f": 3, "c": 1, "t": 1, "m": 3}

    def __init__(self, host: str, port: int, table_prefix: str, salt_buckets: int, timeout_ms: int,
                 batch_size: int = 1000, pool_size: int = 4, claim_ttl_s: float = 86_400.0) -> None:
        self.host, self.port = host, port
        self.table_name = f"{table_prefix}_profiles"
        self.claims_table = f"{table_prefix}_claims"
        self.claim_ttl_s = claim_ttl_s
        self.salt_buckets = salt_buckets
        self.timeout_ms = timeout_ms
        self.batch_size = batch_size
        self.pool_size = pool_size
        self._pool = None
        self._created = False
        self._last_used: dict[int, float] = {}
        self._lock = threading.Lock()

    def _connection(self):
        import happybase

        with self._lock:
            if self._pool is None:
                try:
                    pool = happybase.ConnectionPool(
                        self.pool_size, host=self.host, port=self.port, timeout=self.timeout_ms,
                        table_prefix=None, autoconnect=True,
                    )
                    with pool.connection() as conn:
                        self._created = self._create_table(conn)
                except Exception as exc:  # thriftpy2 raises transport errors of several kinds
                    raise Unavailable(f"HBase Thrift server {self.host}:{self.port} is unreachable: {exc}") from exc
                self._pool = pool
        return self._pool.connection()

    def _create_table(self, conn) -> bool:
        """Create the claims table if missing, and the profile table; True if the latter was created."""
        self._create(conn, self.claims_table,
                     {"c": {"max_versions": 1, "time_to_live": max(1, int(self.claim_ttl_s))}})
        return self._create(conn, self.table_name,
                            {fam: {"max_versions": v} for fam, v in self.FAMILY_VERSIONS.items()})

    @staticmethod
    def _create(conn, name: str, families: dict) -> bool:
        if name.encode() in conn.tables():
            return False
        try:
            conn.create_table(name, families)
        except Exception:
            # Another client (a Spark task, a Serve replica) created it in the meantime.
            if name.encode() not in conn.tables():
                raise
            return False
        return True

    def ensure_schema(self) -> bool:
        with self._lock:
            self._pool = None  # a fresh pool re-checks the table
        with self._connection():
            return bool(self._created)

    #: The Thrift server drops idle connections (hbase.thrift.server.socket.read.timeout, 60 s
    #: by default); a pooled connection idle longer than this is reopened before use, so the
    #: first request after a quiet spell does not fail on a dead socket.
    IDLE_REOPEN_S = 20.0

    @contextlib.contextmanager
    def _conn(self):
        with self._connection() as conn:
            last = self._last_used.get(id(conn))
            if last is not None and time.monotonic() - last > self.IDLE_REOPEN_S:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - the socket is likely dead already
                    pass
                conn.open()
            try:
                yield conn
            finally:
                self._last_used[id(conn)] = time.monotonic()

    def _call(self, fn, *, retry: bool):
        """Run ``fn(conn)``; a transport error is retried once on a fresh connection when the
        operation is idempotent (``retry``), and otherwise becomes Unavailable, never a bare
        Thrift exception (which a server would answer as INTERNAL)."""
        from thriftpy2.thrift import TException

        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                with self._conn() as conn:
                    return fn(conn)
            except (TException, OSError) as exc:  # happybase's pool replaces the broken connection
                if attempt + 1 == attempts:
                    raise Unavailable(f"HBase Thrift server {self.host}:{self.port}: {exc}") from exc

    def _key(self, user_id: str) -> bytes:
        from cluster.core.storage.keys import row_key

        return row_key(user_id, self.salt_buckets)

    def write_batch(self, rows: Iterable[tuple[str, Mapping[str, CellValue]]]) -> int:
        users = 0
        with self._conn() as conn:
            table = conn.table(self.table_name)
            with table.batch(batch_size=self.batch_size) as batch:
                for user_id, cells in rows:
                    batch.put(self._key(user_id), {c.encode(): _encode(c, v) for c, v in cells.items()})
                    users += 1
        return users

    def read(self, user_id: str, columns: Sequence[str] | None = None,
             families: Sequence[str] | None = None) -> dict[str, bytes] | None:
        cols = None
        if columns is not None or families is not None:
            cols = [c.encode() for c in columns or []]
            for family in families or []:
                _check_family(family)
                cols.append(family.encode())  # a bare family name fetches the whole family
            if not cols:
                return None
        row = self._call(lambda conn: conn.table(self.table_name).row(self._key(user_id), columns=cols), retry=True)
        return {k.decode(): v for k, v in row.items()} or None

    def increment(self, user_id: str, column: str, amount: int = 1) -> int:
        family, _ = split_column(column)
        if family != COUNTER_FAMILY:
            raise ValueError(f"only counter columns ({COUNTER_FAMILY}:...) can be incremented, not {column}")
        # Not retried: the first attempt may have counted before its answer was lost.
        return int(self._call(
            lambda conn: conn.table(self.table_name).counter_inc(self._key(user_id), column.encode(), amount),
            retry=False))

    def claim(self, keys: Sequence[str]) -> list[bool]:
        # An atomic increment per key: the call that takes the counter from 0 (absent, or
        # expired by the family's TTL) to 1 holds the claim. Not retried: a lost answer may
        # hide a counted increment, so on any failure this call's keys are released instead.
        got: list[bool] = []
        try:
            for key in keys:
                got.append(1 == int(self._call(
                    lambda conn, k=key: conn.table(self.claims_table).counter_inc(self._key(k), b"c:n", 1),
                    retry=False)))
        except BaseException:
            mine = [k for k, ok in zip(keys, got) if ok] + list(keys[len(got):len(got) + 1])
            with contextlib.suppress(Exception):
                self.release(mine)
            raise
        return got

    def release(self, keys: Sequence[str]) -> None:
        def drop(conn) -> None:
            with conn.table(self.claims_table).batch() as batch:
                for key in keys:
                    batch.delete(self._key(key))

        if keys:
            self._call(drop, retry=True)

    def delete(self, user_id: str) -> None:
        self._call(lambda conn: conn.table(self.table_name).delete(self._key(user_id)), retry=True)

    def count_users(self) -> int:
        with self._connection() as conn:
            scan = conn.table(self.table_name).scan(filter=b"FirstKeyOnlyFilter()", batch_size=1000)
            # Keys are "xx|<user id>"; rows whose id starts with \x1f hold shared state, not a user.
            return sum(1 for key, _ in scan if key[3:4] != INTERNAL_ROW_PREFIX.encode())

    def drop_table(self) -> None:
        """Delete the profile table (tests and teardown); recreated on next use."""
        with self._connection() as conn:
            for name in (self.table_name, self.claims_table):
                if name.encode() in conn.tables():
                    conn.delete_table(name, disable=True)
        with self._lock:
            self._pool = None

    def close(self) -> None:
        with self._lock:
            self._pool = None


def open_profile_store(settings: Settings) -> ProfileStore:
    """The profile store back-end the settings name."""
    ps = settings.profile_store
    if ps.backend == "sqlite":
        return SqliteProfileStore(ps.sqlite_path, batch_size=ps.batch_size, claim_ttl_s=settings.events.dedup_ttl_s)
    hb = ps.hbase
    return HBaseProfileStore(hb.host, hb.port, hb.table_prefix, hb.salt_buckets, hb.timeout_ms,
                             batch_size=ps.batch_size, claim_ttl_s=settings.events.dedup_ttl_s)
