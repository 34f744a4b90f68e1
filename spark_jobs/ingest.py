"""Ingest one delivery folder into the lake, applying the data contract (docs/data-contract.md).

Every input line ends in exactly one of three places, and the report reconciles them per file::

    rows_read == accepted + sum(quarantined.values()) + duplicates_dropped

* accepted rows go to ``raw/<dataset>/dt=YYYY-MM-DD/`` (typed Parquet; phones masked, ID numbers
  encrypted, see :mod:`cluster.core.privacy`);
* rejected rows go to ``quarantine/<dataset>/run=<run_id>/`` with a reason code from
  :data:`cluster.core.contract.REASONS` (the record text masked too);
* exact duplicate lines are dropped and counted.

The transforms (:func:`parse_lines`, :func:`classify`, :func:`resolve_duplicates`,
:func:`flag_unknown_users`, :func:`reconcile`, :func:`raw_rows`, :func:`quarantine_rows`) are pure
``DataFrame -> DataFrame`` functions; only :func:`main` reads files and writes the lake.

Lines are read as text (``spark.read.text``, which also handles ``.gz``) so that the quarantine can
keep the original record and its line number, and exact duplicates can be judged on the line itself.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from cluster.core.catalog import INGEST_REPORTS, LANDING, QUARANTINE, RAW, Table
from cluster.core.contract import (
    ACTIONS,
    CONTROL_CHARS_JAVA,
    DATASETS,
    GENDERS,
    MAX_USER_ID_LENGTH,
    ORDER_STATUSES,
    REASONS,
    TS_EPOCH_MS,
    TS_ISO_OFFSET,
    TS_LOCAL,
    Dataset,
)
from cluster.core.errors import DataContractError, PlatformError
from cluster.core.privacy import HAS_ID_NUMBER_COLUMN, ID_NUMBER_COLUMN, PHONE_COLUMN, KeyRing, load_keyring
from cluster.core.settings import Settings
from cluster.core.storage import open_lake
from spark_jobs.context import JobContext, Progress

__all__ = [
    "parse_timestamp",
    "redact",
    "redact_text",
    "parse_lines",
    "classify",
    "resolve_duplicates",
    "flag_unknown_users",
    "reconcile",
    "raw_rows",
    "quarantine_rows",
    "raw_columns",
    "issue_fields",
    "needs_keys",
    "encrypt_column",
    "Delivery",
    "check_delivery",
    "main",
    "format_report",
    "UNKNOWN_DT",
]

log = logging.getLogger(__name__)

#: Partition value of rows without a time value (users without ``signup_time``).
UNKNOWN_DT = "__unknown__"

_REASON_ORDER = {r.code: i for i, r in enumerate(REASONS)}


def _code(code: str) -> str:
    # Fails at import time if the contract renames a code this module relies on.
    if code not in _REASON_ORDER:
        raise KeyError(f"reason code {code!r} is not in cluster.core.contract.REASONS")
    return code


MALFORMED = _code("malformed_record")
MISSING = _code("missing_required")
BAD_ID = _code("bad_id")
BAD_TIMESTAMP = _code("bad_timestamp")
BAD_NUMBER = _code("bad_number")
NEGATIVE_AMOUNT = _code("negative_amount")
NEGATIVE_COST = _code("negative_cost")
BAD_QUANTITY = _code("bad_quantity")
BAD_STATUS = _code("bad_status")
UNKNOWN_ACTION = _code("unknown_action")
BAD_FLAG = _code("bad_flag")
CONFLICT = _code("conflicting_duplicate")

# --- value formats -----------------------------------------------------------------------

_TS_ISO_OFFSET, _TS_LOCAL, _TS_EPOCH_MS = TS_ISO_OFFSET, TS_LOCAL, TS_EPOCH_MS
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)$"
_INTEGER = r"^\+?\d+$"
_PHONE = r"^1[3-9]\d{9}$"
_ID_NUMBER = r"^\d{17}[\dX]$"
_FLAG_VALUES = ("0", "1")

# Masks for free text (quarantined records, log and error messages). Over-masking an order id
# that happens to look like a phone number is the accepted price of never leaking one.
# ID-like: 15-18 characters (15-digit first-generation and 18-digit resident IDs, last may be X).
_ID_RUN_JAVA = r"(?<![0-9])[0-9]{14,17}[0-9Xx](?![0-9])"
_PHONE_RUN_JAVA = r"(?<![0-9])((?:86)?1[0-9]{2})[0-9]{4}([0-9]{4})(?![0-9])"
_ID_RUN_PY = re.compile(r"(?<![0-9])[0-9]{14,17}[0-9Xx](?![0-9])")
_PHONE_RUN_PY = re.compile(r"(?<![0-9])((?:86)?1[0-9]{2})[0-9]{4}([0-9]{4})(?![0-9])")
_ID_MASK = "*" * 18

# --- column kinds per dataset (contract vocabulary is in cluster.core.contract; types live here) ----

_KINDS: dict[str, dict[str, str]] = {
    "users": {
        "gender": "gender",
        "birth_date": "date",
        "phone": "phone",
        "id_number": "id_number",
        "signup_time": "timestamp",
        "opt_in_sms": "consent",
        "opt_in_push": "consent",
        "opt_in_email": "consent",
    },
    "orders": {"order_time": "timestamp", "quantity": "quantity", "amount": "amount", "status": "status"},
    "events": {"ts": "timestamp", "action": "action"},
    "impressions": {"ts": "timestamp", "cost": "cost", "clicked": "flag"},
}
for _kinds_of in _KINDS.values():
    _kinds_of["user_id"] = "user_id"  # every file: the id every endpoint must take (bad_id)
# Raw-zone columns that replace a personal-data input column.
_RENAMED = {"phone": (PHONE_COLUMN,), "id_number": (HAS_ID_NUMBER_COLUMN, ID_NUMBER_COLUMN)}
_ISSUE_KINDS = ("gender", "date", "phone", "id_number", "consent")


def _s(name: str) -> str:
    """Name of the trimmed input text of a contract column."""
    return f"_s_{name}"


def _kinds(ds: Dataset) -> dict[str, str]:
    return {c: _KINDS.get(ds.name, {}).get(c, "text") for c in ds.columns}


def issue_fields(ds: Dataset) -> tuple[str, ...]:
    """Optional fields of ``ds`` that are emptied (and counted) when malformed."""
    return tuple(c for c, k in _kinds(ds).items() if k in _ISSUE_KINDS)


def raw_columns(ds: Dataset) -> tuple[str, ...]:
    """Columns of the raw-zone table of ``ds`` (without the ``dt`` partition column)."""
    return tuple(out for c in ds.columns for out in _RENAMED.get(c, (c,))) + ("_ingest_run",)


def needs_keys(ds: Dataset) -> bool:
    """Whether ingesting ``ds`` encrypts a field (and so needs a :class:`~cluster.core.privacy.KeyRing`)."""
    return "id_number" in _kinds(ds).values()


def _has_personal_data(ds: Dataset) -> bool:
    return any(k in ("phone", "id_number") for k in _kinds(ds).values())


# --- pure column functions -----------------------------------------------------------------


def parse_timestamp(col: Column, source_tz: str) -> Column:
    """Parse a contract timestamp into a UTC instant, independent of the session time zone.

    Accepted (after trimming): ISO-8601 with an offset (``2026-03-01T10:00:00+08:00``,
    ``2026-03-01T02:00:00Z``, up to 6 fractional digits), ``YYYY-MM-DD HH:MM:SS`` read as wall time
    in ``source_tz``, and epoch milliseconds (exactly 13 digits).

    Args:
        col: A string column.
        source_tz: IANA zone of timestamps written without an offset (``Asia/Shanghai``).

    Returns:
        A timestamp column; null for null, empty or unparseable input (including impossible
        dates such as February 30).
    """
    s = F.trim(col)
    return (
        F.when(s.rlike(_TS_EPOCH_MS), F.timestamp_millis(s.try_cast("long")))
        .when(s.rlike(_TS_ISO_OFFSET), s.try_cast("timestamp"))
        # Spark's string -> timestamp cast accepts a trailing region zone id, which makes the
        # result independent of spark.sql.session.timeZone (DST included).
        .when(s.rlike(_TS_LOCAL), F.concat(s, F.lit(f" {source_tz}")).try_cast("timestamp"))
    )


def redact(col: Column) -> Column:
    """Mask phone-like and ID-like digit runs in free text (``13812345678`` -> ``138****5678``)."""
    masked = F.regexp_replace(col, _ID_RUN_JAVA, _ID_MASK)
    return F.regexp_replace(masked, _PHONE_RUN_JAVA, "$1****$2")


def redact_text(text: str) -> str:
    """:func:`redact` for Python strings (log and error messages)."""
    return _PHONE_RUN_PY.sub(r"\1****\2", _ID_RUN_PY.sub(_ID_MASK, text))


def _mask_phone(s: Column) -> Column:
    # cluster.core.privacy.mask_phone as a column expression (only applied to valid numbers).
    return F.concat(F.substring(s, 1, 3), F.lit("****"), F.substring(s, 8, 4))


def encrypt_column(keyring: KeyRing) -> Callable[[Column, Column], Column]:
    """A column function ``(aad, plaintext) -> token`` encrypting with the active key.

    Encryption runs in Spark's Python workers, so clear ID numbers never leave the executors
    that parse them (collecting them to the driver would send every one over the network).
    The price: the active key travels to the executors inside the pickled function, over Spark's
    RPC (encrypted only if ``spark.network.crypto.enabled`` is set) -- see docs/privacy.md. Only
    the active key goes, never the retired ones. Nulls in either column give null.
    """
    ring = keyring.for_encryption()

    def encrypt_id_number(aad: pd.Series, plaintext: pd.Series) -> pd.Series:
        return pd.Series(
            [None if pd.isna(a) or pd.isna(v) else ring.encrypt(v, a) for a, v in zip(aad, plaintext)],
            dtype=object,
        )

    # Random nonces: never let the optimiser assume two evaluations give the same token.
    udf = F.pandas_udf(encrypt_id_number, "string").asNondeterministic()

    def apply(aad: Column, plaintext: Column) -> Column:
        # PySpark sends the pickled function (and so the key) to the JVM when the UDF is applied,
        # and py4j logs every command it sends at DEBUG: keep that one command out of the logs.
        with _py4j_debug_off():
            return udf(aad, plaintext)

    return apply


@contextlib.contextmanager
def _py4j_debug_off() -> Iterator[None]:
    """Raise py4j's loggers to INFO for the duration of a block."""
    loggers = [logging.getLogger(n) for n in ("py4j", "py4j.java_gateway", "py4j.clientserver")]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, saved):
            logger.setLevel(level)


