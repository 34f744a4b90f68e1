import threading

import pytest

from cluster.errors import NotFound
from cluster.storage import LocalLake, SqliteProfileStore, Zone, decode_counter


@pytest.fixture()
def store(tmp_path):
    s = SqliteProfileStore(tmp_path / "p.sqlite", batch_size=2)
    yield s
    s.close()


def test_write_read_and_column_filter(store):
    assert store.write_batch([("u1", {"f:r": 3, "a:city": "北京"}), ("u2", {"f:r": 7}), ("u3", {"f:r": 1})]) == 3
    assert store.read("u1") == {"f:r": b"3", "a:city": "北京".encode()}
    assert store.read("u1", ["a:city"]) == {"a:city": "北京".encode()}
    assert store.read("nobody") is None
    assert store.count_users() == 3


def test_upsert_replaces_cell(store):
    store.write_batch([("u1", {"f:r": 3})])
    store.write_batch([("u1", {"f:r": 4})])
    assert store.read("u1", ["f:r"]) == {"f:r": b"4"}


def test_counters_are_atomic_across_threads(store):
    def bump():
        for _ in range(200):
            store.increment("u1", "c:views")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert decode_counter(store.read("u1", ["c:views"])["c:views"]) == 800


def test_counters_only_in_counter_family(store):
    with pytest.raises(ValueError):
        store.increment("u1", "f:r")
    with pytest.raises(ValueError):
        store.write_batch([("u1", {"c:views": 1})])


def test_delete_removes_cells_and_counters(store):
    store.write_batch([("u1", {"f:r": 3})])
    store.increment("u1", "c:views")
    store.delete("u1")
    assert store.read("u1") is None
    assert store.count_users() == 0


def test_lake_round_trip_and_atomic_write(tmp_path):
    lake = LocalLake(tmp_path)
    lake.write_json({"a": 1}, Zone.REPORTS, "x", "r.json")
    assert lake.read_json(Zone.REPORTS, "x", "r.json") == {"a": 1}
    assert lake.list_dir(Zone.REPORTS, "x") == ["r.json"]  # no temp file left behind
    with pytest.raises(NotFound):
        lake.read_bytes(Zone.REPORTS, "missing.json")
    lake.delete(Zone.REPORTS)
    assert not lake.exists(Zone.REPORTS, "x")


def test_lake_uri_keeps_partition_names_readable(tmp_path):
    lake = LocalLake(tmp_path)
    assert lake.uri(Zone.FEATURES, "rfm/run=1") == f"file://{tmp_path.resolve()}/features/rfm/run=1"


@pytest.mark.parametrize("bad", ["../etc", "/abs"])
def test_lake_paths_stay_inside(tmp_path, bad):
    with pytest.raises(ValueError):
        LocalLake(tmp_path).read_bytes(bad)
