"""Style "varied": the same world written in other shapes the contract allows (its parameters,
then the rewriting)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.contract import dataset
from cluster.datagen.defects import _csv_join
from cluster.datagen.helpers import _format_timestamps
from cluster.datagen.params import _ADS_PER_CAMPAIGN, _TZ_OFFSET_S, CATEGORIES, DEVICES
from cluster.datagen.truth import _truth_users
from cluster.datagen.users import _build_users
from cluster.datagen.world import _World

#: Output styles of :func:`generate`.
STYLES = ("default", "varied")

#: Style "varied": share of rows written in each timestamp format, in every timestamp column.
#: ISO rows carry one of ``_VARIED_ISO_OFFSETS`` (the same instant as another zone's wall time)
#: and 0-6 fractional digits; local rows are Asia/Shanghai wall time (``ingest.source_timezone``).
VARIED_TIMESTAMP_FORMATS: tuple[tuple[str, float], ...] = (
    ("local", 0.40),  # 2026-03-01 10:00:00
    ("iso_offset", 0.35),  # 2026-03-01T02:00:00.25Z, 2026-02-28T21:00:00-05:00, ...
    ("epoch_ms", 0.25),  # 1772330400123
)
_VARIED_ISO_OFFSETS: tuple[tuple[str, int], ...] = (
    ("Z", 0), ("+00:00", 0), ("+08:00", 8 * 3600), ("-05:00", -5 * 3600), ("+05:30", 5 * 3600 + 1800),
    ("+09:00", 9 * 3600),
)

#: Style "varied": placement name of each planted ad position (the click model's position term
#: is unchanged, so a model can learn that placement matters). ``_NUMERIC_POSITION_SHARE`` of the
#: rows keep the number as text ("1".."6"); the manifest maps every spelling to its position.
AD_POSITION_NAMES: dict[int, str] = {
    1: "top_banner", 2: "feed_slot_2", 3: "信息流-3", 4: "sidebar", 5: "feed_slot_5", 6: "bottom_banner",
}
_NUMERIC_POSITION_SHARE = 0.25

#: Style "varied": channel and device names as written (one spelling each, so their click-model
#: terms stay learnable).
VARIED_CHANNELS: dict[str, str] = {
    "feed": "wechat_moments", "search": "baidu_search", "short_video": "douyin_feed",
    "sms": "sms_notify", "push": "app_push", "email": "email",
}
VARIED_DEVICES: dict[str, str] = {
    "android": "Android", "ios": "iPhone", "pc": "pc-web", "mini_program": "WeChat-MiniProgram",
}
#: Campaign ids are ``<year>Q<quarter>-<theme>-<channel tag>``, e.g. ``2026Q2-spring-sale-douyin``.
_CAMPAIGN_THEMES = (
    "spring-sale", "618-mid-year", "summer-clearance", "new-arrivals", "member-day", "brand-week",
    "back-to-school", "flash-deal", "double-11-warmup", "weekend-special", "new-user-gift", "year-end",
)
_CAMPAIGN_CHANNEL_TAGS = {
    "feed": "moments", "search": "sem", "short_video": "douyin", "sms": "sms", "push": "push", "email": "edm",
}

#: Style "varied": share of users (with a city) whose city is one of ``_VARIED_CITIES``: cities
#: outside :data:`CITIES`, other spellings of them, and cities outside mainland China.
_VARIED_CITY_SHARE = 0.25
_VARIED_CITIES = (
    "佛山", "东莞", "合肥", "青岛", "厦门", "长沙", "昆明", "乌鲁木齐", "北京市", "上海市", "Shenzhen",
    "Hong Kong", "Singapore", "Kuala Lumpur", "Tokyo", "New York", "London", "São Paulo", "Zürich",
)
#: Style "varied": share of catalogue items whose brand is one of their category's extra brands
#: (an item keeps one brand everywhere). Two contain CSV specials: a comma and a double quote.
_VARIED_BRAND_SHARE = 0.25
_VARIED_BRANDS: dict[str, tuple[str, ...]] = {
    "手机": ("Samsung", "荣耀", "realme", "Nothing"),
    "电脑": ("ASUS", "Microsoft Surface", "ThinkPad"),
    "家电": ("Dyson", "Philips", "西门子"),
    "服饰": ("H&M", "Levi's", "Bershka"),
    "美妆": ("Kiehl's", "SK-II", "Shiseido 資生堂"),
    "食品": ("Nestlé", "Ferrero", "Lay's"),
    "母婴": ("Pampers", "a2", "Aptamil"),
    "运动": ("Under Armour", "Lululemon", "ASICS"),
    "图书": ("Penguin Random House", "O'Reilly Media", 'Penguin "Classics"'),
    "家居": ("Procter & Gamble, Inc.", "MUJI 无印良品", "Zara Home"),
}
#: Style "varied": registered-only users (in users.csv and nowhere else) per simulated user. The
#: world has 10 % ``none`` users, so about 30 % of all users have no order:
#: (0.10 + 2/7) / (1 + 2/7) = 0.30.
_REGISTERED_ONLY_PER_USER = 2 / 7
#: Archetype of the registered-only users in ``_truth/users.csv``.
REGISTERED_ONLY_ARCHETYPE = "dormant"
#: Style "varied": share of amounts and costs written without trailing zeros (``99.5``, ``48``).
_SHORT_NUMBER_SHARE = 0.5
#: Longest run of digits in a random part of a varied id: the ingest job masks 11-digit runs
#: starting with 1 (phone-like) and 15-18 character runs (ID-like) in quarantined records.
_MAX_DIGIT_RUN = 6
#: Multiplier of the bijection that turns a row's rank into an id code (a prime, so it is
#: invertible modulo any power of 10, 16, 36 or 64).
_ID_MULT = 2_654_435_761

# -- the rewriting -----------------------------------------------------------------------------

_HEX = "0123456789abcdef"
_B36_LOWER = "0123456789abcdefghijklmnopqrstuvwxyz"
_B36_UPPER = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_B64_URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _code(ranks: np.ndarray, alphabet: str, length: int, salt: int) -> np.ndarray:
    """``length`` characters per rank, a bijection of ranks below ``len(alphabet) ** length``.

    Distinct ranks give distinct codes: rank x -> (x * prime + salt) mod base**length, in base.
    """
    base = len(alphabet)
    v = (np.asarray(ranks, dtype=np.int64) * _ID_MULT + salt) % (base ** length)
    idx = np.empty((len(v), length), dtype=np.int64)
    for k in range(length - 1, -1, -1):
        idx[:, k] = v % base
        v = v // base
    return np.array(list(alphabet))[idx]


def _random_chars(rng: np.random.Generator, n: int, length: int, alphabet: str) -> np.ndarray:
    return np.array(list(alphabet))[rng.integers(0, len(alphabet), (n, length))]


def _chars(n: int, text: str) -> np.ndarray:
    return np.tile(np.array(list(text)), (n, 1)) if text else np.empty((n, 0), dtype="<U1")


def _strings(*parts: np.ndarray, random_from: int | None = None) -> np.ndarray:
    """Join (n, k) character arrays into n strings, breaking digit runs from column ``random_from``.

    A run longer than ``_MAX_DIGIT_RUN`` that reaches a column at or after ``random_from`` (the
    random part) has that character replaced by ``f``, so no id looks like a phone or ID number.
    Columns before it (a prefix and the unique code) are never changed; None changes nothing.
    """
    chars = np.concatenate(parts, axis=1).astype("<U1")
    n, width = chars.shape
    run = np.zeros(n, dtype=int)
    for j in range(width if random_from is not None else 0):
        run = np.where(np.char.isdigit(chars[:, j]), run + 1, 0)
        if j >= random_from:
            fix = run > _MAX_DIGIT_RUN
            chars[fix, j] = "f"
            run[fix] = 0
    return np.ascontiguousarray(chars).view(f"<U{width}")[:, 0].astype(object)


def _varied_user_ids(rng: np.random.Generator, ranks: np.ndarray) -> np.ndarray:
    """User ids in six patterns of 6 to 40 characters (letters, digits, ``-`` and ``_``).

    Each pattern has its own first character and encodes the (unique) rank bijectively, so ids
    are unique; the rest is random. ``CUST-7f3a9c01`` / ``CUST-7f3a9c01-4b2e-...`` (13 or 36),
    ``o`` + 27 (a WeChat-openid-like 28), ``K3Q9ZM`` (6), ``8123456789`` (10), ``acct_...`` (40),
    ``m_<code>_<tail>`` (12-29).
    """
    n = len(ranks)
    pattern = rng.choice(6, size=n, p=[0.30, 0.20, 0.15, 0.10, 0.10, 0.15])
    out = np.empty(n, dtype=object)
    for k in range(6):
        sel = np.flatnonzero(pattern == k)
        r, m = ranks[sel], len(sel)
        if k == 0:
            ids = _strings(_chars(m, "CUST-"), _code(r, _HEX, 8, 0x5EED))
            tail = _strings(_chars(m, "-"), _random_chars(rng, m, 4, _HEX), _chars(m, "-"),
                            _random_chars(rng, m, 4, _HEX), _chars(m, "-"), _random_chars(rng, m, 12, _HEX),
                            random_from=0)
            long = rng.random(m) < 0.5
            ids[long] = ids[long] + tail[long]
        elif k == 1:
            ids = _strings(_chars(m, "o"), _code(r, _B64_URL, 6, 77_777), _random_chars(rng, m, 21, _B64_URL),
                           random_from=7)
        elif k == 2:
            ids = _strings(_chars(m, "K"), _code(r, _B36_UPPER, 5, 4242))
        elif k == 3:
            ids = _strings(_chars(m, "8"), _code(r, "0123456789", 9, 123_456_789))
        elif k == 4:
            ids = _strings(_chars(m, "acct_"), _code(r, _B36_LOWER, 7, 99_991), _chars(m, "_"),
                           _random_chars(rng, m, 27, _B36_LOWER), random_from=12)
        else:
            full = _strings(_chars(m, "m_"), _code(r, _B36_LOWER, 6, 31_337), _chars(m, "_"),
                            _random_chars(rng, m, 20, _ALNUM), random_from=8)
            keep = 9 + rng.integers(3, 21, m)
            ids = np.array([s[:k_] for s, k_ in zip(full, keep)], dtype=object)
        out[sel] = ids
    return out


def _varied_event_ids(rng: np.random.Generator, ranks: np.ndarray) -> np.ndarray:
    """UUID-like ids (36 characters); the first 8 hex digits encode the rank."""
    m = len(ranks)
    return _strings(
        _code(ranks, _HEX, 8, 0xE7E27), _chars(m, "-"), _random_chars(rng, m, 4, _HEX), _chars(m, "-4"),
        _random_chars(rng, m, 3, _HEX), _chars(m, "-"), _random_chars(rng, m, 1, "89ab"),
        _random_chars(rng, m, 3, _HEX), _chars(m, "-"), _random_chars(rng, m, 12, _HEX), random_from=9,
    )


def _day_strings(local_s: np.ndarray) -> np.ndarray:
    """``YYYYMMDD`` of local wall-clock seconds."""
    days = np.datetime_as_string(np.asarray(local_s, dtype=np.int64).astype("datetime64[s]"), unit="D")
    return np.char.replace(days, "-", "").astype(object)


def _varied_order_ids(day: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """``SO-<local date>-<sequence>`` (the sequence is unique over the file)."""
    return np.array([f"SO-{d}-{s:06d}" for d, s in zip(day, seq)], dtype=object)


def _varied_impression_ids(day: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """``imp_<local date>_<7 base-36 characters encoding the rank>``."""
    code = _strings(_code(ranks, _B36_LOWER, 7, 271_828))
    return np.array([f"imp_{d}_{c}" for d, c in zip(day, code)], dtype=object)


def _varied_timestamps(rng: np.random.Generator, local_s: np.ndarray) -> np.ndarray:
    """Times in the three accepted formats at ``VARIED_TIMESTAMP_FORMATS`` shares.

    ISO rows write the instant as the wall time of one of ``_VARIED_ISO_OFFSETS`` with 0-6
    fractional digits (a sub-second part below one second, so the UTC date never moves).
    """
    local_s = np.asarray(local_s, dtype=np.int64)
    n = len(local_s)
    shares = np.array([s for _, s in VARIED_TIMESTAMP_FORMATS])
    fmt = rng.choice(len(shares), size=n, p=shares / shares.sum())
    ms = rng.integers(0, 1000, size=n)
    offset = rng.integers(0, len(_VARIED_ISO_OFFSETS), size=n)
    digits = rng.integers(0, 7, size=n)
    micros = rng.integers(0, 1_000_000, size=n)
    out = _format_timestamps(local_s, np.where(fmt == 1, 0, fmt), ms)
    iso = np.flatnonzero(fmt == 1)
    shift = np.array([s for _, s in _VARIED_ISO_OFFSETS])[offset[iso]]
    wall = np.datetime_as_string((local_s[iso] - _TZ_OFFSET_S + shift).astype("datetime64[s]"), unit="s")
    suffix = np.array([z for z, _ in _VARIED_ISO_OFFSETS], dtype=object)[offset[iso]]
    out[iso] = [
        f"{w}{'.' + f'{u:06d}'[:d] if d else ''}{z}"
        for w, d, u, z in zip(wall, digits[iso], micros[iso], suffix)
    ]
    return out


def _short_numbers(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """Drop trailing fraction zeros from ``_SHORT_NUMBER_SHARE`` of decimal strings (``48.00`` -> ``48``)."""
    values = np.asarray(values, dtype=object).copy()
    pick = rng.random(len(values)) < _SHORT_NUMBER_SHARE
    short = np.char.rstrip(np.char.rstrip(values[pick].astype(str), "0"), ".")
    values[pick] = short.astype(object)
    return values


def _varied_csv_lines(columns: Sequence[str]) -> Callable[[pd.DataFrame], list[str]]:
    """CSV serialiser: columns in ``columns`` order, quoted as pandas' ``to_csv`` quotes (RFC 4180)."""

    def lines(df: pd.DataFrame) -> list[str]:
        if len(df) < 64:  # planted copies: one row at a time
            return [_csv_join([str(v) for v in row]) for row in zip(*(df[c].to_numpy() for c in columns))]
        values = []
        for c in columns:
            col = df[c].astype(str)
            special = col.str.contains(r'[,"\r\n]', regex=True).to_numpy()
            if special.any():
                col = col.copy()
                col[special] = '"' + col[special].str.replace('"', '""', regex=False) + '"'
            values.append(col.to_numpy())
        return [",".join(row) for row in zip(*values)]

    return lines


