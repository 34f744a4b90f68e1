"""MarketingClient's error handling: the proxy's bare 5xx (HTTP) or INTERNAL (gRPC) is retried,
the API's own errors are not, and ReportOutcome is never repeated."""

from __future__ import annotations

import grpc
import httpx
import pytest

from cluster.core.errors import INTERNAL_MESSAGE, InvalidArgument, PlatformError, Unavailable
from ray_apps.client import MarketingClient

SEGMENT = {"user_id": "u1", "segment_id": 2, "segment_name": "loyal", "model_version": "segments/v1"}


def _client(responses: list[httpx.Response]) -> tuple[MarketingClient, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return responses[min(len(seen), len(responses)) - 1]

    client = MarketingClient("127.0.0.1:1", "http://api.test", retries=2)
    client._http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))
    return client, seen


def test_a_bare_500_from_the_proxy_is_retried():
    client, seen = _client([httpx.Response(500, text="Internal Server Error"), httpx.Response(200, json=SEGMENT)])
    assert client.get_segment_http("u1").segment_name == "loyal"
    assert len(seen) == 2


def test_the_apis_own_errors_are_raised_at_once():
    client, seen = _client([httpx.Response(500, json={"error": {"code": "internal", "message": "boom"}})])
    with pytest.raises(PlatformError) as err:
        client.get_segment_http("u1")
    assert not isinstance(err.value, Unavailable) and len(seen) == 1
    client, seen = _client([httpx.Response(422, json={"error": {"code": "invalid_argument", "message": "bad",
                                                                 "field": "user_id"}})])
    with pytest.raises(InvalidArgument) as err:
        client.get_segment_http("u1")
    assert err.value.field == "user_id" and len(seen) == 1


def test_report_outcome_is_not_repeated_after_a_bare_500():
    client, seen = _client([httpx.Response(502, text="Bad Gateway"), httpx.Response(200, json={})])
    with pytest.raises(Unavailable):
        client.report_outcome_http("sms", True, user_id="u1")
    assert len(seen) == 1


def test_wait_for_model_returns_once_the_app_answers_with_the_model(settings, monkeypatch):
    from types import SimpleNamespace

    from ray_apps.client import wait_for_model

    answers = iter(["segments/v0001", "segments/v0002"])
    asked: list[str] = []

    def get_segment(self, user_id):
        asked.append(user_id)
        return SimpleNamespace(model_version=next(answers))

    monkeypatch.setattr(MarketingClient, "get_segment", get_segment)
    monkeypatch.setattr("ray_apps.client.time.sleep", lambda s: None)
    wait_for_model(settings, "u1", "segments/v0002", timeout_s=60)
    assert asked == ["u1", "u1"]
    with pytest.raises(Unavailable, match="segments/v0003"):
        wait_for_model(settings, "u1", "segments/v0003", timeout_s=0)


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _grpc_client(outcomes: list) -> tuple[MarketingClient, list[str]]:
    """A client whose stubs answer ``outcomes`` in turn (an exception is raised)."""
    seen: list[str] = []

    class Stub:
        def __getattr__(self, method):
            def call(request, timeout=None, metadata=None):
                seen.append(method)
                outcome = outcomes[min(len(seen), len(outcomes)) - 1]
                if isinstance(outcome, Exception):
                    raise outcome
                return outcome
            return call

    client = MarketingClient("127.0.0.1:1", "http://api.test", retries=2)
    client._stub = lambda method: Stub()
    return client, seen


DIED = _RpcError(grpc.StatusCode.INTERNAL, "The actor died unexpectedly before finishing this task.")


def test_an_internal_from_the_grpc_proxy_is_retried_the_apis_own_is_not():
    from protos.marketing.v1 import segment_pb2

    ok = segment_pb2.GetSegmentResponse(user_id="u1", segment_name="loyal")
    client, seen = _grpc_client([DIED, ok])
    assert client.get_segment("u1").segment_name == "loyal" and len(seen) == 2
    client, seen = _grpc_client([_RpcError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE), ok])
    with pytest.raises(PlatformError) as err:
        client.get_segment("u1")
    assert not isinstance(err.value, Unavailable) and len(seen) == 1
    client, seen = _grpc_client([DIED, ok])
    with pytest.raises(Unavailable):
        client.report_outcome("sms", True, user_id="u1")
    assert len(seen) == 1
