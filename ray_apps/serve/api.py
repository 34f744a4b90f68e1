"""The platform's API application: one Serve ingress deployment, two transports.

=================  ===================================  ==========================================
gRPC service       gRPC method                          HTTP
=================  ===================================  ==========================================
SegmentService     ``GetSegment``                       ``GET /v1/users/{id}/segment``
ProfileService     ``GetProfile`` (field mask)          ``GET /v1/users/{id}/profile?fields=a,b``
EventService       ``TrackEvents``                      ``POST /v1/events``
=================  ===================================  ==========================================

Serve's gRPC proxy calls the deployment method named like the RPC; its HTTP proxy routes
to the FastAPI app. Both go through the same lookups, so both answer the same.
"""

# No `from __future__ import annotations` here: FastAPI resolves the request-body model from
# the route's annotations at runtime, and Serve's class ingress cannot resolve a string.
import logging
import threading
from typing import Any

from fastapi import Body, FastAPI, Query
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from cluster.errors import InvalidArgument
from cluster.settings import Settings, load_settings
from cluster.storage import open_lake, open_profile_store
from cluster.storage.tombstones import Tombstones
from protos.marketing.v1 import events_pb2, profile_pb2, segment_pb2
from ray_apps.events.intake import EVENT_FIELDS, EventIntake, IntakeResult
from ray_apps.profiles.service import ProfileLookup
from ray_apps.registry import ModelRegistry
from ray_apps.segments.service import CurrentSegmentModel
from ray_apps.serve.errors import grpc_method, install_http_error_handlers

__all__ = ["build_app", "build_api_app", "MarketingApi", "GRPC_SERVICERS"]

log = logging.getLogger(__name__)

#: What Serve's gRPC proxy must register (it imports these in its own process).
GRPC_SERVICERS = [
    "protos.marketing.v1.segment_pb2_grpc.add_SegmentServiceServicer_to_server",
    "protos.marketing.v1.profile_pb2_grpc.add_ProfileServiceServicer_to_server",
    "protos.marketing.v1.events_pb2_grpc.add_EventServiceServicer_to_server",
]

http_app = FastAPI(
    title="Precision-marketing platform API",
    version="v1",
    description="Segments, 360° profiles and real-time events. Errors: 404 unknown user, "
                "409 no model yet, 422 invalid argument (the body names the field).",
)
install_http_error_handlers(http_app)


class EventIn(BaseModel):
    """One event, in the data contract's vocabulary; values are judged by the intake."""

    model_config = ConfigDict(extra="ignore")
    event_id: str | None = None
    user_id: str | None = None
    ts: str | int | None = None
    action: str | None = None
    item_id: str | int | None = None
    category: str | None = None
    brand: str | None = None
    device_type: str | None = None


class EventsIn(BaseModel):
    events: list[EventIn] = Field(..., description="the batch; each event is accepted or rejected on its own")


def _result_message(result: IntakeResult) -> events_pb2.TrackEventsResponse:
    return events_pb2.TrackEventsResponse(
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=[events_pb2.RejectedEvent(index=r.index, event_id=r.event_id, reason=r.reason, field=r.field,
                                           message=r.message) for r in result.rejected],
    )


