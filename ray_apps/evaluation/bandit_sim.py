"""Compare channel-choice policies on simulated or replayed outcomes: regret and revenue.

Policies:

* ``thompson``: the ChannelService's own :class:`ray_apps.channels.bandit.ChannelBandit`,
  with its counters in a real (temporary SQLite) profile store, exactly as served;
* ``ucb``: UCB1 on the same counts (mean + sqrt(2 ln t / n));
* ``fixed``: a fixed split (equal by default), what a campaign without a bandit does.

``simulate`` draws each contact's outcome from known conversion rates. All policies see the
same random outcomes (common random numbers), so their difference is the policy, not luck.
Regret is counted in expected conversions: the best channel's rate minus the chosen one's.

``replay`` evaluates a policy on a log of (channel, converted) contacts (Li et al., 2011): a
logged contact counts only when the policy picks the logged channel. It is unbiased when the
log's channels were chosen uniformly at random; on any other log it favours what the logging
policy chose.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cluster.core.errors import InvalidArgument

__all__ = ["Arm", "SimResult", "POLICIES", "simulate", "replay"]

POLICIES = ("thompson", "ucb", "fixed")
_SEGMENT = "simulation"


@dataclass(frozen=True)
class Arm:
    channel: str
    rate: float  # true conversion rate per contact
    value: float = 0.0  # revenue per conversion
    cost: float = 0.0  # cost per contact


@dataclass
class SimResult:
    policy: str
    contacts: int
    conversions: int
    revenue: float  # value of conversions minus contact costs
    regret: float  # expected conversions lost against always choosing the best channel
    regret_curve: list[float] = field(repr=False)  # cumulative regret at each checkpoint
    share: dict[str, float] = field(default_factory=dict)  # contacts per channel / contacts


class _Policy:
    def choose(self) -> int: ...

    def update(self, arm: int, converted: bool) -> None: ...

    def close(self) -> None:
        pass


class _Thompson(_Policy):
    """The served policy: ChannelBandit over a SQLite profile store in a temporary folder."""

    def __init__(self, channels: Sequence[str], seed: int) -> None:
        from cluster.core.storage import SqliteProfileStore
        from ray_apps.channels.bandit import ChannelBandit

        self._dir = tempfile.TemporaryDirectory(prefix="pmkt-bandit-sim-")
        self._store = SqliteProfileStore(Path(self._dir.name) / "sim.sqlite")
        self._bandit = ChannelBandit(self._store, channels, seed=seed)
        self._index = {ch: i for i, ch in enumerate(channels)}
        self._channels = list(channels)

    def choose(self) -> int:
        return self._index[self._bandit.choose(segment=_SEGMENT).channel]

    def update(self, arm: int, converted: bool) -> None:
        self._bandit.report(segment=_SEGMENT, channel=self._channels[arm], converted=converted)

    def close(self) -> None:
        self._store.close()
        self._dir.cleanup()


class _Ucb(_Policy):
    def __init__(self, k: int) -> None:
        self.n = np.zeros(k)
        self.s = np.zeros(k)

    def choose(self) -> int:
        untried = np.nonzero(self.n == 0)[0]
        if untried.size:
            return int(untried[0])
        t = self.n.sum()
        return int(np.argmax(self.s / self.n + np.sqrt(2 * math.log(t) / self.n)))

    def update(self, arm: int, converted: bool) -> None:
        self.n[arm] += 1
        self.s[arm] += converted


class _Fixed(_Policy):
    def __init__(self, weights: np.ndarray, rng: np.random.Generator) -> None:
        self.p = weights / weights.sum()
        self.rng = rng

    def choose(self) -> int:
        return int(self.rng.choice(self.p.size, p=self.p))

    def update(self, arm: int, converted: bool) -> None:
        pass


def _policy(name: str, arms: Sequence[Arm], seed: int, split: Sequence[float] | None) -> _Policy:
    if name == "thompson":
        return _Thompson([a.channel for a in arms], seed)
    if name == "ucb":
        return _Ucb(len(arms))
    if name == "fixed":
        w = np.ones(len(arms)) if split is None else np.asarray(split, float)
        if w.shape != (len(arms),) or np.any(w < 0) or w.sum() == 0:
            raise InvalidArgument("split must give one non-negative weight per channel", field="split")
        return _Fixed(w, np.random.default_rng(seed + 1))
    raise InvalidArgument(f"policy must be one of {', '.join(POLICIES)}, got {name!r}", field="policy")


def _check_arms(arms: Sequence[Arm]) -> None:
    if len(arms) < 2:
        raise InvalidArgument("give at least two channels", field="arms")
    if len({a.channel for a in arms}) != len(arms):
        raise InvalidArgument("channel names must be unique", field="arms")
    for a in arms:
        if not 0 <= a.rate <= 1:
            raise InvalidArgument(f"{a.channel}: rate must be in [0, 1]", field="arms")


def simulate(arms: Sequence[Arm], *, contacts: int = 10_000, policies: Sequence[str] = POLICIES, seed: int = 0,
             split: Sequence[float] | None = None, checkpoints: int = 50) -> list[SimResult]:
    """Run each policy for ``contacts`` contacts on the same random outcomes."""
    _check_arms(arms)
    if contacts < 1:
        raise InvalidArgument("contacts must be at least 1", field="contacts")
    if checkpoints < 1:
        raise InvalidArgument("checkpoints must be at least 1", field="checkpoints")
    rates = np.array([a.rate for a in arms])
    value = np.array([a.value for a in arms])
    cost = np.array([a.cost for a in arms])
    # Outcome of contacting channel j at step t, shared by every policy.
    outcomes = np.random.default_rng(seed).random((contacts, len(arms))) < rates
    marks = set(np.linspace(1, contacts, min(checkpoints, contacts)).astype(int).tolist())
    best = rates.max()
    results = []
    for name in policies:
        policy = _policy(name, arms, seed, split)
        chosen = np.zeros(len(arms), int)
        conv = 0
        revenue = regret = 0.0
        curve = []
        try:
            for t in range(contacts):
                j = policy.choose()
                hit = bool(outcomes[t, j])
                policy.update(j, hit)
                chosen[j] += 1
                conv += hit
                revenue += hit * value[j] - cost[j]
                regret += best - rates[j]
                if t + 1 in marks:
                    curve.append(float(regret))
        finally:
            policy.close()
        results.append(SimResult(name, contacts, conv, float(revenue), float(regret), curve,
                                 {a.channel: float(c / contacts) for a, c in zip(arms, chosen)}))
    return results


def replay(log_channels: Sequence[str], log_converted: Sequence[bool], channels: Sequence[str], *,
           policies: Sequence[str] = POLICIES, seed: int = 0) -> list[SimResult]:
    """Replay evaluation on a contact log; ``contacts`` is the number of matched log rows and
    ``regret`` is against the best channel's observed rate in the log."""
    if len(log_channels) != len(log_converted) or not log_channels:
        raise InvalidArgument("the log needs one outcome per contact, and at least one contact", field="log")
    index = {ch: i for i, ch in enumerate(channels)}
    unknown = sorted(set(log_channels) - set(index))
    if unknown:
        raise InvalidArgument(f"the log names channels that are not offered: {', '.join(unknown)}", field="log")
    logged = np.array([index[c] for c in log_channels])
    hits = np.asarray(log_converted, bool)
    observed = np.array([hits[logged == i].mean() if np.any(logged == i) else 0.0 for i in range(len(channels))])
    arms = [Arm(ch, float(r)) for ch, r in zip(channels, observed)]
    results = []
    for name in policies:
        policy = _policy(name, arms, seed, None)
        chosen = np.zeros(len(channels), int)
        conv = matched = 0
        regret = 0.0
        try:
            for j_log, hit in zip(logged, hits):
                j = policy.choose()
                if j != j_log:
                    continue
                policy.update(j, bool(hit))
                matched += 1
                chosen[j] += 1
                conv += bool(hit)
                regret += observed.max() - observed[j]
        finally:
            policy.close()
        results.append(SimResult(name, matched, conv, 0.0, float(regret), [],
                                 {ch: float(c / max(matched, 1)) for ch, c in zip(channels, chosen)}))
    return results
