"""Prometheus metrics: the API's own and Serve's, scraped from Ray's metrics endpoint."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from cluster.core.errors import NotFound

pytestmark = pytest.mark.e2e


def _value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        body, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in body for k, v in labels.items()):
            total += float(value)
    return total


def _scrape(endpoints: list[str]) -> str:
    return "\n".join(httpx.get(url, timeout=10).text for url in endpoints)


def _counts(text: str) -> tuple[float, float, float]:
    """GetSegment over gRPC answered OK and NOT_FOUND, and over HTTP answered 404."""
    return (_value(text, "ray_pmkt_api_requests_total", method="GetSegment", transport="grpc", code="OK"),
            _value(text, "ray_pmkt_api_requests_total", method="GetSegment", transport="grpc", code="NOT_FOUND"),
            _value(text, "ray_pmkt_api_requests_total", transport="http", code="404",
                   method="GET /v1/users/{user_id}/segment"))


def _settled(endpoints: list[str], quiet_s: float = 12.0, timeout_s: float = 90.0) -> tuple[float, float, float]:
    """The counts once earlier tests' calls have all been exported: unchanged for ``quiet_s``
    (longer than Ray's export interval)."""
    deadline = time.monotonic() + timeout_s
    last, since = _counts(_scrape(endpoints)), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(2)
        now = _counts(_scrape(endpoints))
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_api_calls_are_counted_by_method_transport_and_code(chain):
    from cluster.core.storage import open_lake
    from ray_apps.client import MarketingClient
    from ray_apps.serve.launcher import metrics_endpoints

    settings = chain["settings"]
    endpoints = metrics_endpoints(settings)
    assert endpoints and all(re.match(r"http://[\d.]+:\d+/metrics$", u) for u in endpoints)
    ok0, nf0, http0 = _settled(endpoints)

    uid = str(open_lake(settings).read_parquet(chain["rfm"]["path"], columns=["user_id"])["user_id"].iloc[0])
    with MarketingClient.from_settings(settings, timeout_s=20.0) as client:
        for _ in range(3):
            client.get_segment(uid)
        for _ in range(2):
            with pytest.raises(NotFound):
                client.get_segment("metrics-no-such-user")
        with pytest.raises(NotFound):
            client.get_segment_http("metrics-no-such-user")

    # Ray's agent exports every few seconds.
    deadline = time.monotonic() + 60
    while True:
        text = _scrape(endpoints)
        ok, nf, http = (a - b for a, b in zip(_counts(text), (ok0, nf0, http0)))
        if (ok, nf, http) == (3, 2, 1) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert (ok, nf, http) == (3, 2, 1)
    # The latency histogram and Serve's own metrics are there too; user ids are not.
    assert _value(text, "ray_pmkt_api_request_seconds_count", method="GetSegment", transport="grpc") >= 5
    assert "ray_serve_" in text
    assert "metrics-no-such-user" not in text
