"""The input data contract (docs/data-contract.md), as data both the generator and ingest use.

Only the vocabulary lives here: file names, columns, which are required, reason codes.
The enforcement is the Spark job ``spark_jobs.ingest``; the checks on a serving request's ids
(:func:`validate_user_id`) live here too, so every service and ``pmkt privacy forget`` apply one rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cluster.core.errors import InvalidArgument

__all__ = [
    "has_control_chars",
    "validate_user_id",
    "CONTROL_CHARS_JAVA",
    "MAX_USER_ID_LENGTH",
    "Dataset",
    "DATASETS",
    "ACTIONS",
    "ORDER_STATUSES",
    "GENDERS",
    "TS_ISO_OFFSET",
    "TS_LOCAL",
    "TS_EPOCH_MS",
    "Reason",
    "REASONS",
    "dataset",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The same characters as a Java regular expression (Spark's ``rlike``).
CONTROL_CHARS_JAVA = "[\\x00-\\x1f\\x7f]"
#: Longest user id the contract accepts (and the API's default ``serve.max_user_id_length``): a
#: user id the lake holds is one every endpoint takes.
MAX_USER_ID_LENGTH = 128


def has_control_chars(value: str) -> bool:
    """Whether ``value`` holds an ASCII control character (ids and names must not)."""
    return _CONTROL.search(value) is not None


def validate_user_id(user_id: str, max_length: int, field: str = "user_id") -> str:
    """Check a user id from a request.

    Raises:
        InvalidArgument: empty, longer than ``max_length``, or containing control characters.
    """
    if not user_id or not user_id.strip():
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(user_id) > max_length:
        raise InvalidArgument(f"{field} must be at most {max_length} characters, got {len(user_id)}", field=field)
    if has_control_chars(user_id):
        raise InvalidArgument(f"{field} must not contain control characters", field=field)
    return user_id


#: The three accepted timestamp formats (docs/data-contract.md), as regular expressions that
#: mean the same in Python and in Java (Spark's rlike): ISO-8601 with an offset, wall time in
#: ingest.source_timezone, and 13-digit epoch milliseconds.
TS_ISO_OFFSET = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
TS_LOCAL = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"
TS_EPOCH_MS = r"^\d{13}$"
#: Behaviour actions accepted in events.jsonl.
ACTIONS = ("view", "click", "favorite", "cart", "remove_cart", "purchase")
#: Order statuses; an empty status means ``paid``.
ORDER_STATUSES = ("paid", "refunded")
#: Declared genders; anything else is emptied (a field issue).
GENDERS = ("M", "F")


@dataclass(frozen=True)
class Dataset:
    """One input file of the contract.

    Attributes:
        name: Dataset name, also the lake folder name.
        fmt: ``csv`` (header row) or ``jsonl`` (one object per line).
        columns: Every contract column, in file order.
        required: Columns that must be present and non-empty in every row.
        id_column: The unique key (duplicates and conflicts are judged on it).
        time_column: The event-time column; the raw zone is partitioned by its UTC date.
        optional_file: Whether the folder may lack this file.
    """

    name: str
    fmt: str
    columns: tuple[str, ...]
    required: tuple[str, ...]
    id_column: str
    time_column: str | None
    optional_file: bool = True

    def file_names(self) -> tuple[str, str]:
        """The accepted file names: plain and gzipped."""
        ext = "csv" if self.fmt == "csv" else "jsonl"
        return (f"{self.name}.{ext}", f"{self.name}.{ext}.gz")


DATASETS: tuple[Dataset, ...] = (
    Dataset(
        name="users",
        fmt="csv",
        columns=(
            "user_id", "gender", "birth_date", "city", "phone", "id_number",
            "signup_time", "opt_in_sms", "opt_in_push", "opt_in_email",
        ),
        required=("user_id",),
        id_column="user_id",
        time_column="signup_time",
    ),
    Dataset(
        name="orders",
        fmt="csv",
        columns=(
            "order_id", "user_id", "order_time", "item_id", "category", "brand",
            "quantity", "amount", "status",
        ),
        required=("order_id", "user_id", "order_time", "amount"),
        id_column="order_id",
        time_column="order_time",
        optional_file=False,
    ),
    Dataset(
        name="events",
        fmt="jsonl",
        columns=("event_id", "user_id", "ts", "action", "item_id", "category", "brand", "device_type"),
        required=("event_id", "user_id", "ts", "action"),
        id_column="event_id",
        time_column="ts",
    ),
    Dataset(
        name="impressions",
        fmt="csv",
        columns=(
            "impression_id", "user_id", "ts", "ad_id", "campaign_id", "channel",
            "ad_position", "device_type", "cost", "clicked",
        ),
        required=("impression_id", "user_id", "ts", "clicked"),
        id_column="impression_id",
        time_column="ts",
    ),
)


def dataset(name: str) -> Dataset:
    """Look a dataset up by name (``KeyError`` names the known ones)."""
    for ds in DATASETS:
        if ds.name == name:
            return ds
    raise KeyError(f"unknown dataset {name!r}; known: {', '.join(d.name for d in DATASETS)}")


@dataclass(frozen=True)
class Reason:
    """A quarantine reason code and what it means."""

    code: str
    meaning: str


REASONS: tuple[Reason, ...] = (
    Reason("malformed_record", "the CSV line has the wrong number of fields, or the JSON line is not an object"),
    Reason("missing_required", "a required field is absent or empty (detail names it)"),
    Reason("bad_id", f"user_id is longer than {MAX_USER_ID_LENGTH} characters or holds a control character"),
    Reason("bad_timestamp", "a timestamp is in none of the accepted formats (detail names the field)"),
    Reason("bad_number", "a numeric field is not a number (detail names it)"),
    Reason("negative_amount", "orders.amount is below zero"),
    Reason("negative_cost", "impressions.cost is below zero"),
    Reason("bad_quantity", "orders.quantity is not an integer >= 1"),
    Reason("bad_status", "orders.status is neither paid nor refunded"),
    Reason("unknown_action", "events.action is not one of the contract's actions"),
    Reason("bad_flag", "impressions.clicked is not 0 or 1"),
    Reason("conflicting_duplicate", "another row has the same id and different content; all such rows are quarantined"),
)
