"""Split a budget over channels: a linear programme solved with PuLP's bundled CBC.

Each channel has a cost per placement, an ROI (revenue per unit spent), and minimum and
maximum placements. Variables are the placements per channel; constraints are the total
budget and each channel's bounds, all as *named* constraints so that the answer can say
which ones bind, what one more unit of each is worth (the shadow price), and, when there
is no feasible plan, which constraints conflict.

Objectives (``objective``):

* ``revenue`` (default): sum of cost x ROI x placements, the money the placements bring in;
* ``profit``: revenue minus spend, sum of cost x (ROI - 1) x placements;
* ``placements``: the number of placements (reach);
* ``roi_sum``: sum of ROI x placements, the figure the article calls "maximum ROI". It has no
  unit a marketer can spend and is offered only to reproduce the article; see docs/budget.md.

Shadow prices come from the LP's duals and are reported for continuous problems only: an
integer programme has no duals. For ``integer=True`` the binding constraints are still named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pulp

from cluster.core.errors import FailedPrecondition, InvalidArgument

__all__ = ["OBJECTIVES", "Allocation", "Channel", "ConstraintReport", "optimize_budget"]

OBJECTIVES = ("revenue", "profit", "placements", "roi_sum")
#: Constraints whose slack is below this are reported as binding.
_BINDING_TOL = 1e-6
#: Beyond this a problem is rejected: the request is a plan, not a bulk solve (and each
#: infeasible constraint costs one more solve when the conflict is searched).
MAX_CHANNELS = 50


@dataclass(frozen=True)
class Channel:
    """One channel: cost per placement (currency), ROI (revenue per currency unit spent),
    and the placements it must get (``min_placements``) and can take (``max_placements``)."""

    name: str
    cost: float
    roi: float
    max_placements: float
    min_placements: float = 0.0


@dataclass(frozen=True)
class ConstraintReport:
    """A constraint of the programme, in words the request used."""

    name: str  # "budget", "min_placements[feed]", "max_placements[search]"
    channel: str  # "" for the budget
    kind: str  # "budget" | "min_placements" | "max_placements"
    limit: float  # the right-hand side: budget or the placement bound
    slack: float  # how far the plan is from the limit (0 when binding)
    #: objective gained per unit the limit is relaxed (one more currency unit of budget, one
    #: more placement allowed); None for integer programmes, which have no duals
    shadow_price: float | None


@dataclass(frozen=True)
class Allocation:
    placements: dict[str, float]
    spend: dict[str, float]
    total_spend: float
    objective: str
    objective_value: float
    revenue: float
    integer: bool
    binding: list[ConstraintReport] = field(default_factory=list)
    constraints: list[ConstraintReport] = field(default_factory=list)


#: Largest accepted values: beyond them the solver's tolerances stop meaning anything.
_MAX = {"cost_per_placement": 1e9, "roi": 1e6, "placements": 1e12, "total_budget": 1e15}


def _finite(value: float, name: str, *, minimum: float, maximum: float, strict: bool = False) -> float:
    if value is None or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number", field=name)
    if value < minimum or (strict and value == minimum):
        raise InvalidArgument(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value:g}", field=name)
    if value > maximum:
        raise InvalidArgument(f"{name} must be at most {maximum:g}, got {value:g}", field=name)
    return float(value)


def _validate(channels: list[Channel], total_budget: float, objective: str) -> None:
    if objective not in OBJECTIVES:
        raise InvalidArgument(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}",
                              field="objective")
    _finite(total_budget, "total_budget", minimum=0, maximum=_MAX["total_budget"], strict=True)
    if not channels:
        raise InvalidArgument("at least one channel is needed", field="channels")
    if len(channels) > MAX_CHANNELS:
        raise InvalidArgument(f"at most {MAX_CHANNELS} channels, got {len(channels)}", field="channels")
    seen: set[str] = set()
    for i, ch in enumerate(channels):
        where = f"channels[{i}]"
        if not ch.name or not ch.name.strip() or len(ch.name) > 64:
            raise InvalidArgument(f"{where}.name must be 1-64 characters", field=f"{where}.name")
        if ch.name in seen:
            raise InvalidArgument(f"{where}.name {ch.name!r} appears twice", field=f"{where}.name")
        seen.add(ch.name)
        _finite(ch.cost, f"{where}.cost_per_placement", minimum=0, maximum=_MAX["cost_per_placement"], strict=True)
        _finite(ch.roi, f"{where}.roi", minimum=0, maximum=_MAX["roi"])
        _finite(ch.max_placements, f"{where}.max_placements", minimum=0, maximum=_MAX["placements"])
        _finite(ch.min_placements, f"{where}.min_placements", minimum=0, maximum=_MAX["placements"])
        if ch.min_placements > ch.max_placements:
            raise InvalidArgument(
                f"{where}.min_placements ({ch.min_placements:g}) exceeds max_placements ({ch.max_placements:g})",
                field=f"{where}.min_placements")


def _coefficient(ch: Channel, objective: str) -> float:
    return {
        "revenue": ch.cost * ch.roi,
        "profit": ch.cost * (ch.roi - 1.0),
        "placements": 1.0,
        "roi_sum": ch.roi,
    }[objective]


def _build(channels: list[Channel], total_budget: float, objective: str, integer: bool,
           keep: set[str] | None = None) -> tuple[pulp.LpProblem, dict[str, pulp.LpVariable], dict[str, tuple]]:
    """The programme; ``keep`` limits it to the named constraints (for the conflict search)."""
    prob = pulp.LpProblem("budget", pulp.LpMaximize)
    cat = pulp.LpInteger if integer else pulp.LpContinuous
    x = {ch.name: pulp.LpVariable(f"x{i}", lowBound=0, cat=cat) for i, ch in enumerate(channels)}
    prob += pulp.lpSum(_coefficient(ch, objective) * x[ch.name] for ch in channels)
    meta: dict[str, tuple] = {}

    def add(name: str, expr, channel: str, kind: str, limit: float) -> None:
        if keep is not None and name not in keep:
            return
        key = f"c{len(meta)}"  # PuLP names must be solver-safe; the report uses `name`
        prob.addConstraint(expr, key)
        meta[key] = (name, channel, kind, limit)

    add("budget", pulp.lpSum(ch.cost * x[ch.name] for ch in channels) <= total_budget, "", "budget", total_budget)
    for ch in channels:
        add(f"max_placements[{ch.name}]", x[ch.name] <= ch.max_placements, ch.name, "max_placements",
            ch.max_placements)
        if ch.min_placements > 0:
            add(f"min_placements[{ch.name}]", x[ch.name] >= ch.min_placements, ch.name, "min_placements",
                ch.min_placements)
    return prob, x, meta


def _solve(prob: pulp.LpProblem) -> str:
    try:
        prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=20))
    except pulp.PulpSolverError as exc:  # CBC crashed or wrote no solution
        raise FailedPrecondition(f"the LP solver failed on this problem: {exc}", field="channels") from exc
    return pulp.LpStatus[prob.status]


def _conflict(channels: list[Channel], total_budget: float, objective: str, integer: bool,
              names: list[str]) -> list[str]:
    """An irreducible set of constraints that cannot hold together (deletion filter): drop
    each constraint in turn and keep it out whenever the rest is still infeasible."""
    kept = list(names)
    for name in list(names):
        trial = [n for n in kept if n != name]
        prob, _, _ = _build(channels, total_budget, objective, integer, keep=set(trial))
        if _solve(prob) == "Infeasible":
            kept = trial
    return kept


def optimize_budget(channels: list[Channel], total_budget: float, *, objective: str = "revenue",
                    integer: bool = False) -> Allocation:
    """The allocation maximising ``objective`` within the budget and the channels' bounds.

    Raises:
        InvalidArgument: a field is out of range (the error names it).
        FailedPrecondition: no allocation meets every constraint; the message names a minimal
            set of constraints in conflict.
    """
    _validate(channels, total_budget, objective)
    prob, x, meta = _build(channels, total_budget, objective, integer)
    status = _solve(prob)
    if status == "Infeasible":
        names = [m[0] for m in meta.values()]
        conflict = _conflict(channels, total_budget, objective, integer, names)
        raise FailedPrecondition(
            "no allocation meets every constraint; these conflict: " + ", ".join(conflict),
            field="channels")
    if status != "Optimal":  # the feasible region is bounded, so this is a solver failure
        raise FailedPrecondition(f"the solver stopped with status {status}", field="channels")

    placements = {name: float(var.value() or 0.0) for name, var in x.items()}
    by_name = {ch.name: ch for ch in channels}
    spend = {n: by_name[n].cost * p for n, p in placements.items()}
    reports = []
    for key, (name, channel, kind, limit) in meta.items():
        con = prob.constraints[key]
        lhs = placements[channel] if channel else sum(spend.values())
        slack = abs(limit - lhs)
        dual = None if integer else float(con.pi or 0.0)
        reports.append(ConstraintReport(name=name, channel=channel, kind=kind, limit=limit,
                                        slack=slack if slack > _BINDING_TOL * max(1.0, limit) else 0.0,
                                        shadow_price=dual))
    return Allocation(
        placements=placements, spend=spend, total_spend=sum(spend.values()), objective=objective,
        objective_value=float(pulp.value(prob.objective) or 0.0),
        revenue=sum(by_name[n].cost * by_name[n].roi * p for n, p in placements.items()),
        integer=integer, binding=[r for r in reports if r.slack == 0.0], constraints=reports,
    )
