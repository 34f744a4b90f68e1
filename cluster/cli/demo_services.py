"""The demo's tour of the decision services: each called over gRPC and HTTP for one user."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from cluster.core.errors import FailedPrecondition, NotFound, PlatformError
from cluster.core.settings import Settings

__all__ = ["ARTICLE_CHANNELS", "ARTICLE_BUDGET", "call_services"]

T = TypeVar("T")

#: The article's channel table (docs/budget.md): its allocation is the revenue optimum.
ARTICLE_CHANNELS = [
    {"name": "feed", "cost_per_placement": 50, "roi": 3.2, "max_placements": 10000, "min_placements": 2000},
    {"name": "search", "cost_per_placement": 80, "roi": 4.5, "max_placements": 6000, "min_placements": 1500},
    {"name": "short_video", "cost_per_placement": 30, "roi": 2.8, "max_placements": 15000, "min_placements": 3000},
]
ARTICLE_BUDGET = 1_130_000.0


def _served(call: Callable[[], T], wait_s: float) -> T:
    """``call()``, retried while the model is not served yet (a replica re-reads the registry
    every ``serve.model_refresh_s``): FAILED_PRECONDITION for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return call()
        except FailedPrecondition:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def call_services(settings: Settings, user_id: str, ad: dict[str, Any], category: str | None = None
                  ) -> dict[str, Any]:
    """Call CTR, recommendations, churn, offers, budget and channels for ``user_id``, the default
    funnel, the first campaign goal of the settings and the pricing of ``category`` on both
    transports; gRPC and HTTP must agree where the answer is deterministic.

    Returns:
        Service -> its gRPC answer, or the reason it could not answer (a model not trained).

    Raises:
        FailedPrecondition: the transports disagree.
    """
    from google.protobuf.json_format import MessageToDict

    from ray_apps.client import MarketingClient
    from ray_apps.evaluation.service import goal_request

    wait = settings.serve.model_refresh_s * 2 + 5
    out: dict[str, Any] = {}
    with MarketingClient.from_settings(settings, timeout_s=20.0) as client:
        pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[Any], Any]]] = {
            "ctr": (lambda: client.score_ctr([{**ad, "user_id": user_id}]),
                    lambda: client.score_ctr_http([{**ad, "user_id": user_id}]),
                    lambda r: (round(r.scores[0].p_click, 9), r.model_version)),
            "recs": (lambda: client.recommend(user_id, 5), lambda: client.recommend_http(user_id, 5),
                     lambda r: ([i.item_id for i in r.items], r.reason, r.model_version)),
            "churn": (lambda: client.churn_risk(user_id, 30), lambda: client.churn_risk_http(user_id, 30),
                      lambda r: (round(r.churn_probability, 9), r.contact_day if r.HasField("contact_day") else None)),
            "offer": (lambda: client.generate_offer(user_id), lambda: client.generate_offer_http(user_id),
                      lambda r: (r.offer_id, r.offer_type, r.discount, r.channel)),
            "budget": (lambda: client.optimize_budget(ARTICLE_CHANNELS, ARTICLE_BUDGET),
                       lambda: client.optimize_budget_http(ARTICLE_CHANNELS, ARTICLE_BUDGET),
                       lambda r: [(a.name, round(a.placements, 3)) for a in r.allocations]),
            "funnel": (lambda: client.get_funnel("default", by="device"),
                       lambda: client.get_funnel_http("default", by="device"),
                       lambda r: [(g.name, [s.users for s in g.steps]) for g in r.groups]),
        }
        if settings.evaluation.goals:
            cid, goal = next(iter(settings.evaluation.goals.items()))
            body = MessageToDict(goal_request(cid, goal), preserving_proto_field_name=True)
            pairs["goal_gap"] = (lambda: client.goal_gap(body), lambda: client.goal_gap_http(body),
                                 lambda r: [(g.metric, round(g.attained, 6), round(g.projected, 6)) for g in r.goals])
        if category:
            offer = {"category": category, "budget": 2000.0}
            pairs["pricing"] = (lambda: client.propose_discounts(offer), lambda: client.propose_discounts_http(offer),
                                lambda r: ([round(s.discount, 4) for s in r.slots], round(r.expected_margin, 4),
                                           r.model_version))
        for name, (grpc_call, http_call, key) in pairs.items():
            try:
                g = _served(grpc_call, wait)
            except (FailedPrecondition, NotFound) as exc:
                # a model not trained yet, or a settings example that is not in this data (the
                # embedded profile's goal names campaign cmp001 of the generated data)
                out[name] = exc.message
                continue
            h = http_call()
            if key(g) != key(h):
                raise FailedPrecondition(f"{name}: gRPC and HTTP disagree: {key(g)} vs {key(h)}")
            out[name] = g
        try:
            choice = client.choose_channel(user_id=user_id)
            client.report_outcome(choice.channel, converted=True, user_id=user_id)
            out["channel"] = client.choose_channel_http(user_id=user_id)
        except PlatformError as exc:
            out["channel"] = exc.message
    return out