def _utc_date(ts: Column) -> Column:
    # From epoch seconds, so the day is the UTC day whatever the session time zone.
    return F.date_from_unix_date(F.floor(F.unix_seconds(ts) / 86400).cast("int"))


# --- transforms ------------------------------------------------------------------------------


def parse_lines(lines: DataFrame, ds: Dataset, header: Sequence[str] | None = None) -> DataFrame:
    """Split text lines into the contract's columns, as trimmed strings (empty -> null).

    Args:
        lines: ``spark.read.text`` output (column ``value``), one row per physical line, in file
            order within each partition (no shuffle before this transform).
        ds: The dataset the lines belong to.
        header: The CSV header's column names, in file order (already validated); ignored for JSONL.

    Returns:
        Columns ``_mid`` (monotonically increasing id: partition in the high bits, position in
        the low 33 bits), ``_pid``, ``_idx``, ``_line`` (the text), ``_kind`` (``header``, ``blank``
        or ``row``), ``_malformed`` (a detail string when the record is malformed, else null), and
        ``_s_<column>`` for every contract column (null when absent from the header).
    """
    df = lines.select(F.col("value").alias("_line"), F.monotonically_increasing_id().alias("_mid"))
    df = df.withColumns(
        {
            "_pid": F.shiftright("_mid", 33).cast("int"),
            "_idx": F.col("_mid").bitwiseAND((1 << 33) - 1),
        }
    )
    blank = F.trim("_line") == ""
    if ds.fmt == "csv":
        if header is None:
            raise ValueError("CSV datasets need the header's column names")
        # The first line of the file is the header: Spark puts the first split of a file in the
        # first partition, so it is the row with id 0. main() double-checks its text.
        kind = F.when(F.col("_mid") == 0, "header").when(blank, "row_blank").otherwise("row")
        # Count fields outside quotes; RFC 4180 quotes ("" inside a quoted field) are removed first.
        n_fields = F.size(F.split(F.regexp_replace("_line", r'"(?:[^"]|"")*"', ""), ",", -1))
        schema = ", ".join(f"c{i} string" for i in range(len(header)))
        parsed = F.from_csv(F.col("_line"), schema, {"escape": '"', "mode": "PERMISSIVE"})
        position = {name: i for i, name in enumerate(header)}
        values = {
            _s(c): (F.col("_parsed")[f"c{position[c]}"] if c in position else F.lit(None).cast("string"))
            for c in ds.columns
        }
        malformed = F.when(
            n_fields != len(header),
            F.concat(F.lit(f"expected {len(header)} fields, got "), n_fields.cast("string")),
        )
    else:
        kind = F.when(blank, "row_blank").otherwise("row")
        schema = ", ".join(f"`{c}` string" for c in (*ds.columns, "_corrupt_record"))
        parsed = F.from_json(F.col("_line"), schema, {"columnNameOfCorruptRecord": "_corrupt_record"})
        values = {_s(c): F.col("_parsed")[c] for c in ds.columns}
        # Anything but one JSON object (an array, a bare value, broken JSON) fills _corrupt_record.
        corrupt = F.col("_parsed").isNull() | F.col("_parsed")["_corrupt_record"].isNotNull()
        malformed = F.when(corrupt, F.lit("not a JSON object"))
    kind = F.when(kind == "row_blank", "blank").otherwise(kind)
    # The parsed struct is its own projection: Spark then parses each line once, not once per field.
    df = df.withColumns({"_kind": kind, "_parsed": parsed}).withColumn("_malformed", malformed)
    cleaned = {name: F.nullif(F.trim(v), F.lit("")) for name, v in values.items()}
    return df.withColumns(cleaned).drop("_parsed")


