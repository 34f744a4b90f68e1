"""Tags: behaviour tags, TF-IDF and the interaction matrix, on hand-made frames and on generated data."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta

import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_jobs.tags import (
    behaviour,
    behaviour_tags,
    cart_abandons,
    index_interactions,
    interactions,
    last_viewed_categories,
    purchases_by_category,
    tag_records,
    tfidf,
    top_by_weight,
    top_tags,
)

EVENT_COLS = (
    "event_id string, user_id string, ts timestamp, action string, item_id string, category string, brand string"
)
ORDER_COLS = (
    "order_id string, user_id string, order_time timestamp, item_id string, category string, brand string, "
    "amount double, status string"
)
AS_OF = date(2026, 7, 1)
AFTER = datetime(2026, 7, 1, 0, 0)  # the as-of instant itself: excluded


def _events(spark, rows):
    """Events from (user, ts, action, item, category, brand) tuples; ids are generated."""
    return spark.createDataFrame([(f"e{i}", *r) for i, r in enumerate(rows)], EVENT_COLS)


def _orders(spark, rows):
    """Orders from (order_id, user, time, item, category, brand, status) tuples."""
    return spark.createDataFrame([(o, u, t, i, c, b, 10.0, s) for o, u, t, i, c, b, s in rows], ORDER_COLS)


def _no_orders(spark):
    return spark.createDataFrame([], ORDER_COLS)


# --- TF-IDF ---------------------------------------------------------------------------------


def test_tfidf_reproduces_the_articles_worked_example(spark):
    """Tag t in 1 of u's 3 records and in 10,000 of 100,000 records: 1/3 x ln(100000/10001)."""
    n, carrying = 100_000, 10_000
    i = F.col("id")
    records = spark.range(n).select(
        F.when(i < 3, F.lit("u")).otherwise(F.concat(F.lit("x"), (i % 500).cast("string"))).alias("user_id"),
        # u's records 0..2: only record 0 carries t, record 1 carries another tag, record 2 none.
        F.when((i == 0) | (i >= n - (carrying - 1)), F.array(F.lit("t")))
        .when(i == 1, F.array(F.lit("s")))
        .otherwise(F.array().cast("array<string>"))
        .alias("tags"),
    )
    got = {(r.user_id, r.tag): r.weight for r in tfidf(records).collect()}

    assert round(got[("u", "t")], 4) == 0.7675  # the article prints 0.766 (its rounding)
    assert got[("u", "t")] == pytest.approx(1 / 3 * math.log(n / (carrying + 1)), rel=1e-12)
    # s is rarer than t, so the same tf gives a larger weight.
    assert got[("u", "s")] == pytest.approx(1 / 3 * math.log(n / 2), rel=1e-12)
    # Records without tags count in N and in the user's records, but give no weight.
    assert {tag for user, tag in got if user == "u"} == {"t", "s"}
    x = next(u for u, tag in got if u.startswith("x") and tag == "t")
    x_records = sum(1 for k in range(3, n) if f"x{k % 500}" == x)
    x_with_t = sum(1 for k in range(n - (carrying - 1), n) if f"x{k % 500}" == x)
    assert got[(x, "t")] == pytest.approx(x_with_t / x_records * math.log(n / (carrying + 1)), rel=1e-12)


def test_tfidf_time_decay_halves_a_record_one_half_life_old(spark):
    rows = [("u1", AFTER - timedelta(days=10), ["a"]), ("u2", AFTER, ["a"])]
    rows += [(f"f{k}", AFTER - timedelta(days=1), ["b"]) for k in range(8)]  # N = 10, n_a = 2
    records = spark.createDataFrame(rows, "user_id string, ts timestamp, tags array<string>")

    plain = {(r.user_id, r.tag): r.weight for r in tfidf(records).collect()}
    decayed = {(r.user_id, r.tag): r.weight for r in tfidf(records, as_of=AS_OF, half_life_days=10).collect()}

    assert plain[("u1", "a")] == plain[("u2", "a")] == pytest.approx(math.log(10 / 3))
    assert decayed[("u2", "a")] == pytest.approx(plain[("u2", "a")])
    assert decayed[("u1", "a")] == pytest.approx(plain[("u1", "a")] / 2)
    with pytest.raises(ValueError, match="as_of"):
        tfidf(records, half_life_days=10)


