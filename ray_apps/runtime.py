"""Connecting to Ray from settings: a private local Ray, or a running cluster."""

from __future__ import annotations

import logging
import os
import sys
import time

from cluster.core.errors import Unavailable
from cluster.core.settings import Settings

__all__ = ["ensure_ray", "ray_auth_env", "shutdown_ray"]

log = logging.getLogger(__name__)
#: Whether this process started a private local Ray (whose Serve dies with it).
_local = False


def ensure_ray(settings: Settings, *, log_to_driver: bool = False) -> None:
    """Initialise Ray once per process according to ``settings.ray``.

    ``address: local`` starts a private Ray (never a stale cluster from a leftover
    address file) on ``node_ip``, sized by ``num_cpus`` / ``memory_mb`` /
    ``object_store_mb`` so it does not claim the whole machine.
    """
    auth = ray_auth_env(settings)
    if any(os.environ.get(k) != v for k, v in auth.items()) and "ray._raylet" in sys.modules:
        # Ray has read its authentication settings already: a token set now would not be sent.
        log.warning("Ray was imported before its authentication settings (ray.auth_mode, ray.auth_token_file) "
                    "were applied; set RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH in the environment first")
    os.environ.update(auth)
    import ray

    global _local
    if ray.is_initialized():
        return
    rs = settings.ray
    _local = rs.address == "local"
    # Serve's proxy and replicas must import the generated stubs and this package;
    # they run in the venv's interpreter, where the project is installed.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if rs.address == "local" and settings.serve.ingress == "direct":
        # Read by Serve's controller and replicas when they start: the Ray processes this
        # driver starts inherit them. A cluster's nodes get them from their own environment
        # (the Ansible inventory's ray_env). User code in the replica's own event loop saves a
        # thread hand-off per request: +24 % GetProfile throughput (docs/serving-performance.md).
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ.setdefault("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0")
    common = dict(
        log_to_driver=log_to_driver,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    if rs.address == "local":
        ray.init(
            address="local",
            num_cpus=rs.num_cpus,
            include_dashboard=rs.include_dashboard,
            _node_ip_address=rs.node_ip,
            _memory=rs.memory_mb * 1024 * 1024 if rs.memory_mb else None,
            object_store_memory=rs.object_store_mb * 1024 * 1024 if rs.object_store_mb else None,
            _metrics_export_port=rs.metrics_export_port or None,
            **common,
        )
    elif rs.address.startswith("ray://"):
        # Ray Client: the driver runs on the head; this process only talks to it.
        _connect_client(rs.address, attempts=rs.connect_attempts)
    else:
        # The driver's node address must be one the cluster's nodes can reach back.
        ray.init(address=rs.address, _node_ip_address=rs.node_ip, **common)
    log.info("Ray ready: %s", ray.cluster_resources())


def _connect_client(address: str, *, attempts: int) -> None:
    """``ray.init`` over Ray Client, retried: the head's proxier starts one server process
    per client, and on a loaded head that start can fail once and succeed the next time."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, logging_level=logging.WARNING)
            return
        except ConnectionError as exc:  # ConnectionAbortedError from the proxier, or a timeout
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            if attempt == attempts:
                raise Unavailable(
                    f"Ray Client at {address} refused the connection {attempts} times; last: {reason} "
                    "(the head's ray_client_server_*.err logs say why)"
                ) from exc
            log.warning("Ray Client connection %d/%d to %s failed (%s); retrying", attempt, attempts,
                        address, reason)
            if ray.is_initialized():
                ray.shutdown()
            time.sleep(2.0 * attempt)


def shutdown_ray() -> None:
    """Disconnect from Ray. A private local Ray stops, with Serve; on a cluster the Serve
    applications keep running (they are the cluster's deployment: `pmkt serve delete`
    removes them)."""
    if "ray" not in sys.modules:
        return  # never started in this process (importing Ray to learn that takes seconds)
    import ray

    global _local
    if not ray.is_initialized():
        return
    if _local:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # noqa: BLE001 - shutting down; Serve may never have started
            log.debug("serve.shutdown failed", exc_info=True)
    ray.shutdown()
    _local = False


def ray_auth_env(settings: Settings) -> dict[str, str]:
    """The environment a Ray driver needs for ``settings.ray``'s authentication: RAY_AUTH_MODE and,
    with a token, RAY_AUTH_TOKEN_PATH (the file, never the token, so no child process's
    environment holds it)."""
    rs = settings.ray
    env = {"RAY_AUTH_MODE": rs.auth_mode} if rs.auth_mode else {}
    if rs.auth_token_file is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(rs.auth_token_file)
    return env
