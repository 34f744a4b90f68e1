from datetime import date, datetime

from pyspark.testing import assertDataFrameEqual

from spark_jobs.rfm import default_as_of, rfm

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
