"""Which channel to contact a user on: Beta-Bernoulli Thompson sampling.

Each channel (SMS, app push, e-mail ...) is an arm whose conversion rate has a Beta
posterior: ``Beta(prior_alpha + conversions, prior_beta + trials - conversions)``.
``choose`` draws one rate per channel and picks the highest draw, so a channel is chosen as
often as it is likely to be the best one: new channels get explored, clear losers fade out.

State lives in the profile store as atomic counters, so replicas share it and a restart
loses nothing:

* the user's own row: ``c:bandit.<channel>.n`` (outcomes reported) and ``.s`` (conversions);
* a pooled row per segment, key ``\\x1fbandit:segment:<name>`` (user ids cannot contain
  control characters, so it can never be a user's row), with the same counters. Segments
  are keyed by name, which follows the centroid from one model version to the next, not by
  id, which does not. Users without a paid order pool under GetSegment's ``no_purchases``;
  users with RFM whose CLV the model needs is not built yet pool under ``none``.

A user's posterior adds their own counts to their segment's: most users have few outcomes
of their own, and the segment's carry the information until they do. ``report`` increments
both rows, so a user's own outcomes count twice in their posterior: the weight of personal
evidence over the segment's. Channels a user has not consented to are never chosen.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.storage import ProfileStore
from cluster.core.storage.keys import decode_counter
from cluster.core.storage.profile_store import INTERNAL_ROW_PREFIX

__all__ = ["ArmState", "ChannelBandit", "Choice", "NO_SEGMENT", "SCOPE_PREFIX", "segment_row"]

#: Row-key prefix of pooled state rows; the store leaves them out of user counts.
SCOPE_PREFIX = INTERNAL_ROW_PREFIX + "bandit:"


#: The pool of users who bought but have no segment yet (the model needs CLV, not built yet).
#: Users who never bought are in the ``no_purchases`` segment and pool under that name. (Before
#: that segment existed they pooled here; that history is not carried over.)
NO_SEGMENT = "none"


def segment_row(segment: str) -> str:
    return f"{SCOPE_PREFIX}segment:{segment}"


def _columns(channel: str) -> tuple[str, str]:
    return f"c:bandit.{channel}.n", f"c:bandit.{channel}.s"


@dataclass(frozen=True)
class ArmState:
    channel: str
    trials: int  # outcomes reported (user + segment)
    conversions: int
    posterior_mean: float
    sample: float  # this request's Thompson draw


@dataclass(frozen=True)
class Choice:
    channel: str
    arms: list[ArmState]
    excluded: list[str]  # channels left out for lack of consent


class ChannelBandit:
    """Thompson sampling over ``channels`` with counters in ``store``."""

    def __init__(self, store: ProfileStore, channels: Sequence[str], *, prior_alpha: float = 1.0,
                 prior_beta: float = 1.0, seed: int | None = None) -> None:
        if not channels:
            raise ValueError("at least one channel is needed")
        self.store = store
        self.channels = tuple(channels)
        self.prior = (float(prior_alpha), float(prior_beta))
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # Generator is not thread-safe

    def check_channel(self, channel: str, field: str = "channel") -> str:
        if channel not in self.channels:
            raise InvalidArgument(f"{field} must be one of {', '.join(self.channels)}, got {channel!r}", field=field)
        return channel

    def _counts(self, row: str) -> dict[str, tuple[int, int]]:
        cells = self.store.read(row, [c for ch in self.channels for c in _columns(ch)]) or {}
        out = {}
        for ch in self.channels:
            n_col, s_col = _columns(ch)
            n = decode_counter(cells[n_col]) if n_col in cells else 0
            s = decode_counter(cells[s_col]) if s_col in cells else 0
            out[ch] = (n, min(s, n))  # a report increments n first; s never leads for long
        return out

    def _draw(self, counts: Mapping[str, tuple[int, int]], allowed: Sequence[str]) -> Choice:
        a0, b0 = self.prior
        alphas = np.array([a0 + counts[ch][1] for ch in allowed])
        betas = np.array([b0 + counts[ch][0] - counts[ch][1] for ch in allowed])
        with self._lock:
            draws = self._rng.beta(alphas, betas)
        arms = [ArmState(ch, counts[ch][0], counts[ch][1], float(a / (a + b)), float(d))
                for ch, a, b, d in zip(allowed, alphas, betas, draws)]
        best = allowed[int(np.argmax(draws))]
        return Choice(best, arms, [ch for ch in self.channels if ch not in allowed])

    def choose(self, *, segment: str, user_id: str | None = None,
               consent: Mapping[str, bool] | None = None, only: Sequence[str] | None = None) -> Choice:
        """A channel for ``user_id`` (their counts plus their segment's) or, without one, for
        the segment. ``consent`` maps channel -> allowed; a channel missing from it is allowed
        only when ``consent`` is None (a segment-level choice has no one to ask). ``only``
        restricts the choice further (a campaign's channels).

        Raises:
            FailedPrecondition: the user consented to none of the channels.
        """
        pooled = self._counts(segment_row(segment))
        if user_id is not None:
            own = self._counts(user_id)
            pooled = {ch: (pooled[ch][0] + own[ch][0], pooled[ch][1] + own[ch][1]) for ch in self.channels}
        offered = [ch for ch in self.channels if only is None or ch in only]
        allowed = [ch for ch in offered if consent is None or consent.get(ch, False)]
        if not allowed:
            raise FailedPrecondition("the user has consented to none of the channels "
                                     f"({', '.join(offered)}); do not contact them", field="user_id")
        return self._draw(pooled, allowed)

    def report(self, *, segment: str, channel: str, converted: bool, user_id: str | None = None) -> None:
        """Count one outcome of a contact on ``channel``: in the segment's row and, with a
        user, in theirs. Trials are counted before conversions, so a reader never sees more
        conversions than trials for longer than one increment."""
        self.check_channel(channel)
        n_col, s_col = _columns(channel)
        rows = [segment_row(segment)] + ([user_id] if user_id is not None else [])
        for row in rows:
            self.store.increment(row, n_col, 1)
            if converted:
                self.store.increment(row, s_col, 1)

    def state(self, *, segment: str, user_id: str | None = None) -> dict[str, tuple[int, int]]:
        """(trials, conversions) per channel as ``choose`` would see them."""
        pooled = self._counts(segment_row(segment))
        if user_id is None:
            return pooled
        own = self._counts(user_id)
        return {ch: (pooled[ch][0] + own[ch][0], pooled[ch][1] + own[ch][1]) for ch in self.channels}