@dataclass
class _Checked:
    out: str
    value: Column
    checks: list[tuple[str, Column, str]]
    issue: Column | None = None
    # An expensive parse, computed once into ``_t_<name>`` before ``value`` and the checks use it.
    parse: Column | None = None
    # Further raw-zone columns derived from the field (the encrypted ID number).
    extra: dict[str, Column] | None = None


def _t(name: str) -> str:
    return f"_t_{name}"


def _column_rules(
    name: str, kind: str, required: bool, source_tz: str,
    encrypt: Callable[[Column, Column], Column] | None = None,
) -> _Checked:
    s, t = F.col(_s(name)), F.col(_t(name))
    present = s.isNotNull()
    checks: list[tuple[str, Column, str]] = [(MISSING, s.isNull(), name)] if required else []
    if kind == "timestamp":
        return _Checked(
            name, t, checks + [(BAD_TIMESTAMP, present & t.isNull(), name)], parse=parse_timestamp(s, source_tz)
        )
    if kind in ("amount", "cost"):
        negative = NEGATIVE_AMOUNT if kind == "amount" else NEGATIVE_COST
        return _Checked(
            name,
            t,
            checks + [(BAD_NUMBER, present & t.isNull(), name), (negative, present & (t < 0), name)],
            parse=F.when(s.rlike(_NUMBER), s.try_cast("double")),
        )
    if kind == "quantity":
        numeric = s.rlike(_NUMBER)
        return _Checked(
            name,
            F.when(s.isNull(), F.lit(1)).otherwise(t),
            checks
            + [
                (BAD_NUMBER, present & ~numeric, name),
                (BAD_QUANTITY, present & numeric & (t.isNull() | (t < 1)), name),
            ],
            # A whole number ("2", not "2.0") that fits an int; at least 1 is checked above.
            parse=F.when(s.rlike(_INTEGER), s.try_cast("int")),
        )
    if kind == "status":
        return _Checked(
            name,
            F.coalesce(s, F.lit(ORDER_STATUSES[0])),
            checks + [(BAD_STATUS, present & ~s.isin(*ORDER_STATUSES), name)],
        )
    if kind == "user_id":
        bad = present & ((F.length(s) > MAX_USER_ID_LENGTH) | s.rlike(CONTROL_CHARS_JAVA))
        return _Checked(name, s, checks + [(BAD_ID, bad, name)])
    if kind == "action":
        return _Checked(name, s, checks + [(UNKNOWN_ACTION, present & ~s.isin(*ACTIONS), name)])
    if kind == "flag":
        return _Checked(name, s == "1", checks + [(BAD_FLAG, present & ~s.isin(*_FLAG_VALUES), name)])
    if kind == "consent":
        # Consent is never assumed: an empty or unreadable flag means no consent.
        return _Checked(name, F.coalesce(s == "1", F.lit(False)), checks, present & ~s.isin(*_FLAG_VALUES))
    if kind == "gender":
        ok = s.isin(*GENDERS)
        return _Checked(name, F.when(ok, s), checks, present & ~ok)
    if kind == "date":
        return _Checked(
            name, t, checks, present & t.isNull(), parse=F.when(s.rlike(_DATE), F.try_to_date(s, "yyyy-MM-dd"))
        )
    if kind == "phone":
        ok = s.rlike(_PHONE)
        return _Checked(PHONE_COLUMN, F.when(ok, _mask_phone(s)), checks, present & ~ok)
    if kind == "id_number":
        if encrypt is None:
            raise ValueError(f"{name} is encrypted as it is ingested: classify() needs a KeyRing")
        ok = F.upper(s).rlike(_ID_NUMBER)
        # Only valid numbers reach the encrypting UDF (Spark evaluates a UDF for every row, when()
        # or not); the associated data is the user id, so a token cannot move to another user.
        token = encrypt(F.col(_s("user_id")), F.when(ok, F.upper(s)))
        return _Checked(
            HAS_ID_NUMBER_COLUMN, F.coalesce(ok, F.lit(False)), checks, present & ~ok,
            extra={ID_NUMBER_COLUMN: F.when(ok, token)},
        )
    return _Checked(name, s, checks)


