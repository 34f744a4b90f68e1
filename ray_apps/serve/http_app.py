"""The HTTP transport: a FastAPI app built from :data:`ray_apps.serve.services.SERVICES` over one replica.

Each Serve replica builds its own app around itself (``MarketingApi.__serve_build_asgi_app__``);
a test builds one around an :class:`~ray_apps.serve.api.ApiReplica` with local back-ends, no Ray.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime,
# and a proto body's annotation is a local of the function that makes its endpoint.
import functools
from collections.abc import Callable
from typing import Any

from fastapi import Body, Depends, FastAPI, Header
from fastapi.responses import Response
from starlette.convertors import Convertor, register_url_convertor

from cluster.core.errors import InvalidArgument, NotFound
from ray_apps.evaluation.service import parse_request
from ray_apps.serve.auth import ApiKeys, bearer
from ray_apps.serve.errors import install_http_error_handlers
from ray_apps.serve.http_models import ErrorBody, proto_body, proto_json, response_model
from ray_apps.serve.services import SERVICES, USER_PATH, HttpRoute, ServiceSpec

__all__ = ["DESCRIPTION", "build_http_app"]

DESCRIPTION = (
    "Segments, 360° profiles, real-time events, CTR scores, recommendations, churn risk, offers, budget "
    "allocation, channel choice, experiment statistics, goal gaps and time-slot pricing. Every answer is the "
    "gRPC response message of protos/marketing/v1 in JSON with the proto field names. Errors: 404 unknown "
    "user, 409 no model yet (or a precondition such as consent), 422 invalid argument (the body names the "
    "field), 401 missing or unknown API key (when keys are configured: send `Authorization: Bearer <key>`)."
)
_UNAUTHENTICATED = "missing or unknown API key (when keys are configured)"


class _Anything(Convertor[str]):
    """A path parameter of any text. Starlette's ``path`` stops at a line break, so an id holding
    one matched no route (a bare 404) instead of being refused as a bad id."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anything", _Anything())


def build_http_app(replica: Any, keys: ApiKeys) -> FastAPI:
    """The API's FastAPI app: every route of :data:`SERVICES`, answered by ``replica``'s handlers.

    Args:
        replica: The object whose methods the routes' ``handler`` names
            (:class:`ray_apps.serve.api.ApiReplica`).
        keys: The clients' API keys; every route needs one of them when there are any.
    """

    def require_api_key(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        keys.check(bearer({"authorization": authorization} if authorization else None))

    app = FastAPI(dependencies=[Depends(require_api_key)], title="Precision-marketing platform API",
                  version="v1", description=DESCRIPTION)
    install_http_error_handlers(app)
    user_routes = [r for s in SERVICES for r in s.http if r.path.startswith(USER_PATH)]
    for spec in SERVICES:
        for route in spec.http:
            _add_route(app, replica, spec, route)
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
    return app


def _add_route(app: FastAPI, replica: Any, spec: ServiceSpec, route: HttpRoute) -> None:
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
        responses={**errors, 401: {"description": _UNAUTHENTICATED, "model": ErrorBody}},
    )


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
