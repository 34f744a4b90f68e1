"""Goal-gap analysis: exact projections on constructed campaigns, the service on both inputs."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from cluster.core.errors import InvalidArgument, NotFound
from protos.marketing.v1 import experiment_pb2 as pb
from ray_apps.evaluation.goals import goal_gap, linear_projection
from ray_apps.evaluation.service import goal_gap_of

START, END = date(2026, 3, 1), date(2026, 3, 20)


def _daily(n: int, **columns):
    zeros = [0.0] * n
    return {f: columns.get(f, zeros) for f in ("impressions", "new_reach", "clicks", "conversions", "revenue", "cost")}


def test_a_linear_campaign_projects_exactly():
    # 10 of 20 days: conversions 10 + 2d (d = 1..10); the rest of the line gives
    # sum_{d=1}^{20} (10 + 2d) = 200 + 420 = 620.
    conv = [10 + 2 * d for d in range(1, 11)]
    (g,) = goal_gap({"conversions": 700}, _daily(10, conversions=conv), start=START, end=END,
                    as_of=START + timedelta(days=9))
    assert g.attained == sum(conv) == 210
    assert g.trend_per_day == pytest.approx(2.0)
    assert g.projected == pytest.approx(620.0)
    assert g.projected_gap == pytest.approx(80.0) and g.on_track is False
    assert g.gap == 490 and g.gap_fraction == pytest.approx(0.7)
    assert g.required_per_day == pytest.approx(49.0)  # 490 over the 10 days left


def test_ratios_project_numerator_and_denominator_and_budget_is_a_cap():
    n = 10
    impressions = [1000.0] * n
    clicks = [10.0 + d for d in range(1, n + 1)]  # 11..20, slope 1
    cost = [100.0] * n
    revenue = [300.0] * n
    got = {g.metric: g for g in goal_gap(
        {"ctr": 0.02, "roi": 2.5, "budget": 1900.0}, _daily(n, impressions=impressions, clicks=clicks, cost=cost,
                                                             revenue=revenue),
        start=START, end=END, as_of=START + timedelta(days=n - 1))}
    ctr = got["ctr"]
    assert ctr.attained == pytest.approx(sum(clicks) / 10_000)
    # clicks continue 21..30: total 11..30 = 410 over 20,000 impressions.
    assert ctr.projected == pytest.approx(410 / 20_000) and ctr.on_track is True
    assert ctr.trend_per_day == pytest.approx(0.001)
    assert got["roi"].projected == pytest.approx(3.0) and got["roi"].on_track is True
    budget = got["budget"]
    assert budget.attained == 1000 and budget.gap == 900 and budget.projected == pytest.approx(2000.0)
    assert budget.on_track is False and budget.required_per_day is None


def test_the_trend_uses_only_the_recent_days_and_never_projects_below_zero():
    daily = [100.0] * 10 + [50.0, 40.0, 30.0, 20.0]
    total, slope = linear_projection(daily, 30, trend_days=4)
    assert slope == pytest.approx(-10.0)
    # the line 10, 0, -10, ... is clipped: only one more day (10) counts.
    assert total == pytest.approx(sum(daily) + 10.0)


def test_bad_inputs_name_their_field():
    d = _daily(3)
    cases = [
        ({"ctr": 1.5}, dict(start=START, end=END, as_of=START + timedelta(days=2)), "targets.ctr"),
        ({"likes": 1}, dict(start=START, end=END, as_of=START + timedelta(days=2)), "targets.likes"),
        ({"reach": 1}, dict(start=START, end=START - timedelta(days=1), as_of=START), "end_date"),
        ({"reach": 1}, dict(start=START, end=END, as_of=START + timedelta(days=5)), "daily.impressions"),
    ]
    for targets, dates, field in cases:
        with pytest.raises(InvalidArgument) as err:
            goal_gap(targets, d, **dates)
        assert err.value.field == field


def _request(**kw) -> pb.GoalGapRequest:
    return pb.GoalGapRequest(targets=pb.GoalTargets(conversions=700), end_date="2026-03-20", **kw)


def test_the_service_reads_inline_days_or_the_campaign_table_alike():
    conv = [10 + 2 * d for d in range(1, 11)]
    days = [START + timedelta(days=i) for i in range(10)]
    inline = goal_gap_of(_request(start_date="2026-03-01", daily=[
        pb.DailyResult(date=d.isoformat(), conversions=c) for d, c in zip(days, conv)]))
    # The lake's table skips days without activity: day 2 missing counts as zero, like inline.
    frame = pd.DataFrame({"date": days, "impressions": 0, "new_reach": 0, "clicks": 0, "conversions": conv,
                          "revenue": 0.0, "cost": 0.0})
    lake = goal_gap_of(_request(campaign_id="cmp001"), lambda cid: frame if cid == "cmp001" else frame.iloc[:0])
    assert inline.goals[0].projected == pytest.approx(620.0) == lake.goals[0].projected
    assert (lake.start_date, lake.as_of, lake.days_elapsed, lake.days_remaining) == ("2026-03-01", "2026-03-10", 10, 10)
    # 20 days from the first day with results is the same campaign as end_date 2026-03-20.
    by_length = goal_gap_of(pb.GoalGapRequest(targets=pb.GoalTargets(conversions=700), campaign_id="cmp001",
                                              duration_days=20), lambda cid: frame)
    assert by_length.end_date == "2026-03-20" and by_length.goals[0].projected == pytest.approx(620.0)
    gappy = goal_gap_of(_request(start_date="2026-03-01", daily=[
        pb.DailyResult(date=d.isoformat(), conversions=c) for d, c in zip(days, conv) if d != days[1]]))
    assert gappy.goals[0].attained == sum(conv) - conv[1]
    with pytest.raises(NotFound):
        goal_gap_of(_request(campaign_id="nope"), lambda cid: frame.iloc[:0])


@pytest.mark.parametrize("request_, field", [
    (pb.GoalGapRequest(end_date="2026-03-20", campaign_id="c"), "targets"),
    (pb.GoalGapRequest(targets=pb.GoalTargets(reach=1), campaign_id="c"), "end_date"),
    (pb.GoalGapRequest(targets=pb.GoalTargets(reach=1), campaign_id="c", end_date="2026-03-20", duration_days=5),
     "end_date"),
    (pb.GoalGapRequest(targets=pb.GoalTargets(reach=1), campaign_id="c", duration_days=4000), "duration_days"),
    (pb.GoalGapRequest(targets=pb.GoalTargets(reach=1), end_date="20/03/2026", campaign_id="c"), "end_date"),
    (pb.GoalGapRequest(targets=pb.GoalTargets(reach=1), end_date="2026-03-20"), "campaign_id"),
    (pb.GoalGapRequest(targets=pb.GoalTargets(reach=1), end_date="2026-03-20", trend_days=1, campaign_id="c"),
     "trend_days"),
    (pb.GoalGapRequest(targets=pb.GoalTargets(reach=1), end_date="2026-03-20",
                       daily=[pb.DailyResult(date="2026-03-01", clicks=5, impressions=1)]), "daily.clicks"),
    (pb.GoalGapRequest(targets=pb.GoalTargets(reach=1), end_date="2026-03-20",
                       daily=[pb.DailyResult(date="x")]), "daily[0].date"),
])
def test_bad_requests_are_invalid_argument_naming_the_field(request_, field):
    with pytest.raises(InvalidArgument) as err:
        goal_gap_of(request_, lambda cid: pd.DataFrame())
    assert err.value.field == field
