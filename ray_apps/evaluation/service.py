"""ExperimentService: the statistics of :mod:`ray_apps.evaluation` on request messages.

One function per RPC, from the request message to the response message; the gRPC methods
call them directly and the HTTP routes after parsing the JSON body into the same request
message (:func:`parse_request`), so both transports answer alike. Errors name the request's
own field paths (``variants[1].trials``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import ParseDict, ParseError

from cluster.core.errors import InvalidArgument, NotFound
from protos.marketing.v1 import experiment_pb2 as pb
from ray_apps.evaluation import abtest, goals
from ray_apps.evaluation.segments import segment_significance

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["HTTP_ROUTES", "parse_request", "analyze_conversions", "compare_means", "sequential_test", "sample_size",
           "segment_significance_of", "goal_gap_of", "goal_request", "MAX_VARIANTS", "MAX_VALUES", "MAX_LOOKS", "MAX_SEGMENTS"]

MAX_VARIANTS = 20
MAX_VALUES = 1_000_000
MAX_LOOKS = 10_000
MAX_SEGMENTS = 50
CORRECTIONS = ("holm", "bh", "none")


def parse_request(body: Any, message_type: type) -> Any:
    """A JSON body as the RPC's request message; an unknown or mistyped field is 422."""
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object", field="body")
    try:
        return ParseDict(body, message_type())
    except ParseError as err:
        text = str(err)
        field = _parse_error_field(text)
        reason = "no such field" if "has no field named" in text else "not a value of the field's type"
        raise InvalidArgument(f"{field}: {reason}", field=field) from None


def _parse_error_field(text: str) -> str:
    """The field path in one of protobuf's ParseError messages."""
    unknown = re.search(r'no field named "([^"]+)" at "([^"]+)"', text)
    if unknown:
        _, _, where = unknown.group(2).partition(".")
        return f"{where}.{unknown.group(1)}" if where else unknown.group(1)
    located = re.search(r" at \w+\.([\w.\[\]]+?)\.?$", text.splitlines()[0])
    if located:
        return located.group(1).rstrip(".")
    return ".".join(re.findall(r"Failed to parse (\w+) field", text)) or "body"


def _alpha(value: float) -> float:
    alpha = value or 0.05
    abtest.check_significance(alpha)
    return alpha


def _alternative(value: str) -> str:
    alt = value or "two-sided"
    if alt not in abtest.ALTERNATIVES:
        raise InvalidArgument(f"alternative must be one of {', '.join(abtest.ALTERNATIVES)}, got {value!r}",
                              field="alternative")
    return alt


def _check_arm(arm: Any, path: str) -> None:
    if not 1 <= len(arm.name) <= 64:
        raise InvalidArgument(f"{path}.name must be 1 to 64 characters", field=f"{path}.name")
    if arm.planned_weight < 0 or not math.isfinite(arm.planned_weight):
        raise InvalidArgument(f"{path}.planned_weight must be a non-negative number", field=f"{path}.planned_weight")