def classify(parsed: DataFrame, ds: Dataset, source_tz: str, keyring: KeyRing | None = None) -> DataFrame:
    """Type every field and find each row's first failing check.

    Checks run in the order of :data:`cluster.core.contract.REASONS` (malformed_record first), and in
    contract column order within one reason; the first failure is the row's reason. Malformed
    optional fields (gender, birth_date, phone, id_number, consent flags) are emptied and flagged
    instead. Duplicates are judged later by :func:`resolve_duplicates`.

    Args:
        parsed: Output of :func:`parse_lines`.
        ds: The dataset.
        source_tz: Zone of timestamps without an offset.
        keyring: Keys that encrypt ID numbers; required when ``ds`` has one (:func:`needs_keys`).

    Returns:
        ``parsed`` plus the typed raw-zone columns (:func:`raw_columns`, phones already masked
        and ID numbers encrypted), ``_reason``/``_detail`` (null when all checks pass),
        ``_issue_<field>`` booleans and ``_dt`` (UTC date of the time column as ``YYYY-MM-DD``, or
        :data:`UNKNOWN_DT`).
    """
    encrypt = encrypt_column(keyring) if keyring is not None and needs_keys(ds) else None
    rules = {c: _column_rules(c, k, c in ds.required, source_tz, encrypt) for c, k in _kinds(ds).items()}
    checks = [(MALFORMED, F.col("_malformed").isNotNull(), None)]
    checks += sorted((chk for r in rules.values() for chk in r.checks), key=lambda chk: _REASON_ORDER[chk[0]])
    reason: Column | None = None
    detail: Column | None = None
    for code, failed, field in checks:
        field_col = F.col("_malformed") if field is None else F.lit(field)
        reason = F.when(failed, F.lit(code)) if reason is None else reason.when(failed, F.lit(code))
        detail = F.when(failed, field_col) if detail is None else detail.when(failed, field_col)
    # Two projections: Spark does not collapse them when that would repeat the parses.
    df = parsed.withColumns({_t(c): r.parse for c, r in rules.items() if r.parse is not None})
    columns = {r.out: r.value for r in rules.values()}
    for r in rules.values():
        columns.update(r.extra or {})
    columns.update(
        {f"_issue_{c}": F.coalesce(r.issue, F.lit(False)) for c, r in rules.items() if r.issue is not None}
    )
    columns["_reason"] = reason
    columns["_detail"] = detail
    df = df.withColumns(columns)
    dt = F.lit(UNKNOWN_DT) if ds.time_column is None else F.coalesce(
        _utc_date(F.col(ds.time_column)).cast("string"), F.lit(UNKNOWN_DT)
    )
    return df.withColumn("_dt", dt).drop(*[_t(c) for c, r in rules.items() if r.parse is not None])


