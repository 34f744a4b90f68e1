"""The simulated world every step adds to, and the draws the steps share (devices, items,
the promotion calendar)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cluster.datagen.helpers import _choose_rows
from cluster.datagen.params import _DAY, _ITEMS_PER_CATEGORY, _PRIMARY_DEVICE_SHARE, CATEGORIES, DEVICES, PROMOTIONS


@dataclass
class _World:
    """Everything generated so far (clean rows and per-user truth)."""

    n_users: int
    days: int
    start_day: int  # day number (days since 1970-01-01) of the window's first local day
    users: pd.DataFrame  # clean users.csv columns, as strings
    truth: pd.DataFrame  # per-user truth
    pref_cum: np.ndarray  # (users, categories) cumulative preferences over buyable categories
    catalog: pd.DataFrame  # item_id, cat (category index), brand, price
    band_items: np.ndarray  # (archetypes, categories, items) catalogue rows in the price band, padded
    band_counts: np.ndarray  # (archetypes, categories) number of such rows
    orders: pd.DataFrame | None = None
    events: pd.DataFrame | None = None
    impressions: pd.DataFrame | None = None
    p_click: np.ndarray | None = None
    price_ratio: np.ndarray | None = None  # (categories, days) promotion calendar

    @property
    def start_s(self) -> int:
        return self.start_day * _DAY

    @property
    def end_s(self) -> int:
        return (self.start_day + self.days) * _DAY


def _devices(rng: np.random.Generator, primary: np.ndarray) -> np.ndarray:
    dev_names = np.array([d for d, _ in DEVICES], dtype=object)
    dev_w = np.array([w for _, w in DEVICES])
    other = rng.choice(len(dev_names), size=len(primary), p=dev_w / dev_w.sum())
    keep = rng.random(len(primary)) < _PRIMARY_DEVICE_SHARE
    return dev_names[np.where(keep, primary, other)]


def _pick_items(rng: np.random.Generator, w: _World, user: np.ndarray, cat: np.ndarray | None = None) -> np.ndarray:
    """Catalogue row per draw: category by the user's preferences, item uniform in the price band."""
    if cat is None:
        cat = _choose_rows(rng, w.pref_cum, user)
    arch = w.truth["arch"].to_numpy()[user]
    count = w.band_counts[arch, cat]
    pick = np.floor(rng.random(len(user)) * np.maximum(count, 1)).astype(int)
    # A category outside the band (never drawn from the preferences) falls back to any of its items.
    return np.where(count > 0, w.band_items[arch, cat, pick], cat * _ITEMS_PER_CATEGORY + pick)


def _promotions(rng: np.random.Generator, days: int) -> np.ndarray:
    """Price ratio per (category, day): 1.0, or on promotion days one of ``PROMOTIONS["ratios"]``."""
    ratios = np.array(PROMOTIONS["ratios"], dtype=float)
    on = rng.random((len(CATEGORIES), days)) < PROMOTIONS["share"]
    level = rng.integers(0, len(ratios), (len(CATEGORIES), days))
    return np.where(on, ratios[level], 1.0)


def _weekday(day_number: np.ndarray) -> np.ndarray:
    """0 = Monday (1970-01-01, day number 0, was a Thursday)."""
    return (day_number + 3) % 7
