"""A typed Python client for the platform's API, over gRPC (default) or HTTP.

    client = MarketingClient.from_settings(load_settings())
    seg = client.get_segment("u000001")                  # segment_pb2.GetSegmentResponse
    prof = client.get_profile("u000001", ["attributes"])  # profile_pb2.Profile
    res = client.track_events([{"event_id": "e1", "user_id": "u000001", "ts": "1767225600000",
                                "action": "view", "category": "手机"}])

Errors come back as the platform's own exceptions (NotFound, InvalidArgument, ...), so a
caller handles one hierarchy whatever the transport. UNAVAILABLE is retried with backoff.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import grpc
import httpx
from google.protobuf.json_format import ParseDict

from cluster.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PlatformError,
    Unauthenticated,
    Unavailable,
)
from cluster.settings import Settings
from protos.marketing.v1 import (
    events_pb2,
    events_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    segment_pb2,
    segment_pb2_grpc,
)

__all__ = ["MarketingClient"]

_FROM_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}
_FROM_HTTP = {422: InvalidArgument, 404: NotFound, 409: FailedPrecondition, 401: Unauthenticated, 503: Unavailable}


class MarketingClient:
    """Client for the marketing API.

    Args:
        grpc_target: ``host:port`` of the gRPC endpoint.
        http_base: Base URL of the HTTP endpoint (``http://host:port``).
        timeout_s: Deadline per call.
        retries: Extra attempts on UNAVAILABLE / connection errors (exponential backoff).
    """

    def __init__(self, grpc_target: str, http_base: str, timeout_s: float = 5.0, retries: int = 3) -> None:
        self.grpc_target = grpc_target
        self.http_base = http_base.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self._channel: grpc.Channel | None = None
        self._http: httpx.Client | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "MarketingClient":
        sv = settings.serve
        return cls(f"{sv.grpc_client_host}:{sv.grpc_port}", f"http://{sv.http_client_host}:{sv.http_port}", **kwargs)

    # -- plumbing -----------------------------------------------------------------------
    _STUBS = {
        "GetSegment": segment_pb2_grpc.SegmentServiceStub,
        "GetProfile": profile_pb2_grpc.ProfileServiceStub,
        "TrackEvents": events_pb2_grpc.EventServiceStub,
    }

    def _stub(self, method: str) -> Any:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.grpc_target)
        return self._STUBS[method](self._channel)

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.http_base, timeout=self.timeout_s)
        return self._http

    def _retrying(self, call):
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return call()
            except Unavailable:
                if attempt == self.retries:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _grpc(self, method: str, request: Any) -> Any:
        def call() -> Any:
            try:
                return getattr(self._stub(method), method)(request, timeout=self.timeout_s)
            except grpc.RpcError as err:
                code = err.code()
                raise _FROM_GRPC.get(code, PlatformError)(f"{method}: {code.name}: {err.details()}") from None

        return self._retrying(call)

    def _get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return self._http_json("GET", path, params=params)

    def _http_json(self, verb: str, path: str, *, params: dict[str, str] | None = None,
                   body: Any = None) -> dict[str, Any]:
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
            raise _FROM_HTTP.get(resp.status_code, PlatformError)(
                f"{verb} {path}: {resp.status_code}: {message}", field=field)

        return self._retrying(call)

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