def test_tag_records_and_top_tags_order_by_weight_then_tag(spark):
    events = _events(spark, [
        ("u1", datetime(2026, 6, 1), "view", "i1", "phones", "acme"),
        ("u1", datetime(2026, 6, 2), "view", "i2", None, None),          # a record without tags
        ("u1", datetime(2026, 6, 3), "remove_cart", "i1", "phones", "acme"),  # not a TF-IDF record
        ("u1", AFTER, "view", "i3", "books", "zed"),                     # after as_of
    ])
    records = tag_records(behaviour(events, _no_orders(spark), AS_OF))
    assert sorted((r.user_id, sorted(r.tags)) for r in records.collect()) == [
        ("u1", []), ("u1", ["brand:acme", "category:phones"]),
    ]
    weights = spark.createDataFrame(
        [("u1", "b", 0.5), ("u1", "a", 0.5), ("u1", "c", 0.9), ("u1", "d", -0.1), ("u2", "a", 0.1)],
        "user_id string, tag string, weight double",
    )
    top = {r.user_id: [(t.tag, t.weight) for t in r.tfidf_top] for r in top_tags(weights, k=3).collect()}
    assert top == {"u1": [("c", 0.9), ("a", 0.5), ("b", 0.5)], "u2": [("a", 0.1)]}


# --- behaviour tags -------------------------------------------------------------------------


def test_top_categories_and_brands_weigh_actions_and_break_ties_by_name(spark):
    day = datetime(2026, 6, 20, 12)
    events = _events(spark, [
        *[("u1", day, "view", "i1", "phones", "acme")] * 3,       # phones 3
        ("u1", day, "cart", "i2", "books", "zed"),                # books 3: ties with phones
        ("u1", day, "click", "i3", "toys", "acme"),               # toys 2
        ("u1", day, "purchase", "i3", "toys", "acme"),            # purchase events weigh 0
        *[("u1", day, "remove_cart", "i4", "pets", "pawz")] * 5,  # weigh 0
        *[("u1", AFTER, "view", "i5", "shoes", "run")] * 10,      # after as_of
        ("u2", day, "remove_cart", "i4", "pets", "pawz"),         # nothing that weighs
    ])
    orders = _orders(spark, [
        ("o1", "u1", day, "i6", "food", "yum", "paid"),          # food 5
        ("o2", "u1", day, "i7", "garden", "yum", "refunded"),    # refunds do not count
    ])
    records = behaviour(events, orders, AS_OF)

    cats = top_by_weight(records, "category", k=3)
    assert cats.columns == ["user_id", "top_categories"]
    got = {r.user_id: [(c.name, c.score) for c in r.top_categories] for r in cats.collect()}
    assert got == {"u1": [("food", 5.0), ("books", 3.0), ("phones", 3.0)]}

    brands = {r.user_id: [(b.name, b.score) for b in r.top_brands] for r in top_by_weight(records, "brand").collect()}
    # acme: 3 views + 1 click = 5 ties with yum's paid order (5); zed 3.
    assert brands == {"u1": [("acme", 5.0), ("yum", 5.0), ("zed", 3.0)]}

    # Different weights change the order: orders alone.
    only_orders = top_by_weight(records, "category", k=3, weights={"order": 1.0}).collect()
    assert [(c.name, c.score) for c in only_orders[0].top_categories] == [("food", 1.0)]
    with pytest.raises(ValueError):
        top_by_weight(records, "category", weights={"view": -1.0})


