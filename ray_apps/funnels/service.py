"""FunnelService: :func:`ray_apps.funnels.funnel.funnel_stats` on request messages.

One function per RPC, from the request message to the response message. The HTTP route
``GET /v1/funnels?funnel=default&by=device&from=YYYY-MM-DD&to=YYYY-MM-DD`` turns its query into
the same request message (:func:`http_query_to_request`), so both transports answer alike and
errors name the request message's fields (``group_by``, ``from_date``, ``to_date``) whichever
transport was used; the message also names the query parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from cluster.core.errors import InvalidArgument
from protos.marketing.v1 import funnel_pb2 as pb
from ray_apps.funnels.funnel import (
    GROUP_BY,
    FunnelTable,
    GroupFunnel,
    SegmentOf,
    funnel_stats,
)

__all__ = ["DEFAULT_FUNNEL", "QUERY_PARAMS", "check_request", "get_funnel", "http_query_to_request"]

#: The funnel answered when the request names none.
DEFAULT_FUNNEL = "default"
#: HTTP query parameter -> GetFunnelRequest field.
QUERY_PARAMS = {"funnel": "funnel", "by": "group_by", "from": "from_date", "to": "to_date"}
_PARAM_OF = {field: param for param, field in QUERY_PARAMS.items()}
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _label(field: str) -> str:
    """How a message names a field: ``from_date (?from=)``."""
    return f"{field} (?{_PARAM_OF[field]}=)"


def _day(value: str, field: str) -> date | None:
    if not value:
        return None
    try:
        if not _DATE_RE.fullmatch(value):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{_label(field)} must be a day as YYYY-MM-DD, got {value[:40]!r}",
                              field=field) from None


def check_request(request: pb.GetFunnelRequest) -> tuple[str, str, date | None, date | None]:
    """The request's funnel name, grouping and date range, checked (the table is not needed).

    Raises:
        InvalidArgument: naming ``funnel``, ``group_by``, ``from_date`` or ``to_date``.
    """
    funnel = request.funnel or DEFAULT_FUNNEL
    if not _NAME_RE.fullmatch(funnel):
        raise InvalidArgument(f"{_label('funnel')} must be 1 to 64 letters, digits, '_' or '-'", field="funnel")
    if request.group_by not in GROUP_BY:
        raise InvalidArgument(f"{_label('group_by')} must be empty or one of {', '.join(GROUP_BY[1:])}, "
                              f"got {request.group_by[:40]!r}", field="group_by")
    start, end = _day(request.from_date, "from_date"), _day(request.to_date, "to_date")
    if start and end and start > end:
        raise InvalidArgument(f"{_label('from_date')} {start} is after {_label('to_date')} {end}", field="from_date")
    return funnel, request.group_by, start, end


def _group(g: GroupFunnel) -> pb.FunnelGroup:
    steps = []
    for s in g.steps:
        optional = {"conversion_from_previous": s.conversion_from_previous,
                    "conversion_from_first": s.conversion_from_first, "drop_off": s.drop_off,
                    "median_seconds_from_previous": s.median_s_from_previous}
        steps.append(pb.FunnelStep(step=s.step, action=s.action, users=s.users, dropped=s.dropped,
                                   **{k: v for k, v in optional.items() if v is not None}))
    return pb.FunnelGroup(name=g.group, users=g.users, steps=steps)


def get_funnel(request: pb.GetFunnelRequest, table: FunnelTable,
               segment_of: SegmentOf | None = None) -> pb.FunnelResponse:
    """GetFunnel: the funnel's step statistics over all users of the range and per group.

    Args:
        request: The request message.
        table: The newest funnel table (:func:`ray_apps.funnels.load_funnel_table`).
        segment_of: ``user_ids -> segment names`` in the same order (the served segments model's
            lookup); needed only for ``group_by == "segment"``.

    Raises:
        InvalidArgument: naming ``funnel`` (not in the table), ``group_by``, ``from_date`` or ``to_date``.
        FailedPrecondition: ``group_by == "segment"`` without ``segment_of``.
    """
    funnel, by, start, end = check_request(request)
    overall, groups = funnel_stats(table, funnel, by, segment_of=segment_of, from_date=start, to_date=end)
    definition = table.definitions[funnel]
    return pb.FunnelResponse(
        funnel=funnel, actions=definition["steps"], window_hours=float(definition["window_hours"]), group_by=by,
        from_date=start.isoformat() if start else "", to_date=end.isoformat() if end else "",
        overall=_group(overall), groups=[_group(g) for g in groups], table_run_id=table.run_id)


def http_query_to_request(params: Mapping[str, Any]) -> pb.GetFunnelRequest:
    """``GET /v1/funnels`` query parameters (``funnel``, ``by``, ``from``, ``to``) as the request message.

    A value may be a string or a one-element list (as multi-value query parsers give).

    Raises:
        InvalidArgument: an unknown parameter (naming it), a parameter given twice, or a value
            :func:`check_request` refuses (naming the request field).
    """
    fields: dict[str, str] = {}
    for param, value in params.items():
        if param not in QUERY_PARAMS:
            raise InvalidArgument(f"unknown query parameter {str(param)[:40]!r}; use {', '.join(QUERY_PARAMS)}",
                                  field=str(param)[:40])
        field = QUERY_PARAMS[param]
        if isinstance(value, (list, tuple)):
            if len(value) > 1:
                raise InvalidArgument(f"{_label(field)} is given more than once", field=field)
            value = value[0] if value else ""
        if not isinstance(value, str):
            raise InvalidArgument(f"{_label(field)} must be a string", field=field)
        fields[field] = value.strip()
    request = pb.GetFunnelRequest(**fields)
    check_request(request)
    return request