def _varied_event_lines(keys: Sequence[str]) -> Callable[[pd.DataFrame], list[str]]:
    """Event serialiser: keys in ``keys`` order, ``", "``/``": "`` separators, non-ASCII escaped
    (``\\u624b``), and numeric item ids and epoch-ms timestamps as JSON numbers."""

    def encode(key: str, value: str) -> str:
        if (key == "item_id" and value.isdigit()) or (key == "ts" and len(value) == 13 and value.isdigit()):
            return value
        if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
            return f'"{value}"'  # what json.dumps gives, without its cost (ids, times)
        return json.dumps(value, ensure_ascii=True)

    def lines(df: pd.DataFrame) -> list[str]:
        columns = []
        for key in keys:  # each distinct value is encoded once
            codes, uniq = pd.factorize(df[key].to_numpy())
            encoded = np.array([f'"{key}": {encode(key, str(v))}' for v in uniq], dtype=object)
            columns.append(encoded[codes])
        return ["{" + ", ".join(parts) + "}" for parts in zip(*columns)]

    return lines


class _IdBlocks:
    """``make_id(n)`` for planted rows: ids computed ``size`` at a time (one vectorised call
    instead of one per row); the same calls in the same order give the same ids."""

    def __init__(self, ids: Callable[[np.ndarray], np.ndarray], size: int = 1024) -> None:
        self.ids, self.size = ids, size
        self.cache: dict[int, str] = {}

    def __call__(self, n: int) -> str:
        if n not in self.cache:
            ranks = np.arange(n, n + self.size)
            self.cache.update(zip(ranks.tolist(), (str(v) for v in self.ids(ranks))))
        return self.cache[n]


