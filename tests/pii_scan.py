"""Find personal data and keys in stored bytes: a lake folder, HDFS, a SQLite file, HBase rows, logs.

The scanner looks for exact strings (the raw phone and ID numbers of an input) and for key bytes
in any common encoding, in the bytes as stored *and* in decoded views of them:

* gzip members are decompressed (``.gz`` inputs, compressed logs);
* Parquet files are decoded with pyarrow, every value of every column (pages are usually
  snappy-compressed, so a raw byte search alone would see nothing);
* SQLite databases are opened read-only (with their WAL) and every value of every table read;
* text is searched for each key as base64, base64url, hex, and inside any base64 run (a key
  pickled into a larger blob and base64-encoded, as py4j logs commands).

Hits name where and what, with the secret masked, so a failing test does not print it again::

    scanner = PiiScanner(secrets=[...raw phones and IDs...], keys=[key_bytes])
    hits = scanner.scan_tree(lake_root) + scanner.scan_text("logs", captured)
    assert hits == []

Used by the unit tests on the local lake, and meant for the cluster tests: :meth:`PiiScanner.scan_lake`
walks any :class:`cluster.core.storage.Lake` (HDFS through WebHDFS), :meth:`PiiScanner.scan_rows` takes HBase
rows (``{column: value}`` bytes mappings).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import re
import sqlite3
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Hit", "PiiScanner", "input_personal_values"]

_PARQUET_MAGIC = b"PAR1"
_GZIP_MAGIC = b"\x1f\x8b"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{40,}")


@dataclass(frozen=True)
class Hit:
    """One secret found: ``where`` (file, and the decoded view) and ``what`` (masked)."""

    where: str
    what: str


def _mask(secret: str) -> str:
    return f"{secret[:3]}{'*' * max(len(secret) - 5, 1)}{secret[-2:]}"


class PiiScanner:
    """Search bytes and their decoded views for given secrets and keys.

    Args:
        secrets: Exact strings that must not appear (raw phone numbers, ID numbers). Strings
            shorter than 7 characters are refused: they would match by chance.
        keys: Key bytes that must not appear in any encoding.
    """

    def __init__(self, secrets: Iterable[str], keys: Iterable[bytes] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s})
        short = [s for s in self.secrets if len(s) < 7]
        if short:
            raise ValueError(f"{len(short)} secrets are shorter than 7 characters; they would match by chance")
        self._needles = [(s.encode("utf-8"), _mask(s)) for s in self.secrets]
        self.keys = list(keys)
        self._key_forms = []
        for n, key in enumerate(self.keys, 1):
            forms = {
                base64.b64encode(key),
                base64.b64encode(key).rstrip(b"="),
                base64.urlsafe_b64encode(key).rstrip(b"="),
                binascii.hexlify(key),
                binascii.hexlify(key).upper(),
            }
            self._key_forms.append((key, forms, f"key #{n}"))

    # -- the searches ----------------------------------------------------------------------

    def _search(self, where: str, data: bytes) -> list[Hit]:
        hits = [Hit(where, what) for needle, what in self._needles if needle in data]
        for key, forms, what in self._key_forms:
            if key in data or any(f in data for f in forms) or self._in_base64_runs(data, key):
                hits.append(Hit(where, what))
        return hits

    @staticmethod
    def _in_base64_runs(data: bytes, key: bytes) -> bool:
        for match in _B64_RUN.finditer(data):
            run = match.group(0).replace(b"-", b"+").replace(b"_", b"/")
            for shift in range(4):
                chunk = run[shift:]
                chunk = chunk[: len(chunk) - len(chunk) % 4]
                try:
                    if key in base64.b64decode(chunk):
                        return True
                except (binascii.Error, ValueError):
                    continue
        return False

    def scan_text(self, where: str, text: str) -> list[Hit]:
        """Search a text (captured logs, a message)."""
        return self._search(where, text.encode("utf-8", "surrogateescape"))

    def scan_bytes(self, where: str, data: bytes) -> list[Hit]:
        """Search bytes as stored and every view this module can decode (gzip, Parquet, SQLite)."""
        hits = self._search(where, data)
        for view, decoded in self._views(data):
            hits += self._search(f"{where} ({view})", decoded)
        return hits

    def scan_file(self, path: Path) -> list[Hit]:
        """Search one local file; a SQLite file is opened in place, so its WAL is read too."""
        path = Path(path)
        data = path.read_bytes()
        hits = self._search(str(path), data)
        if data.startswith(_SQLITE_MAGIC):
            uri = f"file:{path}?mode=ro"
            with sqlite3.connect(uri, uri=True) as conn:
                hits += self._search(f"{path} (sqlite rows)", _sqlite_values(conn))
            views = []
        else:
            views = self._views(data)
        for view, decoded in views:
            hits += self._search(f"{path} ({view})", decoded)
        return hits

    def scan_tree(self, root: Path) -> list[Hit]:
        """Search every file under ``root`` (hidden files, checksums and markers included)."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"nothing to scan: {root} is not a folder")
        return [hit for path in sorted(root.rglob("*")) if path.is_file() for hit in self.scan_file(path)]

    def scan_lake(self, lake, start: str = "", workers: int = 8) -> list[Hit]:
        """Search every file of a :class:`cluster.core.storage.Lake` (any back-end) below ``start``.

        One listing of the tree (``Lake.files``), then ``workers`` files read at once (on HDFS
        each read is a WebHDFS round trip). A file that cannot be read (a failing DataNode) is
        reported as an ``unreadable`` hit, never skipped quietly.
        """
        from concurrent.futures import ThreadPoolExecutor

        rels = [f"{start}/{r}" if start else r for r in (lake.files(start) if start else lake.files())]

        def scan(rel: str) -> list[Hit]:
            try:
                data = lake.read_bytes(rel)
            except Exception as exc:  # noqa: BLE001 - any failure means "not scanned"
                return [Hit(f"lake:{rel}", f"unreadable ({type(exc).__name__})")]
            return self.scan_bytes(f"lake:{rel}", data)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return [hit for hits in pool.map(scan, rels) for hit in hits]

    def scan_rows(self, where: str, rows: Iterable[tuple[bytes, Mapping[bytes, bytes]]]) -> list[Hit]:
        """Search key-value rows, such as happybase's ``table.scan()``: row keys, column names, values."""
        out = io.BytesIO()
        for key, columns in rows:
            out.write(key + b"\n")
            for column, value in columns.items():
                out.write(column + b"=" + value + b"\n")
        return self._search(where, out.getvalue())

    # -- decoded views -----------------------------------------------------------------------

    def _views(self, data: bytes) -> list[tuple[str, bytes]]:
        views: list[tuple[str, bytes]] = []
        if data.startswith(_GZIP_MAGIC):
            try:
                inner = gzip.decompress(data)
            except (OSError, EOFError, zlib.error):
                inner = None
            if inner is not None:
                views.append(("gunzipped", inner))
                views += [(f"gunzipped, {v}", d) for v, d in self._views(inner)]
        if data.startswith(_PARQUET_MAGIC) and data.endswith(_PARQUET_MAGIC):
            views.append(("parquet values", _parquet_values(data)))
        if data.startswith(_SQLITE_MAGIC):
            conn = sqlite3.connect(":memory:")
            try:
                conn.deserialize(data)
                views.append(("sqlite rows", _sqlite_values(conn)))
            finally:
                conn.close()
        return views


