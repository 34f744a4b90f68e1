"""Purging forgotten users from the lake: ``pmkt privacy purge``.

:func:`cluster.core.forget.forget` deletes a user's profile at once and leaves a tombstone; every
later build then skips the user. The files written *before* the tombstone still hold their rows:
the raw zone (delivered and real-time rows), the quarantine, earlier feature runs, the attribute
report listing who holds a prediction, and input files left in the landing zone. :func:`purge`
rewrites each of those files without the forgotten users' rows.

What counts as a user's row, per kind of file:

* a Parquet file with the table's user column (raw, features, real-time events): the rows whose
  column equals a forgotten id;
* a quarantine file (rejected rows keep the masked input line in ``record``): the rows whose
  record has a field (CSV), a value (JSON) or a token (a line too broken to parse, split at
  separators and quotes) equal to a forgotten id;
* a landing file (CSV or JSON lines, gzipped or not): the lines that name one the same way;
* a JSON report: every string equal to a forgotten id, in lists and as keys.

Each file is replaced atomically (written under a hidden name, then renamed over the old one;
on HDFS with ``RENAME`` and ``renameoptions=OVERWRITE``), so a reader sees the old file or the
new one, never half of one. A file without a forgotten user is left untouched, so a second purge
rewrites nothing. The report counts files and rows per table and never names a user; it is kept
in the lake (:data:`~cluster.core.catalog.PURGE_REPORTS`).

Models are not files this module can rewrite: a version trained before a tombstone keeps what it
learnt from the user until the next training run (which excludes them), and serving answers a
forgotten user as it answers a stranger meanwhile. The CLI lists those versions.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from cluster.core.catalog import PURGE_REPORTS, TOMBSTONES, Table, new_run_id, personal_tables
from cluster.core.settings import Settings
from cluster.core.storage import open_lake
from cluster.core.storage.lake import Lake
from cluster.core.tombstones import Tombstones

__all__ = ["TableCounts", "purge", "forgotten_rows"]

log = logging.getLogger(__name__)

#: Files read and rewritten at once (WebHDFS round trips dominate on the cluster).
PARALLEL_FILES = 8


@dataclass
class TableCounts:
    """What :func:`purge` did to one table."""

    files_scanned: int = 0
    files_rewritten: int = 0
    rows_removed: int = 0
    files_skipped: int = 0  # of a kind purge does not read (none expected; named in the log)


#: What separates values in a delivered line, well-formed or not (CSV, JSON, a JSON array).
_TOKEN_SPLIT = re.compile(r"""[\s,;:\[\]{}"'\\]+""")


def _record_names_user(record: str | None, forgotten: set[str]) -> bool:
    """Whether a delivered or quarantined line names a forgotten user: one of its CSV fields, JSON
    values or tokens (the line split at separators and quotes, for lines too broken to parse)
    equals a forgotten id. An id holding separators is found through the CSV or JSON reading."""
    if not record:
        return False
    text = record.strip()
    values = set(_TOKEN_SPLIT.split(text))
    if text[:1] in "{[":
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
        values.update(v for v in items if isinstance(v, str))
    try:
        fields = next(csv.reader([text]), [])
    except csv.Error:
        fields = []
    values.update(fields)
    values.update(f.strip() for f in fields)
    return not values.isdisjoint(forgotten)


