"""The drain gate: admitted calls are counted to the end, refused ones fail UNAVAILABLE / 503
before doing anything, on both transports (tests/e2e/test_a_sigterm.py drives a real SIGTERM)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cluster.core.errors import Unavailable
from ray_apps.serve.drain import DRAINING_MESSAGE, DrainGate
from tests.unit.ray_apps.serve.test_services import _Context


def test_the_gate_counts_admitted_calls_and_refuses_once_closed():
    gate = DrainGate()
    gate.admit()
    gate.admit()
    gate.done()
    assert gate.in_flight == 1 and not gate.closed
    gate.close()
    with pytest.raises(Unavailable, match="shutting down"):
        gate.admit()
    assert gate.in_flight == 1  # the refused call was never counted


def test_wait_idle_returns_when_the_last_admitted_call_ends_or_at_the_deadline():
    gate = DrainGate()
    gate.admit()
    gate.close()
    assert gate.wait_idle(0.05) == 1  # still running at the deadline: one call cut
    threading.Timer(0.2, gate.done).start()
    t = time.monotonic()
    assert gate.wait_idle(5) == 0
    assert 0.15 < time.monotonic() - t < 2


@pytest.fixture
def closed_gate(replica):
    """The shared replica with a closed gate for one test, then its own gate back."""
    own, replica._gate = replica._gate, DrainGate()
    replica._gate.close()
    yield replica._gate
    replica._gate = own


def _profile(replica):
    from protos.marketing.v1 import profile_pb2

    context = _Context()
    asyncio.run(replica.GetProfile(profile_pb2.GetProfileRequest(user_id="u2"), context))
    return context


def test_grpc_calls_are_counted_out_and_refused_unavailable_once_the_gate_closes(replica, closed_gate):
    context = _profile(replica)
    assert context.code.name == "UNAVAILABLE" and context.details == DRAINING_MESSAGE
    assert closed_gate.in_flight == 0


def test_an_admitted_grpc_call_leaves_the_gate_at_zero(replica):
    context = _profile(replica)
    assert context.code is None  # OK
    assert replica._gate.in_flight == 0


def test_http_is_503_once_the_gate_closes_and_counted_out_otherwise(replica):
    from fastapi.testclient import TestClient

    from ray_apps.serve.auth import ApiKeys
    from ray_apps.serve.http_app import build_http_app

    gate = DrainGate()
    client = TestClient(build_http_app(replica, ApiKeys({}), gate=gate))
    assert client.get("/v1/users/u2/profile").status_code == 200
    assert gate.in_flight == 0
    gate.close()
    resp = client.get("/v1/users/u2/profile")
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "unavailable" and "shutting down" in resp.json()["error"]["message"]
