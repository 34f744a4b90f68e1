"""The storage contract, on HBase (through Thrift) and HDFS (through WebHDFS)."""

from __future__ import annotations

import pytest

from cluster.core.storage import HBaseProfileStore, HdfsLake, open_lake, open_profile_store
from tests.storage_contract import LAKE_CONTRACT, STORE_CONTRACT


@pytest.fixture(scope="module")
def hbase_store(cluster_settings, run_tag):
    store = open_profile_store(cluster_settings.model_copy(update={
        "profile_store": cluster_settings.profile_store.model_copy(update={
            "hbase": cluster_settings.profile_store.hbase.model_copy(update={"table_prefix": f"itest{run_tag}"}),
        }),
    }))
    assert isinstance(store, HBaseProfileStore)
    yield store
    store.drop_table()


@pytest.mark.parametrize("check", STORE_CONTRACT, ids=lambda f: f.__name__)
def test_hbase_store_contract(hbase_store, run_tag, check):
    check(hbase_store, f"{check.__name__[:12]}-{run_tag}-")


@pytest.mark.parametrize("check", LAKE_CONTRACT, ids=lambda f: f.__name__)
def test_hdfs_lake_contract(cluster_settings, run_tag, check):
    lake = open_lake(cluster_settings)
    assert isinstance(lake, HdfsLake)
    check(lake, f"itest-{run_tag}")


def test_hbase_row_keys_are_salted(hbase_store, run_tag):
    """Rows land under their salt bucket: a raw scan sees the bucket prefix, not the bare id."""
    from cluster.core.storage.keys import row_key

    uid = f"salt-{run_tag}"
    hbase_store.write_batch([(uid, {"f:r": 1})])
    with hbase_store._connection() as conn:
        keys = [k for k, _ in conn.table(hbase_store.table_name).scan(row_prefix=row_key(uid, hbase_store.salt_buckets))]
    assert keys == [row_key(uid, hbase_store.salt_buckets)]


def _thrift_read_timeout_s() -> float:
    """hbase.thrift.server.socket.read.timeout as the hbase role rendered it (60 s if unset)."""
    import xml.etree.ElementTree as ET

    from tests.integration.conftest import REPO

    for site in sorted((REPO / "var" / "cluster" / "conf").glob("*/hbase/hbase-site.xml")):
        for prop in ET.parse(site).getroot().iter("property"):
            if prop.findtext("name") == "hbase.thrift.server.socket.read.timeout":
                return int(prop.findtext("value")) / 1000
    return 60.0


def test_hbase_store_survives_the_thrift_servers_idle_timeout(hbase_store, run_tag):
    """The Thrift server closes connections idle longer than its read timeout; the store's
    pooled connection must not make the next request fail (a served GetProfile answered
    INTERNAL before this)."""
    import time

    timeout_s = _thrift_read_timeout_s()
    assert hbase_store.IDLE_REOPEN_S < timeout_s, "the store would reuse sockets the server has closed"
    uid = f"idle-{run_tag}"
    hbase_store.write_batch([(uid, {"f:r": 1})])
    time.sleep(timeout_s + 10)
    assert hbase_store.read(uid, ["f:r"]) == {"f:r": b"1"}
    assert hbase_store.increment(uid, "c:view") == 1


def test_hbase_claims_expire_with_the_claims_table_ttl(cluster_settings, run_tag):
    """The claims table's TTL (events.dedup_ttl_s at creation) ends a claim; no sweeper needed."""
    import time

    hb = cluster_settings.profile_store.hbase
    store = HBaseProfileStore(hb.host, hb.port, f"ttl{run_tag}", hb.salt_buckets, hb.timeout_ms, claim_ttl_s=2)
    try:
        assert store.claim(["e1", "e2"]) == [True, True]
        assert store.claim(["e1"]) == [False]
        time.sleep(3.5)
        assert store.claim(["e1", "e2"]) == [True, True]
    finally:
        store.drop_table()
