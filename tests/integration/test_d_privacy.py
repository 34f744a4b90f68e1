"""Issue 4's data services on the cluster: no raw personal data in HDFS or HBase, profiles
served from HBase through the provisioned application, real-time events, and forgetting a user."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster


def test_no_raw_phone_or_id_number_in_hdfs_or_hbase(cluster_settings, pipeline):
    from cluster.core.storage import open_lake, open_profile_store
    from tests.pii_scan import PiiScanner, input_personal_values

    users_csv = pipeline["work"] / "var" / "demo-input" / "users.csv"
    secrets = input_personal_values(users_csv)
    assert len(secrets) > 500, "the demo input should carry phones and ID numbers to look for"
    scanner = PiiScanner(secrets)
    # The scanner finds what it looks for (so an empty result below means something).
    planted = next(iter(secrets))
    assert scanner.scan_text("control", f"x {planted} y")
    hits = scanner.scan_lake(open_lake(cluster_settings))
    store = open_profile_store(cluster_settings)
    with store._connection() as conn:
        hits += scanner.scan_rows("hbase", conn.table(store.table_name).scan(batch_size=1000))
    hits += scanner.scan_text("demo output", pipeline["stdout"])
    assert hits == []


def test_profiles_come_from_hbase_through_the_provisioned_application(cluster_settings, pipeline):
    from cluster.core.storage import open_lake
    from ray_apps.client import MarketingClient

    features = open_lake(cluster_settings).read_parquet(pipeline["rfm"]["path"])
    uid = features.sort_values("monetary", ascending=False)["user_id"].iloc[0]
    with MarketingClient.from_settings(cluster_settings, timeout_s=15) as client:
        g = client.get_profile(uid)
        assert client.get_profile_http(uid) == g
    assert g.rfm.frequency == int(features.set_index("user_id").loc[uid, "frequency"])
    assert g.segment.model_version == pipeline["model"].ref
    assert g.scores.HasField("clv_predicted") and g.scores.clv_historic > 0
    assert g.tags and g.behaviour
    assert g.attributes.phone_masked == "" or "****" in g.attributes.phone_masked


def _pmkt(settings, *args: str) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("pmkt"))
    return subprocess.run([exe, "--settings", str(settings.source), *args], capture_output=True, text=True,
                          timeout=900)


def test_forget_on_the_cluster(cluster_settings, pipeline):
    """Forget: profile and counters gone, events refused, every answer a stranger's; the next build
    leaves the user out; `pmkt privacy purge` removes their rows from every personal table on HDFS."""
    from cluster.core.catalog import TOMBSTONES, personal_tables
    from cluster.core.errors import NotFound
    from cluster.core.storage import open_lake, open_profile_store
    from ray_apps.client import MarketingClient
    from spark_jobs import rfm
    from spark_jobs.session import stop_spark
    from tests.forget_check import STRANGER, answers, differences, sample_ad
    from tests.pii_scan import PiiScanner

    lake = open_lake(cluster_settings)
    uid = lake.read_parquet(pipeline["rfm"]["path"]).sort_values("user_id")["user_id"].iloc[-1]
    ad = sample_ad(lake)
    event = {"event_id": f"forget-{uid}", "user_id": uid, "ts": "2026-06-30 10:00:00", "action": "view"}
    with MarketingClient.from_settings(cluster_settings, timeout_s=15) as client:
        assert client.track_events([event]).accepted == 1
        assert client.get_profile(uid, ["counters"]).counters["view"] >= 1
        proc = _pmkt(cluster_settings, "privacy", "forget", uid)
        assert proc.returncode == 0 and "forgotten" in proc.stdout, proc.stdout + proc.stderr
        assert open_profile_store(cluster_settings).read(uid) is None
        with pytest.raises(NotFound):
            client.get_profile(uid)
        # Replicas cache the tombstones for events.tombstone_ttl_s; after that, events are refused
        # (an event accepted before would re-create counters, so none is sent meanwhile).
        time.sleep(cluster_settings.events.tombstone_ttl_s + 2)
        res = client.track_events([{**event, "event_id": f"forget2-{uid}"}])
        assert (res.accepted, [r.reason for r in res.rejected]) == (0, ["forgotten_user"])
        after, stranger = answers(client, uid, ad), answers(client, STRANGER, ad)
        assert after == stranger, differences(after, stranger)
    stop_spark()
    meta = rfm.main(cluster_settings)
    stop_spark()
    assert uid not in set(lake.read_parquet(meta["path"])["user_id"])
    assert open_profile_store(cluster_settings).read(uid) is None

    scanner = PiiScanner([uid])
    personal = [t for t in personal_tables() if t is not TOMBSTONES]
    assert [h for t in personal for h in scanner.scan_lake(lake, t.rel())], "their rows are in the lake before purge"
    proc = _pmkt(cluster_settings, "privacy", "purge")
    assert proc.returncode == 0 and "rows removed" in proc.stdout, proc.stdout + proc.stderr
    print(proc.stdout)
    assert [h for t in personal for h in scanner.scan_lake(lake, t.rel())] == []