def analyze_conversions(request: pb.AnalyzeConversionsRequest) -> pb.AnalyzeConversionsResponse:
    if not request.HasField("control"):
        raise InvalidArgument("control is required", field="control")
    if not 1 <= len(request.variants) <= MAX_VARIANTS:
        raise InvalidArgument(f"variants must hold 1 to {MAX_VARIANTS} arms", field="variants")
    alpha, alt = _alpha(request.alpha), _alternative(request.alternative)
    correction = request.correction or "holm"
    if correction not in CORRECTIONS:
        raise InvalidArgument(f"correction must be one of {', '.join(CORRECTIONS)}", field="correction")
    arms = [("control", request.control)] + [(f"variants[{i}]", v) for i, v in enumerate(request.variants)]
    names = set()
    for path, arm in arms:
        _check_arm(arm, path)
        if arm.name in names:
            raise InvalidArgument(f"{path}.name {arm.name!r} is used twice", field=f"{path}.name")
        names.add(arm.name)
    c = request.control
    results = []
    for path, v in arms[1:]:
        try:
            results.append(abtest.two_proportion_ztest(c.conversions, c.trials, v.conversions, v.trials,
                                                       alpha=alpha, alternative=alt))
        except InvalidArgument as err:
            # The library names control_trials / variant_conversions; the request's paths are
            # control.trials / variants[i].conversions.
            f = err.field or ""
            if f.startswith("control_"):
                raise InvalidArgument(err.message, field=f"control.{f.removeprefix('control_')}") from None
            if f.startswith("variant_"):
                raise InvalidArgument(err.message.replace("variant", path, 1),
                                      field=f"{path}.{f.removeprefix('variant_')}") from None
            raise
    raw = [r.p_value for r in results]
    adjusted = raw if correction == "none" else abtest.adjust_pvalues(raw, correction)
    weights = [a.planned_weight for _, a in arms]
    planned = None if all(w == 0 for w in weights) else weights
    if planned is not None and any(w == 0 for w in weights):
        raise InvalidArgument("give planned_weight for every arm or for none", field="variants")
    srm = abtest.sample_ratio_mismatch([a.trials for _, a in arms], planned)
    return pb.AnalyzeConversionsResponse(
        variants=[
            pb.VariantResult(name=v.name, control_rate=r.control_rate, variant_rate=r.variant_rate,
                             difference=r.difference, ci_low=r.ci_low, ci_high=r.ci_high,
                             relative_lift=r.relative_lift, z=r.z, p_value=r.p_value, adjusted_p_value=adj,
                             significant=adj < alpha)
            for (_, v), r, adj in zip(arms[1:], results, adjusted)
        ],
        sample_ratio=pb.SampleRatioCheck(chi2=srm.chi2, p_value=srm.p_value, mismatch=srm.mismatch,
                                         expected=srm.expected),
        alpha=alpha, correction=correction,
    )


def _mean_result(t: abtest.MeanTest) -> pb.MeanResult:
    return pb.MeanResult(control_mean=t.control_mean, variant_mean=t.variant_mean, difference=t.difference,
                         ci_low=t.ci_low, ci_high=t.ci_high, t=t.t, df=t.df, p_value=t.p_value,
                         significant=t.significant)


def _finite(message: Any, field: str) -> Any:
    """``message`` unless a number in it is NaN or infinite (inputs near the float range can
    overflow inside a statistic): that is the caller's values, not a server error."""
    from google.protobuf.json_format import MessageToDict

    def numbers(node: Any):
        if isinstance(node, dict):
            for v in node.values():
                yield from numbers(v)
        elif isinstance(node, list):
            for v in node:
                yield from numbers(v)
        elif isinstance(node, float):
            yield node
        elif node in ("NaN", "Infinity", "-Infinity"):
            yield float(node.replace("Infinity", "inf"))

    if not all(math.isfinite(x) for x in numbers(MessageToDict(message))):
        raise InvalidArgument(f"{field}: values too large for the statistic (it overflows)", field=field)
    return message


def compare_means(request: pb.CompareMeansRequest) -> pb.CompareMeansResponse:
    for name in ("control", "variant", "control_pre", "variant_pre"):
        if len(getattr(request, name)) > MAX_VALUES:
            raise InvalidArgument(f"{name} holds more than {MAX_VALUES:,} values", field=name)
    alpha, alt = _alpha(request.alpha), _alternative(request.alternative)
    raw = abtest.welch_ttest(request.control, request.variant, alpha=alpha, alternative=alt)
    response = pb.CompareMeansResponse(raw=_mean_result(raw))
    if request.control_pre or request.variant_pre:
        adj = abtest.cuped(request.control, request.variant, request.control_pre, request.variant_pre, alpha=alpha,
                           alternative=alt)
        response.cuped.CopyFrom(_mean_result(adj.test))
        response.variance_reduction = adj.variance_reduction
        response.theta = adj.theta
    return _finite(response, "variant")


