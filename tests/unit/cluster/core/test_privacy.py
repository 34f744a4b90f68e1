"""Personal data: masking, AES-GCM tokens and key rotation, key sources, age bands, and an end-to-end
scan proving no raw phone number, ID number or key reaches the lake, the profile store or the logs."""

from __future__ import annotations

import base64
import csv
import gzip
import os
import pickle
import shutil
import sqlite3
import stat
import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.core.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound
from cluster.core.privacy import (
    AGE_BANDS,
    ID_NUMBER_COLUMN,
    KeyRing,
    age_band,
    age_band_column,
    generate_key,
    init_key_file,
    load_key_file,
    load_keyring,
    mask_phone,
    reveal_id_numbers,
)
from cluster.core.settings import PrivacySettings, load_settings
from tests.pii_scan import PiiScanner, input_personal_values

REPO = Path(__file__).resolve().parents[4]
ID_A = "11010119900307123X"
ID_B = "110101198506061234"


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture()
def k1() -> bytes:
    return generate_key()


@pytest.fixture()
def k2() -> bytes:
    return generate_key()


# --- phone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("13812345678", "138****5678"),
        (" 19912345678 ", "199****5678"),
        ("1381234567", None),  # 10 digits: dropped, never half-masked
        ("12812345678", None),  # no mobile prefix 12x
        ("1381234567a", None),
        ("", None),
        (None, None),
    ],
)
def test_mask_phone(phone, masked):
    assert mask_phone(phone) == masked


# --- tokens --------------------------------------------------------------------------------


def test_round_trip_and_token_format(k1):
    ring = KeyRing([("k1", k1)])
    token = ring.encrypt(ID_A, "u000001")
    version, key_id, body = token.split(".")
    assert (version, key_id) == ("v1", "k1")
    blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert len(blob) == 12 + len(ID_A) + 16  # nonce | ciphertext | tag
    assert ID_A not in token
    assert ring.decrypt(token, "u000001") == ID_A
    # A random nonce per call: the same number gives a new token every time.
    assert ring.encrypt(ID_A, "u000001") != token
    assert ring.decrypt(ring.encrypt("身份证 ✓", "u2"), "u2") == "身份证 ✓"


def test_wrong_associated_data_fails(k1):
    ring = KeyRing([("k1", k1)])
    token = ring.encrypt(ID_A, "u000001")
    with pytest.raises(InvalidArgument, match="does not authenticate"):
        ring.decrypt(token, "u000002")  # moved to another user