def forgotten_rows(table: Table, data: Any, forgotten: set[str]):
    """Boolean mask (a pyarrow array) of the rows of ``data`` (a pyarrow Table) that belong to a
    forgotten user, or None when the file has no column naming a user."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.user_column and table.user_column in data.column_names:
        column = data.column(table.user_column).cast(pa.string())
        return pc.fill_null(pc.is_in(column, value_set=pa.array(sorted(forgotten), pa.string())), False)
    if "record" in data.column_names:
        return pa.array([_record_names_user(r, forgotten) for r in data.column("record").to_pylist()], pa.bool_())
    return None


def _purge_parquet(table: Table, raw: bytes, forgotten: set[str]) -> tuple[bytes | None, int]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    data = pq.read_table(io.BytesIO(raw))
    mask = forgotten_rows(table, data, forgotten)
    if mask is None:
        return None, 0
    removed = int(pc.sum(mask).as_py() or 0)
    if not removed:
        return None, 0
    kept = data.filter(pc.invert(mask))
    out = io.BytesIO()
    pq.write_table(kept, out, compression="snappy")
    return out.getvalue(), removed


def _purge_lines(raw: bytes, forgotten: set[str], gzipped: bool) -> tuple[bytes | None, int]:
    text = (gzip.decompress(raw) if gzipped else raw).decode("utf-8", "surrogateescape")
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not _record_names_user(line.lstrip("\ufeff"), forgotten)]
    removed = len(lines) - len(kept)
    if not removed:
        return None, 0
    body = "".join(kept).encode("utf-8", "surrogateescape")
    return (gzip.compress(body) if gzipped else body), removed


def _scrub(obj: Any, forgotten: set[str]) -> tuple[Any, int]:
    if isinstance(obj, list):
        out, removed = [], 0
        for item in obj:
            if isinstance(item, str) and item in forgotten:
                removed += 1
                continue
            item, n = _scrub(item, forgotten)
            out.append(item)
            removed += n
        return out, removed
    if isinstance(obj, dict):
        out, removed = {}, 0
        for key, value in obj.items():
            if key in forgotten or (isinstance(value, str) and value in forgotten):
                removed += 1
                continue
            out[key], n = _scrub(value, forgotten)
            removed += n
        return out, removed
    return obj, 0


def _purge_json(raw: bytes, forgotten: set[str]) -> tuple[bytes | None, int]:
    try:
        obj = json.loads(raw)
    except ValueError:
        return _purge_lines(raw, forgotten, gzipped=False)  # JSON lines
    scrubbed, removed = _scrub(obj, forgotten)
    if not removed:
        return None, 0
    return json.dumps(scrubbed, ensure_ascii=False, indent=1).encode("utf-8"), removed


def _purge_file(lake: Lake, table: Table, rel: str, forgotten: set[str]) -> tuple[str, int]:
    """Rewrite one file without forgotten users: ("rewritten" | "clean" | "skipped", rows removed)."""
    name = rel.rsplit("/", 1)[-1]
    parts = (*table.parts(), *rel.split("/"))
    if name.endswith((".crc",)) or name == "_SUCCESS":
        return "clean", 0
    raw = lake.read_bytes(*parts)
    if raw[:4] == b"PAR1":
        new, removed = _purge_parquet(table, raw, forgotten)
    elif name.endswith(".json") and not name.endswith((".jsonl", ".ndjson")):
        new, removed = _purge_json(raw, forgotten)
    elif raw[:2] == b"\x1f\x8b":
        new, removed = _purge_lines(raw, forgotten, gzipped=True)
    elif name.endswith((".csv", ".jsonl", ".ndjson", ".txt", ".tsv")):
        new, removed = _purge_lines(raw, forgotten, gzipped=False)
    else:
        log.warning("purge: %s/%s is of a kind purge does not read; left as it is", table.rel(), rel)
        return "skipped", 0
    if new is None:
        return "clean", 0
    lake.write_bytes(new, *parts)  # atomic: hidden name, then renamed over the old file
    return "rewritten", removed


def _files(lake: Lake, table: Table) -> list[str]:
    # Hidden names are writers' temporary files; Spark and pyarrow never read them.
    return [rel for rel in lake.files(*table.parts())
            if not any(p.startswith(".") for p in rel.split("/"))]


def purge(settings: Settings, *, step: Callable[[str, float], None] | None = None,
          tables: Iterable[Table] | None = None) -> dict[str, Any]:
    """Rewrite every personal table's files without the forgotten users' rows.

    Args:
        settings: Names the lake.
        step: Progress callback ``(what, fraction)``.
        tables: Tables to purge (default: :func:`~cluster.core.catalog.personal_tables`, the
            tombstones excepted).

    Returns:
        The report: ``forgotten_users`` (a count), ``tables`` (:class:`TableCounts` per table name),
        ``rows_removed`` and ``files_rewritten`` in total, ``newest_tombstone_at``, ``run_id``,
        ``finished_at``. It is also written to the lake.
    """
    step = step or (lambda _what, _fraction: None)
    lake = open_lake(settings)
    run_id = new_run_id()
    step("reading the tombstones", 0.0)
    tombstones = Tombstones(lake).records()
    forgotten = {t["user_id"] for t in tombstones}
    chosen = [t for t in (tables if tables is not None else personal_tables()) if t is not TOMBSTONES]
    counts: dict[str, TableCounts] = {}
    if forgotten:
        for n, table in enumerate(chosen):
            step(f"{table.rel()}: reading", n / len(chosen))
            files = _files(lake, table)
            c = counts[table.name] = TableCounts(files_scanned=len(files))
            with ThreadPoolExecutor(max_workers=PARALLEL_FILES) as pool:
                for outcome, removed in pool.map(lambda rel, t=table: _purge_file(lake, t, rel, forgotten), files):
                    c.rows_removed += removed
                    c.files_rewritten += outcome == "rewritten"
                    c.files_skipped += outcome == "skipped"
            if c.files_rewritten:
                log.info("purge %s: %d of %d files rewritten, %d rows removed", table.rel(), c.files_rewritten,
                         c.files_scanned, c.rows_removed)
    step("writing the report", 1.0)
    report = {
        "run_id": run_id,
        "forgotten_users": len(forgotten),
        # Models trained before this keep what they learnt from a forgotten user (the CLI lists them).
        "newest_tombstone_at": max((t.get("forgotten_at", "") for t in tombstones), default=None),
        "tables": {name: asdict(c) for name, c in counts.items()},
        "rows_removed": sum(c.rows_removed for c in counts.values()),
        "files_rewritten": sum(c.files_rewritten for c in counts.values()),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    PURGE_REPORTS.write_report(lake, run_id, report)
    return report

