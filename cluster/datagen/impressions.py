"""Campaigns and ad impressions: channels under the consent rule, the true click model, costs,
and the rows of impressions.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cluster.datagen.helpers import _ids, _time_of_day, _timestamps
from cluster.datagen.params import (
    _ADS_PER_CAMPAIGN,
    _CAMPAIGNS_PER_CHANNEL,
    _COST_SIGMA,
    _DAY,
    _MESSAGE_CHANNELS,
    ARCHETYPES,
    CATEGORIES,
    CHANNELS,
    CLICK_MODEL,
)
from cluster.datagen.world import _devices, _World


def _campaigns(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for ch in CHANNELS:
        for _ in range(_CAMPAIGNS_PER_CHANNEL):
            rows.append((ch, int(rng.integers(0, len(CATEGORIES)))))
    df = pd.DataFrame(rows, columns=["channel", "cat"])
    df.insert(0, "campaign_id", _ids("cmp", 1, len(df), 3))
    return df


def _build_impressions(rng: np.random.Generator, w: _World) -> pd.DataFrame:
    t = w.truth
    arch = t["arch"].to_numpy()
    active = t["active_days"].to_numpy()
    rate = np.array([a.impressions_per_30d for a in ARCHETYPES])[arch] / 30.0
    user = np.repeat(np.arange(w.n_users), rng.poisson(rate * active))
    n = len(user)

    names = list(CHANNELS)
    shares = np.array([CHANNELS[c][0] for c in names])
    channel = rng.choice(len(names), size=n, p=shares / shares.sum())
    display = [i for i, c in enumerate(names) if c not in _MESSAGE_CHANNELS]
    d_shares = shares[display] / shares[display].sum()
    for ch, flag in _MESSAGE_CHANNELS.items():
        ci = names.index(ch)
        refused = (channel == ci) & ~t[flag].to_numpy()[user]
        channel[refused] = np.array(display)[rng.choice(len(display), size=refused.sum(), p=d_shares)]
    ch_name = np.array(names, dtype=object)[channel]

    camps = _campaigns(rng)
    camp = channel * _CAMPAIGNS_PER_CHANNEL + rng.integers(0, _CAMPAIGNS_PER_CHANNEL, n)
    ad = camp * _ADS_PER_CAMPAIGN + rng.integers(0, _ADS_PER_CAMPAIGN, n)
    n_pos = np.array([CHANNELS[c][1] for c in names])[channel]
    position = 1 + np.floor(rng.random(n) * n_pos).astype(int)
    device = _devices(rng, t["device"].to_numpy()[user])

    message = np.isin(ch_name, list(_MESSAGE_CHANNELS))
    tod = np.where(message, 9 * 3600 + rng.integers(0, 12 * 3600, n), _time_of_day(rng, n))
    local_s = w.start_s + np.floor(rng.random(n) * active[user]).astype(np.int64) * _DAY + tod

    cm = CLICK_MODEL
    logit = (cm["intercept"]
             + np.array([cm["channel"][c] for c in names])[channel]
             + cm["position"] * (position - 1)
             + pd.Series(device).map(cm["device"]).to_numpy(dtype=float)
             + np.array([cm["archetype"][a.name] for a in ARCHETYPES])[arch[user]]
             + cm["category_match"] * (camps["cat"].to_numpy()[camp] == t["top_cat"].to_numpy()[user]))
    p = 1.0 / (1.0 + np.exp(-logit))
    clicked = rng.random(n) < p

    model = np.array([CHANNELS[c][2] for c in names])[channel]
    median = np.array([CHANNELS[c][3] for c in names])[channel]
    noisy = median * np.exp(rng.normal(0.0, _COST_SIGMA, n))
    cost = np.where(model == "fixed", median, np.where(model == "cpc", noisy * clicked, noisy))

    order = np.lexsort((user, local_s))
    w.impressions = pd.DataFrame({
        "user": user, "local_s": local_s, "campaign": camp, "ad": ad, "channel": ch_name,
        "position": position, "device": device, "cost": cost, "clicked": clicked,
    }).iloc[order].reset_index(drop=True)
    w.p_click = p[order]
    return camps


def _impression_rows(rng: np.random.Generator, w: _World, camps: pd.DataFrame) -> pd.DataFrame:
    m = w.impressions
    return pd.DataFrame({
        "impression_id": _ids("im", 1, len(m), 8),
        "user_id": w.users["user_id"].to_numpy()[m["user"].to_numpy()],
        "ts": _timestamps(rng, m["local_s"].to_numpy()),
        "ad_id": _ids("ad", 1, len(camps) * _ADS_PER_CAMPAIGN, 4)[m["ad"].to_numpy()],
        "campaign_id": camps["campaign_id"].to_numpy()[m["campaign"].to_numpy()],
        "channel": m["channel"].to_numpy(),
        "ad_position": m["position"].astype(str).to_numpy(),
        "device_type": m["device"].to_numpy(),
        "cost": np.char.mod("%.4f", m["cost"].to_numpy()).astype(object),
        "clicked": np.where(m["clicked"].to_numpy(), "1", "0").astype(object),
    })
