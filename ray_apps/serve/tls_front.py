"""TLS for gRPC: a terminating front that forwards every call to Serve's plaintext port.

Serve's gRPC proxy (Ray 2.60) only listens in plaintext (``add_insecure_port``; its
``gRPCOptions`` has no certificate settings), while its HTTP proxy takes a certificate
(``serve.tls`` makes it HTTPS). This front closes the gap: it listens with the certificate
on ``serve.tls.grpc_port`` and forwards each call, bytes untouched, with its metadata
(``authorization`` included) and its remaining deadline, to ``serve.grpc_port`` on the same
host, then relays the answer or the status. It knows no service: unary calls and streams
(reflection) of any method pass through.

Run it next to each Serve proxy, with Serve's gRPC port reachable only locally (firewall or
the node's loopback): ``pmkt serve`` starts it itself when ``serve.tls.grpc_port`` is set;
on a cluster node run ``pmkt serve tls-front``. The extra hop costs about a tenth of the
proxy's throughput here (``make bench-serving``: 198 against 222 GetProfile calls/s).
"""

from __future__ import annotations

import logging
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from cluster.core.errors import ConfigError
from cluster.core.settings import ServeSettings

__all__ = ["TlsFront", "start_tls_front", "read_pem"]

log = logging.getLogger(__name__)
#: Metadata the transport sets itself; forwarding it would be refused or wrong.
_HOP_BY_HOP = frozenset({"user-agent", "grpc-timeout", "te", "content-type", "grpc-accept-encoding",
                         "grpc-encoding", ":authority"})
#: serve.max_message_bytes when the caller gives none.
_DEFAULT_MAX_MESSAGE_BYTES = ServeSettings.model_fields["max_message_bytes"].default


def read_pem(path: Path, what: str, *, private: bool = False) -> bytes:
    """Read a PEM file; a private key must not be readable by group or others."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist", field=f"serve.tls.{what}")
    if private and path.stat().st_mode & 0o077:
        raise ConfigError(f"{what} {path} is readable by others: chmod 600 it", field=f"serve.tls.{what}")
    data = path.read_bytes()
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what} {path} is not PEM", field=f"serve.tls.{what}")
    return data


def _identity(b: bytes) -> bytes:
    return b


class TlsFront(grpc.GenericRpcHandler):
    """Forwards any method to ``upstream`` (a plaintext ``host:port``)."""

    def __init__(self, upstream: str, max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.upstream = upstream
        # Serve's proxy answers at most as much as it accepts (one variable caps both)
        self._channel = grpc.insecure_channel(upstream, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)])

    def close(self) -> None:
        self._channel.close()

    @staticmethod
    def _forwarded(context: grpc.ServicerContext) -> tuple[list[tuple[str, Any]], float | None]:
        metadata = [(k, v) for k, v in context.invocation_metadata() if k not in _HOP_BY_HOP]
        remaining = context.time_remaining()
        return metadata, (remaining if remaining is not None and remaining < 1e6 else None)

    @staticmethod
    def _relay(err: grpc.RpcError, context: grpc.ServicerContext) -> None:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNAVAILABLE
        details = err.details() if hasattr(err, "details") else "upstream unavailable"
        trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
        if trailing:
            context.set_trailing_metadata([(k, v) for k, v in trailing if k not in _HOP_BY_HOP])
        context.abort(code, details or "")

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith("/grpc.reflection."):
            stream = self._channel.stream_stream(method, request_serializer=_identity,
                                                 response_deserializer=_identity)

            def bidi(requests: Any, context: grpc.ServicerContext) -> Any:
                metadata, timeout = self._forwarded(context)
                try:
                    yield from stream(requests, metadata=metadata, timeout=timeout)
                except grpc.RpcError as err:
                    self._relay(err, context)

            return grpc.stream_stream_rpc_method_handler(bidi, request_deserializer=_identity,
                                                         response_serializer=_identity)
        unary = self._channel.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)

        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata, timeout = self._forwarded(context)
            try:
                response, upstream_call = unary.with_call(request, metadata=metadata, timeout=timeout)
            except grpc.RpcError as err:
                self._relay(err, context)
                raise  # unreachable: abort raises
            trailing = upstream_call.trailing_metadata()
            if trailing:
                context.set_trailing_metadata([(k, v) for k, v in trailing if k not in _HOP_BY_HOP])
            return response

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=_identity,
                                                   response_serializer=_identity)


def start_tls_front(*, certfile: Path, keyfile: Path, port: int, upstream: str, host: str = "0.0.0.0",
                    workers: int = 16, max_message_bytes: int = _DEFAULT_MAX_MESSAGE_BYTES
                    ) -> tuple[grpc.Server, TlsFront]:
    """Start the front (returns the running server and its handler; ``server.stop()`` ends it).

    A request message larger than ``max_message_bytes`` (``serve.max_message_bytes``) is refused
    with RESOURCE_EXHAUSTED by grpcio itself, before it is forwarded or held whole.

    Raises:
        ConfigError: a missing, non-PEM or world-readable key or certificate.
        FailedPrecondition: ``port`` is taken.
    """
    from cluster.core.errors import FailedPrecondition

    credentials = grpc.ssl_server_credentials(
        [(read_pem(keyfile, "keyfile", private=True), read_pem(certfile, "certfile"))])
    front = TlsFront(upstream, max_message_bytes)
    # No SO_REUSEPORT (grpcio's default): a second front on a taken port must fail, not share it.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tls-front"),
                         handlers=[front], options=[("grpc.so_reuseport", 0),
                                                    ("grpc.max_receive_message_length", max_message_bytes),
                                                    ("grpc.max_send_message_length", max_message_bytes)])
    try:
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    except RuntimeError as exc:
        bound, reason = 0, str(exc)
    else:
        reason = "address in use"
    if not bound:
        front.close()
        raise FailedPrecondition(f"the gRPC TLS front cannot listen on {host}:{port}: {reason}",
                                 field="serve.tls.grpc_port")
    server.start()
    log.info("gRPC TLS front on %s:%d -> %s", host, port, upstream)
    return server, front