def _masked_record(ds: Dataset) -> Column:
    """The input line with personal data masked: by value for the personal fields, by pattern elsewhere."""
    record = F.col("_line")
    for field in ("phone", "id_number"):
        if field in ds.columns:
            # Mask the field's own value even when it matches no pattern (a 10-digit phone).
            value = F.col(_s(field))
            mask = F.when(value.rlike(_PHONE), _mask_phone(value)) if field == "phone" else F.lit(None)
            mask = F.coalesce(mask, F.lit("****" if field == "phone" else _ID_MASK))
            record = F.when(F.length(value) >= 5, F.replace(record, value, mask)).otherwise(record)
    return redact(record)


def resolve_duplicates(classified: DataFrame, ds: Dataset) -> DataFrame:
    """Drop exact duplicate lines, quarantine conflicting ids, and settle each line's fate.

    The first copy (in file order) of identical data lines is kept; later copies are
    ``duplicate``. Among kept rows that pass every check, an id carried by more than one row
    (different content, since identical lines are already gone) quarantines all of them as
    ``conflicting_duplicate``; rows failing another check keep their own reason.

    Returns:
        The columns later steps need, and no raw personal data (so the result can be cached):
        the raw-zone columns, ``_dt``, ``_pid``, ``_idx``, ``_kind``, ``_issue_<field>``,
        ``_status`` (``header``, ``blank``, ``duplicate``, ``quarantined`` or ``accepted``),
        ``reason``, ``detail`` and ``record`` (the masked line; null unless quarantined or header).
    """
    id_column = ds.id_column
    copy = F.row_number().over(Window.partitionBy("_kind", "_line").orderBy("_mid"))
    df = classified.withColumn("_copy", copy)
    valid = (F.col("_kind") == "row") & (F.col("_copy") == 1) & F.col("_reason").isNull()
    df = df.withColumn("_valid_per_id", F.sum(valid.cast("int")).over(Window.partitionBy(_s(id_column))))
    conflict = valid & (F.col("_valid_per_id") > 1)
    status = (
        F.when(F.col("_kind") != "row", F.col("_kind"))
        .when(F.col("_copy") > 1, "duplicate")
        .when(F.col("_reason").isNotNull() | conflict, "quarantined")
        .otherwise("accepted")
    )
    quarantined = F.col("_status") == "quarantined"
    issues = [f"_issue_{f}" for f in issue_fields(ds)]
    return df.withColumn("_status", status).select(
        *raw_columns(ds)[:-1],
        "_dt", "_pid", "_idx", "_kind", "_status", *issues,
        F.when(quarantined, F.coalesce("_reason", F.lit(CONFLICT))).alias("reason"),
        F.when(quarantined, F.coalesce("_detail", F.lit(id_column))).alias("detail"),
        F.when(quarantined, _masked_record(ds))
        .when(F.col("_kind") == "header", redact(F.col("_line")))
        .alias("record"),
    )


def flag_unknown_users(orders: DataFrame, user_ids: DataFrame | None) -> DataFrame:
    """Add ``_unknown_user``: an accepted order whose ``user_id`` is not in ``user_ids``.

    Args:
        orders: Output of :func:`resolve_duplicates` for orders.
        user_ids: One column ``user_id`` (the accepted users of the same delivery), or None when
            the delivery has no users file (then nothing is flagged).
    """
    if user_ids is None:
        return orders.withColumn("_unknown_user", F.lit(False))
    known = F.broadcast(user_ids.select(F.col("user_id").alias("_known_user")).distinct())
    joined = orders.join(known, orders["user_id"] == known["_known_user"], "left")
    flag = (F.col("_status") == "accepted") & F.col("_known_user").isNull()
    return joined.withColumn("_unknown_user", flag).drop("_known_user")


def reconcile(resolved: DataFrame, ds: Dataset, header_line: str | None = None) -> DataFrame:
    """All counts of one file in one aggregation, one row per input partition.

    Returns:
        ``_pid``, ``lines`` (physical lines, for line numbers), ``header_found``, ``rows_read``,
        ``accepted``, ``duplicates``, ``unknown_users``, ``q_<reason>`` per reason code and
        ``f_<field>`` per emptied optional field (accepted rows only). Sum the rows.
    """
    status, kind = F.col("_status"), F.col("_kind")
    header_found = F.lit(False)
    if header_line is not None:
        # a byte-order mark (tolerated by the contract) is dropped on both sides: Spark's text
        # reader drops it from the first record of a plain file
        header_found = (kind == "header") & (
            F.regexp_replace(F.col("record"), "^\ufeff", "") == F.lit(redact_text(header_line.lstrip("\ufeff"))))
    unknown = F.col("_unknown_user") if "_unknown_user" in resolved.columns else F.lit(False)
    aggs = [
        F.count(F.lit(1)).alias("lines"),
        F.count_if(header_found).alias("header_found"),
        F.count_if(kind == "row").alias("rows_read"),
        F.count_if(status == "accepted").alias("accepted"),
        F.count_if(status == "duplicate").alias("duplicates"),
        F.count_if(unknown).alias("unknown_users"),
    ]
    aggs += [F.count_if(F.col("reason") == r.code).alias(f"q_{r.code}") for r in REASONS]
    aggs += [F.count_if((status == "accepted") & F.col(f"_issue_{f}")).alias(f"f_{f}") for f in issue_fields(ds)]
    return resolved.groupBy("_pid").agg(*aggs)