def sequential_test(request: pb.SequentialTestRequest) -> pb.SequentialTestResponse:
    if not 1 <= len(request.looks) <= MAX_LOOKS:
        raise InvalidArgument(f"looks must hold 1 to {MAX_LOOKS:,} entries", field="looks")
    looks = list(request.looks)
    try:
        got = abtest.msprt_proportions(
            [x.control_conversions for x in looks], [x.control_trials for x in looks],
            [x.variant_conversions for x in looks], [x.variant_trials for x in looks],
            alpha=_alpha(request.alpha), mixture_sd=request.mixture_sd or None)
    except InvalidArgument as err:
        if err.field in ("control_trials", "control_conversions", "variant_trials", "variant_conversions"):
            raise InvalidArgument(err.message, field=f"looks.{err.field}") from None
        raise
    return pb.SequentialTestResponse(p_values=got.p_values, rejected_at=got.rejected_at, difference=got.difference,
                                     ci_low=got.ci_low, ci_high=got.ci_high, mixture_sd=got.mixture_sd)


def sample_size(request: pb.SampleSizeRequest) -> pb.SampleSizeResponse:
    alpha, alt = _alpha(request.alpha), _alternative(request.alternative)
    power, ratio = request.power or 0.8, request.ratio or 1.0
    n1, n2 = abtest.sample_size_proportions(request.baseline_rate, request.variant_rate, alpha=alpha, power=power,
                                            ratio=ratio, alternative=alt)
    response = pb.SampleSizeResponse(control_trials=n1, variant_trials=n2)
    if request.control_trials:
        response.power_at_trials = abtest.power_proportions(
            request.baseline_rate, request.variant_rate, request.control_trials, alpha=alpha, ratio=ratio,
            alternative=alt)
    return response


def segment_significance_of(request: pb.SegmentSignificanceRequest) -> pb.SegmentSignificanceResponse:
    if not 2 <= len(request.groups) <= MAX_SEGMENTS:
        raise InvalidArgument(f"groups must hold 2 to {MAX_SEGMENTS} segments", field="groups")
    if sum(len(g.values) for g in request.groups) > MAX_VALUES:
        raise InvalidArgument(f"groups hold more than {MAX_VALUES:,} values in all", field="groups")
    names = [g.name for g in request.groups]
    if len(set(names)) != len(names) or not all(names):
        raise InvalidArgument("every group needs a distinct, non-empty name", field="groups")
    got = segment_significance({g.name: list(g.values) for g in request.groups})
    return pb.SegmentSignificanceResponse(
        groups=[pb.SegmentSummary(name=n, size=s, mean=m, median=md)
                for n, s, m, md in zip(got.groups, got.sizes, got.means, got.medians)],
        anova_f=got.anova_f, anova_p=got.anova_p, eta_squared=got.eta_squared, omega_squared=got.omega_squared,
        kruskal_h=got.kruskal_h, kruskal_p=got.kruskal_p, epsilon_squared=got.epsilon_squared,
    )