def _parquet_values(data: bytes) -> bytes:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    out = io.BytesIO()
    for name in table.column_names:
        out.write(name.encode() + b"\n")
        for value in table.column(name).to_pylist():
            out.write(_as_bytes(value) + b"\n")
    return out.getvalue()


def _sqlite_values(conn: sqlite3.Connection) -> bytes:
    out = io.BytesIO()
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        out.write(table.encode() + b"\n")
        for row in conn.execute(f'SELECT * FROM "{table}"'):
            out.write(b"\t".join(_as_bytes(v) for v in row) + b"\n")
    return out.getvalue()


def _as_bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        return b"\t".join(_as_bytes(k) + b"=" + _as_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return b"\t".join(_as_bytes(v) for v in value)
    return str(value).encode("utf-8", "surrogateescape")


def input_personal_values(users_csv: Path, columns: Iterable[str] = ("phone", "id_number")) -> set[str]:
    """The values of the personal columns of a users file, every line (malformed ones too).

    Each line is split on its own (a malformed line has too many or too few fields) and the
    fields at the header's positions are taken; values shorter than 7 characters are left out.
    """
    import csv

    opener = gzip.open if str(users_csv).endswith(".gz") else open
    with opener(users_csv, "rt", encoding="utf-8", newline="") as fh:
        lines = fh.read().splitlines()
    header = next(csv.reader([lines[0].lstrip("\ufeff")]))
    positions = [header.index(c) for c in columns if c in header]
    found: set[str] = set()
    for fields in csv.reader(lines[1:]):
        for i in positions:
            if i < len(fields) and len(fields[i].strip()) >= 7:
                found.add(fields[i].strip())
    return found

