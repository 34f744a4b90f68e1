import pytest

from cluster.core.storage import LocalLake, SqliteProfileStore, Zone
from tests.storage_contract import LAKE_CONTRACT, STORE_CONTRACT


@pytest.fixture()
def store(tmp_path):
    s = SqliteProfileStore(tmp_path / "p.sqlite", batch_size=2)
    yield s
    s.close()


@pytest.mark.parametrize("check", STORE_CONTRACT, ids=lambda f: f.__name__)
def test_sqlite_store_contract(store, check):
    check(store, "u")


@pytest.mark.parametrize("check", LAKE_CONTRACT, ids=lambda f: f.__name__)
def test_local_lake_contract(tmp_path, check):
    check(LocalLake(tmp_path), "t")


def test_sqlite_count_after_delete(store):
    store.write_batch([("u1", {"f:r": 3})])
    store.delete("u1")
    assert store.count_users() == 0


def test_lake_uri_keeps_partition_names_readable(tmp_path):
    lake = LocalLake(tmp_path)
    assert lake.uri(Zone.FEATURES, "rfm/run=1") == f"file://{tmp_path.resolve()}/features/rfm/run=1"


@pytest.mark.parametrize("bad", ["../etc", "/abs"])
def test_lake_paths_stay_inside(tmp_path, bad):
    with pytest.raises(ValueError):
        LocalLake(tmp_path).read_bytes(bad)


def test_sqlite_ensure_schema_creates_once(tmp_path):
    store = SqliteProfileStore(tmp_path / "fresh" / "p.sqlite")
    assert store.ensure_schema() is True
    assert store.ensure_schema() is False
    assert SqliteProfileStore(tmp_path / "fresh" / "p.sqlite").ensure_schema() is False


def test_flag_and_ranked_cells_decode_as_the_profile_and_the_services_read_them():
    from cluster.core.storage import decode_flag, decode_ranked

    assert decode_flag(b" True ") and decode_flag(b"1")
    assert not decode_flag(b"0") and not decode_flag(None)
    assert decode_ranked(b'[["a", 2], ["b", 1.5]]') == [("a", 2.0), ("b", 1.5)]
    assert decode_ranked(b"[]") == []
    for bad in (b"not json", b'[["a"]]', b"[1]"):
        assert decode_ranked(bad) is None


def test_sqlite_claims_expire_and_are_shared_by_every_process(tmp_path, monkeypatch):
    import cluster.core.storage.profile_store as ps

    now = [1_000_000.0]
    monkeypatch.setattr(ps.time, "time", lambda: now[0])
    one = SqliteProfileStore(tmp_path / "p.sqlite", claim_ttl_s=60)
    other = SqliteProfileStore(tmp_path / "p.sqlite", claim_ttl_s=60)  # another replica's store
    assert one.claim(["e1"]) == [True]
    assert other.claim(["e1", "e2"]) == [False, True]
    now[0] += 59
    assert one.claim(["e1"]) == [False]
    now[0] += 2  # e1's claim (taken at t0) has expired; e2's (t0 too) as well
    assert other.claim(["e1", "e2"]) == [True, True]
    assert one.claim(["e1"]) == [False]


def test_sqlite_purges_expired_claims(tmp_path, monkeypatch):
    import sqlite3

    import cluster.core.storage.profile_store as ps

    now = [1_000_000.0]
    monkeypatch.setattr(ps.time, "time", lambda: now[0])
    store = SqliteProfileStore(tmp_path / "p.sqlite", claim_ttl_s=10)
    store.claim([f"e{i}" for i in range(100)])
    now[0] += 11
    store._last_purge = 0.0  # due
    store.claim(["fresh"])
    with sqlite3.connect(tmp_path / "p.sqlite") as conn:
        assert conn.execute("SELECT key FROM claims").fetchall() == [("fresh",)]
