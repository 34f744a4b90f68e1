"""The one place platform errors become gRPC statuses and HTTP responses."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cluster.core.errors import INTERNAL_MESSAGE, PlatformError, ResourceExhausted
from ray_apps.serve.auth import bearer
from ray_apps.serve.metrics import record_request
from ray_apps.serve.services import OPEN_RPCS, RPC_SCOPES

__all__ = ["error_body", "grpc_method", "install_http_error_handlers"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def error_body(err: PlatformError) -> bytes:
    """The HTTP error body of ``err``, as every handler here answers it: ``{"error": {...}}``."""
    return json.dumps({"error": err.to_dict()}, ensure_ascii=False, separators=(",", ":")).encode()


def grpc_method(response_type: Callable[[], T]) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Wrap a Serve gRPC method so a PlatformError sets the status code and details.

    Anything else is logged with its stack and answered ``INTERNAL`` with a generic
    message: the client never sees a stack trace or ``UNKNOWN``.

    When the deployment has API keys (``self._auth``, :class:`ray_apps.serve.auth.ApiKeys`),
    the call's ``authorization`` metadata and the scope the RPC declares in
    :data:`~ray_apps.serve.services.SERVICES` are checked first; the health check is exempt.
    A request message larger than ``self._max_message_bytes`` is RESOURCE_EXHAUSTED: Serve's
    proxy already refuses bigger ones when ``RAY_SERVE_GRPC_MAX_MESSAGE_SIZE`` reached it
    (:func:`ray_apps.serve.launcher.start_serving`), this holds where it did not.

    Raises:
        KeyError: at decoration, for a method that is neither open nor given a scope.
    """

    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        name = fn.__name__
        is_open = name in OPEN_RPCS
        scope = None if is_open else RPC_SCOPES[name]  # an RPC without a declared scope fails at import

        @functools.wraps(fn)
        async def method(self: Any, request: Any, grpc_context: Any = None) -> T:
            started = time.perf_counter()
            code = "OK"
            gate = getattr(self, "_gate", None)
            admitted = False
            try:
                if gate is not None:  # refused UNAVAILABLE once the replica drains (ray_apps.serve.drain)
                    gate.admit()
                    admitted = True
                auth = getattr(self, "_auth", None)
                if auth is not None and auth.enabled and not is_open:
                    auth.authorize(bearer(grpc_context.invocation_metadata() if grpc_context is not None else None),
                                   scope)
                cap = getattr(self, "_max_message_bytes", None)
                if cap is not None and request.ByteSize() > cap:
                    raise ResourceExhausted(f"request message of {request.ByteSize()} bytes is larger than "
                                            f"serve.max_message_bytes ({cap})")
                return await fn(self, request)
            except PlatformError as err:
                code = err.grpc_status_code().name
                if grpc_context is not None:
                    grpc_context.set_code(err.grpc_status_code())
                    grpc_context.set_details(err.message)
                return response_type()
            except Exception:  # noqa: BLE001 - the boundary: log it, answer INTERNAL
                code = "INTERNAL"
                log.exception("%s failed", name)
                if grpc_context is not None:
                    grpc_context.set_code(grpc.StatusCode.INTERNAL)
                    grpc_context.set_details(INTERNAL_MESSAGE)
                return response_type()
            finally:
                if admitted:
                    gate.done()
                record_request(name, "grpc", code, time.perf_counter() - started)

        # Serve passes ``grpc_context`` only to methods whose signature names it;
        # inspect.signature would otherwise follow __wrapped__ to the original.
        del method.__wrapped__
        return method

    return wrap


def install_http_error_handlers(app: FastAPI) -> None:
    """Map PlatformError and request validation errors to JSON bodies with a status, and
    count every answered request (by route template, not raw path: user ids stay out of the
    metric labels)."""

    @app.middleware("http")
    async def _count(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            # the template without convertors: "{user_id:anything}" is labelled "{user_id}"
            method = f"{request.method} {getattr(route, 'path_format', 'unmatched')}"
            record_request(method, "http", str(status), time.perf_counter() - started)

    @app.exception_handler(PlatformError)
    async def _platform_error(_request: Request, err: PlatformError) -> JSONResponse:
        return JSONResponse(status_code=err.http_status_code(), content={"error": err.to_dict()})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        loc = first.get("loc", ())
        # a body that is missing, not JSON or not an object is the body's fault (not a position in it)
        where = () if first.get("type") == "json_invalid" else loc
        field = ".".join(str(p) for p in where if p not in ("body", "query", "path")) or (
            "body" if loc[:1] == ("body",) else "request")
        return JSONResponse(
            status_code=422,
            content={"error": {"code": "invalid_argument", "message": f"{field}: {first.get('msg')}", "field": field}},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, err: Exception) -> JSONResponse:
        log.error("unhandled error in HTTP handler", exc_info=err)
        return JSONResponse(
            status_code=500,
            content={"error": {"code": "internal", "message": INTERNAL_MESSAGE}},
        )
