"""The segment application: SegmentService over gRPC and ``GET /v1/users/{id}/segment`` over HTTP.

One deployment serves both transports: Serve's gRPC proxy calls the method named like
the RPC (``GetSegment``); its HTTP proxy routes to the FastAPI app.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from google.protobuf.json_format import MessageToDict
from ray import serve
from ray.serve import Application

from cluster.errors import InvalidArgument
from cluster.settings import Settings, load_settings
from cluster.storage import open_lake, open_profile_store
from protos.marketing.v1 import segment_pb2
from ray_apps.registry import ModelRegistry
from ray_apps.segments.service import CurrentSegmentModel
from ray_apps.serve.errors import grpc_method, install_http_error_handlers

__all__ = ["build_app", "build_segment_app", "SegmentDeployment", "GRPC_SERVICERS"]

log = logging.getLogger(__name__)

#: What Serve's gRPC proxy must register (it imports these in its own process).
GRPC_SERVICERS = ["protos.marketing.v1.segment_pb2_grpc.add_SegmentServiceServicer_to_server"]

http_app = FastAPI(
    title="Precision-marketing platform API",
    version="v1",
    description="Customer segments and profiles. Errors: 404 unknown user, 422 invalid argument.",
)
install_http_error_handlers(http_app)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(http_app)
class SegmentDeployment:
    """Adapts requests to :class:`SegmentLookup`; holds the store and the current model.

    The current model is the registry's ``current.json``. Each replica checks it at most
    every ``serve.model_refresh_s`` seconds and swaps in a newly trained version, so a
    deployment made before any training (the cluster's platform role deploys at provisioning)
    starts answering once ``pmkt train segments`` has run, without a redeploy.
    """

    def __init__(self, settings: Settings) -> None:
        self._model = CurrentSegmentModel(
            ModelRegistry(open_lake(settings)), open_profile_store(settings),
            refresh_s=settings.serve.model_refresh_s, max_user_id_length=settings.serve.max_user_id_length,
        )

    @grpc_method(segment_pb2.GetSegmentResponse)
    async def GetSegment(self, request: segment_pb2.GetSegmentRequest) -> segment_pb2.GetSegmentResponse:
        return self._model.lookup().get(request.user_id)

    @http_app.get(
        "/v1/users/{user_id}/segment",
        summary="The user's segment",
        responses={404: {"description": "unknown user or no purchase history"}, 422: {"description": "bad user_id"},
                   409: {"description": "no segments model trained yet"}},
    )
    def get_segment_http(self, user_id: str) -> dict[str, Any]:
        return MessageToDict(
            self._model.lookup().get(user_id), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )


    @http_app.get("/v1/users//segment", include_in_schema=False)
    def get_segment_http_empty_id(self) -> dict[str, Any]:
        # An empty path segment matches no route and would be a bare 404; the contract
        # says an empty id is an invalid argument on both transports.
        raise InvalidArgument("user_id must not be empty", field="user_id")


def build_segment_app(settings: Settings) -> Application:
    """Bind the deployment with autoscaling from ``settings.serve.autoscaling``."""
    auto = settings.serve.autoscaling
    return SegmentDeployment.options(
        autoscaling_config={
            "min_replicas": auto.min_replicas,
            "max_replicas": auto.max_replicas,
            "target_ongoing_requests": auto.target_ongoing_requests,
        },
    ).bind(settings)


def build_app(args: dict[str, str]) -> Application:
    """Serve app builder (``serve run ray_apps.serve.segments:build_app profile=cluster``).

    Args:
        args: ``profile`` (bundled profile name) or ``settings`` (settings file path).
    """
    return build_segment_app(load_settings(profile=args.get("profile"), path=args.get("settings")))
