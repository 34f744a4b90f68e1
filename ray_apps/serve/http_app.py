"""The HTTP transport: a FastAPI app built from :data:`ray_apps.serve.services.SERVICES` over one replica.

Each Serve replica builds its own app around itself (``MarketingApi.__serve_build_asgi_app__``);
a test builds one around an :class:`~ray_apps.serve.api.ApiReplica` with local back-ends, no Ray.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime,
# and a proto body's annotation is a local of the function that makes its endpoint.
import functools
from collections.abc import Callable
from typing import Any

from fastapi import Body, FastAPI
from fastapi.responses import Response
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import BaseRoute

from cluster.core.errors import InvalidArgument, NotFound
from cluster.core.settings import ServeSettings
from ray_apps.evaluation.service import parse_request
from ray_apps.serve.auth import ApiKeys
from ray_apps.serve.errors import install_http_error_handlers
from ray_apps.serve.drain import DrainGate
from ray_apps.serve.http_guard import ApiGuard
from ray_apps.serve.http_models import ErrorBody, ModelHealthOut, proto_body, proto_json, response_model
from ray_apps.serve.services import SERVICES, USER_PATH, HttpRoute, ServiceSpec

__all__ = ["DESCRIPTION", "build_http_app"]

DESCRIPTION = (
    "Segments, 360° profiles, real-time events, CTR scores, recommendations, churn risk, offers, budget "
    "allocation, channel choice, experiment statistics, goal gaps and time-slot pricing. Every answer is the "
    "gRPC response message of protos/marketing/v1 in JSON with the proto field names. Errors: 404 unknown "
    "user, 409 no model yet (or a precondition such as consent), 422 invalid argument (the body names the "
    "field), 401 missing or unknown API key (when keys are configured: send `Authorization: Bearer <key>`), "
    "403 a key without the route's scope (read, events, decide; admin has all), 413 a body larger than "
    "serve.max_body_bytes. 401, 403 and 413 are answered from the headers, before the body is read."
)
_UNAUTHENTICATED = "missing or unknown API key (when keys are configured)"
_TOO_LARGE = "request body larger than serve.max_body_bytes (judged from Content-Length before reading it)"
#: serve.max_body_bytes when the caller gives none (a test's app).
_DEFAULT_MAX_BODY_BYTES = ServeSettings.model_fields["max_body_bytes"].default


class _Anything(Convertor[str]):
    """A path parameter of any text. Starlette's ``path`` stops at a line break, so an id holding
    one matched no route (a bare 404) instead of being refused as a bad id."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anything", _Anything())


def build_http_app(replica: Any, keys: ApiKeys, *, max_body_bytes: int = _DEFAULT_MAX_BODY_BYTES,
                   gate: DrainGate | None = None) -> FastAPI:
    """The API's FastAPI app: every route of :data:`SERVICES`, answered by ``replica``'s handlers,
    behind :class:`~ray_apps.serve.http_guard.ApiGuard` (key, scope and body size before the body).

    Args:
        replica: The object whose methods the routes' ``handler`` names
            (:class:`ray_apps.serve.api.ApiReplica`).
        keys: The clients' API keys; every route needs one of them when there are any, with the
            scope its RPC declares.
        max_body_bytes: The largest request body (``serve.max_body_bytes``).
        gate: The replica's drain gate: once it closes, every call is answered 503.
    """
    app = FastAPI(title="Precision-marketing platform API", version="v1", description=DESCRIPTION)
    scopes: list[tuple[BaseRoute, str]] = []  # routes define __eq__, so they are not dict keys
    user_routes = [r for s in SERVICES for r in s.http if r.path.startswith(USER_PATH)]
    for spec in SERVICES:
        for route in spec.http:
            scopes.append((_add_route(app, replica, spec, route), spec.scope_for(route.rpc)))
            if route is user_routes[0]:
                # "/v1/users//profile": the contract says an empty id is an invalid argument on both
                # transports, not a bare 404. The guards stand after the first user route, where
                # they always have (that route answers an empty id itself, as its RPC does).
                for r in user_routes:
                    app.add_api_route(r.path.replace(USER_PATH, "/v1/users//"), _empty_user_id, methods=[r.verb],
                                      include_in_schema=False)
        if spec.service == "ExperimentService":
            app.add_api_route("/v1/experiments/{name}", _unknown_experiment(spec), methods=["POST"],
                              include_in_schema=False)
    app.add_api_route(
        "/v1/models/health", lambda: {"models": replica.model_health()}, methods=["GET"], name="model_health",
        summary="The version of each model family this replica serves, and why the registry's current one is "
                "refused when it fails verification (any API key; no scope)",
        response_model=ModelHealthOut, responses={401: {"description": _UNAUTHENTICATED, "model": ErrorBody}})
    # Added before the error handlers' counting middleware, so that one (outside) counts refusals too.
    open_paths = frozenset(p for p in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
                           if p)
    app.add_middleware(ApiGuard, keys=keys, routes=tuple(scopes), open_paths=open_paths, max_body_bytes=max_body_bytes,
                       gate=gate)
    install_http_error_handlers(app)
    return app


def _add_route(app: FastAPI, replica: Any, spec: ServiceSpec, route: HttpRoute) -> BaseRoute:
    """Add ``route`` to ``app``; returns the added route."""
    handler = getattr(replica, route.handler)
    if route.proto_body:
        endpoint = _proto_body_endpoint(handler, spec.request_type(route.rpc))
    else:
        @functools.wraps(handler)
        def endpoint(*args: Any, **kwargs: Any) -> Response:
            return proto_json(handler(*args, **kwargs))

    errors = {status: {"description": text, "model": ErrorBody} for status, text in route.errors.items()}
    app.add_api_route(
        route.path, endpoint, methods=[route.verb], name=route.handler, summary=route.summary,
        response_model=response_model(spec.response_type(route.rpc).DESCRIPTOR),
        responses={
            **errors,
            401: {"description": _UNAUTHENTICATED, "model": ErrorBody},
            403: {"description": f"the API key lacks scope {spec.scope_for(route.rpc)!r}", "model": ErrorBody},
            413: {"description": _TOO_LARGE, "model": ErrorBody},
        },
    )
    return app.router.routes[-1]


def _proto_body_endpoint(handler: Callable[[Any], Any], request_type: Any) -> Callable[..., Response]:
    body_type = proto_body(request_type.DESCRIPTOR)

    def endpoint(body: body_type) -> Response:  # type: ignore[valid-type]
        return proto_json(handler(parse_request(body, request_type)))

    return endpoint


def _empty_user_id() -> None:
    raise InvalidArgument("user_id must not be empty", field="user_id")


def _unknown_experiment(spec: ServiceSpec) -> Callable[..., None]:
    names = ", ".join(r.path.rsplit("/", 1)[1] for r in spec.http)

    def unknown_experiment(name: str, body: dict = Body(...)) -> None:
        raise NotFound(f"no experiment computation {name!r}; one of {names}", field="name")

    return unknown_experiment
