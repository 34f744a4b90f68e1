"""Conversion funnels: step counts, conversion and drop-off rates and median step times from the
funnel table (:mod:`spark_jobs.funnels`), and the FunnelService request functions."""

from ray_apps.funnels.funnel import (
    GROUP_BY,
    NO_SEGMENT,
    FunnelTable,
    GroupFunnel,
    StepStats,
    funnel_stats,
    load_funnel_table,
    step_gaps,
)
from ray_apps.funnels.service import (
    DEFAULT_FUNNEL,
    QUERY_PARAMS,
    get_funnel,
    http_query_to_request,
)

__all__ = [
    "DEFAULT_FUNNEL",
    "GROUP_BY",
    "NO_SEGMENT",
    "QUERY_PARAMS",
    "FunnelTable",
    "GroupFunnel",
    "StepStats",
    "funnel_stats",
    "get_funnel",
    "http_query_to_request",
    "load_funnel_table",
    "step_gaps",
]
