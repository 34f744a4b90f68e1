"""Start and stop the platform's Serve applications from settings."""

from __future__ import annotations

import logging

from cluster.settings import Settings

__all__ = ["start_serving", "APP_NAME"]

log = logging.getLogger(__name__)
APP_NAME = "marketing"


def start_serving(settings: Settings) -> None:
    """Start Serve's HTTP and gRPC proxies on the configured ports and deploy the app.

    The gRPC options must be given before the first deployment: Serve ignores them once
    it runs. Returns when the application is healthy and its proxies accept connections.
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
    serve.run(build_segment_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    _wait_for_proxies(settings)
    log.info("serving on http://%s:%d and gRPC port %d", sv.http_host, sv.http_port, sv.grpc_port)


def _wait_for_proxies(settings: Settings, timeout_s: float = 60.0) -> None:
    """Wait until the client-facing HTTP and gRPC proxies accept connections.

    ``serve.run`` returns when the application is healthy, but on a multi-node cluster the
    proxy a client talks to may still be starting.

    Raises:
        Unavailable: a proxy did not come up within ``timeout_s``.
    """
    import socket
    import time

    import httpx

    from cluster.errors import Unavailable

    sv = settings.serve
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"http://{sv.http_client_host}:{sv.http_port}/-/healthz", timeout=2)
            with socket.create_connection((sv.grpc_client_host, sv.grpc_port), timeout=2):
                pass
            if resp.status_code == 200:
                return
            last_error = f"HTTP proxy answered {resp.status_code}"
        except (OSError, httpx.HTTPError) as exc:
            last_error = str(exc)
        time.sleep(0.5)
    raise Unavailable(f"Serve proxies at {sv.http_client_host}:{sv.http_port} / {sv.grpc_client_host}:{sv.grpc_port}"
                      f" did not come up in {timeout_s:.0f}s: {last_error}")
