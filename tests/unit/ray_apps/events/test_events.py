"""Real-time intake: per-event validation, atomic counters, lake batches, forgotten users."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from cluster.core.catalog import RT_EVENTS
from cluster.core.errors import InvalidArgument
from cluster.core.storage import LocalLake, SqliteProfileStore, decode_counter
from ray_apps.events.intake import EventIntake, parse_event_time

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc).timestamp()


def _event(i: int, **over) -> dict:
    return {"event_id": f"e{i}", "user_id": "u1", "ts": "2026-07-01T10:00:00+08:00", "action": "view",
            "item_id": "i1", "category": "手机", **over}


@pytest.fixture()
def parts(tmp_path):
    store = SqliteProfileStore(tmp_path / "p.sqlite")
    lake = LocalLake(tmp_path / "lake")
    clock = [NOW]
    intake = EventIntake(store, lake, source_tz="Asia/Shanghai", flush_rows=3, flush_s=10,
                         forgotten=lambda uid: uid == "gone", clock=lambda: clock[0])
    return store, lake, intake, clock


def test_timestamps_in_the_three_contract_formats():
    utc = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)
    assert parse_event_time("2026-03-01T10:00:00+08:00", "Asia/Shanghai") == utc
    assert parse_event_time("2026-03-01 10:00:00", "Asia/Shanghai") == utc
    assert parse_event_time(str(int(utc.timestamp() * 1000)), "Asia/Shanghai") == utc
    for bad in ("2026-03-01T10:00:00", "2026-03-01", "1772330400", "2026-02-30 10:00:00", "soon"):
        assert parse_event_time(bad, "Asia/Shanghai") is None, bad


def test_bad_events_are_rejected_one_by_one_and_good_ones_kept(parts):
    store, _lake, intake, _ = parts
    batch = [
        _event(1),
        _event(2, ts="2026-07-01T10:00:00"),            # no offset
        _event(3, action="teleport"),
        _event(4, user_id=""),
        _event(5, user_id="x" * 65),
        _event(6, ts="2026-07-02T10:00:00+00:00"),      # 22 h in the future
        _event(7, user_id="gone"),
        _event(8, action="cart"),
    ]
    result = intake.track(batch)
    assert result.accepted == 2
    got = {(r.index, r.reason, r.field) for r in result.rejected}
    assert got == {(1, "bad_timestamp", "ts"), (2, "unknown_action", "action"), (3, "missing_required", "user_id"),
                   (4, "bad_id", "user_id"), (5, "future_timestamp", "ts"), (6, "forgotten_user", "user_id")}
    cells = store.read("u1", families=["c"])
    assert {k: decode_counter(v) for k, v in cells.items()} == {
        "c:view": 1, "c:view:手机": 1, "c:cart": 1, "c:cart:手机": 1}
    assert store.read("gone") is None


def test_batch_limits_are_invalid_arguments(parts):
    _store, _lake, intake, _ = parts
    with pytest.raises(InvalidArgument) as err:
        intake.track([])
    assert err.value.field == "events"
    with pytest.raises(InvalidArgument, match="at most 1000"):
        intake.track([_event(i) for i in range(1001)])


def test_resent_event_ids_are_counted_once(parts):
    store, _lake, intake, _ = parts
    first = intake.track([_event(1), _event(2)])
    again = intake.track([_event(2), _event(3), _event(3)])
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates) == (1, 2)
    assert decode_counter(store.read("u1", ["c:view"])["c:view"]) == 3


def test_counters_are_atomic_under_concurrent_batches(parts):
    store, _lake, intake, _ = parts

    def send(t: int) -> None:
        for b in range(10):
            intake.track([_event(t * 1000 + b * 10 + i) for i in range(10)])

    threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert decode_counter(store.read("u1", ["c:view"])["c:view"]) == 400


def test_events_reach_the_lake_in_batches_readable_by_spark(parts, spark):
    _store, lake, intake, clock = parts
    intake.track([_event(1), _event(2)])
    assert RT_EVENTS.list_dir(lake) == []                        # 2 < flush_rows, not old yet
    intake.track([_event(3, ts="2026-06-30 23:59:59")])          # 3rd event: flush_rows reached
    assert intake.files_written == 2                             # one file per UTC day
    intake.track([_event(4)])
    clock[0] += 11                                               # older than flush_s
    assert intake.maybe_flush() == 1
    frame = spark.read.parquet(RT_EVENTS.uri(lake))
    rows = {r["event_id"]: r for r in frame.collect()}
    assert set(rows) == {"e1", "e2", "e3", "e4"}
    assert {r["dt"].isoformat() if hasattr(r["dt"], "isoformat") else str(r["dt"]) for r in rows.values()} == {
        "2026-06-30", "2026-07-01"}
    # Session time zone is UTC: collected timestamps are naive UTC wall times.
    assert rows["e3"]["ts"] == datetime(2026, 6, 30, 15, 59, 59)
    assert rows["e1"]["category"] == "手机" and rows["e1"]["action"] == "view"


def test_a_failed_flush_keeps_the_events(parts, monkeypatch):
    _store, lake, intake, _ = parts
    intake.track([_event(1), _event(2)])

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(lake, "write_bytes", broken)
    with pytest.raises(OSError):
        intake.flush()
    monkeypatch.undo()
    assert intake.flush() == 2


def test_events_not_counted_because_the_store_failed_count_when_resent(parts, monkeypatch):
    from cluster.core.errors import Unavailable

    store, _lake, intake, _ = parts
    real = store.increment
    calls = {"n": 0}

    def flaky(user_id, column, amount=1):
        calls["n"] += 1
        if calls["n"] == 3:  # the second event's first counter
            raise Unavailable("HBase Thrift server down")
        return real(user_id, column, amount)

    monkeypatch.setattr(store, "increment", flaky)
    batch = [_event(1), _event(2), _event(3)]
    with pytest.raises(Unavailable):
        intake.track(batch)
    monkeypatch.setattr(store, "increment", real)
    again = intake.track(batch)
    assert (again.accepted, again.duplicates) == (2, 1)  # e1 was counted, e2 and e3 now are
    assert decode_counter(store.read("u1", ["c:view"])["c:view"]) == 3


def test_a_batch_resent_to_another_replica_is_counted_once(parts, tmp_path):
    """Two replicas, each with its own memory and its own connection to the shared store."""
    store, lake, intake, clock = parts
    other = EventIntake(SqliteProfileStore(tmp_path / "p.sqlite"), lake, source_tz="Asia/Shanghai",
                        flush_rows=3, flush_s=10, clock=lambda: clock[0])
    first = intake.track([_event(1), _event(2)])
    resent = other.track([_event(1), _event(2), _event(3)])
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (resent.accepted, resent.duplicates) == (1, 2)
    assert decode_counter(store.read("u1", ["c:view"])["c:view"]) == 3
    # The local memory still answers first: the replica that saw e3 does not ask the store again.
    calls = []
    real = other.store.claim
    other.store.claim = lambda ids: calls.append(list(ids)) or real(ids)
    assert other.track([_event(3), _event(4)]).duplicates == 1
    assert calls == [["e4"]]


def test_a_failed_claim_counts_nothing_and_the_resend_counts(parts, monkeypatch):
    from cluster.core.errors import Unavailable

    store, _lake, intake, _ = parts
    real = store.claim
    monkeypatch.setattr(store, "claim", lambda ids: (_ for _ in ()).throw(Unavailable("store down")))
    with pytest.raises(Unavailable):
        intake.track([_event(1), _event(2)])
    assert store.read("u1") is None
    monkeypatch.setattr(store, "claim", real)
    assert intake.track([_event(1), _event(2)]).accepted == 2
