"""The HTTP API's request and response models: what ``/openapi.json`` says each route takes and answers.

* Answers are the RPC's response message in proto3 JSON (``MessageToDict`` with the proto field
  names and every field without presence printed). Their schemas are generated here from the
  message descriptors (:func:`response_model`), so they say what ``protos/marketing/v1/*.proto``
  says, field by field, and cannot drift from it: a field with presence (a message, an ``optional``
  or ``oneof`` member) is absent when unset, every other field is always there, 64-bit integers
  are strings and non-finite doubles are ``"NaN"``/``"Infinity"``/``"-Infinity"``, as proto3 JSON has them.
* Bodies that are a request message in proto3 JSON (the experiment and discount routes) are
  described the same way (:func:`proto_body`), and judged by protobuf's parser as before.
* The other bodies are the pydantic models below, which FastAPI validates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, NotRequired

from fastapi import Body
from fastapi.responses import Response
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, WrapValidator, field_validator
from typing_extensions import TypedDict  # pydantic reads typing.TypedDict only from Python 3.12

__all__ = [
    "AdCandidateIn", "BudgetChannelIn", "ChannelTargetIn", "ErrorBody", "EventIn", "EventsIn", "OfferIn",
    "OptimizeBudgetIn", "OutcomeIn", "ScoreBatchIn", "as_dict", "proto_body", "proto_json", "response_model",
]


# -- bodies FastAPI validates ---------------------------------------------------------------
class EventIn(BaseModel):
    """One event, in the data contract's vocabulary; values are judged by the intake."""

    model_config = ConfigDict(extra="ignore")
    event_id: str | None = None
    user_id: str | None = None
    ts: str | int | None = None
    action: str | None = None
    item_id: str | int | None = None
    category: str | None = None
    brand: str | None = None
    device_type: str | None = None


class EventsIn(BaseModel):
    events: list[EventIn] = Field(..., description="the batch; each event is accepted or rejected on its own")


class AdCandidateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = ""
    ad_id: str = ""
    campaign_id: str = ""
    channel: str = ""
    # the contract's type is text; a JSON number is taken as its text, as in events.jsonl
    ad_position: str | int = ""
    device_type: str = ""

    @field_validator("ad_position", mode="after")
    @classmethod
    def _position_text(cls, value: str | int) -> str:
        return str(value)


class ScoreBatchIn(BaseModel):
    candidates: list[AdCandidateIn] = Field(..., description="user-ad pairs to score, 1..serve.max_batch")


class OfferIn(BaseModel):
    user_id: str = ""
    campaign_id: str = ""


class BudgetChannelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = ""
    cost_per_placement: float = 0.0
    roi: float = 0.0
    max_placements: float = 0.0
    min_placements: float = 0.0


class OptimizeBudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[BudgetChannelIn] = []
    total_budget: float = 0.0
    objective: str = ""
    integer_placements: bool = False


class ChannelTargetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None
    segment_id: int | None = None


class OutcomeIn(ChannelTargetIn):
    channel: str = ""
    converted: bool = False


# -- model health -----------------------------------------------------------------------------
class ModelStateOut(BaseModel):
    serving: str | None = Field(None, description="the version this replica answers with (segments/v0003); "
                                                  "null before the first one is loaded")
    refused: str | None = Field(None, description="why the registry's current version is not the one served "
                                                  "(it fails verification: docs/security.md), or null")


class ModelHealthOut(BaseModel):
    models: dict[str, ModelStateOut] = Field(..., description="model family -> its state in this replica")


# -- errors ---------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(..., description="invalid_argument, not_found, failed_precondition, unauthenticated, "
                                        "permission_denied, resource_exhausted, unavailable or internal")
    message: str
    field: str | None = Field(None, description="the request field at fault (always there for invalid_argument)")


class ErrorBody(BaseModel):
    """Every error answer (cluster/core/errors.py; ray_apps/serve/errors.py)."""

    error: ErrorDetail


