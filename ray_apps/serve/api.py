"""The platform's API application: one Serve ingress deployment, two transports.

The services, the model each waits for and their HTTP routes are declared once, in
:data:`ray_apps.serve.services.SERVICES` (docs/api.md has the table). :class:`ApiReplica` holds a
replica's lookups and adapts both transports to them: Serve's gRPC proxy calls the method named
like the RPC, and the HTTP app (:func:`ray_apps.serve.http_app.build_http_app`, built in each
replica) calls the handler its route names. Both go through the same lookups, so both answer the same.
"""

# No `from __future__ import annotations` here: FastAPI resolves the HTTP handlers' parameter
# models from their annotations at runtime.
import asyncio
import logging
import threading
from typing import Any

from fastapi import Body, FastAPI, Query
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve import Application

from cluster.core.errors import NotFound
from cluster.core.settings import Settings, load_settings
from cluster.core.storage import open_lake, open_profile_store
from cluster.core.tombstones import Tombstones
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
from ray_apps.budget import Allocation, Channel, optimize_budget
from ray_apps.channels.bandit import ChannelBandit
from ray_apps.channels.service import ChannelChooser
from ray_apps.churn.service import ChurnScorer
from ray_apps.ctr.service import CtrScorer, candidate_dict
from ray_apps.current import CurrentModel
from ray_apps.evaluation import service as experiments
from ray_apps.evaluation.campaigns import CampaignDaily
from ray_apps.events.intake import EVENT_FIELDS, EventIntake, IntakeResult
from ray_apps.funnels import NO_SEGMENT
from ray_apps.funnels.latest import LatestFunnels
from ray_apps.funnels.service import get_funnel, http_query_to_request
from ray_apps.offers.service import OfferEngine
from ray_apps.pricing.service import PricingAdvisor
from ray_apps.profiles.service import ProfileLookup
from ray_apps.recs.service import Recommender
from ray_apps.registry import open_registry
from ray_apps.segments.service import CurrentSegmentModel, user_segments_of
from ray_apps.serve.auth import ApiKeys, warn_if_open
from ray_apps.serve.drain import DrainGate
from ray_apps.serve.drain import watch as watch_drain
from ray_apps.serve.errors import grpc_method
from ray_apps.serve.http_app import build_http_app
from ray_apps.serve.http_models import ChannelTargetIn, EventsIn, OfferIn, OptimizeBudgetIn, OutcomeIn, ScoreBatchIn
from ray_apps.serve.metrics import record_events
from ray_apps.serve.services import service_named

__all__ = ["ApiReplica", "MarketingApi", "build_api_app", "build_app"]

log = logging.getLogger(__name__)


def _budget_channels(raw: list[Any]) -> list[Channel]:
    return [Channel(name=c.name, cost=c.cost_per_placement, roi=c.roi, max_placements=c.max_placements,
                    min_placements=c.min_placements) for c in raw]


def _budget_message(plan: Allocation) -> budget_pb2.OptimizeBudgetResponse:
    def con(c: Any) -> budget_pb2.BudgetConstraint:
        return budget_pb2.BudgetConstraint(name=c.name, limit=c.limit, slack=c.slack, shadow_price=c.shadow_price)

    return budget_pb2.OptimizeBudgetResponse(
        allocations=[budget_pb2.ChannelAllocation(name=n, placements=p, spend=plan.spend[n])
                     for n, p in plan.placements.items()],
        objective=plan.objective, objective_value=plan.objective_value, revenue=plan.revenue,
        total_spend=plan.total_spend, binding=[con(c) for c in plan.binding],
        constraints=[con(c) for c in plan.constraints],
    )


def _target(message: Any) -> dict[str, Any]:
    which = message.WhichOneof("target")
    return {"user_id": message.user_id} if which == "user_id" else (
        {"segment_id": message.segment_id} if which == "segment_id" else {})


#: ExperimentService request type -> its computation (GoalGap also needs the campaign table).
_EXPERIMENTS = {request_type: compute for request_type, compute in experiments.HTTP_ROUTES.values()}


def _result_message(result: IntakeResult) -> events_pb2.TrackEventsResponse:
    return events_pb2.TrackEventsResponse(
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=[events_pb2.RejectedEvent(index=r.index, event_id=r.event_id, reason=r.reason, field=r.field,
                                           message=r.message) for r in result.rejected],
    )


