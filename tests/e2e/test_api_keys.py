"""API keys on a running deployment: both transports refuse a missing or wrong key and
accept a configured one; the health check stays open; a key is held to its scopes; a keyless
body is refused from its headers, before it is sent; bodies and messages are capped."""

from __future__ import annotations

import socket
import time

import grpc
import pytest

from cluster.core.errors import PermissionDenied, PlatformError, ResourceExhausted, Unauthenticated

pytestmark = pytest.mark.e2e

KEY = "e2e-client-key-0123456789"
READER_KEY = "e2e-reader-key-0123456789"


@pytest.fixture(scope="module")
def with_keys(chain, tmp_path_factory):
    """The chain's application redeployed with API keys (a 0600 key file), then put back."""
    from ray import serve

    from ray_apps.serve.api import build_api_app
    from ray_apps.serve.launcher import APP_NAME

    settings = chain["settings"]
    path = tmp_path_factory.mktemp("auth") / "api.keys"
    path.write_text(f"e2e:{KEY}\nreader:{READER_KEY}:read\n", encoding="utf-8")
    path.chmod(0o600)
    keyed = settings.model_copy(update={"serve": settings.serve.model_copy(update={
        "auth": settings.serve.auth.model_copy(update={"keys_file": path})})})
    serve.run(build_api_app(keyed), name=APP_NAME, route_prefix="/", blocking=False)
    try:
        _until(settings, _user(chain), keyed=True)  # the old replicas drain after serve.run returns
        yield settings
    finally:
        serve.run(build_api_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
        _until(settings, _user(chain), keyed=False)


def _until(settings, uid: str, *, keyed: bool, timeout_s: float = 120, in_a_row: int = 20) -> None:
    """Wait until keyless calls are refused (``keyed``) or answered (not ``keyed``) ``in_a_row``
    times running on both transports: an old replica keeps answering until it has drained."""
    from ray_apps.client import MarketingClient

    deadline = time.monotonic() + timeout_s
    streak = 0
    with MarketingClient.from_settings(settings, api_key=None, retries=0) as client:
        while time.monotonic() < deadline:
            call = client.get_segment if streak % 2 == 0 else client.get_segment_http
            try:
                call(uid)
                refused = False
            except Unauthenticated:
                refused = True
            except PlatformError:  # a replica starting
                refused = None
            streak = streak + 1 if refused is keyed else 0
            if streak >= in_a_row:
                return
            time.sleep(0.2 if streak else 0.5)
    pytest.fail(f"the {'keyed' if keyed else 'open'} deployment did not take over within {timeout_s:.0f} s")


def _user(chain) -> str:
    from cluster.core.storage import open_lake

    return str(open_lake(chain["settings"]).read_parquet(chain["rfm"]["path"], columns=["user_id"])["user_id"].iloc[0])


@pytest.mark.parametrize("key", [None, "not-the-key-0123456789"])
def test_a_missing_or_wrong_key_is_unauthenticated_on_both_transports(chain, with_keys, key):
    from ray_apps.client import MarketingClient

    with MarketingClient.from_settings(with_keys, api_key=key, retries=0) as client:
        for call in (client.get_segment, client.get_segment_http, client.recommend, client.churn_risk_http):
            with pytest.raises(Unauthenticated):
                call(_user(chain))
        with pytest.raises(Unauthenticated):
            client.optimize_budget_http([{"name": "a", "cost_per_placement": 1, "roi": 1, "max_placements": 1}], 1)


def test_the_configured_key_is_accepted_and_health_stays_open(chain, with_keys):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ray_apps.client import MarketingClient

    uid = _user(chain)
    with MarketingClient.from_settings(with_keys, api_key=KEY) as client:
        assert client.get_segment(uid).user_id == uid
        assert client.get_profile_http(uid, ["rfm"]).user_id == uid
    sv = with_keys.serve
    with grpc.insecure_channel(f"{sv.grpc_client_host}:{sv.grpc_port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_a_key_without_the_calls_scope_is_refused_on_both_transports(chain, with_keys):
    from ray_apps.client import MarketingClient

    uid = _user(chain)
    lp = [{"name": "a", "cost_per_placement": 1, "roi": 1, "max_placements": 1}]
    with MarketingClient.from_settings(with_keys, api_key=READER_KEY, retries=0) as client:
        assert client.get_segment(uid).user_id == uid  # read: granted
        assert client.get_segment_http(uid).user_id == uid
        for call in (client.optimize_budget, client.optimize_budget_http):  # decide: not granted
            with pytest.raises(PermissionDenied, match="lacks scope 'decide'"):
                call(lp, 1)
        with pytest.raises(PermissionDenied, match="lacks scope 'events'"):
            client.track_events_http([{"user_id": uid, "action": "view", "item_id": "i1"}])
    with MarketingClient.from_settings(with_keys, api_key=KEY, retries=0) as client:  # admin: every scope
        assert client.optimize_budget_http(lp, 1) is not None


def _raw_http(sv, head: bytes, body: bytes = b"", timeout_s: float = 10.0) -> tuple[int, float, bytes]:
    """Send ``head`` (and ``body``), return (status, seconds to the status line, response bytes)."""
    with socket.create_connection((sv.http_client_host, sv.http_port), timeout=timeout_s) as s:
        started = time.perf_counter()
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.perf_counter() - started
    return int(data.split(b" ", 2)[1]), elapsed, data


def test_a_keyless_body_is_refused_from_its_headers_before_it_is_sent(chain, with_keys):
    """The client declares 64 MiB and sends none of it: the 401 comes anyway, so the server did
    not wait for (read) the body. A keyed one over serve.max_body_bytes is 413 the same way."""
    sv = with_keys.serve
    declared = 64 * 1024 * 1024
    head = (f"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n").encode()
    status, keyless_s, _ = _raw_http(sv, head + b"\r\n")
    assert status == 401
    status, keyed_s, data = _raw_http(sv, head + f"Authorization: Bearer {KEY}\r\n\r\n".encode())
    assert status == 413, data[:300]
    print(f"\n64 MiB declared, 0 bytes sent: keyless answered 401 in {keyless_s * 1000:.1f} ms, "
          f"keyed answered 413 in {keyed_s * 1000:.1f} ms (cap {sv.max_body_bytes:,} bytes)")


def test_messages_and_bodies_over_the_caps_are_refused(chain, with_keys):
    from ray_apps.client import MarketingClient

    sv = with_keys.serve
    uid = _user(chain)
    big = [{"user_id": uid, "action": "view", "item_id": "x" * 1000}] * (sv.max_message_bytes // 1000 + 10)
    with MarketingClient.from_settings(with_keys, api_key=KEY, retries=0) as client:
        for call in (client.track_events, client.track_events_http):
            with pytest.raises(ResourceExhausted):
                call(big)
        assert client.get_segment(uid).user_id == uid  # the server is still fine
