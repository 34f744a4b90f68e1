"""Start and stop the platform's Serve applications from settings."""

from __future__ import annotations

import logging

from cluster.settings import Settings

__all__ = ["start_serving", "APP_NAME"]

log = logging.getLogger(__name__)
APP_NAME = "marketing"


def start_serving(settings: Settings, *, blocking: bool = False) -> None:
    """Start Serve's HTTP and gRPC proxies on the configured ports and deploy the app.

    The gRPC options must be given before the first deployment: Serve ignores them once
    it runs. Returns when the application is healthy (or never, if ``blocking``).
    """
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from ray_apps.runtime import ensure_ray
    from ray_apps.serve.segments import GRPC_SERVICERS, build_segment_app

    ensure_ray(settings)
    sv = settings.serve
    serve.start(
        proxy_location=sv.proxy_location,
        http_options=HTTPOptions(host=sv.http_host, port=sv.http_port, request_timeout_s=sv.request_timeout_s),
        grpc_options=gRPCOptions(
            port=sv.grpc_port, grpc_servicer_functions=GRPC_SERVICERS, request_timeout_s=sv.request_timeout_s
        ),
    )
    serve.run(build_segment_app(settings), name=APP_NAME, route_prefix="/", blocking=blocking)
    log.info("serving on http://%s:%d and gRPC port %d", sv.http_host, sv.http_port, sv.grpc_port)