def _day(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{field} must be a date YYYY-MM-DD, got {value!r}", field=field) from None


def goal_request(campaign_id: str, goal: Any, as_of: str = "") -> pb.GoalGapRequest:
    """The GoalGap request of a campaign's configured targets (``cluster.core.settings.CampaignGoal``)."""
    return pb.GoalGapRequest(
        campaign_id=campaign_id, targets=pb.GoalTargets(**goal.targets()),
        start_date=goal.start_date.isoformat() if goal.start_date else "",
        end_date=goal.end_date.isoformat() if goal.end_date else "", duration_days=goal.duration_days or 0,
        as_of=as_of)


def goal_gap_of(request: pb.GoalGapRequest,
                load_daily: Callable[[str], pd.DataFrame] | None = None) -> pb.GoalGapResponse:
    """``GoalGap``: the request's daily results, or the campaign's from ``load_daily(campaign_id)``
    (a frame with ``date`` and :data:`goals.DAILY_FIELDS`; empty when the campaign is unknown)."""
    import pandas as pd

    targets = {m: getattr(request.targets, m) for m in goals.METRICS if request.targets.HasField(m)}
    if not targets:
        raise InvalidArgument("targets: give at least one of " + ", ".join(goals.METRICS), field="targets")
    if bool(request.end_date) == bool(request.duration_days):
        raise InvalidArgument("give end_date or duration_days (one of them)", field="end_date")
    if not 0 <= request.duration_days <= 3660:
        raise InvalidArgument("duration_days must be 1 to 3,660", field="duration_days")
    given_end = _day(request.end_date, "end_date") if request.end_date else None
    given_start = _day(request.start_date, "start_date") if request.start_date else None
    given_as_of = _day(request.as_of, "as_of") if request.as_of else None
    if request.trend_days < 0 or request.trend_days == 1:
        raise InvalidArgument("trend_days must be 2 or more (0 = 14)", field="trend_days")
    if request.daily:
        if len(request.daily) > MAX_LOOKS:
            raise InvalidArgument(f"daily holds more than {MAX_LOOKS:,} days", field="daily")
        rows = []
        for i, d in enumerate(request.daily):
            rows.append({"date": _day(d.date, f"daily[{i}].date"),
                         **{f: getattr(d, f) for f in goals.DAILY_FIELDS}})
        frame = pd.DataFrame(rows)
        if frame["date"].duplicated().any():
            raise InvalidArgument("daily names a date twice", field="daily")
        campaign = request.campaign_id
    else:
        if not request.campaign_id or len(request.campaign_id) > 64:
            raise InvalidArgument("campaign_id (1 to 64 characters) is required when daily is empty",
                                  field="campaign_id")
        if load_daily is None:
            raise InvalidArgument("give daily: this caller reads no campaign results", field="daily")
        frame = load_daily(request.campaign_id)
        if frame.empty:
            raise NotFound(f"campaign {request.campaign_id!r} has no results", field="campaign_id")
        frame = frame.assign(date=pd.to_datetime(frame["date"]).dt.date)
        campaign = request.campaign_id
    start = given_start or min(frame["date"])
    end = given_end or start + timedelta(days=request.duration_days - 1)
    as_of = given_as_of or min(max(frame["date"]), end)
    if as_of < start:
        raise InvalidArgument(f"as_of {as_of} is before start_date {start} (no results in the campaign's period)",
                              field="as_of")
    days = pd.date_range(start, as_of, freq="D").date
    window = frame[(frame["date"] >= start) & (frame["date"] <= as_of)].groupby("date")[list(goals.DAILY_FIELDS)].sum()
    window = window.reindex(days, fill_value=0)
    results = goals.goal_gap(targets, {f: window[f].to_numpy(dtype=float) for f in goals.DAILY_FIELDS},
                             start=start, end=end, as_of=as_of, trend_days=request.trend_days or 14)
    return _finite(pb.GoalGapResponse(
        campaign_id=campaign, start_date=start.isoformat(), end_date=end.isoformat(), as_of=as_of.isoformat(),
        days_elapsed=(as_of - start).days + 1, days_remaining=(end - as_of).days,
        goals=[pb.GoalGap(**{k: v for k, v in vars(r).items() if v is not None}) for r in results]), "targets")


#: ``POST /v1/experiments/<name>``: the request message each takes and the computation.
HTTP_ROUTES = {
    "conversions": (pb.AnalyzeConversionsRequest, analyze_conversions),
    "means": (pb.CompareMeansRequest, compare_means),
    "sequential": (pb.SequentialTestRequest, sequential_test),
    "sample-size": (pb.SampleSizeRequest, sample_size),
    "segments": (pb.SegmentSignificanceRequest, segment_significance_of),
    "goal-gap": (pb.GoalGapRequest, goal_gap_of),
}