# -- proto3 JSON ----------------------------------------------------------------------------
_FD = FieldDescriptor
_INT32 = {_FD.TYPE_INT32, _FD.TYPE_UINT32, _FD.TYPE_SINT32, _FD.TYPE_FIXED32, _FD.TYPE_SFIXED32}
_INT64 = {_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64}
#: Well-known messages whose proto3 JSON is a string.
_STRING_MESSAGES = {"google.protobuf.FieldMask", "google.protobuf.Timestamp", "google.protobuf.Duration"}
_Double = float | Literal["NaN", "Infinity", "-Infinity"]
_FORBID = ConfigDict(extra="forbid")
_models: dict[tuple[str, bool], Any] = {}


def response_model(descriptor: Descriptor) -> Any:
    """The message as an answer: a TypedDict of its proto3 JSON, fields with presence not required."""
    return _message_model(descriptor, answer=True)


def _message_model(descriptor: Descriptor, *, answer: bool) -> Any:
    key = (descriptor.full_name, answer)
    if key not in _models:
        fields: dict[str, Any] = {}
        for f in descriptor.fields:
            kind = _field_type(f, answer=answer)
            # an answer always prints a field without presence; a request may leave any field out
            fields[f.name] = kind if answer and not f.has_presence else NotRequired[kind]
        model = TypedDict(descriptor.name, fields)  # type: ignore[misc]
        model.__pydantic_config__ = _FORBID  # type: ignore[attr-defined]
        model.__doc__ = (f"`{descriptor.full_name}` ({descriptor.file.name}) in proto3 JSON with the proto field "
                         "names; the .proto documents every field")
        _models[key] = model
    return _models[key]


def _field_type(f: FieldDescriptor, *, answer: bool) -> Any:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        return dict[str, _value_type(f.message_type.fields_by_name["value"], answer=answer)]  # type: ignore[misc]
    kind = _value_type(f, answer=answer)
    return list[kind] if f.is_repeated else kind  # type: ignore[valid-type]


def _value_type(f: FieldDescriptor, *, answer: bool) -> Any:
    if f.message_type is not None:
        if f.message_type.full_name in _STRING_MESSAGES:
            return str
        if f.message_type.full_name.startswith("google.protobuf."):
            raise TypeError(f"{f.full_name}: no JSON model for {f.message_type.full_name}")
        return _message_model(f.message_type, answer=answer)
    if f.type in _INT64:
        # proto3 JSON prints 64-bit integers as strings; its parser takes either
        return str if answer else int | str
    if f.type in _INT32:
        return int
    if f.type in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        return _Double
    if f.type == _FD.TYPE_BOOL:
        return bool
    if f.type in (_FD.TYPE_STRING, _FD.TYPE_BYTES):  # bytes: base64
        return str
    if f.type == _FD.TYPE_ENUM:
        return Literal[tuple(v.name for v in f.enum_type.values)]  # type: ignore[misc]
    raise TypeError(f"{f.full_name}: no JSON model for field type {f.type}")


def _raw(value: Any, _handler: Callable[[Any], Any]) -> Any:
    return value  # the JSON as sent: protobuf's parser judges it (ray_apps.evaluation.service.parse_request)


def proto_body(descriptor: Descriptor) -> Any:
    """The body annotation of a route whose body is the request message in proto3 JSON: the schema
    is the message's, and the handler receives the JSON as sent, so protobuf's parser judges it as
    it does on gRPC (an unknown or mistyped field is 422 naming it, camelCase names are taken)."""
    return Annotated[_message_model(descriptor, answer=False), WrapValidator(_raw), Body()]


_JSON = TypeAdapter(dict[str, Any])


def as_dict(message: Any) -> dict[str, Any]:
    """The message in proto3 JSON with the proto field names, every field without presence printed."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def proto_json(message: Any) -> Response:
    """The HTTP answer of a response message: :func:`as_dict` serialised as FastAPI serialises a
    returned dict (so the bytes are what the routes always answered); the route's declared model
    documents it."""
    return Response(_JSON.dump_json(as_dict(message)), media_type="application/json")
