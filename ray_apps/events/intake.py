"""Real-time behaviour events (``EventService.TrackEvents`` and ``POST /v1/events``).

Each event of a batch is judged on its own against the data contract's events vocabulary
(docs/data-contract.md): a bad event comes back with its index, field and reason while the
good ones are kept. An accepted event

1. increments the user's behaviour counters in the profile store at once, atomically
   (HBase counters; SQLite upserts): ``c:<action>`` and, with a category,
   ``c:<action>:<category>``;
2. is buffered and appended to the lake as Parquet (:data:`cluster.core.catalog.RT_EVENTS`,
   ``dt=<UTC date>/``) once ``flush_rows`` events are waiting or the oldest has
   waited ``flush_s`` seconds, for the next Spark build.

An event id seen again within the replica's recent window (``dedup_window`` ids) is counted
as a duplicate, not twice. Events of users who asked to be forgotten are rejected.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from cluster.core.catalog import RT_EVENTS
from cluster.core.contract import ACTIONS, TS_EPOCH_MS, TS_ISO_OFFSET, TS_LOCAL, has_control_chars
from cluster.core.errors import InvalidArgument
from cluster.core.storage import Lake, ProfileStore

__all__ = ["EventIntake", "Rejection", "IntakeResult", "parse_event_time", "validate_event", "EVENT_FIELDS"]

log = logging.getLogger(__name__)

EVENT_FIELDS = ("event_id", "user_id", "ts", "action", "item_id", "category", "brand", "device_type")
REQUIRED = ("event_id", "user_id", "ts", "action")
_TS_ISO_OFFSET, _TS_LOCAL, _TS_EPOCH_MS = (re.compile(p) for p in (TS_ISO_OFFSET, TS_LOCAL, TS_EPOCH_MS))
_MAX_TEXT = 256


def parse_event_time(text: str, source_tz: str) -> datetime | None:
    """A contract timestamp as an aware UTC datetime; None if it is in no accepted format."""
    try:
        if _TS_EPOCH_MS.match(text):
            return datetime.fromtimestamp(int(text) / 1000, tz=timezone.utc)
        if _TS_ISO_OFFSET.match(text):
            return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
        if _TS_LOCAL.match(text):
            return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo(source_tz)).astimezone(
                timezone.utc)
    except ValueError:  # impossible dates such as 2026-02-30
        return None
    return None


@dataclass(frozen=True)
class Rejection:
    index: int
    event_id: str
    reason: str
    field: str
    message: str


@dataclass
class IntakeResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)


def validate_event(index: int, raw: Mapping[str, object], *, source_tz: str, max_id_length: int,
                   now: datetime, max_future: timedelta) -> tuple[dict | None, Rejection | None]:
    """Check one event; returns the cleaned row or why it was rejected."""
    ev = {k: ("" if raw.get(k) is None else str(raw.get(k)).strip()) for k in EVENT_FIELDS}
    event_id = ev["event_id"][:max_id_length]

    def reject(reason: str, fld: str, message: str) -> tuple[None, Rejection]:
        return None, Rejection(index, event_id, reason, fld, message)

    for name in REQUIRED:
        if not ev[name]:
            return reject("missing_required", name, f"{name} is required")
    for name in ("event_id", "user_id"):
        value = ev[name]
        if len(value) > max_id_length or has_control_chars(value):
            return reject("bad_id", name, f"{name} must be at most {max_id_length} printable characters")
    for name in ("item_id", "category", "brand", "device_type"):
        if len(ev[name]) > _MAX_TEXT:
            return reject("too_long", name, f"{name} must be at most {_MAX_TEXT} characters")
    if ev["action"] not in ACTIONS:
        return reject("unknown_action", "action", f"action must be one of {', '.join(ACTIONS)}")
    ts = parse_event_time(ev["ts"], source_tz)
    if ts is None:
        return reject("bad_timestamp", "ts",
                      "ts must be ISO-8601 with an offset, 'YYYY-MM-DD HH:MM:SS' or 13-digit epoch milliseconds")
    if ts > now + max_future:
        return reject("future_timestamp", "ts", f"ts is more than {max_future.total_seconds():.0f}s in the future")
    row = {k: (ev[k] or None) for k in EVENT_FIELDS}
    row["ts"] = ts
    return row, None


class _RecentIds:
    """A bounded set of recently seen ids (oldest forgotten first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def forget(self, key: str) -> None:
        self._ids.pop(key, None)

    def seen(self, key: str) -> bool:
        if key in self._ids:
            self._ids.move_to_end(key)
            return True
        self._ids[key] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False


class EventIntake:
    """Validates batches, updates counters and buffers events for the lake (thread-safe)."""

    def __init__(self, store: ProfileStore, lake: Lake, *, source_tz: str, max_id_length: int = 64,
                 max_batch: int = 1000, flush_rows: int = 5000, flush_s: float = 10.0,
                 max_future_s: float = 300.0, dedup_window: int = 100_000,
                 forgotten: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.lake = lake
        self.source_tz = source_tz
        self.max_id_length = max_id_length
        self.max_batch = max_batch
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.max_future = timedelta(seconds=max_future_s)
        self.forgotten = forgotten or (lambda _uid: False)
        self.clock = clock
        self._recent = _RecentIds(dedup_window)
        self._buffer: list[dict] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self.files_written = 0

    def track(self, events: Iterable[Mapping[str, object]]) -> IntakeResult:
        """Take one batch.

        Raises:
            InvalidArgument: the batch is empty or larger than ``max_batch`` (``events``).
        """
        events = list(events)
        if not events:
            raise InvalidArgument("events must hold at least one event", field="events")
        if len(events) > self.max_batch:
            raise InvalidArgument(f"events holds {len(events)} events; at most {self.max_batch} per batch",
                                  field="events")
        now = datetime.fromtimestamp(self.clock(), tz=timezone.utc)
        result = IntakeResult()
        accepted: list[dict] = []
        for index, raw in enumerate(events):
            row, rejection = validate_event(index, raw, source_tz=self.source_tz, max_id_length=self.max_id_length,
                                            now=now, max_future=self.max_future)
            if rejection is None and self.forgotten(row["user_id"]):
                rejection = Rejection(index, row["event_id"], "forgotten_user", "user_id",
                                      "the user asked to be forgotten; their events are not kept")
            if rejection is not None:
                result.rejected.append(rejection)
                continue
            with self._lock:
                duplicate = self._recent.seen(row["event_id"])
            if duplicate:
                result.duplicates += 1
                continue
            accepted.append(row)
        # The replica's memory catches a batch re-sent to it; the claim in the shared store
        # catches one re-sent to another replica (or after this one restarted).
        ids = [row["event_id"] for row in accepted]
        try:
            claimed = self.store.claim(ids)
        except Exception:
            self._forget(ids)
            raise
        result.duplicates += claimed.count(False)
        accepted = [row for row, ok in zip(accepted, claimed) if ok]
        for done, row in enumerate(accepted):
            try:
                self.store.increment(row["user_id"], f"c:{row['action']}")
                if row["category"]:
                    self.store.increment(row["user_id"], f"c:{row['action']}:{row['category']}")
            except Exception:
                # The store failed (Unavailable): events not counted yet must count when the
                # client re-sends the batch, so they are neither remembered nor claimed.
                pending = [later["event_id"] for later in accepted[done:]]
                self._forget(pending)
                try:
                    self.store.release(pending)
                except Exception:  # noqa: BLE001 - the store is down; the claims expire after dedup_ttl_s
                    log.warning("could not release %d event claims; a re-send within events.dedup_ttl_s "
                                "will be taken for a duplicate", len(pending))
                raise
        result.accepted = len(accepted)
        if accepted:
            received = now
            with self._lock:
                self._buffer.extend({**r, "received_at": received} for r in accepted)
                if self._oldest is None:
                    self._oldest = self.clock()
        self.maybe_flush()
        return result

    def _forget(self, event_ids: list[str]) -> None:
        with self._lock:
            for event_id in event_ids:
                self._recent.forget(event_id)

    def maybe_flush(self) -> int:
        """Flush when the buffer is full or old enough; returns events written."""
        with self._lock:
            due = self._buffer and (
                len(self._buffer) >= self.flush_rows
                or (self._oldest is not None and self.clock() - self._oldest >= self.flush_s)
            )
        return self.flush() if due else 0

    def flush(self) -> int:
        """Append every buffered event to the lake now; returns how many."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self._lock:
            rows, self._buffer, self._oldest = self._buffer, [], None
        if not rows:
            return 0
        by_day: dict[str, list[dict]] = {}
        for r in rows:
            by_day.setdefault(r["ts"].date().isoformat(), []).append(r)
        try:
            for day, day_rows in sorted(by_day.items()):
                table = pa.table({
                    **{k: pa.array([r[k] for r in day_rows], pa.string())
                       for k in EVENT_FIELDS if k != "ts"},
                    "ts": pa.array([r["ts"] for r in day_rows], pa.timestamp("us", tz="UTC")),
                    "received_at": pa.array([r["received_at"] for r in day_rows], pa.timestamp("us", tz="UTC")),
                })
                buf = io.BytesIO()
                pq.write_table(table, buf)
                name = f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
                self.lake.write_bytes(buf.getvalue(), *RT_EVENTS.parts(f"dt={day}", name))
                self.files_written += 1
        except Exception:
            # Keep the events for the next flush rather than lose them.
            with self._lock:
                self._buffer = rows + self._buffer
                self._oldest = self._oldest or self.clock()
            raise
        return len(rows)
