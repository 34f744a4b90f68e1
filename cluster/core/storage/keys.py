"""Row-key and cell encoding of the profile store, shared by every back-end.

Columns are ``family:qualifier`` as in HBase. Families:

* ``a`` static attributes (masked personal data, consent flags, city ...);
* ``f`` features computed by Spark (RFM, CLV ...);
* ``c`` counters updated in real time (8-byte big-endian signed, HBase's counter format);
* ``t`` tags with weights;
* ``m`` model outputs (segment, scores).

Values other than counters are UTF-8 text: numbers in their shortest round-trip form.
"""

from __future__ import annotations

import json
import math
import struct
import zlib

__all__ = [
    "FAMILIES",
    "COUNTER_FAMILY",
    "row_key",
    "split_column",
    "encode_value",
    "encode_counter",
    "decode_counter",
    "decode_str",
    "decode_float",
    "decode_flag",
    "decode_ranked",
]

FAMILIES = ("a", "f", "c", "t", "m")
COUNTER_FAMILY = "c"
_COUNTER = struct.Struct(">q")


def row_key(user_id: str, salt_buckets: int) -> bytes:
    """HBase row key: a 2-hex-digit salt bucket, ``|``, then the user id.

    Sequential ids (``u000001``, ``u000002``...) would all land in one region; the salt,
    ``crc32(user_id) mod salt_buckets``, spreads them over ``salt_buckets`` key ranges
    while a point lookup still needs only the id.

    Raises:
        ValueError: empty id or buckets outside 1..256.
    """
    if not user_id:
        raise ValueError("user_id must not be empty")
    if not 1 <= salt_buckets <= 256:
        raise ValueError("salt_buckets must be within 1..256")
    raw = user_id.encode("utf-8")
    bucket = zlib.crc32(raw) % salt_buckets
    return b"%02x|" % bucket + raw


def split_column(column: str) -> tuple[str, str]:
    """Split ``family:qualifier``; the family must be one of :data:`FAMILIES`."""
    family, sep, qualifier = column.partition(":")
    if not sep or not qualifier or family not in FAMILIES:
        raise ValueError(f"column {column!r} is not family:qualifier with a family in {FAMILIES}")
    return family, qualifier


def encode_value(value: str | int | float | bool) -> bytes:
    """Encode a non-counter cell value as UTF-8 text.

    Booleans become ``1``/``0``; floats use ``repr`` (shortest round trip); NaN and
    infinities are refused because no reader could act on them.
    """
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot store non-finite number {value!r}")
        return repr(value).encode("ascii")
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


def encode_counter(value: int) -> bytes:
    """8-byte big-endian signed integer, the format HBase increments in place."""
    return _COUNTER.pack(value)


def decode_counter(raw: bytes) -> int:
    """Inverse of :func:`encode_counter`."""
    return _COUNTER.unpack(raw)[0]


def decode_str(raw: bytes) -> str:
    return raw.decode("utf-8")


def decode_float(raw: bytes) -> float:
    return float(raw.decode("ascii"))


def decode_flag(raw: bytes | None) -> bool:
    """A boolean cell (consents, ``has_id_number``): ``1`` / ``true``; a missing cell is false."""
    return raw is not None and decode_str(raw).strip().lower() in ("1", "true")


def decode_ranked(raw: bytes) -> list[tuple[str, float]] | None:
    """A ranked cell, JSON ``[[name, score], ...]`` (``t:top_categories``); None if malformed."""
    try:
        return [(str(name), float(score)) for name, score in json.loads(decode_str(raw))]
    except (ValueError, TypeError):
        return None
