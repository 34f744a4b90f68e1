"""Ingest: the data contract end to end on tiny inputs, one planted defect of each kind."""

from __future__ import annotations

import gzip
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from cluster.core.contract import dataset
from cluster.core.errors import DataContractError, InvalidArgument
from cluster.core.privacy import load_keyring
from cluster.core.storage import Zone, open_lake
from spark_jobs import ingest

UTC = timezone.utc

# Personal data planted in the inputs; none of it may appear anywhere in the lake.
PHONE_U1 = "13812345678"
PHONE_U8 = "13900000000"
PHONE_U12 = "13711112222"
PHONE_SHORT = "1381234567"  # 10 digits: malformed, emptied
ID_U1 = "11010119900307123X"
ID_U9 = "110101198506061234"
ID_U12 = "110101198001011234"
ID_SHORT = "11010119900307123"  # 17 characters: malformed, emptied
PLANTED = [PHONE_U1, PHONE_U8, PHONE_U12, PHONE_SHORT, ID_U1, ID_U9, ID_U12, ID_SHORT]

# Columns reordered and `city` left out: columns are mapped by name, a missing optional one is empty.
USERS = f"""user_id,phone,gender,birth_date,id_number,signup_time,opt_in_sms,opt_in_push,opt_in_email
u1,{PHONE_U1},F,1990-03-07,{ID_U1},2026-01-05 09:30:00,1,0,1
u2,,,,,,,,
u3,{PHONE_SHORT},M,,,,0,0,0
u4,,M,,{ID_SHORT},,0,0,0
u5,,X,,,,0,0,0
u6,,F,1990-02-30,,,0,0,0
u7,,F,,,,yes,1,1
,{PHONE_U8},M,,,,0,0,0
u9,,F,,{ID_U9},yesterday,0,0,0
u10,M
u1,{PHONE_U1},F,1990-03-07,{ID_U1},2026-01-05 09:30:00,1,0,1
u12,{PHONE_U12},F,,{ID_U12},,1,1,1
u12,,M,,,,0,0,0
"""

ORDERS = """order_id,user_id,order_time,item_id,category,brand,quantity,amount,status
o1,u1,2026-03-01T10:00:00+08:00,i1,beauty,b1,2,99.50,paid
o2,u2,2026-03-02 07:00:00,i2,food,b2,,10,
o3,u_ghost,1772330400000,i3,food,b3,1,5,refunded
o4,,2026-03-01T10:00:00Z,i1,beauty,b1,1,5,paid

o5,u1,not-a-time,i1,beauty,b1,1,5,paid
o6,u1,2026-03-01T10:00:00Z,i1,beauty,b1,1,abc,paid
o7,u1,2026-03-01T10:00:00Z,i1,beauty,b1,1,-5,paid
o8,u1,2026-03-01T10:00:00Z,i1,beauty,b1,0,5,paid
o9,u1,2026-03-01T10:00:00Z,i1,beauty,b1,1,5,pending
o10,u1,2026-03-01T10:00:00Z,i1,beauty,b1,1,5,paid,extra
o1,u1,2026-03-01T10:00:00+08:00,i1,beauty,b1,2,99.50,paid
o11,u1,2026-03-01T10:00:00Z,i1,beauty,b1,1,5,paid
o11,u1,2026-03-01T10:00:00Z,i1,beauty,b1,1,6,paid
o5,u1,2026-03-01T11:00:00Z,i1,beauty,b1,1,5,paid
"""

