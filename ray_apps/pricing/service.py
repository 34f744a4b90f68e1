"""PricingService: the demand forecast and the slot discounts of the current ``demand`` model.

:class:`PricingAdvisor` wraps one registered model version; the Serve deployment holds it in a
:class:`ray_apps.current.CurrentModel` (a new ``pmkt tune demand`` is picked up without a
redeploy) and both transports call :meth:`forecast` / :meth:`propose` with the request message.
"""

from __future__ import annotations

import math
from typing import Any

from cluster.core.errors import InvalidArgument
from cluster.core.settings import PricingSettings
from protos.marketing.v1 import pricing_pb2 as pb
from ray_apps.pricing.discounts import propose_discounts
from ray_apps.registry import ModelVersion

__all__ = ["PricingAdvisor"]


class PricingAdvisor:
    """Answers PricingService requests from one fitted :class:`ray_apps.pricing.DemandModel`."""

    def __init__(self, model: Any, version: ModelVersion, settings: PricingSettings) -> None:
        self.model = model
        self.version = version
        self.settings = settings

    def _category(self, name: str) -> str:
        if name not in self.model.categories_:
            raise InvalidArgument(f"category {name!r} is not in the demand model; one of "
                                  f"{', '.join(self.model.categories_)}", field="category")
        return name

    def _metric(self, key: str) -> float:
        value = self.version.metrics.get(key)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0

    def forecast(self, request: pb.ForecastDemandRequest) -> pb.ForecastDemandResponse:
        category = self._category(request.category)
        ratio = request.price_ratio or 1.0
        if not (math.isfinite(ratio) and 0 < ratio <= 1.5):
            raise InvalidArgument(f"price_ratio must be in (0, 1.5], got {ratio}", field="price_ratio")
        week = self.model.weekly_demand(category, ratio)
        return pb.ForecastDemandResponse(
            category=category, price_ratio=ratio,
            slots=[pb.SlotForecast(weekday=d, hour=h, expected_orders=float(week[d, h]))
                   for d in range(7) for h in range(24)],
            elasticity=self.model.elasticity_[category], elasticity_se=self.model.elasticity_se_[category],
            order_value=self.model.order_value_[category], holdout_mape=self._metric("holdout_mape_slot"),
            holdout_r2=self._metric("holdout_r2_slot"), model_version=self.version.ref)

    def propose(self, request: pb.ProposeDiscountsRequest) -> pb.ProposeDiscountsResponse:
        category = self._category(request.category)
        s = self.settings
        margin_rate = request.margin_rate if request.HasField("margin_rate") else s.margin_rate
        max_discount = request.max_discount if request.HasField("max_discount") else s.max_discount
        quantile = request.offpeak_quantile if request.HasField("offpeak_quantile") else s.offpeak_quantile
        elasticity = self.model.elasticity_[category]
        plan = propose_discounts(
            self.model.weekly_demand(category), elasticity=elasticity, order_value=self.model.order_value_[category],
            margin_rate=margin_rate, budget=request.budget, levels=list(request.discount_levels) or s.discount_levels,
            max_discount=max_discount, offpeak_quantile=quantile)
        return pb.ProposeDiscountsResponse(
            category=category,
            slots=[pb.SlotDiscount(weekday=x.weekday, hour=x.hour, discount=x.discount, base_orders=x.base_orders,
                                   expected_orders=x.expected_orders, expected_margin=x.expected_margin,
                                   discount_spend=x.discount_spend, offpeak=x.offpeak) for x in plan.slots],
            expected_margin=plan.expected_margin, base_margin=plan.base_margin, discount_spend=plan.discount_spend,
            budget=plan.budget, offpeak_threshold=plan.offpeak_threshold, elasticity=elasticity,
            margin_rate=margin_rate, max_discount=max_discount, solver_status=plan.status,
            model_version=self.version.ref)