def test_last_viewed_categories_are_the_newest_distinct_views(spark):
    events = _events(spark, [
        ("u1", datetime(2026, 6, 1), "view", "i1", "a", None),
        ("u1", datetime(2026, 6, 2), "view", "i2", "b", None),
        ("u1", datetime(2026, 6, 3), "view", "i3", "c", None),
        ("u1", datetime(2026, 6, 3), "view", "i4", "a", None),     # a again, at the same time as c
        ("u1", datetime(2026, 6, 4), "click", "i5", "e", None),    # a click is not a view
        ("u1", AFTER, "view", "i6", "d", None),                    # after as_of
        ("u1", datetime(2026, 6, 5), "view", "i7", None, None),    # no category
    ])
    assert last_viewed_categories(events, AS_OF, n=2).collect()[0].last_viewed_categories == ["a", "c"]
    assert last_viewed_categories(events, AS_OF, n=5).collect()[0].last_viewed_categories == ["a", "c", "b"]


def test_cart_abandons_count_carts_not_bought_within_the_window(spark):
    def at(day, hour=10):
        return datetime(2026, 6, day, hour)

    events = _events(spark, [
        ("u1", at(28), "cart", "i1", "c", "b"), ("u1", at(28) + timedelta(minutes=20), "purchase", "i1", "c", "b"),
        ("u1", at(28), "cart", "i2", "c", "b"),                                  # bought by order below
        ("u1", at(27), "cart", "i3", "c", "b"),                                  # refunded order: bought
        ("u1", at(26), "cart", "i4", "c", "b"), ("u1", at(28), "purchase", "i4", "c", "b"),  # too late
        ("u1", at(29, 12), "cart", "i5", "c", "b"),                              # never bought
        ("u1", at(30, 12), "cart", "i6", "c", "b"),                              # still open (< 24 h)
        ("u1", at(23), "cart", "i7", "c", "b"),                                  # before the 7 days
        ("u1", datetime(2026, 7, 1, 9), "cart", "i8", "c", "b"),                 # after as_of
        ("u1", at(25), "cart", "i9", "c", "b"), ("u2", at(25, 11), "purchase", "i9", "c", "b"),  # other user
        ("u1", at(28), "cart", None, "c", "b"),                                  # no item: not judged
        ("u1", at(28), "cart", "i10", "c", "b"), ("u1", at(28, 9), "purchase", "i10", "c", "b"),  # bought before
        ("u1", datetime(2026, 6, 24), "cart", "i11", "c", "b"),                  # exactly as_of - 7 days
        ("u1", datetime(2026, 6, 30), "cart", "i12", "c", "b"),                  # exactly as_of - window
        ("u1", at(28), "remove_cart", "i13", "c", "b"),                          # a removal is no cart add
    ])
    orders = _orders(spark, [
        ("o2", "u1", at(28, 11), "i2", "c", "b", "paid"),
        ("o3", "u1", at(27, 12), "i3", "c", "b", "refunded"),
        ("o9", "u1", datetime(2026, 7, 1, 1), "i12", "c", "b", "paid"),  # after as_of: does not rescue i12
    ])
    got = {r.user_id: r.cart_abandons_7d for r in cart_abandons(events, orders, AS_OF).collect()}
    assert got == {"u1": 6}  # i4, i5, i9, i10, i11, i12
    # With a 1-hour window, i2 (bought exactly 1 h later), i3 (2 h later) and i6 (now judged) are
    # abandoned too; i1 (bought after 20 minutes) is still not.
    short = cart_abandons(events, orders, AS_OF, window=timedelta(hours=1)).collect()
    assert short[0].cart_abandons_7d == 9
    with pytest.raises(ValueError):
        cart_abandons(events, orders, AS_OF, window=timedelta(days=8))


def test_purchases_by_category_counts_distinct_paid_orders(spark):
    day = datetime(2026, 6, 1)
    orders = _orders(spark, [
        ("o1", "u1", day, "i1", "phones", "b", "paid"),
        ("o2", "u1", day, "i2", "phones", "b", "paid"),
        ("o2", "u1", day, "i2", "phones", "b", "paid"),   # same order twice: one order
        ("o3", "u1", day, "i3", "phones", "b", "refunded"),
        ("o4", "u1", day, "i4", "books", "b", "paid"),
        ("o5", "u1", AFTER, "i5", "books", "b", "paid"),  # after as_of
        ("o6", "u1", day, "i6", None, "b", "paid"),       # no category
        ("o7", "u2", day, "i7", "toys", "b", "refunded"),  # only a refund: no row
    ])
    got = {r.user_id: r.purchases_by_category for r in purchases_by_category(orders, AS_OF).collect()}
    assert got == {"u1": {"books": 1, "phones": 2}}