EVENTS = "\n".join(
    [
        '{"event_id": "e1", "user_id": "u1", "ts": "2026-03-01T10:00:00+08:00", "action": "view", "item_id": 123}',
        '{"event_id": "e2", "user_id": "u2", "ts": "2026-03-01 08:00:00", "action": "purchase"}',
        '{"event_id": "e3", "user_id": "u1", "ts": "2026-03-01 08:00:00"}',
        '{"event_id": "e4", "user_id": "u1", "ts": "2026-03-01 08:00:00", "action": "teleport"}',
        '{"event_id": "e5", "user_id": "u1", "ts": "1 March", "action": "view"}',
        "[1, 2, 3]",
        '{"event_id": "e7", "user_id": ',
        '{"event_id": "e1", "user_id": "u1", "ts": "2026-03-01T10:00:00+08:00", "action": "view", "item_id": 123}',
        '{"event_id": "e8", "user_id": "u1", "ts": "2026-03-01 08:00:00", "action": "cart"}',
        '{"event_id": "e8", "user_id": "u1", "ts": "2026-03-01 08:00:00", "action": "favorite"}',
    ]
) + "\n"

IMPRESSIONS = """impression_id,user_id,ts,ad_id,campaign_id,channel,ad_position,device_type,cost,clicked
m1,u1,2026-03-01T10:00:00Z,a1,c1,feed,top,ios,0.35,1
m2,u2,2026-03-01T10:00:00Z,a1,c1,feed,top,ios,,0
m3,u1,2026-03-01T10:00:00Z,a1,c1,feed,top,ios,0.35,yes
m4,u1,2026-03-01T10:00:00Z,a1,c1,feed,top,ios,-1,0
m5,u1,2026-03-01T10:00:00Z,a1,c1,feed,top,ios,abc,0
m6,u1,2026-03-01T10:00:00Z,a1,c1,feed,top,ios,0.35,
m7,u1,2026/03/01,a1,c1,feed,top,ios,0.35,0
m8,u1,2026-03-01T10:00:00Z,a1,c1
m1,u1,2026-03-01T10:00:00Z,a1,c1,feed,top,ios,0.35,1
m9,u1,2026-03-01T10:00:00Z,a1,c1,feed,top,ios,0.35,0
m9,u1,2026-03-01T10:00:00Z,a1,c1,feed,top,ios,0.35,1
"""


def _lake_settings(settings, root: Path):
    return settings.model_copy(update={"lake": settings.lake.model_copy(update={"root": root})})


def _write(path: Path, text: str) -> None:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def defects(settings, spark, tmp_path_factory):
    """One ingest run over the folder with every defect; shared by the tests that only read it."""
    base = tmp_path_factory.mktemp("ingest-defects")
    folder = base / "input"
    folder.mkdir()
    _write(folder / "users.csv", USERS)
    _write(folder / "orders.csv", ORDERS)
    _write(folder / "events.jsonl", EVENTS)
    _write(folder / "impressions.csv.gz", IMPRESSIONS)
    (folder / "_truth").mkdir()
    _write(folder / "_truth" / "labels.csv", "user_id\nu1\n")  # ignored
    s = _lake_settings(settings, base / "lake")
    steps: list[tuple[str, float]] = []
    report = ingest.main(s, folder, report_path=base / "out" / "report.json", run_id="run-defects",
                         progress=lambda step, frac: steps.append((step, frac)))
    return {"settings": s, "report": report, "base": base, "steps": steps}


