"""The HTTP API's OpenAPI document describes every route's body and answer, and requests drawn
from it get a defined answer: never a 500, a 422 that names the field, a 200 that the document
describes. The app runs in-process over local back-ends (conftest.py), without Ray."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_apps.serve.services import SERVICES

OPERATIONS = [(r.verb, re.sub(r":\w+}", "}", r.path)) for s in SERVICES for r in s.http] + [("GET", "/v1/models/health")]
ERROR_CODES = {"invalid_argument", "not_found", "failed_precondition", "unauthenticated", "unavailable"}


@pytest.fixture(scope="module")
def client(http_app):
    from fastapi.testclient import TestClient

    with TestClient(http_app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def openapi(http_app) -> dict[str, Any]:
    return http_app.openapi()


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _names_fields(schema: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether the schema says which fields the JSON has (not just "an object")."""
    return bool(_resolve(schema, doc).get("properties"))


def test_every_operation_declares_its_body_and_its_answer(openapi):
    found, empty = [], []
    for path, operations in openapi["paths"].items():
        for verb, op in operations.items():
            found.append((verb.upper(), path))
            answer = op["responses"]["200"]["content"]["application/json"]["schema"]
            if not _names_fields(answer, openapi):
                empty.append(f"{verb.upper()} {path}: the 200 answer")
            body = op.get("requestBody")
            if body is not None and not _names_fields(body["content"]["application/json"]["schema"], openapi):
                empty.append(f"{verb.upper()} {path}: the request body")
    assert empty == []
    assert sorted(found) == sorted(OPERATIONS)
    # one schema per model, named after it (a clash would show as a module-qualified name)
    assert all(name.isidentifier() for name in openapi["components"]["schemas"])


def test_answers_are_the_messages_as_proto3_json(openapi):
    schemas = openapi["components"]["schemas"]
    segment = schemas["GetSegmentResponse"]
    # rfm has presence (unset for a user without a paid order); the scalars are always printed
    assert "rfm" in segment["properties"] and "rfm" not in segment["required"]
    assert {"user_id", "segment_id", "model_version"} <= set(segment["required"])
    assert segment["additionalProperties"] is False
    # 64-bit integers are strings in proto3 JSON
    assert schemas["SampleSizeResponse"]["properties"]["control_trials"]["type"] == "string"
    assert schemas["Profile"]["properties"]["counters"]["additionalProperties"] == {"type": "string"}


GOOD = [
    ("GET", "/v1/users/u1/segment", None), ("GET", "/v1/users/u2/segment", None),
    ("GET", "/v1/users/u1/profile", None), ("GET", "/v1/users/u2/profile?fields=segment,consent", None),
    ("POST", "/v1/events", {"events": [{"event_id": "e1", "user_id": "u1", "ts": "2026-06-30 10:00:00",
                                        "action": "view", "category": "手机"}, {"event_id": "e2"}]}),
    ("POST", "/v1/offers", {"user_id": "u1", "campaign_id": "default"}),
    ("POST", "/v1/budget/optimize", {"channels": [
        {"name": "a", "cost_per_placement": 2, "roi": 3, "max_placements": 10},
        {"name": "b", "cost_per_placement": 1, "roi": 2, "max_placements": 10, "min_placements": 1}],
        "total_budget": 15}),
    ("POST", "/v1/channels/choose", {"user_id": "u1"}),
    ("POST", "/v1/channels/outcome", {"segment_id": 0, "channel": "sms", "converted": True}),
    ("POST", "/v1/experiments/conversions", {"control": {"name": "control", "conversions": 200, "trials": 10000},
                                             "variants": [{"name": "red", "conversions": 260, "trials": 10000}]}),
    ("POST", "/v1/experiments/means", {"control": [3.0, 5.0, 4.0, 6.0, 5.5], "variant": [6.0, 7.5, 6.5, 8.0, 7.0]}),
    ("POST", "/v1/experiments/sequential", {"looks": [{"control_conversions": 50 * k, "control_trials": 1000 * k,
                                                       "variant_conversions": 65 * k, "variant_trials": 1000 * k}
                                                      for k in range(1, 4)]}),
    ("POST", "/v1/experiments/sample-size", {"baseline_rate": 0.05, "variant_rate": 0.06, "control_trials": "3000"}),
    ("POST", "/v1/experiments/segments", {"groups": [{"name": "a", "values": [1, 2, 3, 2]},
                                                     {"name": "b", "values": [5, 6, 7, 6]}]}),
    ("POST", "/v1/experiments/goal-gap", {"campaign_id": "c1", "start_date": "2026-06-01", "end_date": "2026-06-30",
                                          "as_of": "2026-06-03", "targets": {"conversions": 100},
                                          "daily": [{"date": "2026-06-01", "conversions": 3},
                                                    {"date": "2026-06-02", "conversions": 4}]}),
]


