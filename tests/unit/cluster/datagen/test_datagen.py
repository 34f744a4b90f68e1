"""The synthetic data generator: contract shape, exact defect accounting, planted structure.

The defect accounting is checked by an independent reference reader written here from the
contract rules (not from the generator's code): it reads the files as ingest would and
its reconciliation must equal the manifest's ``expected``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cluster.core.contract import ACTIONS, DATASETS, GENDERS, ORDER_STATUSES, dataset
from cluster.datagen import TRUTH_DIR, GenerationSummary, generate, id_check_digit

END = date(2026, 6, 30)
SHANGHAI = timezone(timedelta(hours=8))
LOCAL_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)$")
EPOCH_MS_RE = re.compile(r"^\d{12,13}$")
TIME_COLUMNS = {"users": ("signup_time",), "orders": ("order_time",), "events": ("ts",), "impressions": ("ts",)}


# ---------------------------------------------------------------------------------------------
# A reference reader of the contract, independent of the generator
# ---------------------------------------------------------------------------------------------


def parse_ts(value: str) -> datetime | None:
    """UTC datetime of a contract timestamp, or None when it is in no accepted format."""
    try:
        if LOCAL_RE.match(value):
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI).astimezone(timezone.utc)
        if ISO_RE.match(value):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)
        if EPOCH_MS_RE.match(value):
            return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)
    except ValueError:
        return None
    return None


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _amount_failure(value: str, negative: str) -> str:
    """The reason a non-empty amount or cost is refused (``negative`` below zero); "" if it is not."""
    if not value:
        return ""
    x = _number(value)
    return "bad_number" if x is None else negative if x < 0 else ""


def _failures(name: str, row: dict) -> list[str]:
    """Every quarantine reason that applies to a parsed row (the contract rules)."""
    ds = dataset(name)
    out = []
    if any(row.get(c) in (None, "") for c in ds.required):
        out.append("missing_required")
    for col in TIME_COLUMNS[name]:
        if row.get(col) not in (None, "") and parse_ts(row[col]) is None:
            out.append("bad_timestamp")
    if name == "orders":
        out.append(_amount_failure(row.get("amount") or "", "negative_amount"))
        qty = row.get("quantity") or ""
        if qty:
            q = _number(qty)
            out.append("bad_number" if q is None else "bad_quantity" if q < 1 or q != int(q) else "")
        if (row.get("status") or "") not in ORDER_STATUSES + ("",):
            out.append("bad_status")
    if name == "events" and (row.get("action") or "") not in ACTIONS + ("",):
        out.append("unknown_action")
    if name == "impressions":
        out.append(_amount_failure(row.get("cost") or "", "negative_cost"))
        if (row.get("clicked") or "") not in ("0", "1", ""):
            out.append("bad_flag")
    return [r for r in out if r]


def _valid_id_number(value: str) -> bool:
    if not re.fullmatch(r"\d{17}[\dX]", value):
        return False
    try:
        date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    return id_check_digit(value[:17]) == value[17]


def _field_issues(row: dict) -> list[str]:
    out = []
    if row["phone"] and not re.fullmatch(r"1[3-9]\d{9}", row["phone"]):
        out.append("phone")
    if row["id_number"] and not _valid_id_number(row["id_number"]):
        out.append("id_number")
    if row["gender"] and row["gender"] not in GENDERS:
        out.append("gender")
    if row["birth_date"]:
        try:
            date.fromisoformat(row["birth_date"]) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["birth_date"]) else 1 / 0
        except (ValueError, ZeroDivisionError):
            out.append("birth_date")
    out += [f for f in ("opt_in_sms", "opt_in_push", "opt_in_email") if row[f] not in ("0", "1", "")]
    return out


def read_lines(path: Path) -> list[str]:
    """The file's lines as the contract reads them: a leading BOM dropped, ``\n`` or ``\r\n`` ends."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    text = text[1:] if text.startswith("\ufeff") else text
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")[:-1]]


