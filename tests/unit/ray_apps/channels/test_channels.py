"""Thompson-sampling channel choice: it learns the best channel, honours consent, survives restarts."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.storage import SqliteProfileStore
from ray_apps.channels import ChannelBandit

CHANNELS = ("sms", "push", "email")
TRUE_RATE = {"sms": 0.03, "push": 0.06, "email": 0.12}


@pytest.fixture
def store(tmp_path):
    s = SqliteProfileStore(tmp_path / "p.sqlite")
    s.ensure_schema()
    yield s
    s.close()


def test_it_learns_the_best_channel_and_regrets_less_than_uniform_choice(store):
    bandit = ChannelBandit(store, CHANNELS, seed=3)
    world = np.random.default_rng(11)
    rounds, picks, reward = 1500, [], 0
    for _ in range(rounds):
        ch = bandit.choose(segment="s2").channel
        converted = bool(world.random() < TRUE_RATE[ch])
        bandit.report(segment="s2", channel=ch, converted=converted)
        picks.append(ch)
        reward += converted
    late = picks[-500:]
    assert late.count("email") / len(late) > 0.6
    regret = rounds * TRUE_RATE["email"] - sum(TRUE_RATE[c] for c in picks)
    uniform_regret = rounds * (TRUE_RATE["email"] - np.mean(list(TRUE_RATE.values())))
    assert regret < 0.5 * uniform_regret
    trials, conversions = bandit.state(segment="s2")["email"]
    assert trials == picks.count("email") and 0 < conversions <= trials


def test_state_survives_a_restart_and_is_shared_between_instances(store, tmp_path):
    a = ChannelBandit(store, CHANNELS, seed=1)
    for converted in (True, False, True):
        a.report(segment="s4", channel="push", converted=converted, user_id="u1")
    store.close()
    reopened = SqliteProfileStore(tmp_path / "p.sqlite")
    b = ChannelBandit(reopened, CHANNELS, seed=2)
    assert b.state(segment="s4")["push"] == (3, 2)
    # The user's view adds their own counts to their segment's.
    assert b.state(segment="s4", user_id="u1")["push"] == (6, 4)
    assert b.state(segment="s5")["push"] == (0, 0)
    reopened.close()


def test_pooled_rows_are_not_counted_as_users(store):
    store.write_batch([("u1", {"a:city": "Hangzhou"})])
    ChannelBandit(store, CHANNELS).report(segment="s0", channel="sms", converted=True)
    assert store.count_users() == 1


def test_channels_without_consent_are_never_chosen(store):
    bandit = ChannelBandit(store, CHANNELS, seed=5)
    for _ in range(30):  # make e-mail look best
        bandit.report(segment="s1", channel="email", converted=True)
    consent = {"sms": True, "push": True, "email": False}
    choices = {bandit.choose(segment="s1", user_id="u9", consent=consent).channel for _ in range(200)}
    assert "email" not in choices and choices <= {"sms", "push"}
    choice = bandit.choose(segment="s1", user_id="u9", consent=consent)
    assert choice.excluded == ["email"]
    with pytest.raises(FailedPrecondition):
        bandit.choose(segment="s1", user_id="u9", consent={"sms": False})


def test_an_unknown_channel_is_an_invalid_argument(store):
    with pytest.raises(InvalidArgument) as err:
        ChannelBandit(store, CHANNELS).report(segment="s0", channel="fax", converted=True)
    assert err.value.field == "channel"
