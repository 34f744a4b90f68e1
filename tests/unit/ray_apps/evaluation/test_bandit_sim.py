"""Channel-policy simulation: the served Thompson sampler against UCB1 and a fixed split."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.core.errors import InvalidArgument
from ray_apps.evaluation.bandit_sim import Arm, replay, simulate

ARMS = [Arm("sms", 0.04, value=120, cost=0.05), Arm("push", 0.06, value=120, cost=0.01),
        Arm("email", 0.02, value=120, cost=0.002)]


def test_learning_policies_beat_a_fixed_split_on_regret_and_revenue():
    thompson, ucb, fixed = simulate(ARMS, contacts=6_000, seed=4)
    assert (thompson.policy, ucb.policy, fixed.policy) == ("thompson", "ucb", "fixed")
    # A fixed equal split loses (0.06 - 0.04 + 0.06 - 0.02) / 3 = 0.02 per contact.
    assert fixed.regret == pytest.approx(6_000 * 0.02, rel=0.05)
    assert thompson.regret < 0.3 * fixed.regret
    assert ucb.regret < fixed.regret
    assert thompson.revenue > fixed.revenue
    assert thompson.share["push"] > 0.8
    # Regret accumulates: the curve never falls and ends at the total.
    assert all(a <= b for a, b in zip(thompson.regret_curve, thompson.regret_curve[1:]))
    assert thompson.regret_curve[-1] == pytest.approx(thompson.regret)


def test_policies_share_the_same_outcomes():
    """With the whole split on one channel, a fixed policy's conversions are that channel's
    draws; a second run with the same seed reproduces them exactly."""
    only_push = simulate(ARMS, contacts=2_000, policies=["fixed"], split=[0, 1, 0], seed=8)[0]
    again = simulate(ARMS, contacts=2_000, policies=["fixed"], split=[0, 1, 0], seed=8)[0]
    assert only_push.regret == 0.0 and only_push.share == {"sms": 0.0, "push": 1.0, "email": 0.0}
    assert only_push.conversions == again.conversions
    expected = np.random.default_rng(8).random((2_000, 3))[:, 1] < 0.06
    assert only_push.conversions == int(expected.sum())


def test_replay_counts_only_matching_log_rows():
    rng = np.random.default_rng(1)
    channels = ["sms", "push", "email"]
    logged = rng.choice(channels, 9_000)  # a uniformly random logging policy
    rates = {"sms": 0.04, "push": 0.06, "email": 0.02}
    converted = rng.random(9_000) < np.array([rates[c] for c in logged])
    thompson, _ucb, fixed = replay(list(logged), list(converted), channels, seed=2)
    assert fixed.contacts == pytest.approx(3_000, rel=0.1)  # a uniform policy matches 1/3 of rows
    assert thompson.share["push"] > fixed.share["push"]
    assert thompson.regret / thompson.contacts < fixed.regret / fixed.contacts


def test_bad_simulation_input_names_the_field():
    with pytest.raises(InvalidArgument) as err:
        simulate([ARMS[0]])
    assert err.value.field == "arms"
    with pytest.raises(InvalidArgument) as err:
        simulate(ARMS, policies=["greedy"])
    assert err.value.field == "policy"
    with pytest.raises(InvalidArgument) as err:
        replay(["sms", "fax"], [True, False], ["sms", "push"])
    assert err.value.field == "log"
