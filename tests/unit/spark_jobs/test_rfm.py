from datetime import date, datetime

from pyspark.testing import assertDataFrameEqual

from spark_jobs.transforms import default_as_of, rfm

COLS = "order_id string, user_id string, order_time timestamp, amount double, status string"


def test_rfm_counts_paid_orders_before_as_of(spark):
    orders = spark.createDataFrame(
        [
            ("o1", "u1", datetime(2026, 6, 1, 10), 100.0, "paid"),
            ("o2", "u1", datetime(2026, 6, 20, 23, 59), 50.5, "paid"),
            ("o3", "u1", datetime(2026, 6, 25), 999.0, "refunded"),   # refunds do not count
            ("o4", "u1", datetime(2026, 7, 1, 0, 0), 70.0, "paid"),   # on as_of: excluded
            ("o5", "u2", datetime(2026, 3, 2), 10.0, "paid"),
            ("o5", "u2", datetime(2026, 3, 2), 10.0, "paid"),          # same order id twice: one order
            ("o6", "u3", datetime(2026, 6, 2), 5.0, "refunded"),       # only refunds: no row
        ],
        COLS,
    )
    got = rfm(orders, date(2026, 7, 1)).drop("last_order_time")
    expected = spark.createDataFrame(
        [("u1", 11, 2, 150.5), ("u2", 121, 1, 20.0)],
        "user_id string, recency_days int, frequency int, monetary double",
    )
    assertDataFrameEqual(got, expected)


def test_default_as_of_is_day_after_last_order(spark):
    orders = spark.createDataFrame(
        [("o1", "u1", datetime(2026, 6, 30, 23, 0), 1.0, "paid"), ("o2", "u1", datetime(2026, 1, 1), 1.0, "paid")],
        COLS,
    )
    assert default_as_of(orders) == date(2026, 7, 1)


def test_consumption_level_averages_over_the_months_a_user_could_spend(spark):
    from spark_jobs.rfm import DAYS_PER_MONTH, consumption_level

    orders = spark.createDataFrame(
        [
            ("a1", "old", datetime(2025, 1, 5), 9000.0, "paid"),      # before the 6-month window
            ("a2", "old", datetime(2026, 5, 1), 600.0, "paid"),       # 600 over 6 months: 100
            ("b1", "new", datetime(2026, 6, 10), 1500.0, "paid"),     # 21 days of tenure count as 1 month
            ("b2", "new", datetime(2026, 6, 12), 900.0, "refunded"),  # refunds do not count
            ("c1", "mid", datetime(2026, 4, 1), 3000.0, "paid"),      # 91 days of tenure
            ("d1", "gone", datetime(2025, 3, 1), 800.0, "paid"),      # nothing in the window: 0
        ],
        COLS,
    )
    bands = {"low": 0.0, "medium": 200.0, "high": 1000.0, "premium": 3000.0}
    got = {r.user_id: (r.avg_monthly_spend, r.consumption_level)
           for r in consumption_level(orders, date(2026, 7, 1), 6, bands).collect()}
    mid = round(3000.0 / (91 / DAYS_PER_MONTH), 2)
    assert got == {"old": (100.0, "low"), "new": (1500.0, "high"), "mid": (mid, "high"), "gone": (0.0, "low")}
    assert 985 < mid < 1005
    # Bands are read by their bounds, not their order: the same levels listed backwards.
    backwards = dict(reversed(list(bands.items())))
    assert {r.user_id: r.consumption_level
            for r in consumption_level(orders, date(2026, 7, 1), 6, backwards).collect()}["new"] == "high"
