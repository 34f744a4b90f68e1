"""The population: the catalogue, the users with their archetypes, preferences and churn
days, and the personal fields of users.csv."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from cluster.datagen.helpers import _day_number, _ids, _time_of_day, _timestamps, id_check_digit
from cluster.datagen.params import (
    _BAND_FULL_ITEMS,
    _CAT_INDEX,
    _DAY,
    _ITEMS_PER_CATEGORY,
    _PHONE_PREFIXES,
    _PREF_ALPHA,
    ARCHETYPES,
    CATEGORIES,
    CITIES,
    DEVICES,
)
from cluster.datagen.world import _World


def _catalog(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for ci, cat in enumerate(CATEGORIES):
        prices = np.sort(cat.median_price * np.exp(rng.normal(0.0, cat.price_sigma, _ITEMS_PER_CATEGORY)))
        prices = np.maximum(np.round(prices) - 0.1, 0.9)  # shop-style prices such as 2599.9
        brands = rng.choice(len(cat.brands), size=_ITEMS_PER_CATEGORY)
        for j in range(_ITEMS_PER_CATEGORY):
            rows.append((ci, cat.brands[brands[j]], float(prices[j])))
    df = pd.DataFrame(rows, columns=["cat", "brand", "price"])
    df.insert(0, "item_id", _ids("sku", 1, len(df), 5))
    return df


def _price_bands(catalog: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Catalogue rows per (archetype, category) whose unit price is in the archetype's band."""
    cats, prices = catalog["cat"].to_numpy(), catalog["price"].to_numpy()
    counts = np.zeros((len(ARCHETYPES), len(CATEGORIES)), dtype=int)
    items = np.zeros((len(ARCHETYPES), len(CATEGORIES), _ITEMS_PER_CATEGORY), dtype=int)
    for ai, a in enumerate(ARCHETYPES):
        lo, hi = a.price_band
        for ci in range(len(CATEGORIES)):
            rows = np.flatnonzero((cats == ci) & (prices >= lo) & (prices <= hi))
            counts[ai, ci] = len(rows)
            items[ai, ci, : len(rows)] = rows
    return items, counts


def _build_users(rng: np.random.Generator, n: int, days: int, end_date: date) -> _World:
    start_day = _day_number(end_date) - days + 1
    catalog = _catalog(rng)
    band_items, band_counts = _price_bands(catalog)
    shares = np.array([a.share for a in ARCHETYPES])
    arch = rng.choice(len(ARCHETYPES), size=n, p=shares / shares.sum())

    gender = rng.choice(np.array(["M", "F", ""], dtype=object), size=n, p=[0.45, 0.47, 0.08])

    # Category preferences: Dirichlet with archetype and gender tilts.
    alpha = np.full((n, len(CATEGORIES)), _PREF_ALPHA)
    for ai, a in enumerate(ARCHETYPES):
        for cname, mult in a.category_tilt:
            alpha[arch == ai, _CAT_INDEX[cname]] *= mult
    male_tilt = np.array([c.male_tilt for c in CATEGORIES])
    alpha[gender == "M"] *= male_tilt
    alpha[gender == "F"] /= male_tilt
    prefs = rng.gamma(alpha)
    # What the user can buy: categories with items in the archetype's price band.
    prefs *= np.minimum(band_counts[arch] / _BAND_FULL_ITEMS, 1.0)
    prefs /= prefs.sum(axis=1, keepdims=True)
    top_cat = prefs.argmax(axis=1)

    # Churn day (day offset inside the window; the user does nothing from that day on).
    churn_day = np.full(n, -1)
    for ai, a in enumerate(ARCHETYPES):
        idx = np.flatnonzero(arch == ai)
        churns = rng.random(len(idx)) < a.churn_share
        lo, hi = a.churn_window
        day = np.floor(rng.uniform(lo, hi, len(idx)) * days).astype(int)
        churn_day[idx[churns]] = np.clip(day[churns], 1, days - 1)
    active_days = np.where(churn_day >= 0, churn_day, days)

    # Birth date (age 18-75), city, phone, resident ID, consents, signup.
    age_days = np.round((18 + np.minimum(rng.gamma(3.0, 5.0, n), 57)) * 365.25).astype(int)
    birth_day = _day_number(end_date) - age_days - rng.integers(0, 365, n)
    has_birth = rng.random(n) >= 0.10
    birth = np.datetime_as_string(birth_day.astype("datetime64[D]"), unit="D").astype(object)
    birth_str = np.where(has_birth, birth, "")

    city_names = list(CITIES)
    city_w = np.array([CITIES[c][0] for c in city_names])
    city_idx = rng.choice(len(city_names), size=n, p=city_w / city_w.sum())
    city = np.array(city_names, dtype=object)[city_idx]
    city = np.where(rng.random(n) < 0.02, "", city)

    prefixes = np.array(_PHONE_PREFIXES, dtype=object)[rng.integers(0, len(_PHONE_PREFIXES), n)]
    tails = rng.integers(0, 100_000_000, n)
    phone = np.array([f"{p}{t:08d}" for p, t in zip(prefixes, tails)], dtype=object)
    phone = np.where(rng.random(n) < 0.15, "", phone)

    has_id = has_birth & (rng.random(n) < 0.65)
    area = np.array([CITIES[city_names[c]][1][k % len(CITIES[city_names[c]][1])]
                     for c, k in zip(city_idx, rng.integers(0, 3, n))], dtype=object)
    seq = rng.integers(0, 100, n) * 10
    parity = np.where(gender == "M", 1, np.where(gender == "F", 0, rng.integers(0, 2, n)))
    seq = seq + 2 * rng.integers(0, 5, n) + parity
    ids = []
    for i in range(n):
        if not has_id[i]:
            ids.append("")
            continue
        body = f"{area[i]}{birth[i].replace('-', '')}{seq[i]:03d}"
        ids.append(body + id_check_digit(body))
    id_number = np.array(ids, dtype=object)

    opt = {
        "opt_in_sms": rng.random(n) < 0.60,
        "opt_in_push": rng.random(n) < 0.45,
        "opt_in_email": rng.random(n) < 0.25,
    }
    signup_s = (start_day * _DAY - np.round(rng.gamma(1.5, 250.0, n) * _DAY).astype(np.int64)
                - _DAY + _time_of_day(rng, n))

    users = pd.DataFrame({
        "user_id": _ids("u", 1, n, 6),
        "gender": gender,
        "birth_date": birth_str,
        "city": city,
        "phone": phone,
        "id_number": id_number,
        "signup_time": _timestamps(rng, signup_s),
        **{k: np.where(v, "1", "0").astype(object) for k, v in opt.items()},
    })
    dev_names = np.array([d for d, _ in DEVICES], dtype=object)
    dev_w = np.array([w for _, w in DEVICES])
    truth = pd.DataFrame({
        "user_id": users["user_id"],
        "archetype": np.array([a.name for a in ARCHETYPES], dtype=object)[arch],
        "arch": arch,
        "churn_day": churn_day,
        "active_days": active_days,
        "top_cat": top_cat,
        "device": rng.choice(len(dev_names), size=n, p=dev_w / dev_w.sum()),
        **opt,
        "signup_s": signup_s,  # kept for style "varied", which writes the times again
    })
    return _World(n, days, start_day, users, truth, np.cumsum(prefs, axis=1), catalog, band_items, band_counts)
