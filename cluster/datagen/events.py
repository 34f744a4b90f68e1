"""Events: the funnel leading to each order and browsing sessions without a purchase, and the
rows of events.jsonl."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.datagen.helpers import _choose_rows, _ids, _time_of_day, _timestamps
from cluster.datagen.params import _DAY, ARCHETYPES, CATEGORIES, FUNNEL
from cluster.datagen.world import _devices, _pick_items, _World

#: (user, local_s, item, action) of a group of events, one array entry per event.
_Events = tuple[np.ndarray, np.ndarray, np.ndarray, str]


def _followed(rng: np.random.Generator, events: _Events, share: float, gap_s: tuple[int, int], action: str,
              before: bool = False) -> _Events:
    """``action`` events for a random ``share`` of ``events``: same user and item, a uniform gap of
    ``gap_s`` seconds (lowest, highest exclusive) after each, or before it with ``before``."""
    user, ts, item, _ = events
    m = rng.random(len(user)) < share
    gap = rng.integers(*gap_s, m.sum())
    return user[m], ts[m] - gap if before else ts[m] + gap, item[m], action


def _build_events(rng: np.random.Generator, w: _World) -> None:
    f = FUNNEL
    o = w.orders
    parts: list[_Events] = []

    # Funnel leading to each order.
    ou, ot, oi = o["user"].to_numpy(), o["local_s"].to_numpy(), o["item"].to_numpy()
    n_views = 1 + rng.poisson(f["order_extra_views"], len(o))
    vrow = np.repeat(np.arange(len(o)), n_views)
    first_view = np.r_[True, vrow[1:] != vrow[:-1]]
    vcat = w.catalog["cat"].to_numpy()[oi[vrow]]
    vitem = np.where(first_view, oi[vrow], _pick_items(rng, w, ou[vrow], vcat))
    parts.append((ou[vrow], ot[vrow] - rng.integers(3600, 7200, len(vrow)), vitem, "view"))
    ordered = (ou, ot, oi, "order")
    parts.append(_followed(rng, ordered, f["order_click"], (1800, 3600), "click", before=True))
    parts.append(_followed(rng, ordered, f["order_cart"], (60, 1800), "cart", before=True))
    parts.append(_followed(rng, ordered, f["order_purchase"], (0, 5), "purchase"))

    # Browsing sessions without a purchase.
    arch = w.truth["arch"].to_numpy()
    active = w.truth["active_days"].to_numpy()
    rate = np.array([a.sessions_per_30d for a in ARCHETYPES])[arch] / 30.0
    su = np.repeat(np.arange(w.n_users), rng.poisson(rate * active))
    s_start = (w.start_s + np.floor(rng.random(len(su)) * active[su]).astype(np.int64) * _DAY
               + _time_of_day(rng, len(su)))
    s_cat = _choose_rows(rng, w.pref_cum, su)
    n_views = 1 + rng.poisson(f["session_extra_views"], len(su))
    srow = np.repeat(np.arange(len(su)), n_views)
    gaps = rng.integers(10, 120, len(srow))
    starts = np.cumsum(n_views) - n_views
    offset = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts] - gaps[starts], n_views)
    vu, vt = su[srow], s_start[srow] + offset
    vi = _pick_items(rng, w, vu, s_cat[srow])
    views = (vu, vt, vi, "view")
    clicks = _followed(rng, views, f["view_click"], (2, 20), "click")
    favorites = _followed(rng, clicks, f["click_favorite"], (5, 60), "favorite")
    carts = _followed(rng, clicks, f["click_cart"], (10, 90), "cart")
    parts += [views, clicks, favorites, carts, _followed(rng, carts, f["cart_remove"], (60, 3600), "remove_cart")]

    user = np.concatenate([p[0] for p in parts])
    ts = np.concatenate([p[1] for p in parts]).astype(np.int64)
    item = np.concatenate([p[2] for p in parts])
    action = np.concatenate([np.full(len(p[0]), p[3], dtype=object) for p in parts])
    # Nothing before the window, on or after the churn day, or after the window.
    stop = w.start_s + active[user].astype(np.int64) * _DAY
    keep = (ts >= w.start_s) & (ts < stop)
    user, ts, item, action = user[keep], ts[keep], item[keep], action[keep]
    order = np.lexsort((user, ts))
    w.events = pd.DataFrame({"user": user[order], "local_s": ts[order], "item": item[order],
                             "action": action[order]})


def _event_rows(rng: np.random.Generator, w: _World) -> pd.DataFrame:
    e = w.events
    cat = w.catalog.iloc[e["item"].to_numpy()]
    primary = w.truth["device"].to_numpy()[e["user"].to_numpy()]
    return pd.DataFrame({
        "event_id": _ids("e", 1, len(e), 8),
        "user_id": w.users["user_id"].to_numpy()[e["user"].to_numpy()],
        "ts": _timestamps(rng, e["local_s"].to_numpy()),
        "action": e["action"].to_numpy(),
        "item_id": cat["item_id"].to_numpy(),
        "category": np.array([c.name for c in CATEGORIES], dtype=object)[cat["cat"].to_numpy()],
        "brand": cat["brand"].to_numpy(),
        "device_type": _devices(rng, primary),
    })
