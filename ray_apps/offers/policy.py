"""The offer rules: a pure function of the user's scores and the campaign's caps.

In order, the first rule that applies decides (thresholds from ``offers.*`` settings):

0. the ``no_purchases`` segment (a known user who never paid for an order): **first_purchase**,
   1/2 of ``max_discount``. Retention and winback presuppose a customer to keep, and CLV and
   propensity are not computed for someone who never bought, so no later rule fits them;
1. churn risk >= ``churn_risk_high`` and CLV >= ``clv_high``: **retention**, the campaign's
   full ``max_discount`` (a valuable customer about to leave);
2. churn risk >= ``churn_risk_high``: **winback**, 3/4 of ``max_discount``;
3. propensity >= ``propensity_high``: **loyalty_points**, no price discount (they are
   likely to buy anyway; a discount would only give margin away);
4. at most one paid order: **second_purchase**, 1/2 of ``max_discount``;
5. otherwise **cross_sell**, 1/4 of ``max_discount``.

Unknown scores never trigger a rule: without a churn model the first two rules are skipped.
Discounts are whole percentages, never above the campaign's cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.core.settings import CampaignSettings, OfferSettings
from ray_apps.segments.service import NO_PURCHASES_NAME

__all__ = ["OfferDecision", "ScoreInputs", "decide", "propensity_from_expected"]


@dataclass(frozen=True)
class ScoreInputs:
    segment_name: str
    clv: float | None
    propensity: float | None
    churn_risk: float | None
    frequency: float | None  # paid orders in the RFM window (None: no purchase history)


@dataclass(frozen=True)
class OfferDecision:
    offer_type: str
    discount: float
    rationale: str


def propensity_from_expected(expected_purchases: float | None) -> float | None:
    """P(at least one purchase) when purchases are Poisson with the BG/NBD expected count."""
    if expected_purchases is None or not math.isfinite(expected_purchases):
        return None
    return 1.0 - math.exp(-max(expected_purchases, 0.0))


def _pct(fraction: float, cap: float) -> float:
    return min(math.floor(fraction * 100 + 1e-9) / 100, cap)


def decide(x: ScoreInputs, campaign: CampaignSettings, rules: OfferSettings) -> OfferDecision:
    cap = campaign.max_discount
    if x.segment_name == NO_PURCHASES_NAME:
        return OfferDecision("first_purchase", _pct(0.5 * cap, cap),
                             "no paid order yet (segment no_purchases): first-purchase incentive")
    risky = x.churn_risk is not None and x.churn_risk >= rules.churn_risk_high
    if risky and x.clv is not None and x.clv >= rules.clv_high:
        return OfferDecision("retention", _pct(cap, cap),
                             f"churn risk {x.churn_risk:.2f} >= {rules.churn_risk_high:.2f} and CLV {x.clv:,.0f} "
                             f">= {rules.clv_high:,.0f}: retention")
    if risky:
        return OfferDecision("winback", _pct(0.75 * cap, cap),
                             f"churn risk {x.churn_risk:.2f} >= {rules.churn_risk_high:.2f}: winback")
    if x.propensity is not None and x.propensity >= rules.propensity_high:
        return OfferDecision("loyalty_points", 0.0,
                             f"purchase propensity {x.propensity:.2f} >= {rules.propensity_high:.2f}: "
                             "no discount needed, loyalty points")
    if x.frequency is None or x.frequency <= 1:
        return OfferDecision("second_purchase", _pct(0.5 * cap, cap),
                             "at most one paid order: second-purchase incentive")
    return OfferDecision("cross_sell", _pct(0.25 * cap, cap), "repeat customer: cross-sell incentive")
