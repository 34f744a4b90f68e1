"""Start and stop the platform's Serve applications from settings."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import ssl
import sys
from typing import Any

from cluster.core.errors import FailedPrecondition
from cluster.core.settings import ServeSettings, Settings
from ray_apps.serve.drain import DrainReport

__all__ = [
    "APP_NAME", "GRPC_SIZE_ENV", "app_status", "check_ports_free", "delete", "deploy", "drain_serving",
    "explain_bind_failure", "grpc_size_env", "grpc_target", "metrics_endpoints", "start_serving",
]

log = logging.getLogger(__name__)
APP_NAME = "marketing"


def start_serving(settings: Settings) -> None:
    """Start Serve's HTTP and gRPC proxies on the configured ports and deploy the app.

    The gRPC options must be given before the first deployment: Serve ignores them once
    it runs. Returns when the application is healthy and its proxies accept connections.

    Raises:
        FailedPrecondition: a port is taken, naming ``serve.grpc_port`` or ``serve.http_port``.
    """
    sv = settings.serve
    from ray_apps.serve.auth import ApiKeys, warn_if_open

    # Bad key files and `required` without keys fail here, before Ray starts; once serving, an
    # open API says so in the log (each replica says it again in its own).
    keys = ApiKeys.from_settings(sv.auth)
    ray_started = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if settings.ray.address == "local" and not ray_started:
        # The private Ray's proxies will bind on this host: a taken port is found now, not after
        # Ray has started and a proxy has failed (~50 s). No Serve of this process holds them yet.
        check_ports_free(sv)

    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from ray_apps.runtime import ensure_ray
    from ray_apps.serve.api import build_api_app
    from ray_apps.serve.services import GRPC_SERVICERS

    size_env = grpc_size_env(sv)
    # Serve reads it when its gRPC servers' module loads: the processes of a Ray this driver starts
    # inherit it from here; the controller (and the proxies it starts) also get it below, for a Ray
    # already running. A cluster's nodes need it in their own environment (direct-ingress replicas).
    os.environ.update(size_env)
    ensure_ray(settings)
    try:
        serve.start(
            controller_options={"runtime_env": {"env_vars": size_env}},
            proxy_location=sv.proxy_location,
            logging_config={"enable_access_log": sv.access_log},
            http_options=HTTPOptions(host=sv.http_host, port=sv.http_port, request_timeout_s=sv.request_timeout_s,
                                     **_https_options(sv)),
            grpc_options=gRPCOptions(
                port=sv.grpc_port, grpc_servicer_functions=list(GRPC_SERVICERS),
                request_timeout_s=sv.request_timeout_s
            ),
        )
    except Exception as exc:  # a RayTaskError wrapping the proxy's failure
        explained = explain_bind_failure(exc, sv)
        if explained is None:
            raise
        raise explained from None
    from ray_apps.serve import drain

    drain.clear()  # a drain of an earlier application on this Ray must not close the new one's gates
    serve.run(build_api_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    _wait_for_proxies(settings)
    try:
        metrics = ", ".join(metrics_endpoints(settings)) or "(none)"
    except Exception:  # only for the log line: the application serves either way
        log.debug("listing the metrics endpoints failed", exc_info=True)
        metrics = "(unknown)"
    log.info("serving on %s://%s:%d and gRPC %s; metrics at %s", "https" if sv.tls.enabled else "http",
             sv.http_host, sv.http_port, grpc_target(settings), metrics)
    warn_if_open(keys, sv)


#: Serve 2.60 builds its gRPC proxy's server, and with direct ingress each replica's, with
#: ``grpc.max_receive_message_length`` (and max_send) from this variable (default 2 GiB - 1).
GRPC_SIZE_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"


def grpc_size_env(sv: ServeSettings) -> dict[str, str]:
    """The environment that caps Serve's gRPC servers at ``serve.max_message_bytes``: grpcio then
    refuses a bigger request message with RESOURCE_EXHAUSTED before any Python code (Serve's or
    ours) sees or parses it. It caps answers too (Serve sets both from one variable)."""
    return {GRPC_SIZE_ENV: str(sv.max_message_bytes)}


def _https_options(sv: ServeSettings) -> dict[str, str]:
    """Serve's HTTP proxy options for HTTPS (``serve.tls``); checks the files first so a bad
    path or an exposed key is a ConfigError here, not a proxy that never starts."""
    if not sv.tls.enabled:
        return {}
    from ray_apps.serve.tls_front import read_pem

    read_pem(sv.tls.certfile, "certfile")
    read_pem(sv.tls.keyfile, "keyfile", private=True)
    return {"ssl_certfile": str(sv.tls.certfile), "ssl_keyfile": str(sv.tls.keyfile)}


_BIND_FAILURE = re.compile(r"Failed to bind to address '?(?P<host>[^\s';]*):(?P<port>\d+)")
_NODE_IP = re.compile(r"\bip=(?P<ip>[0-9a-fA-F.:]+)")


def explain_bind_failure(exc: BaseException, sv: ServeSettings) -> FailedPrecondition | None:
    """Turn a Serve proxy's "Failed to bind" (a port already taken on some node) into an
    error naming the setting to change, or None if ``exc`` is something else."""
    text = str(exc)
    bind = _BIND_FAILURE.search(text)
    if bind is None:
        return None
    port = int(bind["port"])
    field = {sv.grpc_port: "serve.grpc_port", sv.http_port: "serve.http_port"}.get(port, "serve")
    node = _NODE_IP.search(text)
    where = f" on node {node['ip']}" if node else ""
    return FailedPrecondition(
        f"Serve could not listen on port {port}{where}: another process already listens there. "
        f"Stop it, or set {field} to a free port", field=field)


def _taken(host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # an unresolvable host is Serve's to report
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            # SO_REUSEADDR: a port with only TIME_WAIT connections is free; one with a listener is not
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def check_ports_free(sv: ServeSettings) -> None:
    """Refuse, before Ray starts, a port that Serve's proxy would fail to bind on this host (the
    error :func:`explain_bind_failure` makes of that failure afterwards): gRPC on every address
    (``[::]``), HTTP on ``serve.http_host``.

    Raises:
        FailedPrecondition: naming ``serve.grpc_port`` or ``serve.http_port``.
    """
    for field, host, port in (("serve.grpc_port", "::", sv.grpc_port), ("serve.grpc_port", "0.0.0.0", sv.grpc_port),
                              ("serve.http_port", sv.http_host, sv.http_port)):
        if (host != "::" or socket.has_ipv6) and _taken(host, port):
            raise FailedPrecondition(
                f"Serve cannot listen on port {port}: another process already listens there. "
                f"Stop it, or set {field} to a free port", field=field)


def grpc_target(settings: Settings, timeout_s: float = 60.0) -> str:
    """The gRPC target a client dials: ``host:port`` of Serve's proxy, or with direct ingress
    ``ipv4:ip:port,ip:port,...`` over the running replicas (a grpcio channel balances over
    them with ``grpc.lb_policy_name=round_robin``; MarketingClient does).

    Raises:
        Unavailable: direct ingress and no replica serves gRPC within ``timeout_s``.
    """
    import time

    from cluster.core.errors import Unavailable

    sv = settings.serve
    if sv.ingress == "proxy" or os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        # Serve's HAProxy mode fronts the direct-ingress replicas on the node's gRPC port.
        return f"{sv.grpc_client_host}:{sv.grpc_port}"
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve.context import _get_global_client

    from ray_apps.runtime import ensure_ray

    ensure_ray(settings)
    controller = _get_global_client()._controller
    deadline = time.monotonic() + timeout_s
    while True:
        groups = ray.get(controller.get_target_groups.remote(app_name=APP_NAME))
        # Replica targets carry the replica actor's name; before any replica runs, Serve
        # answers with its proxies instead.
        targets = sorted({f"{t.ip}:{t.port}" for g in groups if g.protocol == RequestProtocol.GRPC
                          for t in g.targets if APP_NAME in t.name})
        if targets:
            return "ipv4:" + ",".join(targets)
        if time.monotonic() > deadline:
            raise Unavailable(f"no replica of {APP_NAME!r} serves gRPC directly after {timeout_s:.0f} s; "
                              "is Ray running with RAY_SERVE_ENABLE_DIRECT_INGRESS=1?", field="serve.ingress")
        time.sleep(0.5)


def metrics_endpoints(settings: Settings) -> list[str]:
    """``http://<node>:<port>/metrics`` of every live Ray node: Prometheus scrape targets with
    Serve's metrics and the API's (:mod:`ray_apps.serve.metrics`)."""
    import ray

    from ray_apps.runtime import ensure_ray

    ensure_ray(settings)
    return sorted(f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
                  for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort"))


def app_status(settings: Settings) -> str | None:
    """The Serve application's status (``RUNNING``, ``DEPLOYING``, ...); None if not deployed."""
    from ray import serve

    from ray_apps.runtime import ensure_ray

    ensure_ray(settings)
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # Serve not started on this cluster
        log.debug("serve.status failed", exc_info=True)
        return None
    return str(app.status.value if hasattr(app.status, "value") else app.status) if app else None


