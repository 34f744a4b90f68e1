"""Small pure helpers: the resident-ID check digit, timestamps in the accepted formats, draws
shared by the steps, and the lines of the default style."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.contract import dataset
from cluster.datagen.params import _HOUR_WEIGHTS, _TZ_OFFSET_S, TIMESTAMP_FORMATS

_ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
_ID_CHECK = "10X98765432"


def id_check_digit(first17: str) -> str:
    """The GB 11643 check character of an 18-character resident ID.

    Args:
        first17: The first 17 digits.

    Returns:
        ``0``-``9`` or ``X``.
    """
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS))
    return _ID_CHECK[total % 11]


def _day_number(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def _format_timestamps(local_s: np.ndarray, fmt: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """Format local wall-clock seconds in the format chosen per row (0 local, 1 ISO, 2 epoch ms)."""
    iso = np.datetime_as_string(local_s.astype("datetime64[s]"), unit="s")
    out = np.char.replace(iso, "T", " ").astype(object)
    is_iso = fmt == 1
    out[is_iso] = np.char.add(iso[is_iso], "+08:00").astype(object)
    is_epoch = fmt == 2
    epoch_ms = (local_s[is_epoch] - _TZ_OFFSET_S) * 1000 + ms[is_epoch]
    out[is_epoch] = epoch_ms.astype(str).astype(object)
    return out


def _timestamps(rng: np.random.Generator, local_s: np.ndarray) -> np.ndarray:
    shares = np.array([s for _, s in TIMESTAMP_FORMATS])
    fmt = rng.choice(len(shares), size=len(local_s), p=shares / shares.sum())
    ms = rng.integers(0, 1000, size=len(local_s))
    return _format_timestamps(local_s.astype(np.int64), fmt, ms)


def _time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    hour = rng.choice(24, size=n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    return hour * 3600 + rng.integers(0, 3600, size=n)


def _choose_rows(rng: np.random.Generator, cum: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Draw one column index per row from per-row cumulative probabilities ``cum[rows]``."""
    u = rng.random(len(rows))[:, None]
    return np.minimum((cum[rows] < u).sum(axis=1), cum.shape[1] - 1)


def _ids(prefix: str, start: int, n: int, width: int) -> np.ndarray:
    return np.array([f"{prefix}{i:0{width}d}" for i in range(start, start + n)], dtype=object)


def _csv_lines(df: pd.DataFrame) -> list[str]:
    if df.empty:
        return []
    text = df.to_csv(header=False, index=False, lineterminator="\n")
    return text[:-1].split("\n")


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _event_lines(df: pd.DataFrame) -> list[str]:
    cols = [df[c].to_numpy() for c in dataset("events").columns]
    return [
        f'{{"event_id":"{a}","user_id":"{b}","ts":"{c}","action":"{d}","item_id":"{e}",'
        f'"category":"{f}","brand":"{g}","device_type":"{h}"}}'
        for a, b, c, d, e, f, g, h in zip(*cols)
    ]
