"""A typed Python client for the platform's API, over gRPC (default) or HTTP.

    client = MarketingClient.from_settings(load_settings())
    seg = client.get_segment("u000001")                  # segment_pb2.GetSegmentResponse
    prof = client.get_profile("u000001", ["attributes"])  # profile_pb2.Profile
    res = client.track_events([{"event_id": "e1", "user_id": "u000001", "ts": "1767225600000",
                                "action": "view", "category": "手机"}])

Errors come back as the platform's own exceptions (NotFound, InvalidArgument, ...), so a
caller handles one hierarchy whatever the transport. UNAVAILABLE is retried with backoff.
With ``api_key`` (``from_settings`` reads ``$PMKT_API_KEY``) every call carries
``authorization: Bearer <key>``.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx
from google.protobuf.json_format import ParseDict

from cluster.core.errors import (
    INTERNAL_MESSAGE,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PlatformError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from cluster.core.settings import Settings
from protos.marketing.v1 import (
    budget_pb2,
    budget_pb2_grpc,
    channel_pb2,
    channel_pb2_grpc,
    churn_pb2,
    churn_pb2_grpc,
    ctr_pb2,
    ctr_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    experiment_pb2,
    experiment_pb2_grpc,
    funnel_pb2,
    funnel_pb2_grpc,
    offer_pb2,
    offer_pb2_grpc,
    pricing_pb2,
    pricing_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    recommend_pb2,
    recommend_pb2_grpc,
    segment_pb2,
    segment_pb2_grpc,
)

__all__ = ["MarketingClient", "open_channel", "wait_for_model"]

log = logging.getLogger(__name__)

_FROM_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}
_FROM_HTTP = {422: InvalidArgument, 404: NotFound, 409: FailedPrecondition, 401: Unauthenticated,
              403: PermissionDenied, 413: ResourceExhausted, 503: Unavailable}


def open_channel(target: str, *, tls: bool = False, root_certificates: bytes | None = None) -> grpc.Channel:
    """A gRPC channel to ``target``; with several addresses (``ipv4:a:p,b:q``, direct ingress's
    replicas) requests go round-robin over them. ``tls`` verifies the server against
    ``root_certificates`` (PEM; None = the system store)."""
    options = [("grpc.lb_policy_name", "round_robin")] if "," in target else []
    if tls:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options=options)
    return grpc.insecure_channel(target, options=options)


class MarketingClient:
    """Client for the marketing API.

    Args:
        grpc_target: ``host:port`` of the gRPC endpoint, or ``ipv4:ip:port,ip:port`` to balance
            round-robin over several (direct ingress replicas).
        http_base: Base URL of the HTTP endpoint (``http://host:port``).
        timeout_s: Deadline per call.
        retries: Extra attempts on UNAVAILABLE / connection errors (exponential backoff).
        api_key: Sent as ``authorization: Bearer <key>`` on both transports.
        tls: gRPC over TLS (the server's TLS front); HTTP uses TLS when ``http_base`` is ``https://``.
        ca_file: PEM bundle that signed the server's certificate (default: the system store).
    """

    def __init__(self, grpc_target: str, http_base: str, timeout_s: float = 5.0, retries: int = 3,
                 api_key: str | None = None, tls: bool = False, ca_file: str | os.PathLike | None = None) -> None:
        self.grpc_target = grpc_target
        self.tls = tls
        self.ca_file = ca_file
        self.http_base = http_base.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self._auth = [("authorization", f"Bearer {api_key}")] if api_key else []
        self._channel: grpc.Channel | None = None
        self._http: httpx.Client | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "MarketingClient":
        """A client for the endpoints in ``settings``; the API key defaults to ``$PMKT_API_KEY``.

        With ``serve.ingress: direct`` the gRPC target is the list of replicas, asked of the
        Ray cluster once (a replica added later is not used by this client).
        """
        sv = settings.serve
        kwargs.setdefault("api_key", os.environ.get("PMKT_API_KEY") or None)
        if sv.tls.enabled:
            # TLS: gRPC through the TLS front, HTTPS on the HTTP proxy.
            kwargs.setdefault("tls", True)
            kwargs.setdefault("ca_file", sv.tls.ca_file)
            if sv.tls.grpc_port is None:
                log.warning("serve.tls has no grpc_port: gRPC calls go in plaintext to %s:%d",
                            sv.grpc_client_host, sv.grpc_port)
                kwargs["tls"] = False
            target = f"{sv.grpc_client_host}:{sv.tls.grpc_port or sv.grpc_port}"
        elif sv.ingress == "direct":
            from ray_apps.serve.launcher import grpc_target

            target = grpc_target(settings)
        else:
            target = f"{sv.grpc_client_host}:{sv.grpc_port}"
        scheme = "https" if sv.tls.enabled else "http"
        return cls(target, f"{scheme}://{sv.http_client_host}:{sv.http_port}", **kwargs)

    # -- plumbing -----------------------------------------------------------------------
    _STUBS = {
        "GetSegment": segment_pb2_grpc.SegmentServiceStub,
        "GetProfile": profile_pb2_grpc.ProfileServiceStub,
        "TrackEvents": events_pb2_grpc.EventServiceStub,
        "ScoreBatch": ctr_pb2_grpc.CtrServiceStub,
        "Recommend": recommend_pb2_grpc.RecommendServiceStub,
        "GetChurnRisk": churn_pb2_grpc.ChurnServiceStub,
        "GenerateOffer": offer_pb2_grpc.OfferServiceStub,
        "OptimizeBudget": budget_pb2_grpc.BudgetServiceStub,
        "ChooseChannel": channel_pb2_grpc.ChannelServiceStub,
        "ReportOutcome": channel_pb2_grpc.ChannelServiceStub,
        **{m: experiment_pb2_grpc.ExperimentServiceStub for m in (
            "AnalyzeConversions", "CompareMeans", "SequentialTest", "SampleSize", "SegmentSignificance", "GoalGap")},
        "GetFunnel": funnel_pb2_grpc.FunnelServiceStub,
        "ForecastDemand": pricing_pb2_grpc.PricingServiceStub,
        "ProposeDiscounts": pricing_pb2_grpc.PricingServiceStub,
    }
    #: ExperimentService: method -> (HTTP path, request type, response type).
    _EXPERIMENTS = {
        "AnalyzeConversions": ("/v1/experiments/conversions", experiment_pb2.AnalyzeConversionsRequest,
                               experiment_pb2.AnalyzeConversionsResponse),
        "CompareMeans": ("/v1/experiments/means", experiment_pb2.CompareMeansRequest,
                         experiment_pb2.CompareMeansResponse),
        "SequentialTest": ("/v1/experiments/sequential", experiment_pb2.SequentialTestRequest,
                           experiment_pb2.SequentialTestResponse),
        "SampleSize": ("/v1/experiments/sample-size", experiment_pb2.SampleSizeRequest,
                       experiment_pb2.SampleSizeResponse),
        "SegmentSignificance": ("/v1/experiments/segments", experiment_pb2.SegmentSignificanceRequest,
                                experiment_pb2.SegmentSignificanceResponse),
        "GoalGap": ("/v1/experiments/goal-gap", experiment_pb2.GoalGapRequest, experiment_pb2.GoalGapResponse),
    }
    #: Calls that must not be repeated after an UNAVAILABLE: the server may have counted it.
    _NOT_RETRIED = frozenset({"ReportOutcome"})

    def _stub(self, method: str) -> Any:
        if self._channel is None:
            roots = Path(self.ca_file).read_bytes() if self.tls and self.ca_file else None
            self._channel = open_channel(self.grpc_target, tls=self.tls, root_certificates=roots)
        return self._STUBS[method](self._channel)

    def _client(self) -> httpx.Client:
        if self._http is None:
            verify: Any = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True
            self._http = httpx.Client(base_url=self.http_base, timeout=self.timeout_s, headers=dict(self._auth),
                                      verify=verify)
        return self._http

    def _retrying(self, call, retries: int | None = None):
        retries = self.retries if retries is None else retries
        delay = 0.2
        for attempt in range(retries + 1):
            try:
                return call()
            except Unavailable:
                if attempt == retries:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _grpc(self, method: str, request: Any) -> Any:
        def call() -> Any:
            try:
                return getattr(self._stub(method), method)(request, timeout=self.timeout_s, metadata=self._auth)
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.INTERNAL and err.details() != INTERNAL_MESSAGE:
                    # Not the API's answer: Serve's proxy lost the replica in the middle of the call
                    # ("The actor died unexpectedly"). Retried like a 5xx from the HTTP proxy, where
                    # a repeat is harmless (every call but ReportOutcome).
                    raise Unavailable(f"{method}: {code.name} from the proxy: {err.details()}") from None
                raise _FROM_GRPC.get(code, PlatformError)(f"{method}: {code.name}: {err.details()}") from None

        return self._retrying(call, 0 if method in self._NOT_RETRIED else None)

    def _get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return self._http_json("GET", path, params=params)

    def _http_json(self, verb: str, path: str, *, params: dict[str, str] | None = None,
                   body: Any = None, retry: bool = True) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            try:
                resp = self._client().request(verb, path, params=params, json=body)
            except httpx.TransportError as exc:
                raise Unavailable(f"{verb} {path}: {exc}") from None
            if resp.status_code == 200:
                return resp.json()
            field = None
            try:
                error = resp.json()["error"]
                message, field = error["message"], error.get("field")
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200]
                if resp.status_code >= 500:
                    # Not the API's error body: Serve's proxy answered for a replica that died
                    # or did not answer in time. Retried where a repeat is harmless (every
                    # call but ReportOutcome: events are deduplicated, offers idempotent).
                    raise Unavailable(f"{verb} {path}: {resp.status_code} from the proxy: {message}") from None
            raise _FROM_HTTP.get(resp.status_code, PlatformError)(
                f"{verb} {path}: {resp.status_code}: {message}", field=field)

        return self._retrying(call, None if retry else 0)

    # -- API --------------------------------------------------------------------------
    def get_segment(self, user_id: str) -> segment_pb2.GetSegmentResponse:
        """SegmentService.GetSegment over gRPC."""
        return self._grpc("GetSegment", segment_pb2.GetSegmentRequest(user_id=user_id))

    def get_segment_http(self, user_id: str) -> segment_pb2.GetSegmentResponse:
        """``GET /v1/users/{user_id}/segment``, parsed into the same message type."""
        body = self._get_json(f"/v1/users/{quote(user_id, safe='')}/segment")
        return ParseDict(body, segment_pb2.GetSegmentResponse())

    def get_profile(self, user_id: str, fields: list[str] | None = None) -> profile_pb2.Profile:
        """ProfileService.GetProfile over gRPC; ``fields`` limits the top-level fields."""
        request = profile_pb2.GetProfileRequest(user_id=user_id)
        request.field_mask.paths.extend(fields or [])
        return self._grpc("GetProfile", request)

    def get_profile_http(self, user_id: str, fields: list[str] | None = None) -> profile_pb2.Profile:
        """``GET /v1/users/{user_id}/profile?fields=...``, parsed into the same message type."""
        params = {"fields": ",".join(fields)} if fields else None
        body = self._get_json(f"/v1/users/{quote(user_id, safe='')}/profile", params)
        return ParseDict(body, profile_pb2.Profile())

    def track_events(self, events: list[dict[str, Any]]) -> events_pb2.TrackEventsResponse:
        """EventService.TrackEvents over gRPC (re-sent event ids are not counted twice)."""
        request = events_pb2.TrackEventsRequest(
            events=[events_pb2.Event(**{k: str(v) for k, v in e.items() if v is not None}) for e in events])
        return self._grpc("TrackEvents", request)

    def track_events_http(self, events: list[dict[str, Any]]) -> events_pb2.TrackEventsResponse:
        """``POST /v1/events``, parsed into the same message type."""
        return ParseDict(self._http_json("POST", "/v1/events", body={"events": events}),
                         events_pb2.TrackEventsResponse())

    def score_ctr(self, candidates: list[dict[str, Any]]) -> ctr_pb2.ScoreBatchResponse:
        """CtrService.ScoreBatch: ``candidates`` are dicts with the AdCandidate fields.

        Every field is text; a number given (``"ad_position": 3``) is sent as its text, as the
        data contract reads impressions.csv.
        """
        return self._grpc("ScoreBatch", ctr_pb2.ScoreBatchRequest(
            candidates=[ctr_pb2.AdCandidate(**{k: str(v) for k, v in c.items() if v is not None})
                        for c in candidates]))

    def score_ctr_http(self, candidates: list[dict[str, Any]]) -> ctr_pb2.ScoreBatchResponse:
        """``POST /v1/ctr/score``."""
        return ParseDict(self._http_json("POST", "/v1/ctr/score", body={"candidates": candidates}),
                         ctr_pb2.ScoreBatchResponse())

    def recommend(self, user_id: str, n: int = 0, exclude: list[str] | None = None
                  ) -> recommend_pb2.RecommendResponse:
        """RecommendService.Recommend (``n`` 0 means 10)."""
        return self._grpc("Recommend", recommend_pb2.RecommendRequest(
            user_id=user_id, n=n, exclude_item_ids=exclude or []))

    def recommend_http(self, user_id: str, n: int = 0, exclude: list[str] | None = None
                       ) -> recommend_pb2.RecommendResponse:
        """``GET /v1/users/{user_id}/recommendations?n=&exclude=``."""
        params: dict[str, Any] = {"n": str(n), **({"exclude": list(exclude)} if exclude else {})}
        return ParseDict(self._get_json(f"/v1/users/{quote(user_id, safe='')}/recommendations", params),
                         recommend_pb2.RecommendResponse())

    def churn_risk(self, user_id: str, curve_step_days: int = 0) -> churn_pb2.ChurnRisk:
        """ChurnService.GetChurnRisk."""
        return self._grpc("GetChurnRisk", churn_pb2.GetChurnRiskRequest(
            user_id=user_id, curve_step_days=curve_step_days))

    def churn_risk_http(self, user_id: str, curve_step_days: int = 0) -> churn_pb2.ChurnRisk:
        """``GET /v1/users/{user_id}/churn?curve_step_days=``."""
        return ParseDict(self._get_json(f"/v1/users/{quote(user_id, safe='')}/churn",
                                        {"curve_step_days": str(curve_step_days)}), churn_pb2.ChurnRisk())

    def generate_offer(self, user_id: str, campaign_id: str = "default") -> offer_pb2.Offer:
        """OfferService.GenerateOffer (idempotent while the offer is valid, so retried)."""
        return self._grpc("GenerateOffer", offer_pb2.GenerateOfferRequest(user_id=user_id, campaign_id=campaign_id))

    def generate_offer_http(self, user_id: str, campaign_id: str = "default") -> offer_pb2.Offer:
        """``POST /v1/offers``."""
        return ParseDict(self._http_json("POST", "/v1/offers", body={"user_id": user_id, "campaign_id": campaign_id}),
                         offer_pb2.Offer())

    def optimize_budget(self, channels: list[dict[str, Any]], total_budget: float, objective: str = "",
                        integer_placements: bool = False) -> budget_pb2.OptimizeBudgetResponse:
        """BudgetService.OptimizeBudget: ``channels`` are dicts with the BudgetChannel fields."""
        return self._grpc("OptimizeBudget", budget_pb2.OptimizeBudgetRequest(
            channels=[budget_pb2.BudgetChannel(**c) for c in channels], total_budget=total_budget,
            objective=objective, integer_placements=integer_placements))

    def optimize_budget_http(self, channels: list[dict[str, Any]], total_budget: float, objective: str = "",
                             integer_placements: bool = False) -> budget_pb2.OptimizeBudgetResponse:
        """``POST /v1/budget/optimize``."""
        body = {"channels": channels, "total_budget": total_budget, "objective": objective,
                "integer_placements": integer_placements}
        return ParseDict(self._http_json("POST", "/v1/budget/optimize", body=body),
                         budget_pb2.OptimizeBudgetResponse())

    def choose_channel(self, *, user_id: str | None = None, segment_id: int | None = None
                       ) -> channel_pb2.ChooseChannelResponse:
        """ChannelService.ChooseChannel for a user or a segment."""
        return self._grpc("ChooseChannel", channel_pb2.ChooseChannelRequest(user_id=user_id, segment_id=segment_id))

    def choose_channel_http(self, *, user_id: str | None = None, segment_id: int | None = None
                            ) -> channel_pb2.ChooseChannelResponse:
        """``POST /v1/channels/choose``."""
        return ParseDict(self._http_json("POST", "/v1/channels/choose",
                                         body={"user_id": user_id, "segment_id": segment_id}),
                         channel_pb2.ChooseChannelResponse())

    def report_outcome(self, channel: str, converted: bool, *, user_id: str | None = None,
                       segment_id: int | None = None) -> channel_pb2.ReportOutcomeResponse:
        """ChannelService.ReportOutcome (never retried: the first attempt may have counted)."""
        return self._grpc("ReportOutcome", channel_pb2.ReportOutcomeRequest(
            user_id=user_id, segment_id=segment_id, channel=channel, converted=converted))

    def report_outcome_http(self, channel: str, converted: bool, *, user_id: str | None = None,
                            segment_id: int | None = None) -> channel_pb2.ReportOutcomeResponse:
        """``POST /v1/channels/outcome`` (never retried)."""
        body = {"user_id": user_id, "segment_id": segment_id, "channel": channel, "converted": converted}
        return ParseDict(self._http_json("POST", "/v1/channels/outcome", body=body, retry=False),
                         channel_pb2.ReportOutcomeResponse())

    def experiment(self, method: str, body: dict[str, Any]) -> Any:
        """ExperimentService.<method> with the request given as a dict of its fields, e.g.
        ``experiment("SampleSize", {"baseline_rate": 0.05, "variant_rate": 0.06})``."""
        _path, request_type, _response_type = self._EXPERIMENTS[method]
        return self._grpc(method, ParseDict(body, request_type()))

    def experiment_http(self, method: str, body: dict[str, Any]) -> Any:
        """The same over HTTP (``POST /v1/experiments/...``)."""
        path, _request_type, response_type = self._EXPERIMENTS[method]
        return ParseDict(self._http_json("POST", path, body=body), response_type())

    def goal_gap(self, body: dict[str, Any]) -> experiment_pb2.GoalGapResponse:
        """ExperimentService.GoalGap, e.g. ``goal_gap({"campaign_id": "cmp001", "end_date": "2026-12-31",
        "targets": {"conversions": 500, "roi": 3}})`` (daily results from the lake when not given)."""
        return self.experiment("GoalGap", body)

    def goal_gap_http(self, body: dict[str, Any]) -> experiment_pb2.GoalGapResponse:
        """``POST /v1/experiments/goal-gap``."""
        return self.experiment_http("GoalGap", body)

    def get_funnel(self, funnel: str = "", by: str = "", from_date: str = "", to_date: str = ""
                   ) -> funnel_pb2.FunnelResponse:
        """FunnelService.GetFunnel over gRPC: users per step of a funnel, overall and by ``by``
        (segment, channel or device)."""
        return self._grpc("GetFunnel", funnel_pb2.GetFunnelRequest(funnel=funnel, group_by=by, from_date=from_date,
                                                                    to_date=to_date))

    def get_funnel_http(self, funnel: str = "", by: str = "", from_date: str = "", to_date: str = ""
                        ) -> funnel_pb2.FunnelResponse:
        """``GET /v1/funnels?funnel=&by=&from=&to=``."""
        params = {k: v for k, v in (("funnel", funnel), ("by", by), ("from", from_date), ("to", to_date)) if v}
        return ParseDict(self._get_json("/v1/funnels", params), funnel_pb2.FunnelResponse())

    def forecast_demand(self, category: str, price_ratio: float = 0.0) -> pricing_pb2.ForecastDemandResponse:
        """PricingService.ForecastDemand over gRPC: expected orders per weekday-hour slot of a week."""
        return self._grpc("ForecastDemand", pricing_pb2.ForecastDemandRequest(category=category,
                                                                              price_ratio=price_ratio))

    def forecast_demand_http(self, category: str, price_ratio: float = 0.0) -> pricing_pb2.ForecastDemandResponse:
        """``GET /v1/pricing/forecast?category=...&price_ratio=...``."""
        body = self._get_json("/v1/pricing/forecast", {"category": category, "price_ratio": str(price_ratio)})
        return ParseDict(body, pricing_pb2.ForecastDemandResponse())

    def propose_discounts(self, body: dict[str, Any]) -> pricing_pb2.ProposeDiscountsResponse:
        """PricingService.ProposeDiscounts over gRPC, e.g. ``{"category": "食品", "budget": 5000}``."""
        return self._grpc("ProposeDiscounts", ParseDict(body, pricing_pb2.ProposeDiscountsRequest()))

    def propose_discounts_http(self, body: dict[str, Any]) -> pricing_pb2.ProposeDiscountsResponse:
        """``POST /v1/pricing/discounts``."""
        return ParseDict(self._http_json("POST", "/v1/pricing/discounts", body=body),
                         pricing_pb2.ProposeDiscountsResponse())

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> "MarketingClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_model(settings: Settings, user_id: str, ref: str, timeout_s: float | None = None) -> None:
    """Wait until the running application answers ``user_id`` with model ``ref``.

    A deployed application re-reads the registry every ``serve.model_refresh_s`` seconds,
    so a newly trained model reaches it without a redeploy, after at most about that long.

    Raises:
        Unavailable: it did not within ``timeout_s`` (default: 3 refresh intervals + 30 s).
    """
    timeout_s = timeout_s if timeout_s is not None else settings.serve.model_refresh_s * 3 + 30
    deadline = time.monotonic() + timeout_s
    last = ""
    with MarketingClient.from_settings(settings, timeout_s=10) as client:
        while time.monotonic() < deadline:
            try:
                got = client.get_segment(user_id).model_version
                if got == ref:
                    return
                last = f"it answered with {got}"
            except PlatformError as exc:
                last = f"{type(exc).__name__}: {exc.message}"
            time.sleep(1)
    raise Unavailable(f"the Serve application did not switch to model {ref} within {timeout_s:.0f}s ({last})")
