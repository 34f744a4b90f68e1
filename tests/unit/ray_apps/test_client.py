"""MarketingClient's HTTP error handling: the proxy's bare 5xx is retried, the API's own
errors are not, and ReportOutcome is never repeated."""

from __future__ import annotations

import httpx
import pytest

from cluster.core.errors import InvalidArgument, PlatformError, Unavailable
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
