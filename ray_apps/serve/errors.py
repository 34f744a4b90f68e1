"""The one place platform errors become gRPC statuses and HTTP responses."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cluster.core.errors import PlatformError
from ray_apps.serve.metrics import record_request

__all__ = ["grpc_method", "install_http_error_handlers"]

log = logging.getLogger(__name__)
T = TypeVar("T")
#: gRPC methods callable without an API key (health probes do not send one).
_OPEN_METHODS = frozenset({"Check"})


def grpc_method(response_type: Callable[[], T]) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Wrap a Serve gRPC method so a PlatformError sets the status code and details.

    Anything else is logged with its stack and answered ``INTERNAL`` with a generic
    message: the client never sees a stack trace or ``UNKNOWN``.

    When the deployment has API keys (``self._auth``, :class:`ray_apps.serve.auth.ApiKeys`),
    the call's ``authorization`` metadata is checked first; the health check is exempt.
    """

    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def method(self: Any, request: Any, grpc_context: Any = None) -> T:
            import grpc

            started = time.perf_counter()
            code = "OK"
            try:
                auth = getattr(self, "_auth", None)
                if auth is not None and auth.enabled and fn.__name__ not in _OPEN_METHODS:
                    from ray_apps.serve.auth import bearer

                    auth.check(bearer(grpc_context.invocation_metadata() if grpc_context is not None else None))
                return await fn(self, request)
            except PlatformError as err:
                code = err.grpc_status_code().name
                if grpc_context is not None:
                    grpc_context.set_code(err.grpc_status_code())
                    grpc_context.set_details(err.message)
                return response_type()
            except Exception:  # noqa: BLE001 - the boundary: log it, answer INTERNAL
                code = "INTERNAL"
                log.exception("%s failed", fn.__name__)
                if grpc_context is not None:
                    grpc_context.set_code(grpc.StatusCode.INTERNAL)
                    grpc_context.set_details("internal error; the server log has the details")
                return response_type()
            finally:
                record_request(fn.__name__, "grpc", code, time.perf_counter() - started)

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
            content={"error": {"code": "internal", "message": "internal error; the server log has the details"}},
        )
