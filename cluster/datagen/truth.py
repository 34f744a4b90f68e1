"""The truth files: per-user truth, the promotion calendar and the manifest."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cluster.datagen.defects import DEFECT_PLAN
from cluster.datagen.params import (
    _ADS_PER_CAMPAIGN,
    _BAND_FULL_ITEMS,
    _CAMPAIGNS_PER_CHANNEL,
    _COST_SIGMA,
    _DAY,
    _EMPTY_STATUS_SHARE,
    _HOUR_WEIGHTS,
    _ITEMS_PER_CATEGORY,
    _PREF_ALPHA,
    _PRIMARY_DEVICE_SHARE,
    _REFUND_SHARE,
    _TZ_NAME,
    ARCHETYPES,
    CATEGORIES,
    CHANNELS,
    CITIES,
    CLICK_MODEL,
    DEVICES,
    FUNNEL,
    GENERATOR_VERSION,
    PROMOTIONS,
    TIMESTAMP_FORMATS,
    TRUTH_DIR,
    WEEKDAY_WEIGHTS,
)
from cluster.datagen.world import _weekday, _World


def _truth_users(w: _World) -> pd.DataFrame:
    t = w.truth
    o = w.orders
    paid = o[o["paid"].to_numpy()]
    g = paid.groupby("user")
    last_s = g["local_s"].max()
    freq = g.size()
    money = g["amount"].sum()
    n = w.n_users
    last_day = np.full(n, -1, dtype=np.int64)
    last_day[last_s.index.to_numpy()] = last_s.to_numpy() // _DAY
    frequency = np.zeros(n, dtype=int)
    frequency[freq.index.to_numpy()] = freq.to_numpy()
    monetary = np.zeros(n)
    monetary[money.index.to_numpy()] = money.to_numpy()
    as_of_day = w.start_day + w.days
    has_paid = frequency > 0
    churn = t["churn_day"].to_numpy()
    churn_date = np.datetime_as_string((w.start_day + churn).astype("datetime64[D]"), unit="D")
    last_date = np.datetime_as_string(last_day.astype("datetime64[D]"), unit="D")
    return pd.DataFrame({
        "user_id": t["user_id"],
        "archetype": t["archetype"],
        "churn_day": np.where(churn >= 0, churn.astype(str), ""),
        "churn_date": np.where(churn >= 0, churn_date, ""),
        "has_paid_order": has_paid.astype(int),
        "paid_orders": frequency,
        "paid_amount": np.char.mod("%.2f", np.round(monetary, 2)),
        "last_paid_date": np.where(has_paid, last_date, ""),
        "recency_days": np.where(has_paid, (as_of_day - last_day).astype(str), ""),
        "top_category": np.array([c.name for c in CATEGORIES], dtype=object)[t["top_cat"].to_numpy()],
        "primary_device": np.array([d for d, _ in DEVICES], dtype=object)[t["device"].to_numpy()],
    })


def _truth_promotions(w: _World) -> pd.DataFrame:
    """The promotion calendar: one row per local date and category (every pair, 1.0 = list price)."""
    n_cat = len(CATEGORIES)
    dates = np.datetime_as_string((w.start_day + np.arange(w.days)).astype("datetime64[D]"), unit="D")
    return pd.DataFrame({
        "date": np.repeat(dates, n_cat),
        "weekday": np.repeat(_weekday(w.start_day + np.arange(w.days)), n_cat),
        "category": np.tile(np.array([c.name for c in CATEGORIES], dtype=object), w.days),
        "price_ratio": np.char.mod("%.2f", w.price_ratio.T.reshape(-1)),
    })


def _manifest(seed: int, n_users: int, days: int, end_date: date, defects: bool, compress: bool,
              w: _World, files: dict[str, Path], rows: dict[str, int], planted: dict[str, dict[str, int]],
              expected: dict[str, dict], truth_users: pd.DataFrame) -> dict[str, Any]:
    start = end_date - timedelta(days=days - 1)
    counts = truth_users["archetype"].value_counts()
    return {
        "generator": {"module": __package__, "version": GENERATOR_VERSION},
        "seed": seed,
        "users": n_users,
        "days": days,
        "start_date": start.isoformat(),
        "end_date": end_date.isoformat(),
        "as_of": (end_date + timedelta(days=1)).isoformat(),
        "timezone": _TZ_NAME,
        "defects": defects,
        "compressed": compress,
        "files": {k: p.name for k, p in files.items()},
        "truth_files": {
            "users": f"{TRUTH_DIR}/users.csv",
            "impressions": f"{TRUTH_DIR}/impressions.csv",
            "defects": f"{TRUTH_DIR}/defects.csv",
            "promotions": f"{TRUTH_DIR}/promotions.csv",
        },
        "rows": rows,
        "timestamp_formats": dict(TIMESTAMP_FORMATS),
        "hour_weights": _HOUR_WEIGHTS.tolist(),
        "weekday_weights": WEEKDAY_WEIGHTS.tolist(),
        "promotions": {"share": PROMOTIONS["share"], "ratios": list(PROMOTIONS["ratios"]),
                       "promotion_days": int((w.price_ratio < 1.0).sum())},
        "archetypes": [
            {
                "name": a.name, "description": a.description, "share": a.share, "users": int(counts.get(a.name, 0)),
                "buys": a.buys, "base_orders": a.base_orders, "extra_orders_per_30d": a.extra_orders_per_30d,
                "regular": a.regular, "order_fade": a.order_fade,
                "price_band": list(a.price_band), "extra_quantity": a.extra_quantity,
                "category_tilt": dict(a.category_tilt), "churn_share": a.churn_share,
                "churn_window": list(a.churn_window), "sessions_per_30d": a.sessions_per_30d,
                "impressions_per_30d": a.impressions_per_30d, "click_affinity": a.click_affinity,
            }
            for a in ARCHETYPES
        ],
        "categories": [
            {"name": c.name, "median_price": c.median_price, "price_sigma": c.price_sigma,
             "brands": list(c.brands), "male_tilt": c.male_tilt, "elasticity": c.elasticity}
            for c in CATEGORIES
        ],
        "catalog": {"items_per_category": _ITEMS_PER_CATEGORY, "preference_alpha": _PREF_ALPHA,
                    "band_full_items": _BAND_FULL_ITEMS},
        "orders": {"refund_share": _REFUND_SHARE, "empty_status_share": _EMPTY_STATUS_SHARE},
        "users_file": {"gender": {"M": 0.45, "F": 0.47, "": 0.08}, "birth_date_missing": 0.10,
                       "city_missing": 0.02, "phone_missing": 0.15, "id_number_given_birth_date": 0.65,
                       "opt_in": {"sms": 0.60, "push": 0.45, "email": 0.25},
                       "cities": {c: v[0] for c, v in CITIES.items()}},
        "devices": {"primary": dict(DEVICES), "primary_share": _PRIMARY_DEVICE_SHARE},
        "funnel": FUNNEL,
        "channels": {c: {"share": v[0], "positions": v[1], "cost_model": v[2], "cost_median": v[3]}
                     for c, v in CHANNELS.items()},
        "campaigns": {"per_channel": _CAMPAIGNS_PER_CHANNEL, "ads_per_campaign": _ADS_PER_CAMPAIGN,
                      "cost_sigma": _COST_SIGMA},
        "click_model": CLICK_MODEL,
        "defect_plan": {k: {kind: list(v) for kind, v in spec.items()} for k, spec in DEFECT_PLAN.items()}
        if defects else {},
        "planted": planted,
        "expected": expected,
    }