def _as_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(http_app)
class MarketingApi:
    """Adapts requests on both transports to the lookups and the event intake."""

    def __init__(self, settings: Settings) -> None:
        lake = open_lake(settings)
        store = open_profile_store(settings)
        sv = settings.serve
        self._segments = CurrentSegmentModel(ModelRegistry(lake), store, refresh_s=sv.model_refresh_s,
                                             max_user_id_length=sv.max_user_id_length)
        self._profiles = ProfileLookup(store, self._segments, sv.max_user_id_length)
        ev = settings.events
        tombstones = Tombstones(lake, ttl_s=ev.tombstone_ttl_s)
        self._intake = EventIntake(
            store, lake, source_tz=settings.ingest.source_timezone, max_id_length=sv.max_user_id_length,
            max_batch=ev.max_batch, flush_rows=ev.flush_rows, flush_s=ev.flush_s, max_future_s=ev.max_future_s,
            dedup_window=ev.dedup_window, forgotten=tombstones.contains,
        )
        # Buffered events reach the lake within flush_s even when no request comes.
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, args=(min(1.0, ev.flush_s),), daemon=True)
        self._flusher.start()

    def _flush_loop(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self._intake.maybe_flush()
            except Exception:  # noqa: BLE001 - keep flushing; the events stay buffered
                log.exception("appending real-time events to the lake failed; will retry")

    def __del__(self) -> None:
        self._stop.set()
        try:
            self._intake.flush()
        except Exception:  # noqa: BLE001 - shutting down
            log.exception("final flush of real-time events failed")

    # -- SegmentService --------------------------------------------------------------------
    @grpc_method(segment_pb2.GetSegmentResponse)
    async def GetSegment(self, request: segment_pb2.GetSegmentRequest) -> segment_pb2.GetSegmentResponse:
        return self._segments.lookup().get(request.user_id)

    @http_app.get(
        "/v1/users/{user_id}/segment",
        summary="The user's segment",
        responses={404: {"description": "unknown user or no purchase history"}, 422: {"description": "bad user_id"},
                   409: {"description": "no segments model trained yet"}},
    )
    def get_segment_http(self, user_id: str) -> dict[str, Any]:
        return _as_dict(self._segments.lookup().get(user_id))

    @http_app.get("/v1/users//segment", include_in_schema=False)
    @http_app.get("/v1/users//profile", include_in_schema=False)
    def get_user_http_empty_id(self) -> dict[str, Any]:
        # An empty path segment matches no route and would be a bare 404; the contract
        # says an empty id is an invalid argument on both transports.
        raise InvalidArgument("user_id must not be empty", field="user_id")

    # -- ProfileService --------------------------------------------------------------------
    @grpc_method(profile_pb2.Profile)
    async def GetProfile(self, request: profile_pb2.GetProfileRequest) -> profile_pb2.Profile:
        return self._profiles.get(request.user_id, list(request.field_mask.paths))

    @http_app.get(
        "/v1/users/{user_id}/profile",
        summary="The user's 360° profile",
        responses={404: {"description": "no profile for the user"},
                   422: {"description": "bad user_id or unknown field in fields"}},
    )
    def get_profile_http(
        self, user_id: str,
        fields: str = Query("", description="comma-separated top-level fields to return (default: all)"),
    ) -> dict[str, Any]:
        paths = [p.strip() for p in fields.split(",") if p.strip()]
        return _as_dict(self._profiles.get(user_id, paths))

    # -- EventService ----------------------------------------------------------------------
    @grpc_method(events_pb2.TrackEventsResponse)
    async def TrackEvents(self, request: events_pb2.TrackEventsRequest) -> events_pb2.TrackEventsResponse:
        events = [{k: getattr(e, k) for k in EVENT_FIELDS} for e in request.events]
        return _result_message(self._intake.track(events))

    @http_app.post(
        "/v1/events",
        summary="Track a batch of behaviour events",
        responses={422: {"description": "empty or over-large batch, or a malformed body"}},
    )
    def track_events_http(self, body: EventsIn = Body(...)) -> dict[str, Any]:
        events = [e.model_dump() for e in body.events]
        return _as_dict(_result_message(self._intake.track(events)))


def build_api_app(settings: Settings) -> Application:
    """Bind the deployment with autoscaling from ``settings.serve.autoscaling``."""
    auto = settings.serve.autoscaling
    return MarketingApi.options(
        autoscaling_config={
            "min_replicas": auto.min_replicas,
            "max_replicas": auto.max_replicas,
            "target_ongoing_requests": auto.target_ongoing_requests,
        },
    ).bind(settings)


def build_app(args: dict[str, str]) -> Application:
    """Serve app builder (``serve run ray_apps.serve.api:build_app profile=cluster``).

    Args:
        args: ``profile`` (bundled profile name) or ``settings`` (settings file path).
    """
    return build_api_app(load_settings(profile=args.get("profile"), path=args.get("settings")))