def test_behaviour_tags_have_one_row_per_active_user_with_empty_defaults(spark):
    day = datetime(2026, 6, 20)
    events = _events(spark, [
        ("u1", day, "view", "i1", "phones", "acme"),
        ("u3", AFTER, "view", "i1", "phones", "acme"),  # only after as_of: no row
    ])
    orders = _orders(spark, [("o1", "u2", day, "i2", "books", "zed", "paid")])
    got = {r.user_id: r for r in behaviour_tags(events, orders, AS_OF).collect()}

    assert set(got) == {"u1", "u2"}
    u1, u2 = got["u1"], got["u2"]
    assert [c.name for c in u1.top_categories] == ["phones"] and u1.purchases_by_category == {}
    assert u1.last_viewed_categories == ["phones"] and u1.cart_abandons_7d == 0
    assert [c.name for c in u2.top_categories] == ["books"] and u2.purchases_by_category == {"books": 1}
    assert u2.last_viewed_categories == [] and u2.cart_abandons_7d == 0


# --- interaction matrix ---------------------------------------------------------------------


def test_interactions_take_the_strongest_action_per_user_and_item(spark):
    day = datetime(2026, 6, 20)
    events = _events(spark, [
        ("u1", day, "view", "i1", "c", "b"),
        ("u1", day, "click", "i2", "c", "b"),
        ("u1", day, "view", "i2", "c", "b"),
        ("u1", day, "purchase", "i3", "c", "b"),
        ("u2", day, "view", "i1", "c", "b"),
        ("u2", day, "remove_cart", "i5", "c", "b"),  # not an interaction
        ("u2", day, "view", None, "c", "b"),         # no item
        ("u2", AFTER, "purchase", "i1", "c", "b"),   # after as_of
    ])
    orders = _orders(spark, [
        ("o1", "u1", day, "i1", "c", "b", "paid"),          # purchase beats the view
        ("o2", "u2", AFTER, "i4", "c", "b", "paid"),        # after as_of
        ("o3", "u2", day, "i2", "c", "b", "refunded"),      # refunds are no purchase
    ])
    entries = interactions(events, orders, AS_OF)
    assertDataFrameEqual(
        entries,
        spark.createDataFrame(
            [("u1", "i1", 2), ("u1", "i2", 1), ("u1", "i3", 2), ("u2", "i1", 1)],
            "user_id string, item_id string, value int",
        ),
    )
    matrix, users, items = index_interactions(entries)
    assert sorted((r.user_idx, r.user_id) for r in users.collect()) == [(0, "u1"), (1, "u2")]
    assert sorted((r.item_idx, r.item_id) for r in items.collect()) == [(0, "i1"), (1, "i2"), (2, "i3")]
    assert sorted(tuple(r) for r in matrix.collect()) == [(0, 0, 2), (0, 1, 1), (0, 2, 2), (1, 0, 1)]


# --- main -----------------------------------------------------------------------------------