def reconcile(folder: Path) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Read a contract folder by the rules; return the reconciliation and the accepted rows."""
    report: dict[str, dict] = {}
    accepted_rows: dict[str, list[dict]] = {}
    for ds in DATASETS:
        path = next(folder / n for n in ds.file_names() if (folder / n).exists())
        lines = read_lines(path)
        columns = ds.columns
        if ds.fmt == "csv":  # columns are matched by name
            columns = next(csv.reader([lines[0]]))
            assert sorted(columns) == sorted(ds.columns), columns
            lines = lines[1:]
        counts: dict[str, int] = {}
        unique = list(dict.fromkeys(lines))
        parsed = []
        for line in unique:
            if ds.fmt == "csv":
                fields = next(csv.reader([line]))
                row = dict(zip(columns, fields)) if len(fields) == len(columns) else None
            else:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                # a JSON number is taken as its text
                row = {k: v if v is None else str(v) for k, v in row.items()} if isinstance(row, dict) else None
            if row is None:
                counts["malformed_record"] = counts.get("malformed_record", 0) + 1
                continue
            reasons = _failures(ds.name, row)
            assert len(reasons) <= 1, f"{ds.name}: row has several defects {reasons}: {line}"
            if reasons:
                counts[reasons[0]] = counts.get(reasons[0], 0) + 1
            else:
                parsed.append(row)
        ids = pd.Series([r[ds.id_column] for r in parsed], dtype=object)
        clash = ids.duplicated(keep=False).to_numpy()
        if clash.any():
            counts["conflicting_duplicate"] = int(clash.sum())
        kept = [r for r, bad in zip(parsed, clash) if not bad]
        issues: dict[str, int] = {}
        if ds.name == "users":
            for r in kept:
                for f in _field_issues(r):
                    issues[f] = issues.get(f, 0) + 1
        report[ds.name] = {
            "rows_read": len(lines),
            "accepted": len(kept),
            "quarantined": dict(sorted(counts.items())),
            "duplicates_dropped": len(lines) - len(unique),
            "field_issues": dict(sorted(issues.items())),
        }
        accepted_rows[ds.name] = kept
    known = {r["user_id"] for r in accepted_rows["users"]}
    report["orders"]["unknown_users"] = sum(r["user_id"] not in known for r in accepted_rows["orders"])
    return report, accepted_rows


def manifest(summary: GenerationSummary) -> dict:
    return json.loads(summary.manifest_path.read_text(encoding="utf-8"))


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Fixtures: a small folder for structure, a medium one for statistics
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> GenerationSummary:
    return generate(tmp_path_factory.mktemp("small"), users=500, days=30, seed=7)


@pytest.fixture(scope="module")
def small_read(small) -> tuple[dict, dict]:
    return reconcile(small.out_dir)


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> tuple[GenerationSummary, dict]:
    summary = generate(tmp_path_factory.mktemp("medium"), users=3000, days=90, seed=11)
    return summary, reconcile(summary.out_dir)[1]


def _frame(rows: list[dict], time_column: str | None = None) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if time_column:
        df["t"] = [parse_ts(v) for v in df[time_column]]
    return df


# ---------------------------------------------------------------------------------------------
# Determinism and file shape
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_same_bytes_and_another_seed_differs(small, tmp_path):
    again = generate(tmp_path / "again", users=500, days=30, seed=7)
    other = generate(tmp_path / "other", users=500, days=30, seed=8)
    first = all_files(small.out_dir)
    assert set(first) >= {"users.csv", "orders.csv", "events.jsonl", "impressions.csv",
                          f"{TRUTH_DIR}/manifest.json", f"{TRUTH_DIR}/users.csv", f"{TRUTH_DIR}/impressions.csv"}
    assert all_files(again.out_dir) == first
    different = all_files(other.out_dir)
    for name in ("users.csv", "orders.csv", "events.jsonl", "impressions.csv"):
        assert different[name] != first[name], name


def test_headers_and_keys_follow_the_contract(small):
    for ds in DATASETS:
        lines = read_lines(small.files[ds.name])
        if ds.fmt == "csv":
            assert lines[0] == ",".join(ds.columns)
        else:
            objects = [json.loads(line) for line in lines[:50]]
            assert all(list(o) == list(ds.columns) for o in objects)


def test_rows_written_match_the_files_and_add_up(small):
    m = manifest(small)
    assert m["expected"] == small.expected
    for ds in DATASETS:
        exp = small.expected[ds.name]
        lines = read_lines(small.files[ds.name])
        data_lines = len(lines) - (1 if ds.fmt == "csv" else 0)
        assert small.rows[ds.name] == exp["rows_read"] == data_lines
        assert exp["rows_read"] == exp["accepted"] + sum(exp["quarantined"].values()) + exp["duplicates_dropped"]
        assert exp["quarantined"] and exp["duplicates_dropped"] > 0, ds.name


def test_every_contract_reason_is_planted(small):
    planted = {r for exp in small.expected.values() for r in exp["quarantined"]}
    assert planted == {
        "malformed_record", "missing_required", "bad_timestamp", "bad_number", "negative_amount",
        "negative_cost", "bad_quantity", "bad_status", "unknown_action", "bad_flag", "conflicting_duplicate",
    }
    assert set(small.expected["users"]["field_issues"]) == {
        "phone", "id_number", "gender", "birth_date", "opt_in_sms", "opt_in_push", "opt_in_email",
    }
    assert small.expected["orders"]["unknown_users"] >= 3


def test_reference_reader_reproduces_expected_reconciliation(small, small_read):
    report, _ = small_read
    assert report == small.expected


def test_defect_register_points_at_the_lines(small):
    register = pd.read_csv(small.out_dir / TRUTH_DIR / "defects.csv", dtype=str, keep_default_na=False)
    for ds in DATASETS:
        lines = read_lines(small.files[ds.name])
        mine = register[register["dataset"] == ds.name]
        assert len(mine) > 0
        for _, r in mine.iterrows():
            if r["record_id"]:
                assert r["record_id"] in lines[int(r["line"]) - 1], (ds.name, r.to_dict())


def test_clean_variant_has_nothing_to_quarantine(tmp_path):
    summary = generate(tmp_path, users=300, days=20, seed=3, defects=False)
    report, _ = reconcile(tmp_path)
    assert report == summary.expected
    for name, exp in summary.expected.items():
        assert exp["quarantined"] == {} and exp["duplicates_dropped"] == 0 and exp["field_issues"] == {}
        assert exp["accepted"] == exp["rows_read"] > 0, name


def test_gzipped_variant_holds_the_same_bytes(small, tmp_path):
    summary = generate(tmp_path, users=500, days=30, seed=7, compress=True)
    for ds in DATASETS:
        assert summary.files[ds.name].name == ds.file_names()[1]
        assert not (tmp_path / ds.file_names()[0]).exists()
        with gzip.open(summary.files[ds.name], "rb") as f:
            assert f.read() == small.files[ds.name].read_bytes(), ds.name
    assert summary.expected == small.expected


def test_progress_is_reported_in_order(tmp_path):
    calls: list[tuple[str, float]] = []
    generate(tmp_path, users=200, days=14, seed=1, progress=lambda s, f: calls.append((s, f)))
    fractions = [f for _, f in calls]
    assert len(calls) >= 5 and fractions == sorted(fractions)
    assert fractions[0] == 0.0 and calls[-1] == ("done", 1.0)


@pytest.mark.parametrize("kwargs", [{"users": 5}, {"days": 3}])
def test_rejects_sizes_it_cannot_honour(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate(tmp_path, **{"users": 200, "days": 30, **kwargs})


# ---------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------


def _timestamp_columns(rows: dict, min_share: float) -> Iterator[tuple[str, str, list[str]]]:
    """(dataset, column, non-empty values) of every timestamp column, after checking that each of
    the three formats writes more than ``min_share`` of the values."""
    for name, columns in TIME_COLUMNS.items():
        for col in columns:
            values = [r[col] for r in rows[name] if r.get(col)]
            for pattern in (LOCAL_RE, ISO_RE, EPOCH_MS_RE):
                share = sum(bool(pattern.match(v)) for v in values) / len(values)
                assert share > min_share, (name, col, pattern.pattern, share)
            yield name, col, values


def test_every_timestamp_column_uses_all_three_formats(small_read):
    _, rows = small_read
    assert len(list(_timestamp_columns(rows, 0.02))) == sum(map(len, TIME_COLUMNS.values()))


def test_activity_lies_inside_the_window_and_signup_before_it(small_read):
    _, rows = small_read
    start = datetime(2026, 6, 1, tzinfo=SHANGHAI)  # 30 days ending 2026-06-30
    end = datetime(2026, 7, 1, tzinfo=SHANGHAI)
    for name in ("orders", "events", "impressions"):
        col = TIME_COLUMNS[name][0]
        times = [parse_ts(r[col]) for r in rows[name]]
        assert min(times) >= start and max(times) < end, name
        assert max(times) - min(times) > timedelta(days=25), name
    assert max(parse_ts(r["signup_time"]) for r in rows["users"] if r["signup_time"]) < start


# ---------------------------------------------------------------------------------------------
# Planted structure (medium folder: 3,000 users x 90 days)
# ---------------------------------------------------------------------------------------------


def _truth(summary: GenerationSummary) -> pd.DataFrame:
    return pd.read_csv(summary.out_dir / TRUTH_DIR / "users.csv", dtype={"churn_day": "Int64", "user_id": str},
                       keep_default_na=False, na_values={"churn_day": [""]})


def _paid_orders(rows: dict) -> pd.DataFrame:
    orders = _frame(rows["orders"], "order_time")
    orders = orders[orders["status"] != "refunded"].copy()
    orders["amount"] = orders["amount"].astype(float)
    return orders


def test_archetypes_differ_in_purchase_rate_and_basket(medium):
    summary, rows = medium
    truth = _truth(summary).set_index("user_id")
    paid = _paid_orders(rows)
    per_user = paid.groupby("user_id").agg(n=("order_id", "nunique"), money=("amount", "sum"))
    per_user = per_user.join(truth["archetype"], how="inner")
    buyers = truth[truth["archetype"] != "none"]
    # Every archetype user has a paid order in the file; "none" users have none.
    assert set(buyers.index) == set(per_user.index)
    rate = per_user.groupby("archetype")["n"].mean()
    assert rate["champions"] > 1.5 * rate["loyal"]
    assert rate["loyal"] > rate["lapsed"] > 1.5 * rate["bargain"]
    assert rate["lapsed"] > 1.5 * rate["big_ticket"]
    basket = (per_user["money"] / per_user["n"]).groupby(per_user["archetype"]).median()
    assert basket["big_ticket"] > 10 * basket["loyal"] > 10 * basket["bargain"]


def test_nobody_acts_on_or_after_the_churn_day(medium):
    summary, rows = medium
    truth = _truth(summary)
    churned = truth[truth["churn_date"] != ""].set_index("user_id")["churn_date"]
    assert (truth.loc[truth["archetype"] == "lapsed", "churn_date"] != "").all()
    assert 0 < (truth.loc[truth["archetype"] == "champions", "churn_date"] != "").mean() < 0.2
    for name in ("orders", "events", "impressions"):
        df = _frame(rows[name], TIME_COLUMNS[name][0])
        df = df[df["user_id"].isin(churned.index)]
        local_day = df["t"].map(lambda t: t.astimezone(SHANGHAI).date().isoformat())
        assert (local_day < df["user_id"].map(churned)).all(), name
        assert len(df) > 0


def test_orders_and_events_follow_category_preferences(medium):
    summary, rows = medium
    top = _truth(summary).set_index("user_id")["top_category"]
    for name in ("orders", "events"):
        df = _frame(rows[name])
        df = df[df["user_id"].isin(top.index)]
        share = (df["category"] == df["user_id"].map(top)).mean()
        # Ten categories: 0.1 would mean preferences are not reflected at all (about 0.4 planted).
        assert share > 0.3, (name, share)


def test_event_funnel_and_purchases_track_orders(medium):
    _, rows = medium
    events = _frame(rows["events"])
    counts = events["action"].value_counts()
    assert counts["view"] > counts["click"] > counts["cart"] > counts["purchase"] > 0
    assert counts["remove_cart"] > 0 and counts["favorite"] > 0
    purchases = events[events["action"] == "purchase"].groupby("user_id").size()
    orders = _frame(rows["orders"]).groupby("user_id").size()
    joined = pd.concat([orders.rename("orders"), purchases.rename("purchases")], axis=1).fillna(0)
    assert joined["orders"].corr(joined["purchases"]) > 0.9
    assert (purchases.index.isin(orders.index)).all()  # no purchase event without an order


def test_empirical_ctr_tracks_the_true_click_probability(medium):
    summary, rows = medium
    imps = _frame(rows["impressions"])
    truth = pd.read_csv(summary.out_dir / TRUTH_DIR / "impressions.csv")
    df = imps.merge(truth, on="impression_id", how="inner")
    assert len(df) == len(imps)  # every accepted impression has a true probability
    df["clicked"] = df["clicked"].astype(int)
    assert 0.02 < df["clicked"].mean() < 0.08
    by_channel = df.groupby("channel").agg(
        n=("clicked", "size"), ctr=("clicked", "mean"), p=("p_click", "mean"),
        var=("p_click", lambda p: float((p * (1 - p)).sum())),
    )
    assert set(by_channel.index) == {"feed", "search", "short_video", "sms", "push", "email"}
    # Clicks are independent Bernoulli(p_i) draws, so the channel's click count has mean sum(p)
    # and variance sum(p(1-p)): a 4-sigma band fails a correct generator with p < 1e-4.
    tolerance = 4 * np.sqrt(by_channel["var"]) / by_channel["n"]
    assert ((by_channel["ctr"] - by_channel["p"]).abs() <= tolerance).all(), by_channel
    # The documented coefficients order the channels: search best, email worst.
    assert by_channel["p"].idxmax() == "search" and by_channel["p"].idxmin() == "email"
    assert by_channel.loc["search", "ctr"] > 2 * by_channel.loc["email", "ctr"]


def test_message_channels_only_reach_consenting_users(medium):
    _, rows = medium
    users = {r["user_id"]: r for r in rows["users"]}
    imps = _frame(rows["impressions"])
    for channel, flag in (("sms", "opt_in_sms"), ("push", "opt_in_push"), ("email", "opt_in_email")):
        reached = imps.loc[imps["channel"] == channel, "user_id"]
        consent = reached.map(lambda u: users[u][flag] if u in users else "1")
        # A consent flag emptied as a field issue is unknown, not a refusal.
        assert (consent != "0").all(), channel


def test_users_have_plausible_personal_fields(small_read):
    _, rows = small_read
    users = [r for r in rows["users"] if not _field_issues(r)]
    with_id = [r for r in users if r["id_number"]]
    assert len(with_id) > 100
    for r in with_id:
        assert r["id_number"][6:14] == r["birth_date"].replace("-", "")
        if r["gender"]:
            assert int(r["id_number"][16]) % 2 == (1 if r["gender"] == "M" else 0)
    assert 0.05 < np.mean([r["phone"] == "" for r in users]) < 0.3
    assert len({r["city"] for r in users} - {""}) == 12


# ---------------------------------------------------------------------------------------------
# Promotions, price response and the weekly pattern (generator version 2)
# ---------------------------------------------------------------------------------------------


def _local_orders(rows: dict) -> pd.DataFrame:
    orders = _frame(rows["orders"], "order_time")
    local = orders["t"].map(lambda t: t.astimezone(SHANGHAI))
    return orders.assign(date=local.map(lambda t: t.date().isoformat()), weekday=local.map(lambda t: t.weekday()),
                         amount=orders["amount"].astype(float), quantity=orders["quantity"].astype(int))


def test_promotion_calendar_is_planted_as_documented(medium):
    from cluster.datagen import CATEGORIES, PROMOTIONS, WEEKDAY_WEIGHTS

    summary, _ = medium
    m = manifest(summary)
    promo = pd.read_csv(summary.out_dir / TRUTH_DIR / "promotions.csv")
    assert m["truth_files"]["promotions"] == f"{TRUTH_DIR}/promotions.csv"
    assert len(promo) == m["days"] * len(CATEGORIES) and not promo.duplicated(["date", "category"]).any()
    assert set(promo["price_ratio"]) <= {1.0, *PROMOTIONS["ratios"]}
    share = (promo["price_ratio"] < 1).mean()
    # Binomial SE of the share over 900 (category, day) draws: 0.016; 4 SE.
    assert abs(share - PROMOTIONS["share"]) < 4 * np.sqrt(0.35 * 0.65 / len(promo))
    assert (pd.to_datetime(promo["date"]).dt.weekday == promo["weekday"]).all()
    assert m["weekday_weights"] == WEEKDAY_WEIGHTS.tolist()
    assert {c["name"]: c["elasticity"] for c in m["categories"]} == {c.name: c.elasticity for c in CATEGORIES}
    assert len({c.elasticity for c in CATEGORIES}) == len(CATEGORIES)


def test_amounts_are_list_price_times_the_days_ratio(medium):
    summary, rows = medium
    promo = pd.read_csv(summary.out_dir / TRUTH_DIR / "promotions.csv")
    orders = _local_orders(rows).merge(promo, on=["date", "category"], how="left")
    assert orders["price_ratio"].notna().all()
    implied_list = orders["amount"] / orders["quantity"] / orders["price_ratio"]
    spread = implied_list.groupby(orders["item_id"]).agg(lambda v: v.max() - v.min())
    # One list price per item: amounts are rounded to 0.01, so amount / (quantity x ratio >= 0.7)
    # moves by at most 0.0072 per line, 0.015 between two lines.
    assert spread.max() < 0.015
    # Every ratio occurs (the uniform discount of version 1 would spread unit prices continuously).
    assert set(orders["price_ratio"].round(2)) == {0.7, 0.8, 0.9, 1.0}


def test_orders_follow_the_weekday_weights(medium):
    from cluster.datagen import WEEKDAY_WEIGHTS

    _, rows = medium
    orders = _local_orders(rows)
    share = orders["weekday"].value_counts(normalize=True).sort_index().to_numpy()
    planted = WEEKDAY_WEIGHTS / WEEKDAY_WEIGHTS.sum()
    # The plant is exact for an order free to move over whole weeks; short regular slices and window
    # edges distort a share by up to 0.0066 (measured on the default folder, 85k orders), plus
    # 3 multinomial SE at this size.
    se = np.sqrt(planted * (1 - planted) / len(orders))
    assert np.all(np.abs(share - planted) < 0.0066 + 3 * se), (share.round(4), planted.round(4))


def test_promotions_raise_orders_more_in_elastic_categories(medium):
    from cluster.datagen import CATEGORIES

    summary, rows = medium
    promo = pd.read_csv(summary.out_dir / TRUTH_DIR / "promotions.csv")
    daily = _local_orders(rows).groupby(["category", "date"]).size().rename("n")
    cells = promo.join(daily, on=["category", "date"]).fillna({"n": 0})
    deep = cells[cells["price_ratio"] == 0.7].groupby("category")["n"].mean()
    full = cells[cells["price_ratio"] == 1.0].groupby("category")["n"].mean()
    lift = np.log(deep / full) / -np.log(0.7)  # a crude elasticity per category
    planted = pd.Series({c.name: c.elasticity for c in CATEGORIES})
    # Crude (no weekday or trend control, ~30 deep-promotion days per category): only the
    # direction is asserted: deep discounts sell more, and more so where the plant is elastic.
    assert (lift > 0).mean() >= 0.8
    assert lift.corr(planted[lift.index], method="spearman") > 0.5


# ---------------------------------------------------------------------------------------------
# Style "varied": the same world in other shapes the contract allows
# ---------------------------------------------------------------------------------------------

#: sha256 over (relative path, bytes) of every file of ``generate(users=200, days=14, seed=1)``,
#: taken before ``style`` existed. The default bytes may only change with GENERATOR_VERSION (then
#: update this hash in the same change).
DEFAULT_BYTES_SHA256 = "a16ed2734f84b82d98da1c20d1e1bf99bd1d1a9780a183c52e816a9edcaa09cb"
VARIED_USERS, VARIED_DAYS, VARIED_SEED = 300, 60, 5
ID_CHARS_RE = re.compile(r"^[A-Za-z0-9_-]+$")
ISO_FRACTION_RE = re.compile(r"T\d{2}:\d{2}:\d{2}\.\d{1,6}(Z|[+-]\d{2}:\d{2})$")


def _tree_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for name, data in all_files(folder).items():
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> GenerationSummary:
    return generate(tmp_path_factory.mktemp("varied"), users=VARIED_USERS, days=VARIED_DAYS, seed=VARIED_SEED,
                    style="varied")


@pytest.fixture(scope="module")
def varied_read(varied) -> tuple[dict, dict]:
    return reconcile(varied.out_dir)


def test_default_style_is_byte_identical_to_before_styles_existed(tmp_path):
    omitted = generate(tmp_path / "omitted", users=200, days=14, seed=1)
    explicit = generate(tmp_path / "default", users=200, days=14, seed=1, style="default")
    assert all_files(explicit.out_dir) == all_files(omitted.out_dir)
    assert _tree_sha256(omitted.out_dir) == DEFAULT_BYTES_SHA256
    assert "style" not in manifest(omitted)


def test_unknown_style_is_refused(tmp_path):
    with pytest.raises(ValueError, match="style"):
        generate(tmp_path, users=200, days=14, seed=1, style="messy")


def test_varied_is_deterministic_and_not_the_default(varied, tmp_path):
    again = generate(tmp_path / "again", users=VARIED_USERS, days=VARIED_DAYS, seed=VARIED_SEED, style="varied")
    default = generate(tmp_path / "default", users=VARIED_USERS, days=VARIED_DAYS, seed=VARIED_SEED)
    first = all_files(varied.out_dir)
    assert all_files(again.out_dir) == first
    other = all_files(default.out_dir)
    for ds in DATASETS:
        name = ds.file_names()[0]
        assert first[name] != other[name], name
    assert manifest(varied)["style"] == "varied"


def test_varied_files_have_a_bom_and_crlf_line_ends(varied):
    for ds in DATASETS:
        data = varied.files[ds.name].read_bytes()
        assert data.startswith(b"\xef\xbb\xbf") == (ds.fmt == "csv"), ds.name
        assert data.endswith(b"\r\n") and data.count(b"\r\n") == data.count(b"\n") > 100, ds.name


def test_varied_reference_reader_reproduces_expected_reconciliation(varied, varied_read):
    report, rows = varied_read
    assert report == varied.expected == manifest(varied)["expected"]
    # Every planted reason is still there, next to the variations.
    assert {r for exp in report.values() for r in exp["quarantined"]} >= {
        "malformed_record", "missing_required", "bad_timestamp", "conflicting_duplicate"}
    assert report["orders"]["unknown_users"] >= 3


def test_varied_timestamps_mix_all_three_styles_and_other_offsets(varied_read):
    _, rows = varied_read
    for name, col, values in _timestamp_columns(rows, 0.1):
        iso = [v for v in values if ISO_RE.match(v)]
        assert any(v.endswith("Z") for v in iso), (name, col)
        assert any(ISO_FRACTION_RE.search(v) for v in iso), (name, col)
        assert len({v[-6:] for v in iso if not v.endswith("Z")}) >= 3, (name, col)  # other offsets


def test_varied_ids_follow_other_patterns(varied_read):
    _, rows = varied_read
    users = [r["user_id"] for r in rows["users"]]
    lengths = [len(u) for u in users]
    assert all(ID_CHARS_RE.match(u) for u in users)
    assert min(lengths) <= 8 and max(lengths) == 40
    assert len(set(lengths)) >= 8 and len({u[0] for u in users}) >= 5
    assert not any(re.fullmatch(r"u\d{6}", u) for u in users)
    assert all(re.fullmatch(r"SO-\d{8}-\d{6}", r["order_id"]) for r in rows["orders"])
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert all(re.fullmatch(uuid, r["event_id"]) for r in rows["events"])
    assert all(re.fullmatch(r"imp_\d{8}_[0-9a-z]{7}", r["impression_id"]) for r in rows["impressions"])
    # No id looks like a phone or resident ID number (the quarantine masks such runs).
    ids = users + [r[c] for n, c in (("orders", "order_id"), ("events", "event_id"), ("impressions",
                                                                                      "impression_id"))
                   for r in rows[n]]
    assert not any(re.search(r"\d{11}", i) for i in ids)


def test_varied_has_users_without_orders_and_users_only_in_users_csv(varied, varied_read):
    _, rows = varied_read
    users = {r["user_id"] for r in rows["users"]}
    ordered = {r["user_id"] for r in rows["orders"]}
    active = ordered | {r["user_id"] for name in ("events", "impressions") for r in rows[name]}
    without_orders = len(users - ordered) / len(users)
    assert 0.22 < without_orders < 0.38, without_orders
    truth = _truth(varied)
    dormant = set(truth.loc[truth["archetype"] == "dormant", "user_id"])
    assert len(dormant) == manifest(varied)["varied"]["registered_only"]["users"] > 0.2 * VARIED_USERS
    assert dormant <= users - active  # in users.csv, nowhere else
    assert (truth.loc[truth["archetype"] == "dormant", "has_paid_order"] == 0).all()
    assert set(truth["user_id"]) == users  # the truth is renamed with the files


def test_varied_names_lie_outside_the_built_in_lists(varied, varied_read):
    from cluster.datagen import AD_POSITION_NAMES, CATEGORIES, CITIES, VARIED_CHANNELS, VARIED_DEVICES

    _, rows = varied_read
    m = manifest(varied)["varied"]
    positions = [r["ad_position"] for r in rows["impressions"]]
    named = sum(not p.isdigit() for p in positions) / len(positions)
    assert 0.6 < named < 0.9, named
    assert set(positions) <= set(m["ad_positions"]) and AD_POSITION_NAMES[3] in positions
    assert {m["ad_positions"][name] for name in AD_POSITION_NAMES.values()} == set(AD_POSITION_NAMES)
    cities = {r["city"] for r in rows["users"]} - set(CITIES) - {""}
    assert len(cities) >= 5 and any(re.fullmatch(r"[A-Za-z ]+", c) for c in cities)
    built_in = {b for c in CATEGORIES for b in c.brands}
    assert {r["brand"] for r in rows["orders"] + rows["events"]} - built_in
    channels = {r["channel"] for r in rows["impressions"]}
    assert channels <= set(VARIED_CHANNELS.values()) and len(channels) >= 4
    assert {r["device_type"] for r in rows["events"] + rows["impressions"]} <= set(VARIED_DEVICES.values())
    assert "iPhone" in {r["device_type"] for r in rows["events"]}
    campaigns = {r["campaign_id"] for r in rows["impressions"]}
    assert campaigns <= set(m["campaigns"])
    assert all(re.fullmatch(r"2026Q2-[a-z0-9-]+-[a-z]+", c) for c in campaigns)


def test_varied_is_the_default_world_renamed(varied, varied_read, tmp_path):
    """Same seed and size: each clean default row has a varied row with the same user, instant,
    position, channel, device, cost and click, so the planted effects (placement included) survive."""
    default = generate(tmp_path, users=VARIED_USERS, days=VARIED_DAYS, seed=VARIED_SEED)
    _, d_rows = reconcile(default.out_dir)
    _, v_rows = varied_read
    m = manifest(varied)["varied"]
    d_truth, v_truth = _truth(default), _truth(varied)
    assert v_truth["archetype"].iloc[: len(d_truth)].tolist() == d_truth["archetype"].tolist()
    user = dict(zip(d_truth["user_id"], v_truth["user_id"]))

    d_p = pd.read_csv(default.out_dir / TRUTH_DIR / "impressions.csv", dtype=str)
    v_p = pd.read_csv(varied.out_dir / TRUTH_DIR / "impressions.csv", dtype=str)
    assert d_p["p_click"].tolist() == v_p["p_click"].tolist()
    d_imps = {r["impression_id"]: r for r in d_rows["impressions"]}
    v_imps = {r["impression_id"]: r for r in v_rows["impressions"]}
    for d_id, v_id in zip(d_p["impression_id"], v_p["impression_id"]):
        d, v = d_imps[d_id], v_imps[v_id]
        assert m["ad_positions"][v["ad_position"]] == int(d["ad_position"])
        assert (v["channel"], v["device_type"]) == (m["channels"][d["channel"]], m["devices"][d["device_type"]])
        assert (v["user_id"], v["clicked"]) == (user[d["user_id"]], d["clicked"])
        assert float(v["cost"]) == float(d["cost"])
        assert abs(parse_ts(v["ts"]) - parse_ts(d["ts"])) < timedelta(seconds=1)
        assert m["campaigns"][v["campaign_id"]]["channel"] == v["channel"]

    # Orders and events of the simulated users (orders of unknown users are planted defects).
    renamed = set(user.values())

    def orders(rows: list[dict], rename: dict) -> list[tuple]:
        return sorted((rename[r["user_id"]], r["category"], float(r["amount"]), r["quantity"], r["status"],
                       parse_ts(r["order_time"]).replace(microsecond=0)) for r in rows if r["user_id"] in rename)

    assert orders(v_rows["orders"], {u: u for u in renamed}) == orders(d_rows["orders"], user)

    def events(rows: list[dict], rename: dict) -> list[tuple]:
        return sorted((rename[r["user_id"]], r["action"], r["category"], parse_ts(r["ts"]).replace(microsecond=0))
                      for r in rows if r["user_id"] in rename)

    assert events(v_rows["events"], {u: u for u in renamed}) == events(d_rows["events"], user)


def _ingest_report(settings, folder: Path, lake_root: Path, run_id: str) -> dict:
    from spark_jobs import ingest

    s = settings.model_copy(update={"lake": settings.lake.model_copy(update={"root": lake_root})})
    report = ingest.main(s, folder, run_id=run_id)
    return {name: {key: report["files"][name][key] for key in exp} for name, exp in manifest_expected(folder).items()}


def manifest_expected(folder: Path) -> dict:
    return json.loads((folder / TRUTH_DIR / "manifest.json").read_text(encoding="utf-8"))["expected"]


def test_varied_ingest_reports_the_truth(varied, settings, spark, tmp_path):
    assert _ingest_report(settings, varied.out_dir, tmp_path / "lake", "varied") == varied.expected


def test_cli_writes_the_varied_style(tmp_path):
    import click

    from cluster.cli import cli

    def run(*args: str) -> None:
        cli.main(args=["data", "generate", *args], prog_name="pmkt", standalone_mode=False)

    run(str(tmp_path / "cli"), "--style", "varied", "--users", "150", "--days", "10", "--seed", "4")
    api = generate(tmp_path / "api", users=150, days=10, seed=4, style="varied")
    assert all_files(tmp_path / "cli") == all_files(api.out_dir)
    with pytest.raises(click.BadParameter, match="varied") as bad:
        run(str(tmp_path / "bad"), "--style", "messy")
    assert bad.value.param.name == "style"