def test_every_defect_lands_in_its_reconciliation_bucket(defects):
    files = defects["report"]["files"]
    users, orders, events, impressions = (files[n] for n in ("users", "orders", "events", "impressions"))

    assert (users["rows_read"], users["accepted"], users["duplicates_dropped"]) == (13, 7, 1)
    assert users["quarantined"] == {
        "malformed_record": 1, "missing_required": 1, "bad_timestamp": 1, "conflicting_duplicate": 2,
    }
    assert users["field_issues"] == {
        "gender": 1, "birth_date": 1, "phone": 1, "id_number": 1, "opt_in_sms": 1,
    }

    assert (orders["rows_read"], orders["accepted"], orders["duplicates_dropped"]) == (14, 4, 1)
    assert orders["quarantined"] == {
        "malformed_record": 1, "missing_required": 1, "bad_timestamp": 1, "bad_number": 1,
        "negative_amount": 1, "bad_quantity": 1, "bad_status": 1, "conflicting_duplicate": 2,
    }
    assert orders["unknown_users"] == 1
    assert orders["field_issues"] == {}

    assert (events["rows_read"], events["accepted"], events["duplicates_dropped"]) == (10, 2, 1)
    assert events["quarantined"] == {
        "malformed_record": 2, "missing_required": 1, "bad_timestamp": 1, "unknown_action": 1,
        "conflicting_duplicate": 2,
    }

    assert impressions["file"] == "impressions.csv.gz"
    assert (impressions["rows_read"], impressions["accepted"], impressions["duplicates_dropped"]) == (11, 2, 1)
    assert impressions["quarantined"] == {
        "malformed_record": 1, "missing_required": 1, "bad_timestamp": 1, "bad_number": 1,
        "negative_cost": 1, "bad_flag": 1, "conflicting_duplicate": 2,
    }
    totals = defects["report"]["totals"]
    assert totals["rows_read"] == 48 and totals["accepted"] == 15 and totals["quarantined"] == 29

    # The same report is in the lake (per run and latest) and at report_path.
    lake = open_lake(defects["settings"])
    assert lake.read_json(Zone.REPORTS, "ingest", "run-defects.json") == defects["report"]
    assert lake.read_json(Zone.REPORTS, "ingest", "latest.json")["run_id"] == "run-defects"
    assert json.loads((defects["base"] / "out" / "report.json").read_text())["files"]["orders"]["accepted"] == 4
    assert defects["steps"][-1] == ("done", 1.0)
    text = ingest.format_report(defects["report"])
    assert "orders" in text and "read 14 = accepted 4 + quarantined 9 + duplicates dropped 1" in text


def test_quarantine_reasons_details_and_line_numbers(defects, spark):
    lake = open_lake(defects["settings"])
    rows = spark.read.parquet(lake.uri(Zone.QUARANTINE, "orders", "run=run-defects")).collect()
    by_line = {r.line_number: (r.reason, r.detail) for r in rows}
    # Line 1 is the header, line 6 is blank: line numbers are physical lines of the file.
    assert by_line == {
        5: ("missing_required", "user_id"),
        7: ("bad_timestamp", "order_time"),
        8: ("bad_number", "amount"),
        9: ("negative_amount", "amount"),
        10: ("bad_quantity", "quantity"),
        11: ("bad_status", "status"),
        12: ("malformed_record", "expected 9 fields, got 10"),
        14: ("conflicting_duplicate", "order_id"),
        15: ("conflicting_duplicate", "order_id"),
    }
    assert {r.source_file for r in rows} == {str(defects["base"] / "input" / "orders.csv")}
    # The record is the original line.
    assert any(r.record == "o9,u1,2026-03-01T10:00:00Z,i1,beauty,b1,1,5,pending" for r in rows)