def raw_rows(resolved: DataFrame, ds: Dataset, run_id: str) -> DataFrame:
    """Accepted rows as written to the raw zone: typed columns, ``_ingest_run`` and ``dt``."""
    accepted = resolved.where(F.col("_status") == "accepted").withColumn("_ingest_run", F.lit(run_id))
    return accepted.select(*raw_columns(ds), F.col("_dt").alias("dt"))


def quarantine_rows(resolved: DataFrame, source_file: str, line_offsets: dict[int, int]) -> DataFrame:
    """Quarantined rows: ``reason``, ``detail``, ``line_number``, masked ``record``, ``source_file``.

    Args:
        resolved: Output of :func:`resolve_duplicates`.
        source_file: Path of the input file, stored as is.
        line_offsets: Physical lines before each input partition (``_pid -> lines``), from
            :func:`reconcile`; line numbers are 1-based and count the header.
    """
    offset: Column = F.lit(0).cast("long")
    for pid, lines_before in sorted(line_offsets.items()):
        offset = F.when(F.col("_pid") == pid, F.lit(lines_before)).otherwise(offset)
    return resolved.where(F.col("_status") == "quarantined").select(
        "reason",
        "detail",
        (F.col("_idx") + offset + 1).cast("long").alias("line_number"),
        "record",
        F.lit(source_file).alias("source_file"),
    )


# --- the job ---------------------------------------------------------------------------------


def _find_file(input_dir: Path, ds: Dataset) -> Path | None:
    found = [input_dir / n for n in ds.file_names() if (input_dir / n).is_file()]
    if len(found) > 1:
        raise DataContractError(
            f"{input_dir}: both {found[0].name} and {found[1].name} are present; deliver one of them"
        )
    return found[0] if found else None


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _read_header(path: Path, ds: Dataset) -> tuple[list[str], str]:
    """The validated header names and the header line exactly as Spark will read it."""
    try:
        with _open_text(path) as fh:
            line = fh.readline()
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataContractError(f"{path.name}: cannot read the header row as UTF-8 text ({exc})") from exc
    line = line.rstrip("\r\n")
    names = [n.strip() for n in next(csv.reader([line.lstrip("\ufeff")]), [])]
    if not any(names):
        raise DataContractError(f"{path.name}: the file has no header row", field=ds.name)
    _check_header_shape(path, ds, names)
    seen: set[str] = set()
    for name in names:
        if name not in ds.columns:
            raise DataContractError(
                f"{path.name}: unknown column {redact_text(name)!r} in the header "
                f"(contract columns: {', '.join(ds.columns)})",
                field=f"{ds.name}.{redact_text(name)}",
            )
        if name in seen:
            raise DataContractError(
                f"{path.name}: column {name!r} appears twice in the header", field=f"{ds.name}.{name}"
            )
        seen.add(name)
    for name in ds.required:
        if name not in seen:
            raise DataContractError(
                f"{path.name}: required column {name!r} is missing from the header", field=f"{ds.name}.{name}"
            )
    return names, line


def _check_header_shape(path: Path, ds: Dataset, names: list[str]) -> None:
    """Refuse a first line that is not a header at all, before the column checks quote any of it.

    A file separated by ``;`` or a tab reads as one unknown column; a headerless file starts with
    a data row, whose fields are values (personal data, perhaps) that no message may repeat.
    """
    if len(names) == 1:
        for sep in (";", "\t", "|"):
            parts = [p.strip() for p in names[0].split(sep)]
            if len(parts) > 1 and sum(p in ds.columns for p in parts) > len(parts) / 2:
                raise DataContractError(
                    f"{path.name}: the header is separated by {sep!r}; the contract's separator is ','",
                    field=ds.name,
                )
    if not any(n in ds.columns for n in names):
        raise DataContractError(
            f"{path.name}: unknown columns in the header: none of its {len(names)} fields is a contract column "
            f"(is the header row missing? contract columns: {', '.join(ds.columns)})",
            field=ds.name,
        )


def _require_rows(path: Path, ds: Dataset) -> None:
    """Refuse a required file with nothing after its header (blank lines do not count)."""
    try:
        with _open_text(path) as fh:
            fh.readline()
            if any(line.strip() for line in fh):
                return
    except (UnicodeDecodeError, OSError, EOFError):
        return  # undecodable rows are the row checks' business (quarantined as malformed)
    raise DataContractError(f"{path.name}: the file has a header but no rows", field=ds.name)


def _skipped(name: str) -> dict:
    return {
        "file": None,
        "skipped": True,
        "rows_read": 0,
        "accepted": 0,
        "quarantined": {},
        "duplicates_dropped": 0,
        **({"unknown_users": None} if name == "orders" else {}),
        "field_issues": {},
        "raw_path": None,
        "quarantine_path": None,
    }


class Delivery(NamedTuple):
    """A delivery folder that passed the whole-delivery checks (:func:`check_delivery`)."""

    input_dir: Path
    #: Per dataset: the file (None when an optional one is absent), a CSV's header names and line.
    plan: list[tuple[Dataset, Path | None, list[str] | None, str | None]]
    #: The keys ID numbers are encrypted with; None when no delivered file has ID numbers.
    keyring: KeyRing | None


