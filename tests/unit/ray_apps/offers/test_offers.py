"""The offer rules: which rule fires, discount caps, unknown scores."""

from __future__ import annotations

import math

import pytest

from cluster.core.settings import CampaignSettings, OfferSettings
from ray_apps.offers.policy import ScoreInputs, decide, propensity_from_expected

RULES = OfferSettings()
CAMPAIGN = CampaignSettings(max_discount=0.3)


def _x(**kw) -> ScoreInputs:
    base = {"segment_name": "general", "clv": 100.0, "propensity": 0.2, "churn_risk": 0.1, "frequency": 3.0}
    return ScoreInputs(**{**base, **kw})


@pytest.mark.parametrize("inputs, offer, discount", [
    (_x(churn_risk=0.8, clv=2000.0), "retention", 0.30),
    (_x(churn_risk=0.8, clv=100.0), "winback", 0.22),  # 3/4 of 30 % rounded down to whole percent
    (_x(churn_risk=0.8, clv=None), "winback", 0.22),
    (_x(propensity=0.9), "loyalty_points", 0.0),
    (_x(frequency=1.0), "second_purchase", 0.15),
    (_x(frequency=None), "second_purchase", 0.15),
    (_x(), "cross_sell", 0.07),
])
def test_the_first_matching_rule_decides(inputs, offer, discount):
    d = decide(inputs, CAMPAIGN, RULES)
    assert (d.offer_type, d.discount) == (offer, pytest.approx(discount))
    assert d.rationale


def test_unknown_scores_never_trigger_a_rule():
    d = decide(_x(churn_risk=None, propensity=None, clv=None), CAMPAIGN, RULES)
    assert d.offer_type == "cross_sell"


def test_discounts_never_exceed_the_campaign_cap():
    for cap in (0.0, 0.05, 0.13, 0.5, 0.9):
        for x in (_x(churn_risk=0.9, clv=1e6), _x(churn_risk=0.9), _x(frequency=0.0), _x()):
            d = decide(x, CampaignSettings(max_discount=cap), RULES)
            assert 0.0 <= d.discount <= cap
            assert d.discount * 100 == pytest.approx(round(d.discount * 100))


def test_propensity_is_the_chance_of_at_least_one_purchase():
    assert propensity_from_expected(0.0) == 0.0
    assert propensity_from_expected(1.0) == pytest.approx(1 - math.exp(-1))
    assert propensity_from_expected(-3.0) == 0.0
    assert propensity_from_expected(None) is None and propensity_from_expected(math.nan) is None