def deploy(settings: Settings, *, redeploy: bool = False) -> bool:
    """Deploy the application on a running Ray cluster and return; it keeps serving after
    this process exits. Idempotent: an application already RUNNING is left alone unless
    ``redeploy`` (after an upgrade of the code or the settings).

    Returns:
        True if it (re)deployed, False if it was already running.

    Raises:
        FailedPrecondition: the settings name a private local Ray (it would die with this
            process; use ``pmkt serve`` there).
    """
    if settings.ray.address == "local":
        raise FailedPrecondition(
            "`serve deploy` needs a Ray cluster (ray.address); with a private local Ray the "
            "application would stop with this command: run `pmkt serve` instead", field="ray.address")
    if not redeploy and app_status(settings) == "RUNNING":
        _wait_for_proxies(settings)
        return False
    start_serving(settings)
    return True


def drain_serving(settings: Settings) -> DrainReport:
    """Drain the application before this process stops it (``pmkt serve`` on SIGTERM or Ctrl-C):
    every replica refuses new calls UNAVAILABLE / 503, finishes the ones it accepted (at most
    ``serve.drain_s``) and appends its buffered events to the lake (ray_apps.serve.drain).

    Returns:
        What the replicas reported: a replica that did not report in time flushes when Serve
        stops it; ``calls_cut`` counts the calls still running at ``serve.drain_s``.
    """
    from ray import serve

    from ray_apps.serve import drain

    app = serve.status().applications.get(APP_NAME)
    replicas = 0
    if app is not None:
        for dep in app.deployments.values():
            replicas += sum(n for state, n in dep.replica_states.items()
                            if str(getattr(state, "value", state)) in ("RUNNING", "STARTING"))
    drain.start_drain()
    # each replica waits serve.drain_s for its calls, then flushes to the lake: allow for the flush
    return drain.wait_drained(replicas, settings.serve.drain_s + 10.0)


def delete(settings: Settings) -> bool:
    """Remove the application from the cluster; True if there was one."""
    from ray import serve

    if app_status(settings) is None:
        return False
    serve.delete(APP_NAME)
    return True


def _wait_for_proxies(settings: Settings, timeout_s: float = 60.0) -> None:
    """Wait until the client-facing HTTP and gRPC proxies accept connections.

    ``serve.run`` returns when the application is healthy, but on a multi-node cluster the
    proxy a client talks to may still be starting.

    Raises:
        Unavailable: a proxy did not come up within ``timeout_s``.
    """
    import time

    import httpx

    from cluster.core.errors import Unavailable

    sv = settings.serve
    # With TLS the probe speaks HTTPS; it checks the certificate only when the settings name
    # the CA (a liveness probe of our own proxy sends nothing secret).
    scheme = "https" if sv.tls.enabled else "http"
    verify: Any = True
    if sv.tls.enabled:
        verify = ssl.create_default_context(cafile=str(sv.tls.ca_file)) if sv.tls.ca_file else False
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{scheme}://{sv.http_client_host}:{sv.http_port}/-/healthz", timeout=2, verify=verify)
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