@pytest.mark.parametrize("verb, url, body", GOOD, ids=[f"{v} {u}" for v, u, _ in GOOD])
def test_answers_are_what_the_document_says(client, openapi, verb, url, body):
    from jsonschema import Draft202012Validator

    resp = client.request(verb, url, json=body)
    assert resp.status_code == 200, resp.text
    (path,) = [p for v, p in OPERATIONS if v == verb and re.fullmatch(re.sub(r"{\w+}", ".+", p), url.split("?")[0])]
    answer = openapi["paths"][path][verb.lower()]["responses"]["200"]["content"]["application/json"]["schema"]
    Draft202012Validator({**answer, "components": openapi["components"]}).validate(resp.json())


# -- fuzz -----------------------------------------------------------------------------------
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                  st.text(max_size=8), st.lists(st.integers(), max_size=2),
                  st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _values(schema: dict[str, Any], doc: dict[str, Any], *, junk: bool = True) -> st.SearchStrategy:
    """JSON values of ``schema``; with ``junk``, about one value in eight is of another type and an
    object sometimes carries an unknown key, so the validation paths are taken too."""
    valid = _valid(_resolve(schema, doc), doc, junk)
    if not junk:
        return valid
    return st.integers(0, 7).flatmap(lambda k: _JUNK if k == 0 else valid)


def _valid(schema: dict[str, Any], doc: dict[str, Any], junk: bool) -> st.SearchStrategy:
    if "anyOf" in schema:
        return st.one_of([_values(s, doc, junk=junk) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        extra = schema.get("additionalProperties")
        if not props and isinstance(extra, dict):
            return st.dictionaries(st.text(max_size=8), _values(extra, doc, junk=junk), max_size=3)
        fixed = st.fixed_dictionaries({k: _values(v, doc, junk=junk) for k, v in props.items() if k in required},
                                      optional={k: _values(v, doc, junk=junk) for k, v in props.items()
                                                if k not in required})
        if not junk:
            return fixed
        unknown = st.dictionaries(st.sampled_from(["bogus", "userId", "x"]), _JUNK, max_size=1)
        return st.tuples(fixed, st.integers(0, 9), unknown).map(lambda t: {**t[0], **t[2]} if t[1] == 0 else t[0])
    if kind == "array":
        return st.lists(_values(schema.get("items", {}), doc, junk=junk), max_size=4)
    if kind == "string":
        return st.text(max_size=12) | st.sampled_from(["u1", "u2", "default", "sms", "食品", "2026-07-01"])
    if kind == "integer":
        return st.integers(-3, 200) | st.integers(-2**63, 2**64)
    if kind == "number":
        return st.floats(-1e6, 1e6) | st.integers(-3, 1000)
    if kind == "boolean":
        return st.booleans()
    return _JUNK


def _query_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_query_value(v) for v in value]
    return json.dumps(value) if not isinstance(value, str) else value


@st.composite
def _requests(draw, op: dict[str, Any], path: str, doc: dict[str, Any]) -> dict[str, Any]:
    url, params = path, []
    for p in op.get("parameters", ()):
        if p["in"] not in ("path", "query") or (p["in"] == "query" and draw(st.booleans())):
            continue
        value = draw(_values(p["schema"], doc))
        if p["in"] == "path":
            url = url.replace("{" + p["name"] + "}", quote(str(value), safe=""))
        else:
            value = _query_value(value)
            params += [(p["name"], v) for v in value] if isinstance(value, list) else [(p["name"], value)]
    request: dict[str, Any] = {"url": url, "params": params}
    if "requestBody" in op:
        request["json"] = draw(_values(op["requestBody"]["content"]["application/json"]["schema"], doc))
    return request


@pytest.mark.parametrize("verb, path", OPERATIONS, ids=[f"{v} {p}" for v, p in OPERATIONS])
@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_requests_get_a_defined_answer(client, verb, path, data):
    from jsonschema import Draft202012Validator

    openapi = client.app.openapi()
    op = openapi["paths"][path][verb.lower()]
    request = data.draw(_requests(op, path, openapi))
    resp = client.request(verb, **request)
    assert resp.status_code < 500, (request, resp.text)
    assert str(resp.status_code) in op["responses"], (request, resp.status_code, resp.text)
    body = resp.json()
    if resp.status_code == 200:
        answer = op["responses"]["200"]["content"]["application/json"]["schema"]
        Draft202012Validator({**answer, "components": openapi["components"]}).validate(body)
        return
    error = body["error"]
    assert error["code"] in ERROR_CODES and error["message"], (request, body)
    if resp.status_code == 422:
        assert error["code"] == "invalid_argument" and error.get("field"), (request, body)


def test_model_health_names_the_served_version_of_each_family(client):
    models = client.get("/v1/models/health").json()["models"]
    assert {"segments", "ctr", "recs", "churn", "demand"} <= set(models)
    assert models["segments"]["serving"].startswith("segments/v") and models["segments"]["refused"] is None