def check_delivery(settings: Settings, input_dir: str | Path) -> Delivery:
    """The whole-delivery checks of docs/data-contract.md section 10, without Spark: reads only
    each CSV's header (and whether ``orders.csv`` has a row), and the keys if needed.

    Raises:
        DataContractError: the folder or a file breaks the contract as a whole.
        ConfigError: a users file is delivered but no key to encrypt ID numbers is configured.
    """
    input_dir = Path(input_dir).resolve()
    if not input_dir.is_dir():
        raise DataContractError(f"input folder {input_dir} does not exist")
    plan: list[tuple[Dataset, Path | None, list[str] | None, str | None]] = []
    for ds in DATASETS:
        path = _find_file(input_dir, ds)
        if path is None and not ds.optional_file:
            raise DataContractError(
                f"{input_dir}: {ds.file_names()[0]} (or {ds.file_names()[1]}) is required and missing",
                field=ds.name,
            )
        header, header_line = _read_header(path, ds) if path is not None and ds.fmt == "csv" else (None, None)
        if path is not None and not ds.optional_file:
            _require_rows(path, ds)
        plan.append((ds, path, header, header_line))
    # Fail before touching the lake when an ID number would have no key to be encrypted with.
    keyring = load_keyring(settings.privacy) if any(f and needs_keys(d) for d, f, _, _ in plan) else None
    return Delivery(input_dir, plan, keyring)


