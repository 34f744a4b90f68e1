"""Behaviour every profile-store and lake back-end must share.

The unit tests run these against SQLite and a local folder; the integration tests run
the very same functions against HBase and HDFS on the cluster.
"""

from __future__ import annotations

import threading

import pytest

from cluster.core.errors import NotFound
from cluster.core.storage import Zone, decode_counter


def store_write_read_and_filter(store, prefix: str) -> None:
    u1, u2, u3 = f"{prefix}1", f"{prefix}2", f"{prefix}3"
    before = store.count_users()
    assert store.write_batch([(u1, {"f:r": 3, "a:city": "北京"}), (u2, {"f:r": 7}), (u3, {"f:r": 1})]) == 3
    assert store.read(u1) == {"f:r": b"3", "a:city": "北京".encode()}
    assert store.read(u1, ["a:city"]) == {"a:city": "北京".encode()}
    assert store.read(f"{prefix}-nobody") is None
    assert store.count_users() == before + 3


def store_upsert_replaces_cell(store, prefix: str) -> None:
    store.write_batch([(f"{prefix}1", {"f:r": 3})])
    store.write_batch([(f"{prefix}1", {"f:r": 4})])
    assert store.read(f"{prefix}1", ["f:r"]) == {"f:r": b"4"}


def store_counters_atomic(store, prefix: str, threads: int = 4, per_thread: int = 100) -> None:
    uid = f"{prefix}1"

    def bump() -> None:
        for _ in range(per_thread):
            store.increment(uid, "c:views")

    workers = [threading.Thread(target=bump) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert decode_counter(store.read(uid, ["c:views"])["c:views"]) == threads * per_thread
    assert store.increment(uid, "c:views", 5) == threads * per_thread + 5


def store_rejects_misused_counters(store, prefix: str) -> None:
    with pytest.raises(ValueError):
        store.increment(f"{prefix}1", "f:r")
    with pytest.raises(ValueError):
        store.write_batch([(f"{prefix}1", {"c:views": 1})])


def store_delete_removes_everything(store, prefix: str) -> None:
    uid = f"{prefix}1"
    store.write_batch([(uid, {"f:r": 3})])
    store.increment(uid, "c:views")
    store.delete(uid)
    assert store.read(uid) is None


def store_ensure_schema_is_idempotent(store, prefix: str) -> None:
    uid = f"{prefix}1"
    store.write_batch([(uid, {"f:r": 5})])
    assert store.ensure_schema() is False  # the tables exist after a write
    assert store.read(uid, ["f:r"]) == {"f:r": b"5"}


def store_reads_whole_families(store, prefix: str) -> None:
    uid = f"{prefix}1"
    store.write_batch([(uid, {"a:city": "上海", "a:gender": "F", "f:r": 2, "t:top": "[]"})])
    store.increment(uid, "c:view", 3)
    store.increment(uid, "c:cart")
    assert store.read(uid, families=["a"]) == {"a:city": "上海".encode(), "a:gender": b"F"}
    assert set(store.read(uid, families=["c"])) == {"c:view", "c:cart"}
    assert decode_counter(store.read(uid, families=["c"])["c:view"]) == 3
    got = store.read(uid, columns=["f:r"], families=["t", "c"])
    assert set(got) == {"f:r", "t:top", "c:view", "c:cart"}
    assert store.read(uid, families=["m"]) is None
    with pytest.raises(ValueError):
        store.read(uid, families=["zz"])


def store_claims_are_taken_once(store, prefix: str, threads: int = 4, keys: int = 50) -> None:
    a, b = f"{prefix}-claim-a", f"{prefix}-claim-b"
    users = store.count_users()
    assert store.claim([a, b]) == [True, True]
    assert store.claim([b, a]) == [False, False]
    store.release([a])
    assert store.claim([a, b]) == [True, False]
    assert store.claim([]) == []
    # Concurrent callers (Serve replicas) claiming the same keys: each key is won exactly once.
    shared = [f"{prefix}-race-{i}" for i in range(keys)]
    wins: list[list[bool]] = []

    def race() -> None:
        wins.append(store.claim(shared))

    workers = [threading.Thread(target=race) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(wins) == threads
    assert [sum(w[i] for w in wins) for i in range(keys)] == [1] * keys
    assert store.count_users() == users  # claims are not users
    store.release(shared + [a, b])
    assert store.claim([a]) == [True]
    store.release([a])


STORE_CONTRACT = [
    store_claims_are_taken_once,
    store_reads_whole_families,
    store_ensure_schema_is_idempotent,
    store_write_read_and_filter,
    store_upsert_replaces_cell,
    store_counters_atomic,
    store_rejects_misused_counters,
    store_delete_removes_everything,
]


def lake_round_trip(lake, folder: str) -> None:
    lake.write_json({"a": 1, "名": "值"}, Zone.REPORTS, folder, "r.json")
    assert lake.read_json(Zone.REPORTS, folder, "r.json") == {"a": 1, "名": "值"}
    lake.write_json({"a": 2}, Zone.REPORTS, folder, "r.json")  # overwrite in place
    assert lake.read_json(Zone.REPORTS, folder, "r.json") == {"a": 2}
    assert lake.list_dir(Zone.REPORTS, folder) == ["r.json"]  # no temporary file left behind
    assert lake.exists(Zone.REPORTS, folder, "r.json")
    with pytest.raises(NotFound):
        lake.read_bytes(Zone.REPORTS, folder, "missing.json")
    assert lake.list_dir(Zone.REPORTS, folder, "no-such-dir") == []
    lake.delete(Zone.REPORTS, folder)
    assert not lake.exists(Zone.REPORTS, folder)


def lake_parquet_folder(lake, folder: str) -> None:
    import io

    import pandas as pd

    frames = [pd.DataFrame({"user_id": [f"u{i}", f"v{i}"], "x": [i, i + 10]}) for i in range(2)]
    for i, frame in enumerate(frames):
        buf = io.BytesIO()
        frame.to_parquet(buf)
        lake.write_bytes(buf.getvalue(), Zone.FEATURES, folder, f"part-{i}.parquet")
    got = lake.read_parquet(Zone.FEATURES, folder).sort_values("x").reset_index(drop=True)
    assert got["x"].tolist() == [0, 1, 10, 11]
    lake.delete(Zone.FEATURES, folder)


LAKE_CONTRACT = [lake_round_trip, lake_parquet_folder]
