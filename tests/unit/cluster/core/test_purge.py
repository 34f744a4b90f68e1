"""`pmkt privacy purge`: every personal file rewritten without forgotten users, atomically,
the other users' rows untouched, and a second purge rewrites nothing."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from cluster.core.catalog import ATTRIBUTE_REPORTS, LANDING, PURGE_REPORTS, QUARANTINE, RAW, RFM, RT_EVENTS, personal_tables
from cluster.core.forget import forget
from cluster.core.purge import purge
from cluster.core.storage import LocalLake

#: A contract-valid id with a comma, a quote and a space: it must be matched as one CSV field.
ODD = 'u 7,"x"'
GONE = ("u2", ODD)
KEPT = ("u1", "u3", "u22")  # u22 contains u2: only whole values count


@pytest.fixture()
def lake_with_users(settings_factory):
    settings = settings_factory()
    lake = LocalLake(settings.lake.root)
    root = settings.lake.root
    users = [*KEPT, *GONE]

    def parquet(frame, *parts):
        path = root.joinpath(*[p.value if hasattr(p, "value") else p for p in parts])
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)

    parquet(pd.DataFrame({"user_id": users, "amount": [1.0, 2.0, 3.0, 4.0, 5.0]}),
            *RAW["orders"].parts("dt=2026-01-01", "part-0.snappy.parquet"))
    parquet(pd.DataFrame({"user_id": ["u1"], "amount": [9.0]}),
            *RAW["orders"].parts("dt=2026-01-02", "part-0.snappy.parquet"))  # nobody forgotten in it
    parquet(pd.DataFrame({"user_id": ["u3", "u2"], "action": ["view", "click"]}),
            *RT_EVENTS.parts("dt=2026-01-03", "part-1.parquet"))
    for run in ("r1", "r2"):  # every run, not only the newest
        parquet(pd.DataFrame({"user_id": users, "monetary": range(5)}), *RFM.run_parts(run, "part-0.parquet"))
    # Quarantined lines as delivered: CSV, JSON, a JSON array, a truncated object.
    records = ['o9,u2,2026-01-01,abc', 'o8,"u 7,""x""",2026-01-01,abc', 'o7,u22,bad,1',
               json.dumps({"event_id": "e1", "user_id": "u2"}), json.dumps({"event_id": "e2", "user_id": "u3"}),
               '["e3", "u2", "2026-01-01 10:00:00", "view"]', '{"event_id":"e4","user_id":"u2","ts":"20']
    parquet(pd.DataFrame({"reason": ["bad_ts"] * 7, "detail": ["x"] * 7, "line_number": range(7),
                          "record": records, "source_file": ["orders.csv"] * 7}),
            *QUARANTINE.parts("orders", "run=r1", "part-0.parquet"))
    csv = 'order_id,user_id,amount\no1,u1,1\no2,u2,2\no3,"u 7,""x""",3\no4,u22,4\n'
    lake.write_bytes(gzip.compress(csv.encode()), *LANDING.parts("run9", "orders.csv.gz"))
    lake.write_bytes(b'{"user_id": "u2", "action": "view"}\n{"user_id": "u1", "action": "view"}\n',
                     *LANDING.parts("run9", "events.jsonl"))
    ATTRIBUTE_REPORTS.write_json(lake, ["u1", "u2", "u22"], "gender-stored.json")
    for uid in GONE:
        forget(settings, uid)
    return settings, lake


def _users(lake, *parts):
    """Users in a Parquet folder and every folder below it (as Spark reads a partitioned table)."""
    return sorted(uid for rel in lake.files(*parts) if rel.endswith(".parquet")
                  for uid in lake.read_parquet(*parts, *rel.split("/"))["user_id"])


def test_purge_removes_every_row_of_forgotten_users_and_keeps_the_others(lake_with_users):
    settings, lake = lake_with_users
    untouched = lake.read_bytes(*RAW["orders"].parts("dt=2026-01-02", "part-0.snappy.parquet"))

    report = purge(settings)

    assert _users(lake, *RAW["orders"].parts()) == sorted(["u1", *KEPT])
    assert lake.read_parquet(*RAW["orders"].parts("dt=2026-01-01", "part-0.snappy.parquet"))["amount"].tolist() == [1.0, 2.0, 3.0]
    assert _users(lake, *RT_EVENTS.parts()) == ["u3"]
    for run in ("r1", "r2"):
        assert _users(lake, *RFM.run_parts(run)) == sorted(KEPT)
    records = lake.read_parquet(*QUARANTINE.parts("orders", "run=r1"))["record"].tolist()
    assert records == ['o7,u22,bad,1', json.dumps({"event_id": "e2", "user_id": "u3"})]
    landing = gzip.decompress(lake.read_bytes(*LANDING.parts("run9", "orders.csv.gz"))).decode()
    assert landing == "order_id,user_id,amount\no1,u1,1\no4,u22,4\n"
    assert lake.read_bytes(*LANDING.parts("run9", "events.jsonl")) == b'{"user_id": "u1", "action": "view"}\n'
    assert ATTRIBUTE_REPORTS.read_json(lake, "gender-stored.json") == ["u1", "u22"]
    # A file without a forgotten user is not rewritten.
    assert lake.read_bytes(*RAW["orders"].parts("dt=2026-01-02", "part-0.snappy.parquet")) == untouched

    t = report["tables"]
    assert t["raw.orders"] == {"files_scanned": 2, "files_rewritten": 1, "rows_removed": 2, "files_skipped": 0}
    assert t["features.rfm"]["rows_removed"] == 4 and t["quarantine"]["rows_removed"] == 5
    assert t["landing"]["rows_removed"] == 3 and t["reports.attributes"]["rows_removed"] == 1
    assert report["rows_removed"] == 2 + 1 + 4 + 5 + 3 + 1 and report["forgotten_users"] == 2
    assert set(t) == {x.name for x in personal_tables()} - {"privacy.tombstones"}
    # The stored report counts, and names no user.
    stored = PURGE_REPORTS.read_json(lake, "latest.json")
    assert stored == report and not any(uid in json.dumps(stored) for uid in GONE)
    assert not [p for p in settings.lake.root.rglob(".*") if p.is_file()], "no temporary file left"


def test_a_second_purge_rewrites_nothing(lake_with_users):
    settings, lake = lake_with_users
    purge(settings)
    before = {p: p.read_bytes() for p in settings.lake.root.rglob("*") if p.is_file() and "purge" not in str(p)}
    again = purge(settings)
    assert (again["files_rewritten"], again["rows_removed"]) == (0, 0)
    after = {p: p.read_bytes() for p in settings.lake.root.rglob("*") if p.is_file() and "purge" not in str(p)}
    assert after == before


def test_nothing_to_purge_without_tombstones(settings_factory):
    settings = settings_factory()
    report = purge(settings)
    assert (report["forgotten_users"], report["tables"], report["rows_removed"]) == (0, {}, 0)