def main(
    settings: Settings,
    input_dir: str | Path,
    report_path: str | Path | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Ingest one delivery folder into the lake and write the reconciliation report.

    Args:
        settings: Platform settings (lake, Spark, ``ingest.source_timezone``, ``privacy`` keys).
        input_dir: Local folder holding ``orders.csv`` and optionally ``users.csv``,
            ``events.jsonl``, ``impressions.csv`` (each may be gzipped).
        report_path: Also write the report JSON here (a local file).
        run_id: Run id; default :func:`cluster.core.catalog.new_run_id`.
        progress: Called as ``progress(step, fraction)`` with fraction in [0, 1].

    Returns:
        The report (see docs/data-contract.md).

    Raises:
        DataContractError: the folder or a file breaks the contract as a whole (no orders file or
            one without rows, a header without a required column or with an unknown one, a wrong
            separator, not UTF-8): :func:`check_delivery`, before Spark starts.
        ConfigError: a users file is delivered but no key to encrypt ID numbers is configured
            (``privacy.key_file`` / ``PMKT_PII_KEYS``, see docs/privacy.md).
        InvalidArgument: ``run_id`` is not a safe folder name.
        PlatformError: the per-file reconciliation does not add up (a bug, never bad data).
    """
    started = datetime.now(timezone.utc)
    ctx = JobContext.start(settings, "pmkt-ingest", run_id=run_id, progress=progress, lake=open_lake(settings))
    # Validate the whole folder before touching the lake: a bad header fails the run up front.
    delivery = check_delivery(settings, input_dir)
    files = _ingest_files(ctx, delivery)
    report = {
        "run_id": ctx.run_id,
        "input_dir": str(delivery.input_dir),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_timezone": settings.ingest.source_timezone,
        "files": files,
        "totals": _totals(files),
    }
    ctx.step("writing report", 0.98)
    INGEST_REPORTS.write_report(ctx.lake, ctx.run_id, report)
    if report_path is not None:
        out = Path(report_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    ctx.step("done", 1.0)
    return report


def _ingest_files(ctx: JobContext, delivery: Delivery) -> dict[str, dict]:
    """Classify, write and reconcile every delivered file: the report's ``files``, by dataset."""
    files: dict[str, dict] = {}
    cached: list[DataFrame] = []
    staged: list[str] = []
    users: DataFrame | None = None
    try:
        for i, (ds, path, header, header_line) in enumerate(delivery.plan):
            if path is None:
                log.info("ingest %s: no %s in %s, skipped", ds.name, ds.file_names()[0], delivery.input_dir)
                files[ds.name] = _skipped(ds.name)
                continue
            ctx.step(f"{ds.name}: classifying {path.name}", i / len(delivery.plan))
            if _has_personal_data(ds):
                staged.append(path.name)  # before staging: a half-copied file is removed too
            resolved = _resolve(ctx, ds, path, header, delivery.keyring, users).cache()
            cached.append(resolved)
            files[ds.name] = _write_file(ctx, ds, path, resolved, header_line, users_delivered=users is not None,
                                         fraction=(i + 0.6) / len(delivery.plan))
            if ds.name == "users":
                users = resolved  # stays cached for the orders' unknown-user check
            else:
                resolved.unpersist()
    finally:
        for df in cached:
            df.unpersist()
        # A distributed lake staged the delivered file in landing/<run_id>/: the clear phone and ID
        # numbers of a users file must not outlive the run there (on success or failure).
        for name in staged:
            if LANDING.exists(ctx.lake, ctx.run_id, name):
                LANDING.delete(ctx.lake, ctx.run_id, name)
    return files


def _resolve(ctx: JobContext, ds: Dataset, path: Path, header: list[str] | None, keyring: KeyRing | None,
             users: DataFrame | None) -> DataFrame:
    """One delivered file's lines, classified and de-duplicated (orders: unknown users flagged)."""
    lines = ctx.spark.read.text(ctx.lake.stage_input(path, ctx.run_id))
    classified = classify(parse_lines(lines, ds, header), ds, ctx.settings.ingest.source_timezone, keyring)
    resolved = resolve_duplicates(classified, ds)
    if ds.name == "orders":
        known = None if users is None else users.where(F.col("_status") == "accepted").select("user_id")
        resolved = flag_unknown_users(resolved, known)
    return resolved


def _write_file(ctx: JobContext, ds: Dataset, path: Path, resolved: DataFrame, header_line: str | None, *,
                users_delivered: bool, fraction: float) -> dict:
    """Reconcile one file, write its accepted rows to the raw zone and its rejected ones to the
    quarantine; returns its report entry."""
    entry, offsets = _file_entry(ds, path, reconcile(resolved, ds, header_line).collect(), header_line)
    if ds.name == "orders" and not users_delivered:
        entry["unknown_users"] = None  # not judged without a users file
    ctx.step(f"{ds.name}: writing", fraction)
    if entry["accepted"]:
        raw = raw_rows(resolved, ds, ctx.run_id).repartition("dt")  # one file per day
        raw.write.mode("overwrite").partitionBy("dt").parquet(RAW[ds.name].uri(ctx.lake))
        entry["raw_path"] = RAW[ds.name].rel()
    if entry["quarantined"]:
        run = Table.run_folder(ctx.run_id)
        quarantined = quarantine_rows(resolved, str(path), offsets).repartition(1)
        quarantined.sortWithinPartitions("line_number").write.mode("overwrite").parquet(
            QUARANTINE.uri(ctx.lake, ds.name, run)
        )
        entry["quarantine_path"] = QUARANTINE.rel(ds.name, run)
    log.info(
        "ingest %s: %d read, %d accepted, %d quarantined, %d duplicates dropped",
        ds.name, entry["rows_read"], entry["accepted"], sum(entry["quarantined"].values()),
        entry["duplicates_dropped"],
    )
    return entry


def _file_entry(ds: Dataset, path: Path, counts: list, header_line: str | None) -> tuple[dict, dict[int, int]]:
    """The report entry of one file from :func:`reconcile`'s rows, and the line offsets per partition."""
    rows = sorted((r.asDict() for r in counts), key=lambda r: r["_pid"])

    def total(key: str) -> int:
        return int(sum(r[key] for r in rows))

    if header_line is not None and total("header_found") != 1:
        raise PlatformError(f"{path.name}: could not locate the header as the file's first line")
    offsets, before = {}, 0
    for r in rows:
        offsets[int(r["_pid"])] = before
        before += int(r["lines"])
    quarantined = {r.code: total(f"q_{r.code}") for r in REASONS if total(f"q_{r.code}")}
    entry = {
        "file": path.name,
        "skipped": False,
        "rows_read": total("rows_read"),
        "accepted": total("accepted"),
        "quarantined": quarantined,
        "duplicates_dropped": total("duplicates"),
        **({"unknown_users": total("unknown_users")} if ds.name == "orders" else {}),
        "field_issues": {f: total(f"f_{f}") for f in issue_fields(ds) if total(f"f_{f}")},
        "raw_path": None,
        "quarantine_path": None,
    }
    balance = entry["accepted"] + sum(quarantined.values()) + entry["duplicates_dropped"]
    if entry["rows_read"] != balance:
        raise PlatformError(
            f"{path.name}: reconciliation failed: {entry['rows_read']} rows read but "
            f"{entry['accepted']} accepted + {sum(quarantined.values())} quarantined + "
            f"{entry['duplicates_dropped']} duplicates = {balance}"
        )
    return entry, offsets


def _totals(files: dict[str, dict]) -> dict:
    present = [f for f in files.values() if not f["skipped"]]
    orders = files.get("orders", {})
    return {
        "files": len(present),
        "rows_read": sum(f["rows_read"] for f in present),
        "accepted": sum(f["accepted"] for f in present),
        "quarantined": sum(sum(f["quarantined"].values()) for f in present),
        "duplicates_dropped": sum(f["duplicates_dropped"] for f in present),
        "unknown_users": orders.get("unknown_users"),
        "field_issues": sum(sum(f["field_issues"].values()) for f in present),
    }


def format_report(report: dict) -> str:
    """A human-readable reconciliation summary of an ingest report, one block per file."""
    lines = [
        f"Ingest run {report['run_id']}",
        f"  input {report['input_dir']}  (timestamps without offset read as {report['source_timezone']})",
    ]
    width = max(len(name) for name in report["files"]) if report["files"] else 0
    for name, f in report["files"].items():
        if f["skipped"]:
            lines.append(f"  {name:<{width}}  skipped (file absent)")
            continue
        q = sum(f["quarantined"].values())
        lines.append(
            f"  {name:<{width}}  {f['file']}: read {f['rows_read']:,} = accepted {f['accepted']:,}"
            f" + quarantined {q:,} + duplicates dropped {f['duplicates_dropped']:,}"
        )
        pad = " " * (width + 4)
        if f["quarantined"]:
            lines.append(pad + "quarantined: " + ", ".join(f"{k} {v:,}" for k, v in f["quarantined"].items()))
        if f.get("unknown_users"):
            lines.append(pad + f"orders of users not in users file: {f['unknown_users']:,} (kept)")
        if f["field_issues"]:
            lines.append(pad + "emptied fields: " + ", ".join(f"{k} {v:,}" for k, v in f["field_issues"].items()))
        if f.get("quarantine_path"):
            lines.append(pad + f"quarantine: {f['quarantine_path']}")
    t = report["totals"]
    lines.append(
        f"  {'total':<{width}}  read {t['rows_read']:,} = accepted {t['accepted']:,}"
        f" + quarantined {t['quarantined']:,} + duplicates dropped {t['duplicates_dropped']:,}"
    )
    return "\n".join(lines)