def test_main_needs_orders_works_without_events_and_skips_forgotten_users(settings_factory, spark):
    from cluster.core.errors import FailedPrecondition
    from cluster.core.storage import Zone, open_lake, open_profile_store
    from cluster.core.tombstones import Tombstones
    from spark_jobs import tags

    settings = settings_factory()
    with pytest.raises(FailedPrecondition, match="ingest"):
        tags.main(settings)
    lake = open_lake(settings)
    # A raw zone with orders only (events are optional in a delivery).
    _orders(spark, [
        ("o1", "u1", datetime(2026, 6, 1), "i1", "phones", "acme", "paid"),
        ("o2", "u1", datetime(2026, 6, 2), "i2", "books", "zed", "paid"),
        ("o3", "u1", datetime(2026, 6, 3), "i2", "books", "zed", "paid"),
        ("o4", "u2", datetime(2026, 6, 30), "i1", "phones", "acme", "refunded"),
        ("o5", "gone", datetime(2026, 6, 3), "i3", "toys", "fun", "paid"),
    ]).write.parquet(lake.uri(Zone.RAW, "orders"))
    Tombstones(lake).add("gone")

    meta = tags.main(settings, run_id="orders-only")

    assert meta["as_of"] == "2026-07-01" and meta["users"] == 1  # u2 has only a refund, "gone" is forgotten
    assert lake.read_json(Zone.FEATURES, "tags", "latest.json")["path"] == meta["paths"]["tags"]
    row = lake.read_parquet(meta["paths"]["tags"]).iloc[0]
    assert [c["name"] for c in row["top_categories"]] == ["books", "phones"]
    assert list(row["last_viewed_categories"]) == [] and row["cart_abandons_7d"] == 0
    loaded = tags.load_interactions(lake, run_id="orders-only")
    assert loaded.matrix.toarray().tolist() == [[2.0, 2.0]] and loaded.item_ids == ["i1", "i2"]
    store = open_profile_store(settings)
    try:
        assert store.read("gone") is None and store.read("u2") is None
        top = json.loads(store.read("u1", ["t:top_categories"])["t:top_categories"])
        assert top == [["books", 10.0], ["phones", 5.0]]
    finally:
        store.close()


# --- generated data -------------------------------------------------------------------------

USERS, DAYS, SEED = 2000, 90, 7


@pytest.fixture(scope="module")
def generated(settings_factory, spark, tmp_path_factory):
    """Generate -> ingest -> tags once; the tests below only read what it wrote."""
    import time

    from cluster.datagen import generate
    from spark_jobs import ingest, tags

    settings = settings_factory()
    data = tmp_path_factory.mktemp("tags-gen") / "input"
    generate(data, users=USERS, days=DAYS, seed=SEED)
    ingest.main(settings, data)
    began = time.perf_counter()
    meta = tags.main(settings, run_id="run-tags")
    seconds = time.perf_counter() - began
    truth = pd.read_csv(data / "_truth" / "users.csv", dtype={"user_id": str})
    return {"settings": settings, "meta": meta, "truth": truth, "seconds": seconds}


def _tag_table(generated):
    from cluster.core.storage import open_lake

    return open_lake(generated["settings"]).read_parquet(generated["meta"]["paths"]["tags"])


def test_top_category_recovers_the_planted_preference(generated):
    """Share of users whose top category is the planted ``top_category``.

    Measured on 2,000 users x 90 days (seed 7): 0.495 overall; 0.57 for users whose top score is
    at least twice the runner-up's (or who have one category), 0.39 for the others; the planted
    category is in the top three for 0.73. That is what the data allows: drawing each user's
    orders and sessions from their planted preference vector and taking the most drawn category
    recovers the arg-max for 0.53 of users, because the vectors are flat (top share 0.45,
    runner-up 0.25) and most users order 1-4 times in 90 days.

    Thresholds: 0.46 overall. Broken variants measured on the same data: the category of the
    user's newest record 0.43, of the oldest 0.45, scores sorted the wrong way (last of the top
    three) 0.34, alphabetical among the top three 0.39; chance is 0.10 and the best constant guess
    0.17. A score that does not measure preference also shows no gap between clear and unclear
    leads.
    """
    table = _tag_table(generated)
    truth = generated["truth"]
    names = table["top_categories"].map(lambda cs: [c["name"] for c in cs])
    scores = table["top_categories"].map(lambda cs: [c["score"] for c in cs])
    table = table.assign(
        top=names.map(lambda n: n[0] if n else None),
        names=names,
        clear=scores.map(lambda s: len(s) == 1 or (len(s) > 1 and s[0] >= 2 * s[1])),
    )
    joined = truth.merge(table[["user_id", "top", "names", "clear"]], on="user_id", how="inner")
    assert len(joined) >= 0.9 * len(truth)
    ok = joined["top"] == joined["top_category"]
    recovered = ok.mean()
    constant = joined["top_category"].value_counts(normalize=True).iloc[0]
    in_top3 = pd.Series([t in n for t, n in zip(joined["top_category"], joined["names"])]).mean()
    clear, unclear = ok[joined["clear"]].mean(), ok[~joined["clear"]].mean()
    print(f"top-category recovery {recovered:.3f} over {len(joined)} users (clear lead {clear:.3f}, "
          f"other {unclear:.3f}, in top 3 {in_top3:.3f}); best constant {constant:.3f}; "
          f"tags.main {generated['seconds']:.1f} s")
    assert recovered >= 0.46
    assert recovered >= 2.5 * constant
    assert in_top3 >= 0.65
    # A clear lead is right more often: the score measures preference, not noise.
    assert clear >= 0.5 and clear - unclear >= 0.1


