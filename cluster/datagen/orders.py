"""Orders: how many each user places, on which day and in which category (weekday, promotion
calendar and elasticity), and the rows of orders.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.datagen.helpers import _ids, _time_of_day, _timestamps
from cluster.datagen.params import (
    _DAY,
    _EMPTY_STATUS_SHARE,
    _ORDER_CHUNK,
    _REFUND_SHARE,
    ARCHETYPES,
    CATEGORIES,
    WEEKDAY_WEIGHTS,
)
from cluster.datagen.world import _pick_items, _weekday, _World


def _place_orders(w: _World, user: np.ndarray, nth: np.ndarray, count: np.ndarray,
                  u_day: np.ndarray, u_cat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Day offset and category of each order.

    Without prices and weekdays an order's day follows its archetype's timing (regular: uniform in
    the j-th of N equal slices of the active period; otherwise Beta(1, fade) over it) and its
    category the user's preferences. Here the probability of each (day, category) is that, times
    the weekday weight, times ``price_ratio[category, day] ** -elasticity``: the user still places
    the same orders inside the same active period, but on busy weekdays and cheap days. Because an
    order chooses among many days, one day's promotion lowers the normaliser only a little, so the
    expected orders of a (category, day) move almost exactly in proportion to ``ratio ** -e``.
    """
    arch = w.truth["arch"].to_numpy()
    active = w.truth["active_days"].to_numpy().astype(float)
    prefs = np.diff(w.pref_cum, axis=1, prepend=0.0)
    elasticity = np.array([c.elasticity for c in CATEGORIES])
    lift = w.price_ratio ** -elasticity[:, None]  # (categories, days)
    week = WEEKDAY_WEIGHTS[_weekday(w.start_day + np.arange(w.days))]
    t = np.arange(w.days, dtype=float)[None, :]
    regular = np.array([a.regular for a in ARCHETYPES])
    fade = np.array([a.order_fade for a in ARCHETYPES])
    day = np.empty(len(user), dtype=np.int64)
    cat = np.empty(len(user), dtype=np.int64)
    for lo in range(0, len(user), _ORDER_CHUNK):
        sl = slice(lo, lo + _ORDER_CHUNK)
        u, a = user[sl], active[user[sl]][:, None]
        # Probability mass of each day under the archetype's timing (continuous slot -> day).
        start, stop = nth[sl][:, None] / count[u][:, None] * a, (nth[sl][:, None] + 1) / count[u][:, None] * a
        in_slice = np.clip(np.minimum(t + 1, stop) - np.maximum(t, start), 0.0, None)
        f = fade[arch[u]][:, None]
        x0, x1 = np.minimum(t / a, 1.0), np.minimum((t + 1) / a, 1.0)
        faded = (1.0 - x0) ** f - (1.0 - x1) ** f
        mass = np.where(regular[arch[u]][:, None], in_slice, faded)
        weight = mass * week * (prefs[u] @ lift)
        cum = np.cumsum(weight, axis=1)
        # 1 - U lies in (0, 1]: the first cell whose cumulative weight reaches it has weight > 0.
        d = (cum < ((1.0 - u_day[sl]) * cum[:, -1])[:, None]).sum(axis=1)
        day[sl] = np.minimum(d, w.days - 1)
        cw = np.cumsum(prefs[u] * lift[:, day[sl]].T, axis=1)
        c = (cw < ((1.0 - u_cat[sl]) * cw[:, -1])[:, None]).sum(axis=1)
        cat[sl] = np.minimum(c, len(CATEGORIES) - 1)
    return day, cat


def _build_orders(rng: np.random.Generator, w: _World) -> None:
    arch = w.truth["arch"].to_numpy()
    active = w.truth["active_days"].to_numpy()
    buys = np.array([a.buys for a in ARCHETYPES])[arch]
    rate = np.array([a.extra_orders_per_30d for a in ARCHETYPES])[arch] / 30.0
    base = np.array([a.base_orders for a in ARCHETYPES])[arch]
    count = np.where(buys, base + rng.poisson(rate * active), 0)
    user = np.repeat(np.arange(w.n_users), count)
    nth = np.arange(len(user)) - np.repeat(np.cumsum(count) - count, count)
    day, cat = _place_orders(w, user, nth, count, rng.random(len(user)), rng.random(len(user)))
    local_s = w.start_s + day * _DAY + _time_of_day(rng, len(user))
    order = np.lexsort((local_s, user))
    user, local_s, day, cat = user[order], local_s[order], day[order], cat[order]
    first = np.r_[True, user[1:] != user[:-1]]

    item = _pick_items(rng, w, user, cat)
    price = w.catalog["price"].to_numpy()[item]
    qty_extra = np.array([a.extra_quantity for a in ARCHETYPES])[arch[user]]
    quantity = 1 + rng.poisson(qty_extra)
    amount = np.round(price * quantity * w.price_ratio[cat, day], 2)

    n_later = max(int((~first).sum()), 1)
    refunded = ~first & (rng.random(len(user)) < _REFUND_SHARE * len(user) / n_later)
    empty = ~refunded & (rng.random(len(user)) < _EMPTY_STATUS_SHARE)
    status = np.where(refunded, "refunded", np.where(empty, "", "paid")).astype(object)

    # File order is time order; ids follow it.
    by_time = np.argsort(local_s, kind="stable")
    df = pd.DataFrame({
        "user": user, "local_s": local_s, "item": item, "quantity": quantity,
        "amount": amount, "status": status, "paid": ~refunded,
    }).iloc[by_time].reset_index(drop=True)
    df["order_id"] = _ids("o", 1, len(df), 7)
    w.orders = df


def _order_rows(rng: np.random.Generator, w: _World) -> pd.DataFrame:
    o = w.orders
    cat = w.catalog.iloc[o["item"].to_numpy()]
    return pd.DataFrame({
        "order_id": o["order_id"].to_numpy(),
        "user_id": w.users["user_id"].to_numpy()[o["user"].to_numpy()],
        "order_time": _timestamps(rng, o["local_s"].to_numpy()),
        "item_id": cat["item_id"].to_numpy(),
        "category": np.array([c.name for c in CATEGORIES], dtype=object)[cat["cat"].to_numpy()],
        "brand": cat["brand"].to_numpy(),
        "quantity": o["quantity"].astype(str).to_numpy(),
        "amount": np.char.mod("%.2f", o["amount"].to_numpy()).astype(object),
        "status": o["status"].to_numpy(),
    })
