"""The HTTP API's gate: the key, its scope and the body's size, judged before any body byte is read.

A FastAPI dependency runs after FastAPI has read and parsed the whole body, so a keyless client
could make every replica buffer and parse as much as it liked. :class:`ApiGuard` is a plain ASGI
middleware in front of the app instead. From the request line and headers alone it answers

* 401 for a missing or unknown key (every path but the open ones: the OpenAPI pages),
* 403 for a key without the scope of the matched route (declared in
  :data:`ray_apps.serve.services.SERVICES`, as for gRPC),
* 413 for a ``Content-Length`` above ``serve.max_body_bytes``,

in the platform's error body (``{"error": {"code", "message"}}``), without awaiting ``receive``.
A body without ``Content-Length`` (chunked) is counted while the app reads it: at the first
chunk past the cap the app's reading stops and the answer is 413.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match

from cluster.core.errors import PlatformError, ResourceExhausted
from ray_apps.serve.auth import ApiKeys, bearer
from ray_apps.serve.drain import DrainGate
from ray_apps.serve.errors import error_body

__all__ = ["ApiGuard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TooLarge(ResourceExhausted):
    """Raised from ``receive`` to stop the app reading a body past the cap."""


class ApiGuard:
    """ASGI middleware: key, scope and body size before the body.

    Args:
        app: The app to guard (the FastAPI app, whose ``router.routes`` are matched).
        keys: The clients' keys; with none, only the size is checked.
        routes: The app's routes, each with the scope it needs (a route not listed needs a key
            but no scope: the guards of empty ids, unknown paths).
        open_paths: Paths answered without a key (the OpenAPI document and pages).
        max_body_bytes: The largest body accepted.
        gate: The replica's drain gate (:class:`~ray_apps.serve.drain.DrainGate`): once it is
            closed every request is answered 503 before anything else; admitted requests are
            counted until their answer is sent.
    """

    def __init__(self, app: ASGIApp, *, keys: ApiKeys, routes: Sequence[tuple[BaseRoute, str]], open_paths: frozenset[str],
                 max_body_bytes: int, gate: DrainGate | None = None) -> None:
        self.app = app
        self.gate = gate
        self.keys = keys
        self.routes = routes
        self.open_paths = open_paths
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if self.gate is not None:  # 503 once the replica drains (ray_apps.serve.drain)
                self.gate.admit()
        except PlatformError as err:
            await _answer(send, err, close=True)
            return
        try:
            try:
                self._admit(scope)
            except PlatformError as err:
                await _answer(send, err, close=_may_have_body(scope))
                return
            if _content_length(scope) is not None:
                # a declared length within the cap: the server delivers no more than it declared
                await self.app(scope, receive, send)
                return
            await self._counted(scope, receive, send)
        finally:
            if self.gate is not None:
                self.gate.done()

    def _admit(self, scope: Scope) -> None:
        """Raise the refusal the headers alone justify (401, 403, 413), else return."""
        if scope["path"] not in self.open_paths:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
            self.keys.authorize(bearer(headers), self._scope_of(scope) if self.keys.enabled else None)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            raise ResourceExhausted(f"request body of {declared} bytes is larger than serve.max_body_bytes "
                                    f"({self.max_body_bytes})")

    def _scope_of(self, scope: Scope) -> str | None:
        for route, needed in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return needed
        return None

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app on a body of unknown length, refusing it at the first chunk past the cap."""
        received = 0
        over: _TooLarge | None = None
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over is not None:
                raise over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over = _TooLarge(f"request body is larger than serve.max_body_bytes ({self.max_body_bytes})")
                    raise over
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over is not None and not started:
                return  # whatever the app answers to its interrupted read, the answer is 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            pass
        if over is not None and not started:
            await _answer(send, over, close=True)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses it before the app sees it; else counted
    return None


def _may_have_body(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope["headers"]) or bool(_content_length(scope))


async def _answer(send: Send, err: PlatformError, *, close: bool) -> None:
    """Send ``err`` as the platform's JSON error body; ``close``: the connection ends after it, as
    the body left unread on it cannot be skipped cheaply (the server then stops reading it)."""
    body = error_body(err)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if err.http_status_code() == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.http_status_code(), "headers": headers})
    await send({"type": "http.response.body", "body": body})