@dataclass
class _Varied:
    """The renamings and extra rows of style "varied"."""

    tables: dict[str, pd.DataFrame]
    columns: dict[str, tuple[str, ...]]
    make_id: dict[str, Callable[[int], str]]
    serialise: dict[str, Callable[[pd.DataFrame], list[str]]]
    truth_users: pd.DataFrame
    impression_ids: np.ndarray
    manifest: dict[str, Any]


def _vary(rng: np.random.Generator, w: _World, camps: pd.DataFrame, tables: dict[str, pd.DataFrame],
          end_date: date) -> _Varied:
    """Rewrite the default tables in style "varied" and add the registered-only users.

    The world (who does what, when, at what price; the click probabilities) is untouched: every
    clean row of the default style has one varied row with the same user, instant, item, amount,
    channel, position, device, cost and click, only spelt differently.
    """
    n_w = w.n_users
    n_d = int(round(n_w * _REGISTERED_ONLY_PER_USER))
    dormant = _build_users(rng, n_d, w.days, end_date)  # personal fields only; they never act
    ranks = rng.permutation(n_w + n_d)
    user_ids = _varied_user_ids(rng, ranks)
    world_ids, dormant_ids = user_ids[:n_w], user_ids[n_w:]

    # users.csv: world and registered-only users in random order, other city names for some.
    users = pd.concat([
        tables["users"].assign(user_id=world_ids,
                               signup_time=_varied_timestamps(rng, w.truth["signup_s"].to_numpy())),
        dormant.users.assign(user_id=dormant_ids,
                             signup_time=_varied_timestamps(rng, dormant.truth["signup_s"].to_numpy())),
    ], ignore_index=True)
    city = users["city"].to_numpy().copy()
    other = (city != "") & (rng.random(len(city)) < _VARIED_CITY_SHARE)
    city[other] = np.array(_VARIED_CITIES, dtype=object)[rng.integers(0, len(_VARIED_CITIES), other.sum())]
    users["city"] = city
    users = users.iloc[rng.permutation(len(users))].reset_index(drop=True)

    # Catalogue: 8-digit item ids, a quarter of the items under brands outside the built-in lists.
    cat_of = w.catalog["cat"].to_numpy()
    item_ids = (rng.choice(90_000_000, size=len(cat_of), replace=False) + 10_000_000).astype(str).astype(object)
    brands = w.catalog["brand"].to_numpy().copy()
    extra = rng.random(len(brands)) < _VARIED_BRAND_SHARE
    for i in np.flatnonzero(extra):
        choices = _VARIED_BRANDS[CATEGORIES[cat_of[i]].name]
        brands[i] = choices[int(rng.integers(0, len(choices)))]

    o = w.orders
    orders = tables["orders"].assign(
        order_id=_varied_order_ids(_day_strings(o["local_s"].to_numpy()), np.arange(1, len(o) + 1)),
        user_id=world_ids[o["user"].to_numpy()],
        order_time=_varied_timestamps(rng, o["local_s"].to_numpy()),
        item_id=item_ids[o["item"].to_numpy()],
        brand=brands[o["item"].to_numpy()],
        amount=_short_numbers(rng, tables["orders"]["amount"].to_numpy()),
    )
    e = w.events
    events = tables["events"].assign(
        event_id=_varied_event_ids(rng, np.arange(1, len(e) + 1)),
        user_id=world_ids[e["user"].to_numpy()],
        ts=_varied_timestamps(rng, e["local_s"].to_numpy()),
        item_id=item_ids[e["item"].to_numpy()],
        brand=brands[e["item"].to_numpy()],
        device_type=tables["events"]["device_type"].map(VARIED_DEVICES).to_numpy(),
    )
    m = w.impressions
    year, quarter = end_date.year, (end_date.month - 1) // 3 + 1
    camp_ids = np.array([
        f"{year}Q{quarter}-{_CAMPAIGN_THEMES[k % len(_CAMPAIGN_THEMES)]}-{_CAMPAIGN_CHANNEL_TAGS[ch]}"
        for k, ch in enumerate(camps["channel"])
    ], dtype=object)
    ad_codes = _strings(_code(np.arange(len(camps) * _ADS_PER_CAMPAIGN), _B36_LOWER, 5, 1009))
    ad_ids = np.array([f"cr-{c}" for c in ad_codes], dtype=object)
    position = m["position"].to_numpy()
    numeric = rng.random(len(m)) < _NUMERIC_POSITION_SHARE
    names = np.array([AD_POSITION_NAMES[p] for p in position], dtype=object)
    impressions = tables["impressions"].assign(
        impression_id=_varied_impression_ids(_day_strings(m["local_s"].to_numpy()), np.arange(1, len(m) + 1)),
        user_id=world_ids[m["user"].to_numpy()],
        ts=_varied_timestamps(rng, m["local_s"].to_numpy()),
        ad_id=ad_ids[m["ad"].to_numpy()],
        campaign_id=camp_ids[m["campaign"].to_numpy()],
        channel=tables["impressions"]["channel"].map(VARIED_CHANNELS).to_numpy(),
        ad_position=np.where(numeric, position.astype(str).astype(object), names),
        device_type=tables["impressions"]["device_type"].map(VARIED_DEVICES).to_numpy(),
        cost=_short_numbers(rng, tables["impressions"]["cost"].to_numpy()),
    )

    # Column order: the contract matches CSV columns by name; JSON keys are unordered anyway.
    columns = {name: tuple(np.array(dataset(name).columns, dtype=object)[rng.permutation(len(dataset(name).columns))])
               for name in ("users", "orders", "events", "impressions")}
    end = end_date.strftime("%Y%m%d")
    make_id: dict[str, Callable[[int], str]] = {  # planted rows: ranks above every clean row's
        "users": _IdBlocks(lambda r: _varied_user_ids(rng, r)),
        "orders": lambda n: f"SO-{end}-{n:06d}",
        "events": _IdBlocks(lambda r: _varied_event_ids(rng, r)),
        "impressions": _IdBlocks(lambda r: _varied_impression_ids(np.full(len(r), end, dtype=object), r)),
    }
    serialise: dict[str, Callable[[pd.DataFrame], list[str]]] = {
        name: _varied_csv_lines(columns[name]) for name in ("users", "orders", "impressions")
    }
    serialise["events"] = _varied_event_lines(columns["events"])

    # Truth: the default truth renamed, plus the registered-only users.
    truth = _truth_users(w)
    truth["user_id"] = world_ids
    truth["primary_device"] = truth["primary_device"].map(VARIED_DEVICES)
    dev_names = np.array([VARIED_DEVICES[d] for d, _ in DEVICES], dtype=object)
    truth_dormant = pd.DataFrame({
        "user_id": dormant_ids,
        "archetype": REGISTERED_ONLY_ARCHETYPE,
        "churn_day": "",
        "churn_date": "",
        "has_paid_order": 0,
        "paid_orders": 0,
        "paid_amount": "0.00",
        "last_paid_date": "",
        "recency_days": "",
        "top_category": np.array([c.name for c in CATEGORIES], dtype=object)[dormant.truth["top_cat"].to_numpy()],
        "primary_device": dev_names[dormant.truth["device"].to_numpy()],
    })
    truth = pd.concat([truth, truth_dormant], ignore_index=True)

    spellings = {name: pos for pos, name in AD_POSITION_NAMES.items()}
    spellings.update({str(pos): pos for pos in AD_POSITION_NAMES})
    manifest = {
        "timestamp_formats": dict(VARIED_TIMESTAMP_FORMATS),
        "iso_offsets": [z for z, _ in _VARIED_ISO_OFFSETS],
        "iso_fraction_digits": [0, 6],
        "ad_positions": spellings,
        "numeric_position_share": _NUMERIC_POSITION_SHARE,
        "channels": dict(VARIED_CHANNELS),
        "devices": dict(VARIED_DEVICES),
        "campaigns": {cid: {"channel": VARIED_CHANNELS[ch], "category": CATEGORIES[c].name}
                      for cid, ch, c in zip(camp_ids, camps["channel"], camps["cat"])},
        "cities": {"share": _VARIED_CITY_SHARE, "names": list(_VARIED_CITIES)},
        "brands": {"share": _VARIED_BRAND_SHARE, "names": {k: list(v) for k, v in _VARIED_BRANDS.items()}},
        "registered_only": {"archetype": REGISTERED_ONLY_ARCHETYPE, "users": n_d,
                            "per_simulated_user": round(_REGISTERED_ONLY_PER_USER, 6)},
        "users_without_orders": int(n_w + n_d - o["user"].nunique()),
        "short_number_share": _SHORT_NUMBER_SHARE,
        "columns": {k: list(v) for k, v in columns.items()},
        "byte_order_mark": ["users", "orders", "impressions"],
        "line_ending": "\r\n",
    }
    return _Varied(
        tables={"users": users, "orders": orders, "events": events, "impressions": impressions},
        columns=columns, make_id=make_id, serialise=serialise, truth_users=truth,
        impression_ids=impressions["impression_id"].to_numpy(), manifest=manifest,
    )
