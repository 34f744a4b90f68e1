"""Last-click attribution and the per-user campaign table."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from spark_jobs.campaigns import UNKNOWN, attribute_orders, campaign_table


def _t(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=timezone.utc)


@pytest.fixture()
def frames(spark):
    impressions = spark.createDataFrame([
        # id, user, ts, campaign, channel, cost, clicked
        ("i1", "u1", _t(1), "c1", "sms", 0.05, True),    # superseded by i2 for o1
        ("i2", "u1", _t(2), "c2", "push", 0.01, True),   # last click before o1 and o2
        ("i3", "u1", _t(3), "c2", "push", 0.01, False),  # not a click
        ("i4", "u2", _t(1), None, None, None, True),     # no campaign or channel: unknown
        ("i5", "u3", _t(1), "c1", "sms", 0.05, True),    # its order comes 8 days later: outside
        ("i6", "u4", _t(5), "c1", "sms", 0.05, True),    # the order came before the click
    ], "impression_id string, user_id string, ts timestamp, campaign_id string, channel string, "
       "cost double, clicked boolean")
    orders = spark.createDataFrame([
        ("o1", "u1", _t(4), 100.0, "paid"),
        ("o2", "u1", _t(6), 50.0, "paid"),
        ("o3", "u1", _t(5), 70.0, "refunded"),  # refunds never count
        ("o4", "u2", _t(1, 13), 30.0, "paid"),
        ("o5", "u3", _t(9, 13), 80.0, "paid"),
        ("o6", "u4", _t(4), 20.0, "paid"),
    ], "order_id string, user_id string, order_time timestamp, amount double, status string")
    return impressions, orders


def test_each_paid_order_goes_to_the_last_click_within_the_window(frames):
    got = {r.order_id: r.impression_id for r in attribute_orders(*frames, window_days=7).collect()}
    assert got == {"o1": "i2", "o2": "i2", "o4": "i4"}


def test_window_edges_and_ties(spark):
    impressions = spark.createDataFrame([
        ("a", "u1", _t(1), "c1", "sms", 0.0, True),
        ("b", "u1", _t(1), "c2", "push", 0.0, True),  # same second as a: the larger id wins
        ("c", "u2", _t(1), "c1", "sms", 0.0, True),
    ], "impression_id string, user_id string, ts timestamp, campaign_id string, channel string, "
       "cost double, clicked boolean")
    orders = spark.createDataFrame([
        ("o1", "u1", _t(1), 10.0, "paid"),   # at the click's own second: counts
        ("o2", "u2", _t(8), 10.0, "paid"),   # exactly 7 days after: outside [click, click + 7 days)
    ], "order_id string, user_id string, order_time timestamp, amount double, status string")
    got = {r.order_id: r.impression_id for r in attribute_orders(impressions, orders, window_days=7).collect()}
    assert got == {"o1": "b"}


def test_the_table_counts_clicks_conversions_orders_revenue_and_cost(frames):
    rows = {(r.user_id, r.campaign_id, r.channel): r.asDict() for r in campaign_table(*frames).collect()}
    u1_push = rows[("u1", "c2", "push")]
    assert (u1_push["impressions"], u1_push["clicks"], u1_push["conversions"], u1_push["orders"]) == (2, 1, 1, 2)
    assert u1_push["revenue"] == pytest.approx(150.0) and u1_push["cost"] == pytest.approx(0.02)
    assert rows[("u1", "c1", "sms")]["conversions"] == 0
    assert rows[("u2", UNKNOWN, UNKNOWN)]["revenue"] == pytest.approx(30.0)
    assert rows[("u2", UNKNOWN, UNKNOWN)]["cost"] == 0.0
    assert rows[("u3", "c1", "sms")]["conversions"] == 0 and rows[("u4", "c1", "sms")]["orders"] == 0
    # A longer window reaches u3's order.
    wide = {(r.user_id, r.channel): r.conversions for r in campaign_table(*frames, window_days=10).collect()}
    assert wide[("u3", "sms")] == 1


def test_metrics_by_channel_and_segment_guard_zero_cost_and_zero_conversions():
    import pandas as pd

    from cluster.core.errors import InvalidArgument
    from ray_apps.evaluation.campaigns import campaign_metrics

    table = pd.DataFrame([
        # user, campaign, channel, impressions, clicks, cost, conversions, orders, revenue
        ("u1", "c1", "sms", 100, 4, 5.0, 2, 3, 300.0),
        ("u2", "c1", "sms", 100, 2, 5.0, 0, 0, 0.0),
        ("u3", "c2", "email", 50, 0, 0.0, 0, 0, 0.0),
        ("u1", "c2", "push", 50, 4, 0.0, 1, 1, 40.0),
    ], columns=["user_id", "campaign_id", "channel", "impressions", "clicks", "cost", "conversions", "orders",
                "revenue"])
    by = {g.group: g for g in campaign_metrics(table, "channel")}
    assert list(by) == ["sms", "push", "email"]  # by revenue
    sms, push, email = by["sms"], by["push"], by["email"]
    assert sms.ctr == pytest.approx(0.03) and sms.ctr_lift == pytest.approx(0.03 / (10 / 300) - 1)
    assert sms.roi == pytest.approx(30.0) and sms.cpa == pytest.approx(5.0)
    assert sms.conversion_rate == pytest.approx(2 / 6)
    assert push.roi is None and push.cpa is None  # nothing spent: no ROI, not infinity
    assert email.conversion_rate is None and email.ctr == 0.0
    seg = {g.group: g for g in campaign_metrics(table, "segment", pd.Series({"u1": "loyal", "u2": "new"}))}
    assert seg["loyal"].revenue == pytest.approx(340.0) and seg["(none)"].impressions == 50
    with pytest.raises(InvalidArgument):
        campaign_metrics(table, "city")


def test_the_report_says_what_to_run_when_inputs_are_missing(settings_factory, tmp_path):
    from ray_apps.evaluation.report import plot_count, write_report

    path, sections = write_report(settings_factory(), tmp_path / "empty.html")
    assert plot_count(sections) == 0
    hints = " ".join(s.missing for s in sections)
    for command in ("pmkt tune segments", "pmkt tune ctr", "pmkt tune recs", "pmkt features campaigns"):
        assert command in hints
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count('class="missing"') == len(sections)


def test_survival_curves_of_different_horizons_average_where_all_are_defined():
    import numpy as np

    from ray_apps.evaluation.report import mean_survival

    long = [[0, 1.0], [7, 0.9], [14, 0.8], [21, 0.7]]
    short = [[0, 1.0], [7, 0.5], [10, 0.4]]
    days, mean = mean_survival([long, short])
    assert days.tolist() == [0.0, 7.0, 10.0]
    assert np.allclose(mean, [1.0, 0.7, (0.9 - 0.1 * 3 / 7 + 0.4) / 2])


def test_the_daily_table_counts_each_local_day_and_first_reach_once(frames):
    from spark_jobs.campaigns import campaign_daily

    # UTC noon is 20:00 in Shanghai: the same local day.
    rows = {(r.campaign_id, r.date.isoformat()): r.asDict() for r in campaign_daily(*frames).collect()}
    c2 = rows[("c2", "2026-03-02")]
    assert (c2["impressions"], c2["clicks"], c2["new_reach"]) == (1, 1, 1)
    # u1's second c2 impression on 3 March reaches nobody new; o1 (4 March) and o2 (6 March)
    # are c2's conversions on their own days.
    assert (rows[("c2", "2026-03-03")]["impressions"], rows[("c2", "2026-03-03")]["new_reach"]) == (1, 0)
    assert rows[("c2", "2026-03-04")]["conversions"] == 1 and rows[("c2", "2026-03-06")]["revenue"] == 50.0
    assert rows[("c2", "2026-03-04")]["impressions"] == 0
    # c1 reached u1 and u3 on 1 March, u4 on 5 March.
    assert rows[("c1", "2026-03-01")]["new_reach"] == 2 and rows[("c1", "2026-03-05")]["new_reach"] == 1
    # The daily conversions are attributed orders: the campaign table's "orders", per campaign.
    totals = campaign_table(*frames).groupBy("campaign_id").sum("impressions", "orders").collect()
    daily = campaign_daily(*frames).groupBy("campaign_id").sum("impressions", "conversions").collect()
    assert sorted(map(tuple, totals)) == sorted(map(tuple, daily))


def test_the_daily_table_uses_the_local_day(spark):
    from spark_jobs.campaigns import campaign_daily

    impressions = spark.createDataFrame([("i1", "u1", _t(1, 17), "c1", "sms", 0.0, False)],
                                        "impression_id string, user_id string, ts timestamp, campaign_id string, "
                                        "channel string, cost double, clicked boolean")
    orders = spark.createDataFrame([], "order_id string, user_id string, order_time timestamp, amount double, "
                                       "status string")
    day = lambda tz: campaign_daily(impressions, orders, timezone=tz).collect()[0].date.isoformat()  # noqa: E731
    assert (day("Asia/Shanghai"), day("UTC")) == ("2026-03-02", "2026-03-01")