def test_raw_zone_is_typed_and_bad_optional_fields_are_emptied(defects, spark):
    lake = open_lake(defects["settings"])
    users = {r.user_id: r for r in spark.read.parquet(lake.uri(Zone.RAW, "users")).collect()}
    assert sorted(users) == ["u1", "u2", "u3", "u4", "u5", "u6", "u7"]
    assert "phone" not in users["u1"] and "id_number" not in users["u1"]
    assert users["u1"].phone_masked == "138****5678" and users["u1"].has_id_number is True
    assert str(users["u1"].dt) == "2026-01-05" and users["u1"].city is None
    assert (users["u1"].opt_in_sms, users["u1"].opt_in_push, users["u1"].opt_in_email) == (True, False, True)
    assert users["u2"].dt == ingest.UNKNOWN_DT and users["u2"].opt_in_sms is False
    assert users["u3"].phone_masked is None
    assert users["u4"].has_id_number is False
    # The ID number is stored encrypted, bound to the user: it decrypts for u1 and for no one else.
    ring = load_keyring(defects["settings"].privacy)
    assert users["u1"].id_number_enc.startswith(f"v1.{ring.active_key_id}.")
    assert ring.decrypt(users["u1"].id_number_enc, "u1") == ID_U1
    with pytest.raises(InvalidArgument):
        ring.decrypt(users["u1"].id_number_enc, "u2")
    assert users["u2"].id_number_enc is None and users["u4"].id_number_enc is None
    assert users["u5"].gender is None and users["u6"].birth_date is None
    assert users["u7"].opt_in_sms is False and users["u7"].opt_in_push is True
    assert {r._ingest_run for r in users.values()} == {"run-defects"}

    orders = spark.read.parquet(lake.uri(Zone.RAW, "orders"))
    got = {
        r.order_id: r
        for r in orders.select("*", F.unix_seconds("order_time").alias("epoch")).collect()
    }
    assert sorted(got) == ["o1", "o2", "o3", "o5"]
    assert got["o5"].order_time is not None and got["o5"].amount == 5.0
    # 07:00 in Shanghai is 23:00 UTC the day before: partitions are UTC dates.
    assert got["o2"].epoch == int(datetime(2026, 3, 1, 23, 0, tzinfo=UTC).timestamp())
    assert str(got["o2"].dt) == "2026-03-01"
    assert (got["o2"].quantity, got["o2"].status) == (1, "paid")
    assert (got["o1"].quantity, got["o1"].amount) == (2, 99.5)
    events = {r.event_id: r for r in spark.read.parquet(lake.uri(Zone.RAW, "events")).collect()}
    assert events["e1"].item_id == "123"  # a JSON number in a string field is kept as its text
    imps = {r.impression_id: r for r in spark.read.parquet(lake.uri(Zone.RAW, "impressions")).collect()}
    assert (imps["m1"].clicked, imps["m1"].cost, imps["m2"].clicked, imps["m2"].cost) == (True, 0.35, False, None)


def test_no_raw_phone_or_id_number_is_written_anywhere(defects):
    root = defects["base"]
    written = [p for p in (root / "lake").rglob("*") if p.is_file()] + [root / "out" / "report.json"]
    decoded_text = []
    for path in written:
        data = path.read_bytes()
        for secret in PLANTED:
            assert secret.encode() not in data, f"{secret} found in {path}"
        if path.suffix == ".parquet":
            decoded_text.append(pq.read_table(path).to_pandas().to_csv())
    # Parquet pages are compressed: scan the decoded values too.
    text = "\n".join(decoded_text)
    for secret in PLANTED:
        assert secret not in text
    # The scan sees real content: masked forms are there.
    assert "138****5678" in text and "139****0000" in text


def test_parse_timestamp_gives_exact_utc_instants(spark):
    cases = [
        ("2026-03-01T10:00:00+08:00", "Asia/Shanghai", datetime(2026, 3, 1, 2, 0, tzinfo=UTC)),
        ("2026-03-01T02:00:00Z", "Asia/Shanghai", datetime(2026, 3, 1, 2, 0, tzinfo=UTC)),
        ("2026-03-01T02:00:00.25-05:30", "Asia/Shanghai", datetime(2026, 3, 1, 7, 30, 0, 250000, tzinfo=UTC)),
        ("2026-03-01 10:00:00", "Asia/Shanghai", datetime(2026, 3, 1, 2, 0, tzinfo=UTC)),
        ("2026-07-01 10:00:00", "America/New_York", datetime(2026, 7, 1, 14, 0, tzinfo=UTC)),
        ("2026-01-15 10:00:00", "America/New_York", datetime(2026, 1, 15, 15, 0, tzinfo=UTC)),
        (" 1772330400123 ", "Asia/Shanghai", datetime(2026, 3, 1, 2, 0, 0, 123000, tzinfo=UTC)),
        ("garbage", "Asia/Shanghai", None),
        ("2026-02-30 10:00:00", "Asia/Shanghai", None),
        ("2026-03-01T10:00:00", "Asia/Shanghai", None),  # ISO without an offset is not accepted
        ("2026-03-01", "Asia/Shanghai", None),
        ("177233040012", "Asia/Shanghai", None),  # 12 digits
        (None, "Asia/Shanghai", None),
    ]
    for text, tz, expected in cases:
        df = spark.createDataFrame([(text,)], "s string")
        got = df.select(F.unix_micros(ingest.parse_timestamp(F.col("s"), tz)).alias("us")).first().us
        want = None if expected is None else round(expected.timestamp() * 1_000_000)
        assert got == want, f"{text!r} in {tz}: {got} != {want}"


