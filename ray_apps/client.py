"""A typed Python client for the platform's API, over gRPC (default) or HTTP.

    client = MarketingClient.from_settings(load_settings())
    seg = client.get_segment("u000001")     # segment_pb2.GetSegmentResponse

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
from protos.marketing.v1 import segment_pb2, segment_pb2_grpc

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
    def _stub(self) -> segment_pb2_grpc.SegmentServiceStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.grpc_target)
        return segment_pb2_grpc.SegmentServiceStub(self._channel)

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
                return getattr(self._stub(), method)(request, timeout=self.timeout_s)
            except grpc.RpcError as err:
                code = err.code()
                raise _FROM_GRPC.get(code, PlatformError)(f"{method}: {code.name}: {err.details()}") from None

        return self._retrying(call)

    def _get_json(self, path: str) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            try:
                resp = self._client().get(path)
            except httpx.TransportError as exc:
                raise Unavailable(f"GET {path}: {exc}") from None
            if resp.status_code == 200:
                return resp.json()
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200]
            raise _FROM_HTTP.get(resp.status_code, PlatformError)(f"GET {path}: {resp.status_code}: {message}")

        return self._retrying(call)

    # -- API --------------------------------------------------------------------------
    def get_segment(self, user_id: str) -> segment_pb2.GetSegmentResponse:
        """SegmentService.GetSegment over gRPC."""
        return self._grpc("GetSegment", segment_pb2.GetSegmentRequest(user_id=user_id))

    def get_segment_http(self, user_id: str) -> segment_pb2.GetSegmentResponse:
        """``GET /v1/users/{user_id}/segment``, parsed into the same message type."""
        body = self._get_json(f"/v1/users/{quote(user_id, safe='')}/segment")
        return ParseDict(body, segment_pb2.GetSegmentResponse())

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
