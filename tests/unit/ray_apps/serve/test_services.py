"""The service table drives both transports: every RPC has its method on the replica, every
servicer can be imported by Serve's proxy, and the health check answers per service from the
model each one needs."""

from __future__ import annotations

import asyncio
import importlib

import pytest

from ray_apps.serve.services import GRPC_SERVICERS, HEALTH_SERVICER, SERVICES, service_named


def test_every_rpc_is_a_method_of_the_replica_and_every_route_a_handler():
    from ray_apps.serve.api import ApiReplica, MarketingApi

    missing = [f"{s.service}.{rpc}" for s in SERVICES for rpc in s.rpcs if not callable(getattr(ApiReplica, rpc, None))]
    missing += [f"{r.verb} {r.path}: {r.handler}" for s in SERVICES for r in s.http
                if not callable(getattr(ApiReplica, r.handler, None))]
    assert missing == []
    assert MarketingApi.name == "MarketingApi"  # the name serve-config.yaml and the Helm chart deploy


def test_the_servicers_are_the_protos_services_and_health():
    assert GRPC_SERVICERS[-1] == HEALTH_SERVICER and len(set(GRPC_SERVICERS)) == len(GRPC_SERVICERS)
    for path in GRPC_SERVICERS:
        module, _, name = path.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), path
    assert {s.name for s in SERVICES} == {f"marketing.v1.{s.service}" for s in SERVICES}
    assert service_named("marketing.v1.NoSuchService") is None


class _Context:
    """What the gRPC wrapper uses of Serve's context: the status it sets."""

    code = None

    def set_code(self, code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def invocation_metadata(self) -> list:
        return []


def _check(replica, service: str) -> str:
    from grpc_health.v1 import health_pb2

    context = _Context()
    answer = asyncio.run(replica.Check(health_pb2.HealthCheckRequest(service=service), context))
    return context.code.name if context.code else health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


@pytest.mark.parametrize("service, status", [
    ("", "SERVING"),
    ("marketing.v1.SegmentService", "SERVING"),  # the fixture's lake has a segments model
    ("marketing.v1.OfferService", "SERVING"),
    ("marketing.v1.ProfileService", "SERVING"),  # needs no model
    ("marketing.v1.CtrService", "NOT_SERVING"),  # no CTR model yet
    ("marketing.v1.PricingService", "NOT_SERVING"),
    ("marketing.v1.NoSuchService", "NOT_FOUND"),
])
def test_health_answers_per_service_from_the_model_it_needs(replica, service, status):
    assert _check(replica, service) == status
