"""Defects: the plan of what to plant per dataset, the planting, and the assembly of each
file's lines with the defect register and the reconciliation ingest must report."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.contract import ACTIONS, dataset
from cluster.datagen.helpers import _csv_lines, _event_lines, _json_line
from cluster.datagen.params import CITIES

#: Defects planted per dataset: kind -> (share of clean rows, minimum count). ``conflict`` counts
#: pairs (two quarantined rows each); ``duplicate`` counts extra exact copies of clean lines;
#: ``unknown_user`` counts valid orders by users absent from users.csv (one order each);
#: ``field:<name>`` counts optional fields made malformed in kept rows.
DEFECT_PLAN: dict[str, dict[str, tuple[float, int]]] = {
    "users": {
        "malformed_record": (0.001, 1),
        "missing_required": (0.0, 1),
        "bad_timestamp": (0.001, 1),
        "conflict": (0.0, 1),
        "duplicate": (0.0, 2),
        "field:phone": (0.002, 1),
        "field:id_number": (0.002, 1),
        "field:gender": (0.001, 1),
        "field:birth_date": (0.001, 1),
        "field:opt_in_sms": (0.0005, 1),
        "field:opt_in_push": (0.0005, 1),
        "field:opt_in_email": (0.0005, 1),
    },
    "orders": {
        "malformed_record": (0.001, 1),
        "missing_required": (0.001, 1),
        "bad_timestamp": (0.001, 1),
        "bad_number": (0.001, 1),
        "negative_amount": (0.001, 1),
        "bad_quantity": (0.001, 1),
        "bad_status": (0.001, 1),
        "conflict": (0.0005, 1),
        "duplicate": (0.002, 2),
        "unknown_user": (0.0002, 3),
    },
    "events": {
        "malformed_record": (0.001, 1),
        "missing_required": (0.001, 1),
        "bad_timestamp": (0.001, 1),
        "unknown_action": (0.001, 1),
        "conflict": (0.0005, 1),
        "duplicate": (0.003, 2),
    },
    "impressions": {
        "malformed_record": (0.001, 1),
        "missing_required": (0.001, 1),
        "bad_timestamp": (0.001, 1),
        "bad_number": (0.001, 1),
        "negative_cost": (0.001, 1),
        "bad_flag": (0.001, 1),
        "conflict": (0.0005, 1),
        "duplicate": (0.002, 2),
    },
}

# Values used for defects: each is invalid under every reasonable parser, never "almost valid".
_BAD_TIMESTAMPS = ("unknown", "yesterday 21:30", "2026-13-45 25:61:00", "--", "31/02/2026 10:00")
_BAD_NUMBERS = ("12.5元", "abc", "1.2.3", "¥99.00", "九十九")
_BAD_QUANTITIES = ("0", "-1", "1.5", "2.5")
_BAD_STATUSES = ("shipped", "pending", "cancelled", "unpaid")
_BAD_ACTIONS = ("share", "search", "like", "checkout")
_BAD_FLAGS = ("2", "yes", "-1", "Y")
_BAD_GENDERS = ("X", "U", "unknown", "2")
_BAD_BIRTH_DATES = ("unknown", "19xx-05-12", "1990-13-45")
_BAD_CONSENTS = ("2", "yes", "-1", "10")


@dataclass
class _Insert:
    line: str
    kind: str
    record_id: str
    expected: str  # reason code, "duplicate_dropped", "unknown_user" or "field:<name>"


@dataclass
class _FilePlan:
    """Clean rows plus what to plant in them, and how the file spells them."""

    name: str
    rows: pd.DataFrame
    inserts: list[_Insert]
    in_place: list[tuple[int, str, str]]  # (clean row index, kind, expected)
    next_id: int
    id_prefix: str
    id_width: int
    #: Column order of the CSV file (the contract's order unless the style changes it).
    columns: tuple[str, ...] = ()
    #: The n-th id of the file (n >= 1); None: ``id_prefix`` + n padded to ``id_width`` digits.
    make_id: Callable[[int], str] | None = None
    #: Serialises clean rows (also the exact copies planted as duplicates); None: the default style.
    serialise: Callable[[pd.DataFrame], list[str]] | None = None

    def __post_init__(self) -> None:
        self.columns = self.columns or dataset(self.name).columns

    def id_for(self, n: int) -> str:
        return self.make_id(n) if self.make_id else f"{self.id_prefix}{n:0{self.id_width}d}"

    def fresh_id(self) -> str:
        value = self.id_for(self.next_id)
        self.next_id += 1
        return value

    def lines(self, rows: pd.DataFrame) -> list[str]:
        if self.serialise is not None:
            return self.serialise(rows)
        return _event_lines(rows) if self.name == "events" else _csv_lines(rows)


def _csv_field(value: str) -> str:
    # Quoted as pandas' to_csv quotes (RFC 4180, minimal); the default style has nothing to quote.
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_join(values: Sequence[str]) -> str:
    return ",".join(_csv_field(v) for v in values)


def _serialise(name: str, record: dict[str, Any], columns: Sequence[str]) -> str:
    if name == "events":
        return _json_line(record)
    return _csv_join([str(record[c]) for c in columns])


def _count(n_rows: int, rate: float, minimum: int) -> int:
    return max(minimum, int(round(rate * n_rows)))


def _plant(rng: np.random.Generator, plan: _FilePlan, unknown_user: Callable[[int], str]) -> None:
    """Add the defects of ``DEFECT_PLAN[plan.name]`` to ``plan`` (each row has exactly one defect).

    ``unknown_user(i)`` is the user id of the i-th order by a user absent from users.csv.
    """
    ds = dataset(plan.name)
    cols = plan.columns
    n = len(plan.rows)
    spec = DEFECT_PLAN[plan.name]
    counts = {kind: _count(n, rate, minimum) for kind, (rate, minimum) in spec.items()}
    # Templates: distinct clean rows; field issues and duplicates must not touch the same row.
    need = sum(c * (2 if k == "conflict" else 1) for k, c in counts.items())
    pool = iter(rng.permutation(n)[: min(need, n)].tolist())

    def template() -> dict[str, Any]:
        return dict(plan.rows.iloc[next(pool)])

    def add(record: dict[str, Any], kind: str, expected: str, line: str | None = None) -> None:
        rid = str(record.get(ds.id_column, "") or "")
        plan.inserts.append(_Insert(line or _serialise(plan.name, record, cols), kind, rid, expected))

    required_non_id = [c for c in ds.required if c != ds.id_column]
    for kind, k in counts.items():
        for i in range(k):
            if kind.startswith("field:"):
                idx = next(pool)
                plan.in_place.append((idx, kind, kind))
                continue
            if kind == "duplicate":
                # Serialised exactly like the clean lines, so the copy is byte-identical.
                idx = next(pool)
                line = plan.lines(plan.rows.iloc[[idx]])[0]
                add(dict(plan.rows.iloc[idx]), kind, "duplicate_dropped", line)
                continue
            rec = template()
            if kind == "unknown_user":
                rec[ds.id_column] = plan.fresh_id()
                rec["user_id"] = unknown_user(i)
                if rec.get("status") == "refunded":
                    rec["status"] = "paid"
                add(rec, kind, "unknown_user")
                continue
            if plan.name != "users" or kind != "missing_required":
                rec[ds.id_column] = plan.fresh_id()
            if kind == "conflict":
                other = dict(rec)
                if plan.name == "users":
                    other["city"] = next(c for c in CITIES if c != rec["city"])
                elif plan.name == "orders":
                    other["amount"] = f"{float(rec['amount']) + 10.0:.2f}"
                elif plan.name == "events":
                    other["action"] = next(a for a in ACTIONS if a != rec["action"])
                else:
                    other["cost"] = f"{float(rec['cost']) + 0.01:.4f}"
                add(rec, kind, "conflicting_duplicate")
                add(other, kind, "conflicting_duplicate")
                continue
            if kind == "malformed_record":
                add(rec, kind, kind, _malformed(plan.name, rec, cols, i))
                continue
            if kind == "missing_required":
                if plan.name == "users":
                    rec["user_id"] = ""
                else:
                    field = required_non_id[i % len(required_non_id)]
                    if plan.name == "events":
                        style = (i // len(required_non_id)) % 3  # absent key, empty string, JSON null
                        if style == 0:
                            del rec[field]
                        else:
                            rec[field] = "" if style == 1 else None
                    else:
                        rec[field] = ""
                add(rec, kind, kind)
                continue
            value_sets = {
                "bad_timestamp": (ds.time_column, _BAD_TIMESTAMPS),
                "bad_number": ("amount" if plan.name == "orders" else "cost", _BAD_NUMBERS),
                "bad_quantity": ("quantity", _BAD_QUANTITIES),
                "bad_status": ("status", _BAD_STATUSES),
                "unknown_action": ("action", _BAD_ACTIONS),
                "bad_flag": ("clicked", _BAD_FLAGS),
            }
            if kind in value_sets:
                field, values = value_sets[kind]
                rec[field] = values[i % len(values)]
            elif kind == "negative_amount":
                rec["amount"] = f"-{max(float(rec['amount']), 0.01):.2f}"
            elif kind == "negative_cost":
                rec["cost"] = f"-{max(float(rec['cost']), 0.0001):.4f}"
            else:  # pragma: no cover - DEFECT_PLAN and this function are edited together
                raise ValueError(f"unknown defect kind {kind!r}")
            add(rec, kind, kind)


def _malformed(name: str, rec: dict[str, Any], cols: Sequence[str], i: int) -> str:
    if name == "events":
        line = _json_line(rec)
        variant = i % 3
        if variant == 0:
            return line[: len(line) // 2]  # truncated object
        if variant == 1:
            return json.dumps([rec[c] for c in cols], ensure_ascii=False)  # not an object
        return ";".join(f"{c}={rec[c]}" for c in cols)  # not JSON at all
    values = [str(rec[c]) for c in cols]
    if i % 2 == 0 or name == "impressions":
        return _csv_join(values + ["extra"])  # one field too many
    return _csv_join(values[:-1])  # last field missing


def _field_issue(rng: np.random.Generator, field: str, row: dict[str, Any], i: int) -> str:
    if field == "phone":
        digits = "13" + "".join(str(d) for d in rng.integers(0, 10, 10))
        # ten digits, twelve digits, or eleven characters with a letter
        return (digits[:10], digits, digits[:6] + "a" + digits[7:11])[i % 3]
    if field == "id_number":
        body = row["id_number"] or ("110101" + "19900101" + "123")
        body = body[:17]
        return (body, body + "12", body[:5] + "A" + body[6:] + "1")[i % 3]
    if field == "gender":
        return _BAD_GENDERS[i % len(_BAD_GENDERS)]
    if field == "birth_date":
        return _BAD_BIRTH_DATES[i % len(_BAD_BIRTH_DATES)]
    return _BAD_CONSENTS[i % len(_BAD_CONSENTS)]


def _assemble(rng: np.random.Generator, plan: _FilePlan) -> tuple[list[str], list[dict[str, Any]], dict]:
    """Lines of the file, the defect register and the expected reconciliation."""
    rows = plan.rows
    seen: dict[str, int] = {}
    for idx, kind, _ in plan.in_place:
        field = kind.split(":", 1)[1]
        seen[field] = seen.get(field, 0) + 1
        rows.iat[idx, rows.columns.get_loc(field)] = _field_issue(rng, field, dict(rows.iloc[idx]), seen[field])
    clean = plan.lines(rows)

    n_clean, n_ins = len(clean), len(plan.inserts)
    keys = np.r_[np.arange(n_clean, dtype=float), rng.uniform(0, max(n_clean, 1), n_ins)]
    order = np.argsort(keys, kind="stable")
    lines = [clean[j] if j < n_clean else plan.inserts[j - n_clean].line for j in order]
    position = np.empty(len(order), dtype=int)
    position[order] = np.arange(len(order))
    header = 1 if dataset(plan.name).fmt == "csv" else 0

    register = []
    ds = dataset(plan.name)
    for idx, kind, expected in plan.in_place:
        register.append({"dataset": plan.name, "line": int(position[idx]) + 1 + header,
                         "record_id": rows.iloc[idx][ds.id_column], "kind": kind, "expected": expected})
    for j, ins in enumerate(plan.inserts):
        register.append({"dataset": plan.name, "line": int(position[n_clean + j]) + 1 + header,
                         "record_id": ins.record_id, "kind": ins.kind, "expected": ins.expected})
    register.sort(key=lambda r: r["line"])

    quarantined: dict[str, int] = {}
    field_issues: dict[str, int] = {}
    for r in register:
        e = r["expected"]
        if e.startswith("field:"):
            field_issues[e[6:]] = field_issues.get(e[6:], 0) + 1
        elif e not in ("duplicate_dropped", "unknown_user"):
            quarantined[e] = quarantined.get(e, 0) + 1
    dups = sum(1 for r in register if r["expected"] == "duplicate_dropped")
    rows_read = len(lines)
    expected: dict[str, Any] = {
        "rows_read": rows_read,
        "accepted": rows_read - dups - sum(quarantined.values()),
        "quarantined": dict(sorted(quarantined.items())),
        "duplicates_dropped": dups,
        "field_issues": dict(sorted(field_issues.items())),
    }
    if plan.name == "orders":
        expected["unknown_users"] = sum(1 for r in register if r["expected"] == "unknown_user")
    return lines, register, expected