def test_profile_store_holds_the_tags_of_the_lake_table(generated):
    from cluster.core.storage import decode_str, open_profile_store
    from spark_jobs.tags import TAG_COLUMNS

    table = _tag_table(generated).set_index("user_id")
    sample = table.sample(n=20, random_state=5)
    store = open_profile_store(generated["settings"])
    try:
        assert store.count_users() == len(table) == generated["meta"]["users"]
        for user_id, row in sample.iterrows():
            cells = {k: decode_str(v) for k, v in store.read(user_id, list(TAG_COLUMNS.values())).items()}
            assert set(cells) == set(TAG_COLUMNS.values())
            top = json.loads(cells["t:top_categories"])
            assert [name for name, _ in top] == [c["name"] for c in row["top_categories"]]
            assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
            assert json.loads(cells["t:last_viewed_categories"]) == list(row["last_viewed_categories"])
            assert int(cells["t:cart_abandons_7d"]) == row["cart_abandons_7d"]
            assert json.loads(cells["t:purchases_by_category"]) == dict(row["purchases_by_category"])
            tfidf_top = json.loads(cells["t:tfidf_top"])
            assert 1 <= len(tfidf_top) <= 10 and all(t.split(":")[0] in ("category", "brand") for t, _ in tfidf_top)
            assert all(a[1] >= b[1] for a, b in zip(tfidf_top, tfidf_top[1:]))
            assert cells["t:as_of"] == generated["meta"]["as_of"] and cells["t:run"] == "run-tags"
    finally:
        store.close()


def test_interaction_matrix_loads_as_csr_with_purchases_as_two(generated, spark):
    from cluster.core.storage import Zone, open_lake
    from spark_jobs.tags import load_interactions

    lake = open_lake(generated["settings"])
    loaded = load_interactions(lake)
    m = loaded.matrix
    assert loaded.meta["run_id"] == "run-tags"
    assert m.shape == (len(loaded.user_ids), len(loaded.item_ids)) == (loaded.meta["users"], loaded.meta["items"])
    assert m.nnz == loaded.meta["nonzero"] and set(m.data) <= {1.0, 2.0}
    assert loaded.user_ids == sorted(loaded.user_ids) and loaded.item_ids == sorted(loaded.item_ids)
    # Every paid order before as_of is a 2 in its user's row.
    row = {u: i for i, u in enumerate(loaded.user_ids)}
    col = {t: i for i, t in enumerate(loaded.item_ids)}
    paid = (
        spark.read.parquet(lake.uri(Zone.RAW, "orders"))
        .where((F.col("status") == "paid") & F.col("item_id").isNotNull())
        .select("user_id", "item_id").orderBy("user_id", "item_id").limit(200).collect()
    )
    assert all(m[row[r.user_id], col[r.item_id]] == 2 for r in paid)
    # Most interacted cells are views/clicks: a matrix of only purchases would be a bug.
    assert (m.data == 1).sum() > 0 and (m.data == 2).sum() > 0