def test_tampered_tokens_fail(k1, k2):
    ring = KeyRing([("k1", k1), ("k2", k2)])
    token = ring.encrypt(ID_A, "u1")
    head, body = token.rsplit(".", 1)
    for i in (0, 12, len(body) // 2, len(body) - 2):  # nonce, ciphertext, tag
        flipped = body[:i] + ("A" if body[i] != "A" else "B") + body[i + 1:]
        with pytest.raises(InvalidArgument, match="does not authenticate"):
            ring.decrypt(f"{head}.{flipped}", "u1")
    with pytest.raises(InvalidArgument, match="does not authenticate"):
        ring.decrypt(token.replace("v1.k1.", "v1.k2."), "u1")  # relabelled with another key id
    for broken in (token[:20], token.replace("v1.", "v2.", 1), "", ID_A, f"{head}.{body}="):
        with pytest.raises(InvalidArgument, match="not a v1"):
            ring.decrypt(broken, "u1")


def test_rotation_old_keys_decrypt_new_tokens_use_the_active_key(k1, k2):
    old = KeyRing([("k1", k1)])
    t1 = old.encrypt(ID_A, "u1")
    rotated_ring = KeyRing([("k2", k2), ("k1", k1)])  # k2 added in front: it encrypts now
    assert rotated_ring.active_key_id == "k2"
    assert rotated_ring.decrypt(t1, "u1") == ID_A
    assert rotated_ring.encrypt(ID_B, "u2").startswith("v1.k2.")
    t2 = rotated_ring.rotate(t1, "u1")
    assert t2.startswith("v1.k2.") and rotated_ring.decrypt(t2, "u1") == ID_A
    assert rotated_ring.rotate(t2, "u1") == t2  # already under the active key
    with pytest.raises(InvalidArgument):
        rotated_ring.rotate(t1, "u9")  # rotation authenticates too
    only_new = KeyRing([("k2", k2)])
    assert only_new.decrypt(t2, "u1") == ID_A
    with pytest.raises(FailedPrecondition, match="'k1'"):
        only_new.decrypt(t1, "u1")  # k1 retired: its tokens need it back
    assert KeyRing([("k2", k2), ("k1", k1)], active_key_id="k1").encrypt(ID_A, "u1").startswith("v1.k1.")


def test_encryption_ring_carries_only_the_active_key(k1, k2):
    ring = KeyRing([("k2", k2), ("k1", k1)])
    shipped = pickle.loads(pickle.dumps(ring.for_encryption()))
    assert shipped.key_ids == ("k2",)
    assert ring.decrypt(shipped.encrypt(ID_A, "u1"), "u1") == ID_A
    assert k1 not in pickle.dumps(ring.for_encryption())


def test_key_ring_refuses_bad_keys(k1):
    with pytest.raises(ValueError, match="32 bytes"):
        KeyRing([("k1", k1[:16])])
    with pytest.raises(ValueError, match="twice"):
        KeyRing([("k1", k1), ("k1", k1)])
    with pytest.raises(ValueError, match="key id"):
        KeyRing([("k.1", k1)])  # '.' separates the token's fields
    with pytest.raises(ValueError, match="not among"):
        KeyRing([("k1", k1)], active_key_id="k9")


# --- key sources ---------------------------------------------------------------------------


def _privacy(**fields) -> PrivacySettings:
    return PrivacySettings(**fields)


def test_keys_from_the_environment_first_one_encrypts(k1, k2, tmp_path):
    env = {"PMKT_PII_KEYS": f"k2:{_b64(k2)}, k1:{_b64(k1)}"}
    ring = load_keyring(_privacy(), env=env)
    assert ring.key_ids == ("k2", "k1") and ring.active_key_id == "k2"
    assert ring.decrypt(KeyRing([("k1", k1)]).encrypt(ID_A, "u1"), "u1") == ID_A
    # The variable wins over a key file; active_key_id picks another key.
    key_file = tmp_path / "pii.keys"
    init_key_file(key_file, key_id="kf")
    ring = load_keyring(_privacy(key_file=key_file, active_key_id="k1"), env=env)
    assert ring.key_ids == ("k2", "k1") and ring.active_key_id == "k1"
    # Base64url keys are accepted too.
    url = base64.urlsafe_b64encode(k1).decode()
    assert load_keyring(_privacy(key_env="MY_KEYS"), env={"MY_KEYS": f"k1:{url}"}).key_ids == ("k1",)


def test_key_file_is_created_once_with_mode_0600(tmp_path):
    key_file = tmp_path / "keys" / "pii.keys"
    settings = _privacy(key_file=key_file, create_key_file=True)
    ring = load_keyring(settings, env={})
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert ring.key_ids == ("k1",)
    token = ring.encrypt(ID_A, "u1")
    before = key_file.read_bytes()
    assert init_key_file(key_file) is False  # idempotent: never replaces a key
    assert load_keyring(settings, env={}).decrypt(token, "u1") == ID_A
    assert key_file.read_bytes() == before
    assert [p.name for p in key_file.parent.iterdir()] == ["pii.keys"]  # no temporary file left


def test_group_or_world_readable_key_file_is_refused(tmp_path):
    key_file = tmp_path / "pii.keys"
    init_key_file(key_file)
    for mode in (0o644, 0o640, 0o604):
        key_file.chmod(mode)
        with pytest.raises(ConfigError, match=f"mode 0{mode:o}.*chmod 600") as err:
            load_keyring(_privacy(key_file=key_file), env={})
        assert err.value.field == "privacy.key_file"
    key_file.chmod(0o400)
    assert load_keyring(_privacy(key_file=key_file), env={}).key_ids == ("k1",)


def test_missing_key_is_a_config_error_naming_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="PMKT_PII_KEYS.*privacy.key_file") as err:
        load_keyring(_privacy(), env={})
    assert err.value.field == "privacy.key_file"
    absent = tmp_path / "absent.keys"
    with pytest.raises(ConfigError, match="does not exist.*pmkt privacy init-key"):
        load_keyring(_privacy(key_file=absent, create_key_file=True), env={}, create=False)
    assert not absent.exists()
    with pytest.raises(ConfigError, match="active_key_id") as err:
        load_keyring(_privacy(active_key_id="k9"), env={"PMKT_PII_KEYS": f"k1:{_b64(generate_key())}"})
    assert err.value.field == "privacy.active_key_id"