def test_redact_masks_phone_and_id_runs(spark):
    line = f"u9,{PHONE_U1},+86{PHONE_U8},{ID_U1},{ID_U9},1772330400000,o123"
    expected = "u9,138****5678,+86139****0000,******************,******************,1772330400000,o123"
    assert ingest.redact_text(line) == expected
    got = spark.createDataFrame([(line,)], "s string").select(ingest.redact(F.col("s")).alias("r")).first().r
    assert got == expected


def test_reingesting_the_same_folder_is_idempotent(settings, spark, data_dir, tmp_path):
    _write(data_dir / "orders.csv", ORDERS)
    _write(data_dir / "users.csv", USERS)
    s = _lake_settings(settings, tmp_path / "lake")
    lake = open_lake(s)
    first = ingest.main(s, data_dir, run_id="run-a")
    counts_a = {n: spark.read.parquet(lake.uri(Zone.RAW, n)).count() for n in ("orders", "users")}
    second = ingest.main(s, data_dir, run_id="run-b")
    raw = {n: spark.read.parquet(lake.uri(Zone.RAW, n)) for n in ("orders", "users")}
    counts_b = {n: df.count() for n, df in raw.items()}
    assert counts_a == counts_b == {"orders": first["files"]["orders"]["accepted"], "users": 7}
    assert second["files"]["orders"]["accepted"] == 4
    assert {r._ingest_run for r in raw["orders"].select("_ingest_run").distinct().collect()} == {"run-b"}
    assert second["files"]["events"]["skipped"] is True
    assert sorted(lake.list_dir(Zone.QUARANTINE, "orders")) == ["run=run-a", "run=run-b"]


def test_missing_orders_file_is_a_contract_error(settings, data_dir, tmp_path):
    _write(data_dir / "users.csv", USERS)
    with pytest.raises(DataContractError, match=r"orders\.csv"):
        ingest.main(_lake_settings(settings, tmp_path / "lake"), data_dir)
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize(
    ("header", "column"),
    [
        ("order_id,user_id,order_time,item_id,category,brand,quantity,status", "amount"),
        ("order_id,user_id,order_time,amount,coupon", "coupon"),
    ],
)
def test_bad_header_is_a_contract_error_naming_the_column(settings, data_dir, tmp_path, header, column):
    _write(data_dir / "orders.csv", header + "\n")
    with pytest.raises(DataContractError, match=column) as err:
        ingest.main(_lake_settings(settings, tmp_path / "lake"), data_dir)
    assert "orders.csv" in str(err.value) and err.value.field == f"orders.{column}"


def test_headerless_file_error_does_not_echo_personal_data(settings, data_dir, tmp_path, caplog):
    _write(data_dir / "orders.csv", ORDERS)
    _write(data_dir / "users.csv", f"u1,{PHONE_U1},F\n")
    with caplog.at_level(logging.DEBUG), pytest.raises(DataContractError, match="unknown column") as err:
        ingest.main(_lake_settings(settings, tmp_path / "lake"), data_dir)
    assert PHONE_U1 not in str(err.value) and PHONE_U1 not in caplog.text


