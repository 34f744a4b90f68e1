"""The API's services, declared once: what each gRPC service is, the model it waits for and its HTTP routes.

:data:`SERVICES` drives everything that lists them: the servicers Serve's gRPC proxy registers
(:data:`GRPC_SERVICERS`, also in ``serve-config.yaml`` and the Helm chart, which tests keep equal),
the health check's answer per service (:meth:`ray_apps.serve.api.ApiReplica.Check`) and the HTTP
routes with their request and response schemas (:func:`ray_apps.serve.http_app.build_http_app`).
The gRPC side needs nothing more: Serve's proxy calls the replica's method named like the RPC, and
the RPCs are the ones in ``protos/marketing/v1/*.proto``.

This module imports the generated messages only (no FastAPI, no Serve), so the launcher can read
the servicer list cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from protos.marketing.v1 import (
    budget_pb2,
    channel_pb2,
    churn_pb2,
    ctr_pb2,
    events_pb2,
    experiment_pb2,
    funnel_pb2,
    offer_pb2,
    pricing_pb2,
    profile_pb2,
    recommend_pb2,
    segment_pb2,
)

__all__ = [
    "GRPC_SERVICERS", "HEALTH_SERVICER", "OPEN_RPCS", "RPC_SCOPES", "SCOPE_NAMES", "SERVICES", "USER_PATH", "HttpRoute",
    "ServiceSpec", "service_named",
]

#: The prefix of the routes about one user. The id is any text, as the data contract's ids are: a
#: slash or a line break included (percent-encoded by clients; the ``anything`` path convertor is
#: registered by :mod:`ray_apps.serve.http_app`), so a bad id is judged by the lookup, as on gRPC.
USER_PATH = "/v1/users/{user_id:anything}/"
#: The standard health service (grpc_health_probe, Kubernetes gRPC probes): Check only.
HEALTH_SERVICER = "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server"
#: The scopes an RPC can need (``admin``, which implies them all, is no RPC's own): the names
#: :data:`ray_apps.serve.auth.SCOPES` defines, listed here so this module imports no more than protos.
SCOPE_NAMES = frozenset({"read", "events", "decide"})
#: The RPCs callable without an API key: health probes (``grpc.health.v1.Health/Check``) send none.
OPEN_RPCS = frozenset({"Check"})


@dataclass(frozen=True)
class HttpRoute:
    """One HTTP route: ``verb path`` answers what ``rpc`` answers, as the rpc's response message in
    proto3 JSON (proto field names, every field without presence printed).

    Attributes:
        verb: ``GET`` or ``POST``.
        path: FastAPI path.
        rpc: The RPC of the route's service it mirrors; its response message is the route's answer.
        handler: The :class:`~ray_apps.serve.api.ApiReplica` method that answers. It returns the
            response message; its parameters are the route's path, query and body parameters, or,
            with ``proto_body``, the parsed request message.
        summary: One line for the OpenAPI document.
        errors: HTTP status -> when it is answered (the OpenAPI document's error responses).
        proto_body: The body is the rpc's request message in proto3 JSON, parsed by protobuf's own
            parser as the gRPC side would (an unknown or mistyped field is 422 naming it).
    """

    verb: str
    path: str
    rpc: str
    handler: str
    summary: str
    errors: Mapping[int, str] = field(default_factory=dict, hash=False)
    proto_body: bool = False


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service of ``protos/marketing/v1`` and its HTTP routes.

    Attributes:
        proto: The generated ``*_pb2`` module that defines the service.
        service: The service's name in the proto (``SegmentService``).
        model: The model family whose current version the service needs (its health is
            NOT_SERVING until the first is trained); None if it needs none.
        scope: The API-key scope its RPCs need (``read``, ``events`` or ``decide``); the RPC's
            HTTP routes need the same.
        http: Its HTTP routes, in the order they are matched.
        scope_of: RPC -> scope, for the RPCs that need another scope than ``scope``.
    """

    proto: ModuleType
    service: str
    model: str | None
    scope: str
    http: tuple[HttpRoute, ...] = ()
    scope_of: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for route in self.http:
            if route.rpc not in self.descriptor.methods_by_name:
                raise ValueError(f"{route.verb} {route.path}: {self.service} has no rpc {route.rpc!r}")
        for rpc, scope in {"": self.scope, **self.scope_of}.items():
            if rpc and rpc not in self.descriptor.methods_by_name:
                raise ValueError(f"{self.service}.scope_of: no rpc {rpc!r}")
            if scope not in SCOPE_NAMES:
                raise ValueError(f"{self.service}: unknown scope {scope!r}; one of {sorted(SCOPE_NAMES)}")

    def scope_for(self, rpc: str) -> str:
        """The scope an API key needs to call ``rpc`` (or its HTTP routes)."""
        return self.scope_of.get(rpc, self.scope)

    @property
    def descriptor(self) -> Any:
        """The service's ``ServiceDescriptor``."""
        return self.proto.DESCRIPTOR.services_by_name[self.service]

    @property
    def name(self) -> str:
        """The full name health checks and reflection use (``marketing.v1.SegmentService``)."""
        return self.descriptor.full_name

    @property
    def rpcs(self) -> tuple[str, ...]:
        """The service's method names, as the replica must define them."""
        return tuple(m.name for m in self.descriptor.methods)

    @property
    def add_servicer(self) -> str:
        """The import path of the generated ``add_<Service>Servicer_to_server``."""
        return f"{self.proto.__name__}_grpc.add_{self.service}Servicer_to_server"

    def request_type(self, rpc: str) -> Any:
        """The generated request message class of ``rpc``."""
        return _message_class(self.descriptor.methods_by_name[rpc].input_type)

    def response_type(self, rpc: str) -> Any:
        """The generated response message class of ``rpc``."""
        return _message_class(self.descriptor.methods_by_name[rpc].output_type)


def _message_class(descriptor: Any) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(segment_pb2, "SegmentService", model="segments", scope="read", http=(
        HttpRoute("GET", USER_PATH + "segment", "GetSegment", "get_segment_http", "The user's segment", {
            404: "user never seen (no profile); a known user without a paid order is in segment no_purchases "
                 "(id -1)",
            422: "bad user_id",
            409: "no segments model trained yet"}),
    )),
    ServiceSpec(profile_pb2, "ProfileService", model=None, scope="read", http=(
        HttpRoute("GET", USER_PATH + "profile", "GetProfile", "get_profile_http", "The user's 360° profile", {
            404: "no profile for the user",
            422: "bad user_id or unknown field in fields"}),
    )),
    ServiceSpec(events_pb2, "EventService", model=None, scope="events", http=(
        HttpRoute("POST", "/v1/events", "TrackEvents", "track_events_http", "Track a batch of behaviour events", {
            422: "empty or over-large batch, or a malformed body"}),
    )),
    ServiceSpec(ctr_pb2, "CtrService", model="ctr", scope="read", http=(
        HttpRoute("POST", "/v1/ctr/score", "ScoreBatch", "score_batch_http",
                  "Click probabilities of user-ad candidate pairs", {
                      409: "no CTR model trained yet",
                      422: "empty or over-large batch, or a bad candidate field"}),
    )),
    ServiceSpec(recommend_pb2, "RecommendService", model="recs", scope="read", http=(
        HttpRoute("GET", USER_PATH + "recommendations", "Recommend", "recommend_http",
                  "The n best items the user has not seen, with the reason", {
                      409: "no recommendation model trained yet",
                      422: "bad user_id, n or exclude"}),
    )),
    ServiceSpec(churn_pb2, "ChurnService", model="churn", scope="read", http=(
        HttpRoute("GET", USER_PATH + "churn", "GetChurnRisk", "churn_http",
                  "Churn risk, survival curve, median time to churn and contact day", {
                      404: "user not in the churn table",
                      409: "no churn model trained yet",
                      422: "bad user_id or curve_step_days"}),
    )),
    ServiceSpec(offer_pb2, "OfferService", model="segments", scope="decide", http=(
        HttpRoute("POST", "/v1/offers", "GenerateOffer", "generate_offer_http",
                  "The user's offer for a campaign (idempotent while valid)", {
                      404: "unknown campaign or user",
                      409: "no consented channel, campaign cap reached, or no segments model",
                      422: "bad user_id or campaign_id"}),
    )),
    ServiceSpec(budget_pb2, "BudgetService", model=None, scope="decide", http=(
        HttpRoute("POST", "/v1/budget/optimize", "OptimizeBudget", "optimize_budget_http",
                  "Split a budget over channels (linear programme, PuLP)", {
                      409: "infeasible: the message names the constraints in conflict",
                      422: "a field out of range (named)"}),
    )),
    ServiceSpec(channel_pb2, "ChannelService", model="segments", scope="decide",
                scope_of={"ReportOutcome": "events"}, http=(
        HttpRoute("POST", "/v1/channels/choose", "ChooseChannel", "choose_channel_http",
                  "Pick a channel by Thompson sampling (for a user or a segment)", {
                      404: "no profile for the user",
                      409: "no consented channel, or no segments model",
                      422: "neither or both targets, or a bad field"}),
        HttpRoute("POST", "/v1/channels/outcome", "ReportOutcome", "report_outcome_http",
                  "Report a contact's outcome to the channel bandit", {
                      404: "no profile for the user",
                      422: "a bad field"}),
    )),
    ServiceSpec(experiment_pb2, "ExperimentService", model=None, scope="read", http=tuple(
        HttpRoute("POST", f"/v1/experiments/{name}", rpc, "experiment_http", summary, {
            **({404: "a campaign without results", 409: "no campaign_daily table yet"} if rpc == "GoalGap" else {}),
            422: "a field out of range, unknown or of the wrong type (named)"}, proto_body=True)
        for name, rpc, summary in (
            ("conversions", "AnalyzeConversions",
             "Conversions: a two-proportion z-test of each variant against the control, adjusted p-values and a "
             "sample-ratio-mismatch check"),
            ("means", "CompareMeans",
             "Means (revenue per user): Welch's t-test, with CUPED when pre-period values are given"),
            ("sequential", "SequentialTest",
             "The mixture SPRT on cumulative counts, one entry per look: always-valid p-values"),
            ("sample-size", "SampleSize",
             "Users per arm to detect a change of conversion rate, and the power of a given size"),
            ("segments", "SegmentSignificance",
             "One-way ANOVA and Kruskal-Wallis of a metric across segments, with effect sizes"),
            ("goal-gap", "GoalGap",
             "A campaign against its targets: attained, gap, trend and the projection to its end (daily results "
             "from the lake when the body has none)"),
        ))),
    ServiceSpec(pricing_pb2, "PricingService", model="demand", scope="read",
                scope_of={"ProposeDiscounts": "decide"}, http=(
        HttpRoute("GET", "/v1/pricing/forecast", "ForecastDemand", "forecast_http",
                  "Expected orders of a category in each weekday-hour slot of a coming week, with the elasticity "
                  "and the forecast's held-out error", {
                      409: "no demand model trained yet",
                      422: "unknown category or price_ratio out of range"}),
        HttpRoute("POST", "/v1/pricing/discounts", "ProposeDiscounts", "discounts_http",
                  "Off-peak discounts per weekday-hour slot maximising the week's expected margin within a "
                  "discount budget", {
                      409: "no demand model trained yet",
                      422: "a field out of range, unknown or of the wrong type (named)"}, proto_body=True),
    )),
    ServiceSpec(funnel_pb2, "FunnelService", model=None, scope="read", http=(
        HttpRoute("GET", "/v1/funnels", "GetFunnel", "funnel_http",
                  "Users at each step of a funnel (funnels.definitions), conversion and drop-off between steps "
                  "and the median time between them, overall and by segment, channel or device", {
                      409: "no funnel table yet (or no segments model for by=segment)",
                      422: "unknown funnel, group or parameter; bad dates"}),
    )),
)

#: What Serve's gRPC proxy must register (it imports these in its own process).
GRPC_SERVICERS: tuple[str, ...] = (*(s.add_servicer for s in SERVICES), HEALTH_SERVICER)

_BY_NAME = {s.name: s for s in SERVICES}


def _rpc_scopes() -> dict[str, str]:
    scopes: dict[str, str] = {}
    for spec in SERVICES:
        for rpc in spec.rpcs:
            # Serve routes a call to the replica's method by name alone: names are unique
            if rpc in scopes or rpc in OPEN_RPCS:
                raise ValueError(f"rpc name {rpc!r} of {spec.service} is used twice")
            scopes[rpc] = spec.scope_for(rpc)
    return scopes


#: RPC (method) name -> the API-key scope it needs; the gRPC wrapper and the HTTP guard read it.
RPC_SCOPES: Mapping[str, str] = _rpc_scopes()


def service_named(name: str) -> ServiceSpec | None:
    """The service with full name ``name`` (``marketing.v1.SegmentService``), or None."""
    return _BY_NAME.get(name)