def test_keys_never_appear_in_repr_or_errors(k1, tmp_path, caplog):
    caplog.set_level("DEBUG")
    ring = KeyRing([("k1", k1)])
    texts = [repr(ring), str(ring), f"{ring}", repr([ring])]
    bad_entries = [
        f"k1:{_b64(k1)[:-4]}",  # 29 bytes
        f"k1:{_b64(k1)}!",  # not base64
        _b64(k1),  # no key id
        f"k 1:{_b64(k1)}",  # bad key id
        f"k1:{_b64(k1)},k1:{_b64(k1)}",  # twice
    ]
    for entry in bad_entries:
        with pytest.raises((ConfigError, ValueError)) as err:
            load_keyring(_privacy(), env={"PMKT_PII_KEYS": entry})
        texts += [str(err.value), repr(err.value), str(err.value.__cause__), str(err.value.__context__)]
    key_file = tmp_path / "pii.keys"
    key_file.write_text(f"# comment\nk1:{_b64(k1)[:-4]}\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigError) as err:
        load_key_file(key_file)
    texts.append(str(err.value))
    with pytest.raises(InvalidArgument) as err:
        ring.decrypt(ring.encrypt(ID_A, "u1"), "u2")
    texts += [str(err.value), repr(err.value)]
    load_keyring(_privacy(key_file=tmp_path / "new.keys", create_key_file=True), env={})
    texts.append(caplog.text)
    new_key = base64.b64decode((tmp_path / "new.keys").read_text().split(":")[-1])
    scanner = PiiScanner(secrets=[ID_A], keys=[k1, new_key])
    assert [h for t in texts for h in scanner.scan_text("message", t)] == []
    # ...and the scanner does see a key where there is one.
    assert scanner.scan_text("control", f"oops {_b64(k1)}")


# --- settings ------------------------------------------------------------------------------


def test_privacy_settings_in_the_profiles(tmp_path):
    embedded = load_settings("embedded", env={"PMKT_HOME": str(tmp_path)})
    assert embedded.privacy.key_file == (tmp_path / "var" / "keys" / "pii.keys").resolve()
    assert embedded.privacy.create_key_file is True and embedded.privacy.key_env == "PMKT_PII_KEYS"
    cluster = load_settings("cluster", env={})
    assert cluster.privacy.key_file is None and cluster.privacy.create_key_file is False
    relative = load_settings("cluster", env={"PMKT_PII_KEY_FILE": "conf/pii.keys"})
    assert relative.privacy.key_file == (Path.cwd() / "conf" / "pii.keys").resolve()
    with pytest.raises(ConfigError, match="create_key_file"):
        load_settings("cluster", env={"PMKT_PRIVACY__CREATE_KEY_FILE": "true"})
    with pytest.raises(ConfigError, match="privacy.key_env"):
        load_settings(env={"PMKT_PRIVACY__KEY_ENV": "not a name"})


# --- age bands -----------------------------------------------------------------------------

AS_OF = date(2026, 7, 1)
AGE_CASES = [
    (date(2008, 7, 2), "<18"),  # 18th birthday tomorrow
    (date(2008, 7, 1), "18-24"),  # 18 today
    (date(2001, 7, 2), "18-24"),  # 24, 25 tomorrow
    (date(2001, 7, 1), "25-34"),
    (date(1991, 7, 2), "25-34"),
    (date(1991, 7, 1), "35-44"),
    (date(1981, 7, 1), "45-54"),
    (date(1971, 7, 1), "55-64"),
    (date(1961, 7, 2), "55-64"),
    (date(1961, 7, 1), "65+"),
    (date(1926, 1, 1), "65+"),
    (date(2026, 7, 1), "<18"),  # born today
    (date(2026, 7, 2), None),  # after the as-of day
    (None, None),
]


@pytest.mark.parametrize(("birth", "band"), AGE_CASES)
def test_age_band_boundaries(birth, band):
    assert age_band(birth, AS_OF) == band


def test_age_band_of_a_leap_day_birthday():
    born = date(2008, 2, 29)
    assert age_band(born, date(2026, 2, 28)) == "<18"
    assert age_band(born, date(2026, 3, 1)) == "18-24"
    assert [label for _, label in AGE_BANDS] == ["<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"]


def test_age_band_column_matches_the_python_function(spark):
    from pyspark.sql import functions as F

    cases = [b for b, _ in AGE_CASES] + [date(2008, 2, 29), date(2000, 2, 29)]
    as_ofs = [AS_OF, date(2026, 2, 28), date(2026, 3, 1)]
    rows = [(b, a) for b in cases for a in as_ofs]
    df = spark.createDataFrame(rows, "birth date, as_of date")
    got = df.select("birth", "as_of", age_band_column(F.col("birth"), F.col("as_of")).alias("band")).collect()
    assert [(r.birth, r.as_of, r.band) for r in got] == [(b, a, age_band(b, a)) for b, a in rows]
    lit = df.select(age_band_column(F.col("birth"), AS_OF).alias("band")).collect()
    assert [r.band for r in lit] == [age_band(b, AS_OF) for b, _ in rows]


# --- ingest: a missing key, the landing copy ------------------------------------------------

TINY_USERS = f"user_id,phone,id_number,signup_time\nu1,13812345678,{ID_A},2026-01-05 09:30:00\n"
TINY_ORDERS = "order_id,user_id,order_time,amount\no1,u1,2026-03-01T10:00:00Z,5\n"


def _no_key(settings):
    return settings.model_copy(update={"privacy": PrivacySettings(key_env="PMKT_TEST_UNSET_KEYS")})


def test_ingest_without_a_key_fails_before_writing(settings, data_dir, tmp_path):
    from spark_jobs import ingest

    (data_dir / "users.csv").write_text(TINY_USERS)
    (data_dir / "orders.csv").write_text(TINY_ORDERS)
    s = _no_key(settings).model_copy(
        update={"lake": settings.lake.model_copy(update={"root": tmp_path / "lake"})}
    )
    with pytest.raises(ConfigError, match="PMKT_TEST_UNSET_KEYS") as err:
        ingest.main(s, data_dir)
    assert err.value.field == "privacy.key_file"
    assert not (tmp_path / "lake").exists()


def test_staged_users_file_is_removed_from_landing(settings, spark, data_dir, tmp_path, monkeypatch):
    """A distributed lake copies inputs to landing/<run_id>/; the users file must not stay there."""
    from cluster.core.storage import LocalLake, Zone
    from spark_jobs import ingest

    class StagingLake(LocalLake):  # stages like HdfsLake, on local disk
        def stage_input(self, local_file, run_id):
            target = self._path(Zone.LANDING, run_id, Path(local_file).name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local_file, target)
            return self.uri(Zone.LANDING, run_id, Path(local_file).name)

    (data_dir / "users.csv").write_text(TINY_USERS)
    (data_dir / "orders.csv").write_text(TINY_ORDERS)
    lake = StagingLake(tmp_path / "lake")
    monkeypatch.setattr(ingest, "open_lake", lambda _s: lake)
    s = settings.model_copy(update={"lake": settings.lake.model_copy(update={"root": tmp_path / "lake"})})
    report = ingest.main(s, data_dir, run_id="run-landing")
    assert report["files"]["users"]["accepted"] == 1
    assert lake.list_dir(Zone.LANDING, "run-landing") == ["orders.csv"]
    assert PiiScanner(["13812345678", ID_A]).scan_tree(tmp_path / "lake") == []


# --- end to end: generate, ingest, RFM, then scan everything --------------------------------

# The CLI's own code path, one process (one JVM), Python logging at DEBUG.
_DRIVER = (
    "import sys; from cluster.cli import main; "
    "sys.exit(main(['-vv', 'ingest', sys.argv[1]]) or main(['-vv', 'features', 'rfm']))"
)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from cluster.datagen import generate

    base = tmp_path_factory.mktemp("pii-scan")
    home, data = base / "home", base / "input"
    generate(data, users=300, days=14, seed=11)
    env = {
        **os.environ,
        "PMKT_HOME": str(home),
        "PMKT_SPARK__LOG_LEVEL": "INFO",  # Spark's own logs too, not only errors
        "PMKT_SPARK__SHUFFLE_PARTITIONS": "2",
        "PMKT_SPARK__DRIVER_MEMORY": "1g",
    }
    for name in ("PMKT_SETTINGS", "PMKT_PROFILE", "PMKT_PII_KEYS"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(data)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = load_settings("embedded", env={"PMKT_HOME": str(home)})
    key_file = settings.privacy.key_file
    keys = [base64.b64decode(line.split(":", 1)[1]) for line in key_file.read_text().splitlines()
            if line and not line.startswith("#")]
    return {
        "base": base, "home": home, "data": data, "settings": settings, "keys": keys,
        "logs": proc.stdout + "\n" + proc.stderr,
        "phones": input_personal_values(data / "users.csv", ["phone"]),
        "ids": input_personal_values(data / "users.csv", ["id_number"]),
        "secrets": input_personal_values(data / "users.csv"),
    }


def _users_lines(data: Path) -> tuple[list[str], list[list[str]]]:
    lines = (data / "users.csv").read_text(encoding="utf-8").splitlines()
    return lines, list(csv.reader(lines))


def _raw_users(lake_root: Path) -> list[dict]:
    return [row for part in sorted((lake_root / "raw" / "users").rglob("*.parquet"))
            for row in pq.read_table(part).to_pylist()]


def test_generated_input_has_personal_data_to_find(pipeline):
    assert len(pipeline["phones"]) > 150 and len(pipeline["ids"]) > 100
    assert pipeline["secrets"] == pipeline["phones"] | pipeline["ids"]
    assert "DEBUG" in pipeline["logs"] and "INFO" in pipeline["logs"]  # the logs were verbose
    assert len(pipeline["keys"]) == 1


def test_raw_users_hold_tokens_that_decrypt_to_the_delivered_id_numbers(pipeline):
    _, rows = _users_lines(pipeline["data"])
    header = rows[0]
    delivered = {}
    for fields in rows[1:]:
        if len(fields) == len(header):
            rec = dict(zip(header, fields))
            delivered.setdefault(rec["user_id"], rec)
    ring = load_keyring(pipeline["settings"].privacy, env={}, create=False)
    raw = _raw_users(pipeline["settings"].lake.root)
    assert len(raw) >= 290
    with_id = 0
    for row in raw:
        rec = delivered[row["user_id"]]
        valid_id = len(rec["id_number"]) == 18 and rec["id_number"][:17].isdigit()
        assert row["has_id_number"] is valid_id
        if valid_id:
            with_id += 1
            assert row[ID_NUMBER_COLUMN].startswith(f"v1.{ring.active_key_id}.")
            assert ring.decrypt(row[ID_NUMBER_COLUMN], row["user_id"]) == rec["id_number"].upper()
        else:
            assert row[ID_NUMBER_COLUMN] is None
        assert row["phone_masked"] == mask_phone(rec["phone"])
    assert with_id > 100


def test_quarantined_users_records_mask_phone_and_id_number(pipeline):
    lines, _ = _users_lines(pipeline["data"])
    root = pipeline["settings"].lake.root
    records = [r for part in (root / "quarantine" / "users").rglob("*.parquet")
               for r in pq.read_table(part).to_pylist()]
    reasons = {r["reason"] for r in records}
    assert {"malformed_record", "missing_required", "bad_timestamp", "conflicting_duplicate"} <= reasons
    checked = {"phones": 0, "ids": 0}
    for r in records:
        original = lines[r["line_number"] - 1]
        for kind in checked:
            for secret in pipeline[kind]:
                if secret in original:
                    assert secret not in r["record"]
                    # A valid phone keeps its outline (138****5678); anything else is starred out.
                    masked = (mask_phone(secret) if kind == "phones" else None) or "****"
                    assert masked in r["record"]
                    checked[kind] += 1
    # A malformed line among them, and both kinds of personal data were there to be masked.
    assert any(r["reason"] == "malformed_record" for r in records)
    assert checked["phones"] >= 3 and checked["ids"] >= 2, checked


def test_no_raw_phone_id_number_or_key_in_lake_store_or_logs(pipeline):
    settings = pipeline["settings"]
    scanner = PiiScanner(pipeline["secrets"], keys=pipeline["keys"])
    lake_root = settings.lake.root
    files = [p for p in lake_root.rglob("*") if p.is_file()]
    assert any("/raw/users/" in str(p) for p in files) and any("/quarantine/users/" in str(p) for p in files)
    assert any("/features/" in str(p) for p in files) and any("/reports/ingest/" in str(p) for p in files)
    store = settings.profile_store.sqlite_path
    assert store.is_file()
    hits = scanner.scan_tree(lake_root)
    for path in sorted(store.parent.glob(store.name + "*")):  # the database, its -wal and -shm
        hits += scanner.scan_file(path)
    hits += scanner.scan_text("captured logs", pipeline["logs"])
    assert hits == []


def test_the_scan_finds_planted_secrets(pipeline, tmp_path):
    """The scanner is not blind: plant raw values where the real scan looked, in each encoding."""
    phone, id_number = sorted(pipeline["phones"])[0], sorted(pipeline["ids"])[0]
    key = pipeline["keys"][0]
    scanner = PiiScanner(pipeline["secrets"], keys=[key])
    copy = tmp_path / "lake"
    shutil.copytree(pipeline["settings"].lake.root, copy)
    control = copy / "raw" / "users" / "dt=control"
    control.mkdir()
    pq.write_table(pa.table({"note": ["x", f"call {phone}"]}), control / "part-0.snappy.parquet",
                   compression="snappy")
    (copy / "reports" / "control.json.gz").write_bytes(gzip.compress(f'{{"id": "{id_number}"}}'.encode()))
    db = tmp_path / "store.sqlite"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE profiles (user_id TEXT, value BLOB)")
        conn.execute("INSERT INTO profiles VALUES (?, ?)", ("u1", id_number.encode()))
    conn.close()
    hits = scanner.scan_tree(copy)
    assert {Path(h.where.split(" (")[0]).name for h in hits} == {"part-0.snappy.parquet", "control.json.gz"}
    assert {h.where.rsplit(" (", 1)[-1] for h in hits if "(" in h.where} >= {"parquet values)", "gunzipped)"}
    assert scanner.scan_file(db)
    # A key in the logs, plainly or pickled into a blob as py4j logs its commands.
    blob = base64.b64encode(pickle.dumps({"closure": ("k1", key)})).decode()
    assert scanner.scan_text("logs", pipeline["logs"] + f"\nCommand to send: j{blob}\n")
    assert scanner.scan_text("logs", key.hex())
    assert all(phone not in h.what and id_number not in h.what for h in hits)  # hits never repeat the secret


def test_privacy_cli_init_key_and_reveal_id(pipeline, tmp_path, monkeypatch, capsys):
    from cluster.cli import main

    # init-key: creates once, mode 0600, never prints the key.
    monkeypatch.setenv("PMKT_HOME", str(tmp_path))
    monkeypatch.delenv("PMKT_PII_KEYS", raising=False)
    assert main(["privacy", "init-key"]) == 0
    key_file = tmp_path / "var" / "keys" / "pii.keys"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = key_file.read_text()
    assert main(["privacy", "init-key"]) == 0 and key_file.read_text() == first
    out = capsys.readouterr()
    assert "created" in out.out and "left unchanged" in out.out
    new_key = base64.b64decode(first.strip().splitlines()[-1].split(":", 1)[1])
    assert PiiScanner([], keys=[new_key]).scan_text("cli", out.out + out.err) == []

    # reveal-id on the pipeline's lake: prints the ID number and leaves an audit record.
    monkeypatch.setenv("PMKT_HOME", str(pipeline["home"]))
    raw = _raw_users(pipeline["settings"].lake.root)
    user = next(r for r in raw if r[ID_NUMBER_COLUMN])
    expected = load_keyring(pipeline["settings"].privacy, env={}).decrypt(user[ID_NUMBER_COLUMN], user["user_id"])
    assert main(["privacy", "reveal-id", user["user_id"], "--reason", "DSAR-2026-001"]) == 0
    assert capsys.readouterr().out.strip() == expected
    audit = pipeline["settings"].lake.root / "reports" / "privacy" / "reveal"
    records = [p.read_text() for p in audit.glob("*.json")]
    assert any("DSAR-2026-001" in r and user["user_id"] in r and expected not in r for r in records)
    no_id = next(r for r in raw if not r[ID_NUMBER_COLUMN])
    assert main(["privacy", "reveal-id", no_id["user_id"], "--reason", "DSAR-2"]) == 2
    assert main(["privacy", "reveal-id", "no-such-user", "--reason", "DSAR-3"]) == 2
    assert main(["privacy", "reveal-id", user["user_id"]]) != 0  # --reason is required
    with pytest.raises(NotFound):
        reveal_id_numbers(pipeline["settings"], "no-such-user", "DSAR-4")
    with pytest.raises(InvalidArgument):
        reveal_id_numbers(pipeline["settings"], user["user_id"], "  ")


def test_reveal_id_refuses_a_forgotten_user_and_audits_the_refusal(pipeline):
    from cluster.core.errors import FailedPrecondition
    from cluster.core.storage import open_lake
    from cluster.core.tombstones import Tombstones

    settings = pipeline["settings"]
    user = [r for r in _raw_users(settings.lake.root) if r[ID_NUMBER_COLUMN]][-1]
    assert reveal_id_numbers(settings, user["user_id"], "DSAR-before")  # revealed while not forgotten
    lake = open_lake(settings)
    tombstones = Tombstones(lake)
    tombstones.add(user["user_id"], "DSAR-erasure")
    try:
        with pytest.raises(FailedPrecondition, match="forgotten"):
            reveal_id_numbers(settings, user["user_id"], "DSAR-after")
        audit = settings.lake.root / "reports" / "privacy" / "reveal"
        assert any("DSAR-after" in p.read_text() and "refused: user forgotten" in p.read_text()
                   for p in audit.glob("*.json"))
    finally:  # the pipeline fixture is shared: leave the user as the other tests expect
        from cluster.core.catalog import TOMBSTONES

        for name in TOMBSTONES.list_dir(lake):
            if TOMBSTONES.read_json(lake, name)["user_id"] == user["user_id"]:
                TOMBSTONES.delete(lake, name)
    assert not Tombstones(lake).is_forgotten(user["user_id"])