def test_gzipped_files_are_read(settings, spark, data_dir, tmp_path):
    _write(data_dir / "orders.csv.gz", ORDERS)
    _write(data_dir / "events.jsonl.gz", EVENTS)
    s = _lake_settings(settings, tmp_path / "lake")
    report = ingest.main(s, data_dir, run_id="run-gz")
    assert report["files"]["orders"]["file"] == "orders.csv.gz"
    assert (report["files"]["orders"]["accepted"], report["files"]["events"]["accepted"]) == (4, 2)
    assert report["files"]["users"]["skipped"] is True and report["files"]["orders"]["unknown_users"] is None
    assert spark.read.parquet(open_lake(s).uri(Zone.RAW, "orders")).count() == 4


def test_line_numbers_count_across_input_partitions(spark):
    """The pure transforms composed by hand, on lines spread over three partitions."""
    ds = dataset("orders")
    header = ORDERS.splitlines()[0]
    body = [f"o{i},u1,2026-03-01T10:00:00Z,i1,c,b,1,5,paid" for i in range(2, 31)]
    body[20] = "o22,u1,2026-03-01T10:00:00Z,i1,c,b,1,-1,paid"  # physical line 22
    body[27] = "o29,u1,2026-03-01T10:00:00Z,i1,c,b,1,5,lost"  # physical line 29
    lines = spark.sparkContext.parallelize([(line,) for line in [header, *body]], 3).toDF("value string")
    resolved = ingest.resolve_duplicates(
        ingest.classify(ingest.parse_lines(lines, ds, header.split(",")), ds, "Asia/Shanghai"), ds
    ).cache()
    counts = ingest.reconcile(resolved, ds, header).collect()
    assert len(counts) == 3 and sum(r.rows_read for r in counts) == 29
    offsets, before = {}, 0
    for r in sorted(counts, key=lambda r: r._pid):
        offsets[r._pid], before = before, before + r.lines
    got = {
        (r.line_number, r.reason)
        for r in ingest.quarantine_rows(resolved, "orders.csv", offsets).collect()
    }
    resolved.unpersist()
    assert got == {(22, "negative_amount"), (29, "bad_status")}


def test_the_contract_document_lists_every_reason_code():
    from cluster.core.contract import REASONS

    doc = (Path(__file__).resolve().parents[3] / "docs" / "data-contract.md").read_text(encoding="utf-8")
    for reason in REASONS:
        assert f"| `{reason.code}` |" in doc, f"{reason.code} missing from the reason table"


def test_user_ids_the_api_cannot_take_are_quarantined_as_bad_id(settings, spark, data_dir, tmp_path):
    """A user id over MAX_USER_ID_LENGTH or with a control character is bad_id in every file: the
    lake never holds a user the API would refuse (serve.max_user_id_length defaults to the same)."""
    from cluster.core.contract import MAX_USER_ID_LENGTH
    from cluster.core.settings import load_settings

    longest, too_long = "u" * MAX_USER_ID_LENGTH, "v" * (MAX_USER_ID_LENGTH + 1)
    _write(data_dir / "orders.csv", "order_id,user_id,order_time,amount\n"
           f"o1,{longest},2026-03-01 10:00:00,5\n"
           f"o2,{too_long},not a time,5\n"
           "o3,u\x01x,2026-03-01 10:00:00,5\n")
    _write(data_dir / "events.jsonl", json.dumps({"event_id": "e1", "user_id": "a\u0007b", "ts": "2026-03-01 10:00:00",
                                                  "action": "view"}) + "\n")
    report = ingest.main(_lake_settings(settings, tmp_path / "lake"), data_dir, run_id="run-ids")
    assert report["files"]["orders"]["accepted"] == 1
    assert report["files"]["orders"]["quarantined"] == {"bad_id": 2}  # before bad_timestamp
    assert report["files"]["events"]["quarantined"] == {"bad_id": 1}
    assert load_settings("embedded").serve.max_user_id_length == MAX_USER_ID_LENGTH
