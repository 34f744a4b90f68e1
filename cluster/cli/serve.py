"""``pmkt serve [tls-front | deploy | status | delete]`` and ``pmkt segment``: the API on Ray
Serve, and one call to it."""

from __future__ import annotations

import json

import click

from cluster.cli.context import CliContext, pass_ctx, shutting_down_ray, sigterm_as_interrupt
from cluster.cli.progress import console
from cluster.cli.render import serve_until_interrupted
from cluster.core.errors import InvalidArgument

__all__ = ["serve_group", "segment_cmd"]


@click.group("serve", invoke_without_command=True)
@click.pass_context
def serve_group(ctx: click.Context) -> None:
    """Serve the API (gRPC and HTTP) on Ray Serve.

    \b
    Without a subcommand: start serving and stay in the foreground until Ctrl-C or SIGTERM.
    Then it drains (new calls refused UNAVAILABLE / 503, accepted ones finish within
    serve.drain_s, buffered events reach the lake) and the embedded default's private Ray
    stops with it, leaving no process behind.
    On a Ray cluster, `pmkt serve deploy` deploys the application and returns; it keeps
    serving, and picks up newly trained models from the registry by itself.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ray_apps.serve.launcher import start_serving

    c = ctx.find_object(CliContext)
    with shutting_down_ray():
        front = None
        try:
            start_serving(c.settings)
            front = _maybe_tls_front(c.settings.serve)
            # After Ray started: ray.init installs its own SIGTERM handler (a stack dump, then abort).
            with sigterm_as_interrupt():
                serve_until_interrupted(c.settings.serve)
                _drain(c.settings)
        finally:
            if front is not None:
                front.stop(grace=2)


def _drain(settings) -> None:
    """Drain the private Ray's application before it stops (a cluster's keeps serving)."""
    from ray_apps.serve.launcher import drain_serving

    if settings.ray.address != "local":
        return
    console.print(f"draining: new calls are refused UNAVAILABLE, accepted ones get up to "
                  f"{settings.serve.drain_s:g} s", highlight=False)
    report = drain_serving(settings)
    console.print(f"drained {report.drained}/{report.replicas} replica(s) in {report.seconds:g} s: "
                  f"{report.events_flushed} buffered event(s) appended to the lake, {report.calls_cut} call(s) cut",
                  highlight=False)


def _maybe_tls_front(sv, upstream: str | None = None):
    """Start the gRPC TLS front when serve.tls.grpc_port is set (docs/api.md#tls), forwarding
    to ``upstream`` (default: Serve's plaintext port on this host); None when not set."""
    if sv.tls.grpc_port is None:
        return None
    from ray_apps.serve.tls_front import start_tls_front

    server, _ = start_tls_front(certfile=sv.tls.certfile, keyfile=sv.tls.keyfile, port=sv.tls.grpc_port,
                                upstream=upstream or f"127.0.0.1:{sv.grpc_port}", max_message_bytes=sv.max_message_bytes)
    return server


@serve_group.command("tls-front")
@click.option("--upstream", default=None, metavar="HOST:PORT",
              help="Serve's plaintext gRPC port to forward to (default 127.0.0.1:<serve.grpc_port>).")
@pass_ctx
def serve_tls_front(c: CliContext, upstream: str | None) -> None:
    """Terminate TLS for gRPC on serve.tls.grpc_port and forward every call to Serve's gRPC
    proxy, until Ctrl-C. Serve's gRPC proxy has no TLS of its own: run this on each node
    that runs a proxy (`pmkt serve` in the foreground starts it itself)."""
    sv = c.settings.serve
    server = _maybe_tls_front(sv, upstream)
    if server is None:
        raise InvalidArgument("serve.tls.grpc_port (with certfile and keyfile) is not set", field="serve.tls.grpc_port")
    console.print(f"gRPC TLS front on :{sv.tls.grpc_port} -> {upstream or f'127.0.0.1:{sv.grpc_port}'}; Ctrl-C stops",
                  highlight=False)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=2)


@serve_group.command("deploy")
@click.option("--redeploy", is_flag=True, help="Redeploy even if the application is running (after an upgrade).")
@pass_ctx
def serve_deploy(c: CliContext, redeploy: bool) -> None:
    """Deploy the API on the Ray cluster and return (idempotent: a running application is
    left alone). Prints `deployed` or `unchanged`."""
    from ray_apps.serve.launcher import deploy

    with shutting_down_ray():
        changed = deploy(c.settings, redeploy=redeploy)
    sv = c.settings.serve
    console.print(f"{'deployed' if changed else 'unchanged'}: gRPC {sv.grpc_client_host}:{sv.grpc_port}, "
                  f"HTTP http://{sv.http_client_host}:{sv.http_port}", highlight=False)


@serve_group.command("status")
@pass_ctx
def serve_status(c: CliContext) -> None:
    """The application's status on the Ray cluster, the gRPC target clients dial (with
    direct ingress: the replicas) and the Prometheus endpoints; exits 1 unless RUNNING."""
    from ray_apps.serve.launcher import (
        APP_NAME,
        app_status,
        grpc_target,
        metrics_endpoints,
    )

    target, metrics = None, []
    with shutting_down_ray():
        status = app_status(c.settings)
        if status == "RUNNING":
            target, metrics = grpc_target(c.settings), metrics_endpoints(c.settings)
    console.print(f"{APP_NAME}: {status or 'not deployed'}", highlight=False)
    if status != "RUNNING":
        raise SystemExit(1)
    sv = c.settings.serve
    if sv.tls.grpc_port is not None:
        target = f"{sv.grpc_client_host}:{sv.tls.grpc_port} (TLS front; Serve's plaintext port {target})"
    scheme = "https" if sv.tls.enabled else "http"
    console.print(f"gRPC ({sv.ingress}): {target}\nHTTP: {scheme}://{sv.http_client_host}:{sv.http_port}",
                  highlight=False)
    for url in metrics:
        console.print(f"metrics: {url}", highlight=False)


@serve_group.command("delete")
@pass_ctx
def serve_delete(c: CliContext) -> None:
    """Remove the application from the Ray cluster (no error if absent)."""
    from ray_apps.serve.launcher import delete

    with shutting_down_ray():
        removed = delete(c.settings)
    console.print("deleted" if removed else "not deployed", highlight=False)


@click.command("segment")
@click.argument("user_id")
@click.option("--http", "use_http", is_flag=True, help="Call the HTTP endpoint instead of gRPC.")
@pass_ctx
def segment_cmd(c: CliContext, user_id: str, use_http: bool) -> None:
    """Ask the running API for USER_ID's segment (prints JSON). When the API has keys, set
    PMKT_API_KEY to this client's key."""
    from google.protobuf.json_format import MessageToDict

    from ray_apps.client import MarketingClient

    with MarketingClient.from_settings(c.settings) as client:
        resp = client.get_segment_http(user_id) if use_http else client.get_segment(user_id)
    console.print_json(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), ensure_ascii=False))