class ApiReplica:
    """One replica's lookups and event intake, adapted to both transports: the gRPC methods are
    named after the RPCs, the HTTP handlers are the ones :data:`~ray_apps.serve.services.SERVICES`
    names. Plain Python: the Serve deployment is :data:`MarketingApi`; a test builds this over
    local back-ends and its HTTP app with :func:`~ray_apps.serve.http_app.build_http_app`."""

    def __init__(self, settings: Settings) -> None:
        self._auth = ApiKeys.from_settings(settings.serve.auth)
        if not warn_if_open(self._auth, settings.serve):
            log.info("API keys on for %d client(s): %s", len(self._auth.clients), ", ".join(self._auth.clients))
        self._max_body_bytes = settings.serve.max_body_bytes
        self._max_message_bytes = settings.serve.max_message_bytes
        lake = open_lake(settings)
        store = open_profile_store(settings)
        sv = settings.serve
        # Users forgotten (pmkt privacy forget) since the last purge: no answer is personalised by
        # their data (the recommender answers them as it answers a stranger; intake drops their events).
        tombstones = Tombstones(lake, ttl_s=settings.events.tombstone_ttl_s)
        # With the registry signing key: a version that does not verify is never loaded.
        registry = open_registry(settings, lake)
        self._segments = CurrentSegmentModel(registry, store, refresh_s=sv.model_refresh_s,
                                             max_user_id_length=sv.max_user_id_length)
        self._profiles = ProfileLookup(store, self._segments, sv.max_user_id_length)
        uid_max = sv.max_user_id_length
        self._ctr = CurrentModel(registry, "ctr", lambda m, mv: CtrScorer(
            store, m, mv, max_batch=sv.max_batch, max_user_id_length=uid_max), refresh_s=sv.model_refresh_s)
        self._recs = CurrentModel(registry, "recs", lambda m, mv: Recommender(
            store, m, mv, max_exclude=sv.max_batch, max_user_id_length=uid_max, forgotten=tombstones.contains),
            refresh_s=sv.model_refresh_s)
        self._churn = CurrentModel(registry, "churn", lambda m, mv: ChurnScorer(
            lake, m, mv, max_user_id_length=uid_max, forgotten=tombstones.contains), refresh_s=sv.model_refresh_s)
        ch = settings.channels
        bandit = ChannelBandit(store, ch.names, prior_alpha=ch.prior_alpha, prior_beta=ch.prior_beta)
        self._channels = ChannelChooser(store, self._segments, bandit, max_user_id_length=uid_max)
        self._offers = OfferEngine(store, self._channels, self._churn, settings.offers)
        self._pricing = CurrentModel(registry, "demand", lambda m, mv: PricingAdvisor(m, mv, settings.pricing),
                                     refresh_s=sv.model_refresh_s)
        self._campaign_daily = CampaignDaily(lake, refresh_s=sv.model_refresh_s)
        self._funnels = LatestFunnels(lake, refresh_s=sv.model_refresh_s)
        self._lake = lake
        ev = settings.events
        self._intake = EventIntake(
            store, lake, source_tz=settings.ingest.source_timezone, max_id_length=sv.max_user_id_length,
            max_batch=ev.max_batch, flush_rows=ev.flush_rows, flush_s=ev.flush_s, max_future_s=ev.max_future_s,
            dedup_window=ev.dedup_window, forgotten=tombstones.contains,
        )
        # Every call passes the gate: once a drain starts (ray_apps.serve.drain), new calls are
        # refused UNAVAILABLE and the admitted ones are waited for before the final flush.
        self._gate = DrainGate()
        # Buffered events reach the lake within flush_s even when no request comes.
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, args=(min(1.0, ev.flush_s),), daemon=True)
        self._flusher.start()

    def _track(self, events: list[dict[str, Any]]) -> IntakeResult:
        result = self._intake.track(events)
        record_events(result.accepted, result.duplicates, len(result.rejected))
        return result

    def _flush_loop(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self._intake.maybe_flush()
            except Exception:  # noqa: BLE001 - keep flushing; the events stay buffered
                log.exception("appending real-time events to the lake failed; will retry")

    def close(self) -> int:
        """Stop the flusher and append the buffered events to the lake; returns how many."""
        self._stop.set()
        try:
            return self._intake.flush()
        except Exception:  # noqa: BLE001 - shutting down
            log.exception("final flush of real-time events failed")
            return 0

    def __del__(self) -> None:
        self.close()

    # -- grpc.health.v1.Health -------------------------------------------------------------
    @grpc_method(health_pb2.HealthCheckResponse)
    async def Check(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        """SERVING for the server ("") and for a service whose model is loaded; NOT_SERVING
        for a service still waiting for its first model (or whose only version fails
        verification); NOT_FOUND for an unknown service. A service that keeps serving an older
        version because the current one fails verification stays SERVING: :meth:`model_health`,
        the replica's warning and the gauge ``ray_pmkt_model_verification_failed`` say why."""
        status = health_pb2.HealthCheckResponse
        if request.service in ("", "grpc.health.v1.Health"):
            return status(status=status.SERVING)
        spec = service_named(request.service)
        if spec is None:
            raise NotFound(f"unknown service {request.service!r}")
        holder = {"segments": self._segments, "ctr": self._ctr, "recs": self._recs, "churn": self._churn,
                  "demand": self._pricing}.get(spec.model)
        if holder is not None:
            holder.refresh()
            if holder.version is None:
                return status(status=status.NOT_SERVING)
        return status(status=status.SERVING)

    def model_health(self) -> dict[str, dict[str, str | None]]:
        """Per model: the version this replica serves and why the registry's current version is
        refused (``refused``: the verification error, None when it serves the current one)."""
        holders = {"segments": self._segments, "ctr": self._ctr, "recs": self._recs, "churn": self._churn,
                   "demand": self._pricing}
        for holder in holders.values():
            holder.refresh()  # at most every serve.model_refresh_s: the answer is as fresh as serving
        return {name: {"serving": h.version.ref if h.version else None, "refused": h.refused}
                for name, h in holders.items()}

    # -- SegmentService --------------------------------------------------------------------
    @grpc_method(segment_pb2.GetSegmentResponse)
    async def GetSegment(self, request: segment_pb2.GetSegmentRequest) -> segment_pb2.GetSegmentResponse:
        return self._segments.lookup().get(request.user_id)

    def get_segment_http(self, user_id: str) -> segment_pb2.GetSegmentResponse:
        return self._segments.lookup().get(user_id)

    # -- ProfileService --------------------------------------------------------------------
    @grpc_method(profile_pb2.Profile)
    async def GetProfile(self, request: profile_pb2.GetProfileRequest) -> profile_pb2.Profile:
        return self._profiles.get(request.user_id, list(request.field_mask.paths))

    def get_profile_http(
        self, user_id: str,
        fields: str = Query("", description="comma-separated top-level fields to return (default: all)"),
    ) -> profile_pb2.Profile:
        paths = [p.strip() for p in fields.split(",") if p.strip()]
        return self._profiles.get(user_id, paths)

    # -- EventService ----------------------------------------------------------------------
    @grpc_method(events_pb2.TrackEventsResponse)
    async def TrackEvents(self, request: events_pb2.TrackEventsRequest) -> events_pb2.TrackEventsResponse:
        events = [{k: getattr(e, k) for k in EVENT_FIELDS} for e in request.events]
        return _result_message(self._track(events))

    def track_events_http(self, body: EventsIn = Body(...)) -> events_pb2.TrackEventsResponse:
        events = [e.model_dump() for e in body.events]
        return _result_message(self._track(events))

    # -- CtrService ------------------------------------------------------------------------
    @grpc_method(ctr_pb2.ScoreBatchResponse)
    async def ScoreBatch(self, request: ctr_pb2.ScoreBatchRequest) -> ctr_pb2.ScoreBatchResponse:
        return self._ctr.get().score([candidate_dict(c) for c in request.candidates])

    def score_batch_http(self, body: ScoreBatchIn = Body(...)) -> ctr_pb2.ScoreBatchResponse:
        return self._ctr.get().score([c.model_dump() for c in body.candidates])

    # -- RecommendService ------------------------------------------------------------------
    @grpc_method(recommend_pb2.RecommendResponse)
    async def Recommend(self, request: recommend_pb2.RecommendRequest) -> recommend_pb2.RecommendResponse:
        return self._recs.get().recommend(request.user_id, request.n, list(request.exclude_item_ids))

    def recommend_http(
        self, user_id: str, n: int = Query(0, description="list length 1..100 (0: 10)"),
        exclude: list[str] = Query([], description="an item id never to list, taken verbatim (an item id may "
                                   "hold a comma); repeat the parameter for several: exclude=a&exclude=b"),
    ) -> recommend_pb2.RecommendResponse:
        return self._recs.get().recommend(user_id, n, [i for i in exclude if i])

    # -- ChurnService ----------------------------------------------------------------------
    @grpc_method(churn_pb2.ChurnRisk)
    async def GetChurnRisk(self, request: churn_pb2.GetChurnRiskRequest) -> churn_pb2.ChurnRisk:
        return self._churn.get().risk(request.user_id, request.curve_step_days)

    def churn_http(self, user_id: str,
                   curve_step_days: int = Query(0, description="days between curve points 1..90 (0: 7)")
                   ) -> churn_pb2.ChurnRisk:
        return self._churn.get().risk(user_id, curve_step_days)

    # -- OfferService ----------------------------------------------------------------------
    @grpc_method(offer_pb2.Offer)
    async def GenerateOffer(self, request: offer_pb2.GenerateOfferRequest) -> offer_pb2.Offer:
        return self._offers.generate(request.user_id, request.campaign_id)

    def generate_offer_http(self, body: OfferIn = Body(...)) -> offer_pb2.Offer:
        return self._offers.generate(body.user_id, body.campaign_id)

    # -- BudgetService ---------------------------------------------------------------------
    @grpc_method(budget_pb2.OptimizeBudgetResponse)
    async def OptimizeBudget(self, request: budget_pb2.OptimizeBudgetRequest) -> budget_pb2.OptimizeBudgetResponse:
        # CBC runs as a subprocess (and a conflict search solves once per constraint): off the
        # replica's event loop, so the replica's other requests are not held up.
        plan = await asyncio.to_thread(
            optimize_budget, _budget_channels(list(request.channels)), request.total_budget,
            objective=request.objective or "revenue", integer=request.integer_placements)
        return _budget_message(plan)

    def optimize_budget_http(self, body: OptimizeBudgetIn = Body(...)) -> budget_pb2.OptimizeBudgetResponse:
        plan = optimize_budget(_budget_channels(body.channels), body.total_budget,
                               objective=body.objective or "revenue", integer=body.integer_placements)
        return _budget_message(plan)

    # -- ChannelService --------------------------------------------------------------------
    @grpc_method(channel_pb2.ChooseChannelResponse)
    async def ChooseChannel(self, request: channel_pb2.ChooseChannelRequest) -> channel_pb2.ChooseChannelResponse:
        return self._channels.choose(**_target(request))

    @grpc_method(channel_pb2.ReportOutcomeResponse)
    async def ReportOutcome(self, request: channel_pb2.ReportOutcomeRequest) -> channel_pb2.ReportOutcomeResponse:
        return self._channels.report(channel=request.channel, converted=request.converted, **_target(request))

    def choose_channel_http(self, body: ChannelTargetIn = Body(...)) -> channel_pb2.ChooseChannelResponse:
        return self._channels.choose(user_id=body.user_id, segment_id=body.segment_id)

    def report_outcome_http(self, body: OutcomeIn = Body(...)) -> channel_pb2.ReportOutcomeResponse:
        return self._channels.report(channel=body.channel, converted=body.converted, user_id=body.user_id,
                                     segment_id=body.segment_id)

    # -- ExperimentService -----------------------------------------------------------------
    # Pure computations: CPU-bound ones (many values, many looks) run off the event loop.
    @grpc_method(experiment_pb2.AnalyzeConversionsResponse)
    async def AnalyzeConversions(self, request: experiment_pb2.AnalyzeConversionsRequest
                                 ) -> experiment_pb2.AnalyzeConversionsResponse:
        return experiments.analyze_conversions(request)

    @grpc_method(experiment_pb2.CompareMeansResponse)
    async def CompareMeans(self, request: experiment_pb2.CompareMeansRequest) -> experiment_pb2.CompareMeansResponse:
        return await asyncio.to_thread(experiments.compare_means, request)

    @grpc_method(experiment_pb2.SequentialTestResponse)
    async def SequentialTest(self, request: experiment_pb2.SequentialTestRequest
                             ) -> experiment_pb2.SequentialTestResponse:
        return await asyncio.to_thread(experiments.sequential_test, request)

    @grpc_method(experiment_pb2.SampleSizeResponse)
    async def SampleSize(self, request: experiment_pb2.SampleSizeRequest) -> experiment_pb2.SampleSizeResponse:
        return experiments.sample_size(request)

    @grpc_method(experiment_pb2.SegmentSignificanceResponse)
    async def SegmentSignificance(self, request: experiment_pb2.SegmentSignificanceRequest
                                  ) -> experiment_pb2.SegmentSignificanceResponse:
        return await asyncio.to_thread(experiments.segment_significance_of, request)

    def experiment_http(self, request: Any) -> Any:
        """HTTP: the ExperimentService computation for the request message's type."""
        if isinstance(request, experiment_pb2.GoalGapRequest):
            return experiments.goal_gap_of(request, self._campaign_daily)
        return _EXPERIMENTS[type(request)](request)

    @grpc_method(experiment_pb2.GoalGapResponse)
    async def GoalGap(self, request: experiment_pb2.GoalGapRequest) -> experiment_pb2.GoalGapResponse:
        return await asyncio.to_thread(experiments.goal_gap_of, request, self._campaign_daily)

    # -- FunnelService -----------------------------------------------------------------------
    def _funnel(self, request: funnel_pb2.GetFunnelRequest) -> funnel_pb2.FunnelResponse:
        segment_of = None
        if request.group_by == "segment":
            lookup = self._segments.lookup()
        table = self._funnels.get()
        if request.group_by == "segment":
            # users in a funnel without a paid order are no_purchases, as GetSegment says
            segments = self._funnels.segments(lookup.version.ref, lambda: user_segments_of(
                self._lake, lookup.model, known_users=table.frame["user_id"].unique()))
            segment_of = lambda ids: [segments.get(u, NO_SEGMENT) for u in ids]  # noqa: E731
        return get_funnel(request, table, segment_of)

    @grpc_method(funnel_pb2.FunnelResponse)
    async def GetFunnel(self, request: funnel_pb2.GetFunnelRequest) -> funnel_pb2.FunnelResponse:
        return await asyncio.to_thread(self._funnel, request)

    def funnel_http(self, funnel: str = Query("", description="funnel name; empty = default"),
                    by: str = Query("", description="'', segment, channel or device"),
                    from_: str = Query("", alias="from", description="first day of the first step, YYYY-MM-DD"),
                    to: str = Query("", description="last day of the first step, YYYY-MM-DD")
                    ) -> funnel_pb2.FunnelResponse:
        request = http_query_to_request({"funnel": funnel, "by": by, "from": from_, "to": to})
        return self._funnel(request)

    # -- PricingService ----------------------------------------------------------------------
    @grpc_method(pricing_pb2.ForecastDemandResponse)
    async def ForecastDemand(self, request: pricing_pb2.ForecastDemandRequest) -> pricing_pb2.ForecastDemandResponse:
        return self._pricing.get().forecast(request)

    def forecast_http(self, category: str = Query("", description="a product category, e.g. 手机"),
                      price_ratio: float = Query(0.0, description="price / list price, (0, 1.5]; 0 = 1")
                      ) -> pricing_pb2.ForecastDemandResponse:
        return self._pricing.get().forecast(pricing_pb2.ForecastDemandRequest(category=category,
                                                                             price_ratio=price_ratio))

    @grpc_method(pricing_pb2.ProposeDiscountsResponse)
    async def ProposeDiscounts(self, request: pricing_pb2.ProposeDiscountsRequest
                               ) -> pricing_pb2.ProposeDiscountsResponse:
        return await asyncio.to_thread(self._pricing.get().propose, request)

    def discounts_http(self, request: pricing_pb2.ProposeDiscountsRequest) -> pricing_pb2.ProposeDiscountsResponse:
        return self._pricing.get().propose(request)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class MarketingApi(ApiReplica):
    """The Serve deployment: an :class:`ApiReplica` whose HTTP app each replica builds around itself."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # Only `pmkt serve` with a private Ray drains (a cluster's application outlives its
        # command): only there does a replica poll for the drain key.
        if settings.ray.address == "local":
            replica = serve.get_replica_context().replica_id.unique_id
            threading.Thread(target=watch_drain, args=(self._gate, self.close, replica, settings.serve.drain_s,
                                                       self._stop), name="pmkt-drain-watch", daemon=True).start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self, self._auth, max_body_bytes=self._max_body_bytes, gate=self._gate)


def build_api_app(settings: Settings) -> Application:
    """Bind the deployment with autoscaling from ``settings.serve.autoscaling``."""
    auto = settings.serve.autoscaling
    return MarketingApi.options(
        logging_config={"enable_access_log": settings.serve.access_log},
        autoscaling_config={
            "min_replicas": auto.min_replicas,
            "max_replicas": auto.max_replicas,
            "target_ongoing_requests": auto.target_ongoing_requests,
            "upscale_delay_s": auto.upscale_delay_s,
            "downscale_delay_s": auto.downscale_delay_s,
        },
    ).bind(settings)


def build_app(args: dict[str, str]) -> Application:
    """Serve app builder (``serve run ray_apps.serve.api:build_app profile=cluster``).

    Args:
        args: ``profile`` (bundled profile name) or ``settings`` (settings file path).
    """
    return build_api_app(load_settings(profile=args.get("profile"), path=args.get("settings")))
