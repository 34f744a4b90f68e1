"""Behaviour tags, TF-IDF tag weights and the user-item interaction matrix.

The transforms are pure ``DataFrame -> DataFrame`` functions of the raw-zone events and orders
(docs/data-contract.md) and an as-of day; everything on or after ``as_of`` (00:00 UTC) is ignored.
Only :func:`main` reads the lake and writes the lake and the profile store. docs/features-tags.md
has the definitions with their reasons; in short:

* **Behaviour records** (:func:`behaviour`): every event, plus every *paid order line* as a
  pseudo-action ``order``. Orders, not ``purchase`` events, stand for purchases: every purchase
  is an order line, while app purchase events miss mini-program and server-side orders, and
  counting both would count one purchase twice. ``purchase`` events are therefore not weighted.
* **Top categories / brands**: score = sum over the user's records of :data:`ACTION_WEIGHTS`
  (view 1, click 2, favorite 3, cart 3, order 5; purchase and remove_cart 0). The ``top_k`` best,
  ties broken by name (Unicode code-point order), so the result never depends on partitioning.
* **Last-viewed categories**: the ``last_viewed`` most recently viewed distinct categories
  (``view`` events only), newest first; a tie in time goes to the smaller name.
* **Cart abandonments, 7 days**: ``cart`` events with an item, added in
  ``[as_of - 7 days, as_of - window]``, not followed within ``window`` (default 24 h) by a
  purchase of the same item by the same user (a ``purchase`` event or an order of either status:
  a later refund does not make the cart abandoned). Carts younger than ``window`` are still open
  and are counted by a later run. Each cart event counts once.
* **Purchases per category**: distinct paid orders per category (refunds excluded, as in RFM).
* **TF-IDF** (:func:`tfidf`): records are the behaviour records of :data:`TFIDF_ACTIONS`; a record
  carries the tags ``category:<name>`` and ``brand:<name>``. For user u and tag t,
  ``tf = (u's records carrying t) / (u's records)`` and ``idf = ln(N / (n_t + 1))`` with N all
  records and n_t the records carrying t.
* **Interaction matrix** (:func:`interactions`): per (user, item) the maximum of 1 (view, click,
  favorite or cart) and 2 (purchase event or paid order); 0 means no interaction and is absent.
  Users and items are indexed 0..n-1 in id order (:func:`index_interactions`);
  :func:`load_interactions` turns the lake copy into a ``scipy.sparse.csr_matrix``.

Lake tables written by :func:`main` (each run folder has ``_meta.json``, each feature a
``latest.json`` pointing at its newest run)::

    features/tags/run=<run_id>/                      one row per user (columns of behaviour_tags + tfidf_top)
    features/tag_weights/run=<run_id>/               user_id, tag, weight
    features/interactions/run=<run_id>/matrix/       user_idx, item_idx, value
    features/interactions/run=<run_id>/users/        user_idx, user_id
    features/interactions/run=<run_id>/items/        item_idx, item_id

Profile-store columns (family ``t``, :data:`TAG_COLUMNS`), one row per user with a behaviour
record before ``as_of``; JSON is UTF-8 text without ASCII escapes, numbers rounded to 4 decimals:

* ``t:top_categories``: JSON ``[[category, score], ...]``, best first, at most ``top_k``;
* ``t:top_brands``: JSON ``[[brand, score], ...]``, best first, at most ``top_k``;
* ``t:last_viewed_categories``: JSON ``[category, ...]``, newest first, at most ``last_viewed``;
* ``t:cart_abandons_7d``: integer, cart abandonments in the 7 days before ``as_of``;
* ``t:purchases_by_category``: JSON ``{category: distinct paid orders}``, keys sorted;
* ``t:tfidf_top``: JSON ``[[tag, weight], ...]``, heaviest first, at most ``tfidf_top_k``;
* ``t:as_of``: the as-of day, ``YYYY-MM-DD``; ``t:run``: the run id.

Users who asked to be forgotten (tombstones) are left out of every output. Users absent from a
run for another reason (no record before ``as_of``) keep the cells of their last run, as with RFM.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping
from datetime import date, datetime, timedelta
from types import MappingProxyType

from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from cluster.core.catalog import INTERACTIONS, TAG_WEIGHTS, TAGS
from cluster.core.feature_io import (  # re-exported (Spark-free)
    Interactions,
    load_interactions,
)
from cluster.core.settings import Settings
from spark_jobs.context import JobContext, Progress
from spark_jobs.transforms import default_as_of

__all__ = [
    "ACTION_WEIGHTS",
    "TFIDF_ACTIONS",
    "INTERACTION_VALUES",
    "ORDER_ACTION",
    "CART_LOOKBACK",
    "TAG_COLUMNS",
    "EVENT_COLUMNS",
    "Interactions",
    "behaviour",
    "top_by_weight",
    "last_viewed_categories",
    "cart_abandons",
    "purchases_by_category",
    "behaviour_tags",
    "tag_records",
    "tfidf",
    "top_tags",
    "user_tags",
    "interactions",
    "index_interactions",
    "load_interactions",
    "main",
]

log = logging.getLogger(__name__)

#: Pseudo-action of a paid order line in the behaviour records.
ORDER_ACTION = "order"
#: Weight of each action in the top-category / top-brand score; actions not listed weigh 0.
#: ``purchase`` events are left out on purpose: the order line is the same purchase (module doc).
ACTION_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"view": 1.0, "click": 2.0, "favorite": 3.0, "cart": 3.0, ORDER_ACTION: 5.0}
)
#: Actions whose records count as TF-IDF records (the same set that carries interest above).
TFIDF_ACTIONS: tuple[str, ...] = ("view", "click", "favorite", "cart", ORDER_ACTION)
#: Interaction-matrix value of each action; the cell is the maximum over the user's records.
INTERACTION_VALUES: Mapping[str, int] = MappingProxyType(
    {"view": 1, "click": 1, "favorite": 1, "cart": 1, "purchase": 2, ORDER_ACTION: 2}
)
#: How far back cart abandonments are counted (the ``7d`` of ``t:cart_abandons_7d``).
CART_LOOKBACK = timedelta(days=7)

#: Raw-zone event columns the transforms use (the schema of an empty events table).
EVENT_COLUMNS = (
    "event_id string, user_id string, ts timestamp, action string, item_id string, category string, brand string"
)

#: Profile-store columns written by this job.
TAG_COLUMNS = {
    "top_categories": "t:top_categories",
    "top_brands": "t:top_brands",
    "last_viewed_categories": "t:last_viewed_categories",
    "cart_abandons_7d": "t:cart_abandons_7d",
    "purchases_by_category": "t:purchases_by_category",
    "tfidf_top": "t:tfidf_top",
    "as_of": "t:as_of",
    "run_id": "t:run",
}


def _cutoff(as_of: date) -> datetime:
    return datetime.combine(as_of, datetime.min.time())


def _weight_of(action: Column, weights: Mapping[str, float]) -> Column:
    for name, w in weights.items():
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"weight of action {name!r} must be a finite number >= 0, got {w!r}")
    if not weights:
        return F.lit(0.0)
    table = F.create_map(*[F.lit(x) for kv in weights.items() for x in kv])
    return F.coalesce(table[action].cast("double"), F.lit(0.0))


def behaviour(events: DataFrame, orders: DataFrame, as_of: date) -> DataFrame:
    """One row per behaviour record before ``as_of``: events plus paid order lines.

    Args:
        events: Raw-zone events (``user_id``, ``ts``, ``action``, ``item_id``, ``category``, ``brand``).
        orders: Raw-zone orders (``user_id``, ``order_time``, ``item_id``, ``category``, ``brand``,
            ``status``).
        as_of: Records at or after 00:00 UTC of this day are ignored.

    Returns:
        ``user_id``, ``ts``, ``action`` (an event action or :data:`ORDER_ACTION`), ``item_id``,
        ``category``, ``brand``.
    """
    cutoff = F.lit(_cutoff(as_of))
    cols = ["user_id", "ts", "action", "item_id", "category", "brand"]
    ev = events.where(F.col("ts") < cutoff).select(*cols)
    od = orders.where((F.col("status") == "paid") & (F.col("order_time") < cutoff)).select(
        "user_id", F.col("order_time").alias("ts"), F.lit(ORDER_ACTION).alias("action"), "item_id", "category", "brand"
    )
    return ev.unionByName(od)


def _top_k(name: str, score: str, k: int) -> Column:
    """Aggregate: the ``k`` (name, score) pairs with the highest score, ties to the smaller name."""
    # Sorting structs (-score, name) ascending gives score descending, then name ascending.
    ranked = F.sort_array(F.collect_list(F.struct((-F.col(score)).alias("neg"), F.col(name).alias("name"))))
    return F.slice(ranked, 1, k)


_TOP_COLUMN = {"category": "top_categories", "brand": "top_brands"}


def top_by_weight(records: DataFrame, column: str, k: int = 3,
                  weights: Mapping[str, float] = ACTION_WEIGHTS) -> DataFrame:
    """The ``k`` values of ``column`` with the highest weighted score per user.

    Args:
        records: Output of :func:`behaviour`.
        column: ``category`` or ``brand`` (null values are skipped).
        k: How many to keep (>= 1).
        weights: Action -> weight (>= 0); records of other actions weigh 0.

    Returns:
        ``user_id`` and ``top_categories`` (or ``top_brands``): array of structs ``(name, score)``,
        best first, ties broken by the smaller name; users without a positive score have no row.

    Raises:
        ValueError: ``k`` < 1 or a weight is negative or not finite.
    """
    if column not in _TOP_COLUMN:
        raise ValueError(f"column must be one of {sorted(_TOP_COLUMN)}, got {column!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scored = (
        records.where(F.col(column).isNotNull())
        .withColumn("_w", _weight_of(F.col("action"), weights))
        .where(F.col("_w") > 0)
        .groupBy("user_id", column)
        .agg(F.sum("_w").alias("_score"))
    )
    top = _top_k(column, "_score", k)
    return scored.groupBy("user_id").agg(top.alias("_top")).select(
        "user_id",
        F.transform("_top", lambda s: F.struct(s["name"].alias("name"), (-s["neg"]).alias("score"))).alias(
            _TOP_COLUMN[column]
        ),
    )


def last_viewed_categories(events: DataFrame, as_of: date, n: int = 5) -> DataFrame:
    """The ``n`` most recently viewed distinct categories per user, newest first.

    Only ``view`` events before ``as_of`` count. A category's time is its latest view; equal
    times go to the smaller name.

    Returns:
        ``user_id``, ``last_viewed_categories`` (array of strings).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cutoff = F.lit(_cutoff(as_of))
    views = (
        events.where((F.col("action") == "view") & (F.col("ts") < cutoff) & F.col("category").isNotNull())
        .groupBy("user_id", "category")
        .agg(F.unix_micros(F.max("ts")).alias("_last"))
    )
    return views.groupBy("user_id").agg(_top_k("category", "_last", n).alias("_top")).select(
        "user_id", F.transform("_top", lambda s: s["name"]).alias("last_viewed_categories")
    )


def cart_abandons(events: DataFrame, orders: DataFrame, as_of: date,
                  window: timedelta = timedelta(hours=24)) -> DataFrame:
    """Cart adds in the 7 days before ``as_of`` that were not bought within ``window``.

    A ``cart`` event at time c with an item counts when ``as_of - 7 days <= c <= as_of - window``
    (its window has closed by ``as_of``) and no ``purchase`` event and no order (paid or refunded)
    of the same user and item falls in ``[c, c + window)``. Carts without an item cannot be
    judged and are skipped. ``remove_cart`` changes nothing: removing is abandoning.

    Returns:
        ``user_id``, ``cart_abandons_7d`` (int >= 1; users without abandonments have no row).

    Raises:
        ValueError: ``window`` is not positive or not shorter than the 7-day look-back.
    """
    if not timedelta(0) < window < CART_LOOKBACK:
        raise ValueError(f"window must be positive and shorter than {CART_LOOKBACK}, got {window}")
    cutoff = _cutoff(as_of)
    carts = events.where(
        (F.col("action") == "cart")
        & F.col("item_id").isNotNull()
        & (F.col("ts") >= F.lit(cutoff - CART_LOOKBACK))
        & (F.col("ts") <= F.lit(cutoff - window))
    ).select("user_id", "item_id", "ts")
    bought = events.where(F.col("action") == "purchase").select("user_id", "item_id", F.col("ts").alias("_bought"))
    bought = bought.unionByName(orders.select("user_id", "item_id", F.col("order_time").alias("_bought")))
    bought = bought.where(F.col("item_id").isNotNull() & (F.col("_bought") < F.lit(cutoff)))
    c, b = carts.alias("c"), bought.alias("b")
    converted = (
        (F.col("c.user_id") == F.col("b.user_id"))
        & (F.col("c.item_id") == F.col("b.item_id"))
        & (F.col("b._bought") >= F.col("c.ts"))
        & (F.unix_micros("b._bought") < F.unix_micros("c.ts") + F.lit(window // timedelta(microseconds=1)))
    )
    abandoned = c.join(b, converted, "left_anti")
    return abandoned.groupBy("user_id").agg(F.count(F.lit(1)).cast("int").alias("cart_abandons_7d"))


def purchases_by_category(orders: DataFrame, as_of: date) -> DataFrame:
    """Distinct paid orders per category before ``as_of`` (orders without a category are skipped).

    Returns:
        ``user_id``, ``purchases_by_category`` (map category -> int).
    """
    per_cat = (
        orders.where(
            (F.col("status") == "paid") & (F.col("order_time") < F.lit(_cutoff(as_of))) & F.col("category").isNotNull()
        )
        .groupBy("user_id", "category")
        .agg(F.countDistinct("order_id").cast("int").alias("_n"))
    )
    return per_cat.groupBy("user_id").agg(
        F.map_from_entries(F.sort_array(F.collect_list(F.struct("category", "_n")))).alias("purchases_by_category")
    )


def behaviour_tags(
    events: DataFrame,
    orders: DataFrame,
    as_of: date,
    *,
    top_k: int = 3,
    last_viewed: int = 5,
    abandon_window: timedelta = timedelta(hours=24),
    weights: Mapping[str, float] = ACTION_WEIGHTS,
) -> DataFrame:
    """All behaviour tags, one row per user with a behaviour record before ``as_of``.

    Args:
        events: Raw-zone events.
        orders: Raw-zone orders.
        as_of: The day tags are computed for; later records are ignored.
        top_k: Categories and brands kept by :func:`top_by_weight`.
        last_viewed: Categories kept by :func:`last_viewed_categories`.
        abandon_window: Time a cart has to be bought in (:func:`cart_abandons`).
        weights: Action weights of the top-category / top-brand score.

    Returns:
        ``user_id``, ``top_categories``, ``top_brands`` (arrays of ``(name, score)``, possibly
        empty), ``last_viewed_categories`` (array), ``cart_abandons_7d`` (int, 0 when none),
        ``purchases_by_category`` (map, possibly empty).
    """
    records = behaviour(events, orders, as_of)
    users = records.select("user_id").distinct()
    pair = "array<struct<name:string,score:double>>"
    parts = [
        top_by_weight(records, "category", top_k, weights),
        top_by_weight(records, "brand", top_k, weights),
        last_viewed_categories(events, as_of, last_viewed),
        cart_abandons(events, orders, as_of, abandon_window),
        purchases_by_category(orders, as_of),
    ]
    out = users
    for part in parts:
        out = out.join(part, "user_id", "left")
    return out.select(
        "user_id",
        F.coalesce("top_categories", F.array().cast(pair)).alias("top_categories"),
        F.coalesce("top_brands", F.array().cast(pair)).alias("top_brands"),
        F.coalesce("last_viewed_categories", F.array().cast("array<string>")).alias("last_viewed_categories"),
        F.coalesce("cart_abandons_7d", F.lit(0)).alias("cart_abandons_7d"),
        F.coalesce("purchases_by_category", F.create_map().cast("map<string,int>")).alias("purchases_by_category"),
    )


def tag_records(records: DataFrame, actions: Collection[str] = TFIDF_ACTIONS) -> DataFrame:
    """TF-IDF records: the behaviour records of ``actions``, each with the tags it carries.

    Returns:
        ``user_id``, ``ts``, ``tags`` (array of ``category:<name>`` and ``brand:<name>``, without
        nulls; a record without category and brand carries no tag but still counts as a record).
    """
    tags = F.array_compact(
        F.array(F.concat(F.lit("category:"), F.col("category")), F.concat(F.lit("brand:"), F.col("brand")))
    )
    return records.where(F.col("action").isin(*actions)).select("user_id", "ts", tags.alias("tags"))


def tfidf(records: DataFrame, *, as_of: date | None = None, half_life_days: float | None = None) -> DataFrame:
    """TF-IDF weight of every (user, tag) with at least one record.

    ``weight = tf * idf`` with ``tf = (u's records carrying t) / (u's records)`` and
    ``idf = ln(N / (n_t + 1))``, N all records and n_t the records carrying t: the source
    article's definition. Its worked example (a tag in 1 of a user's 3 records and in 10,000 of
    100,000 records) gives 1/3 x ln(100000 / 10001) = 0.767495, i.e. 0.7675; the article prints
    0.766, which its formula does not give (nor does it without the +1: 0.767528), so this
    follows the formula, not the printed figure. The +1 makes the idf of a tag carried by
    (nearly) every record zero or slightly negative.

    Time decay (optional): each record of u carrying t counts ``0.5 ** (age_days / half_life_days)``
    in the numerator of tf (age from the record to ``as_of``), while the denominator stays u's
    record count, so old interests fade in absolute terms; idf is not decayed. Without
    ``half_life_days`` the article's formula is reproduced exactly.

    Args:
        records: One row per record: ``user_id``, ``tags`` (array of strings) and, for decay,
            ``ts``; records after ``as_of`` must already be gone (``tag_records(behaviour(...))``).
        as_of: Reference day of the decay (required with ``half_life_days``).
        half_life_days: Half-life of the decay in days; ``None`` for no decay.

    Returns:
        ``user_id``, ``tag``, ``weight`` (double).

    Raises:
        ValueError: ``half_life_days`` is not positive, or given without ``as_of``.
    """
    if half_life_days is None:
        decay = F.lit(1.0)
    else:
        if not half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
        if as_of is None:
            raise ValueError("time decay needs as_of")
        age_days = (F.lit(_cutoff(as_of)).cast("long") - F.col("ts").cast("long")) / 86400.0
        decay = F.pow(F.lit(0.5), age_days / F.lit(float(half_life_days)))
    total = records.agg(F.count(F.lit(1)).alias("_n"))
    per_user = records.groupBy("user_id").agg(F.count(F.lit(1)).alias("_n_user"))
    carried = records.select("user_id", F.explode(F.array_distinct("tags")).alias("tag"), decay.alias("_d"))
    per_user_tag = carried.groupBy("user_id", "tag").agg(F.sum("_d").alias("_hits"))
    per_tag = carried.groupBy("tag").agg(F.count(F.lit(1)).alias("_n_t"))
    return (
        per_user_tag.join(per_user, "user_id")
        .join(per_tag, "tag")
        .crossJoin(F.broadcast(total))
        .select(
            "user_id",
            "tag",
            (F.col("_hits") / F.col("_n_user") * F.log(F.col("_n") / (F.col("_n_t") + 1))).alias("weight"),
        )
    )


def top_tags(weights: DataFrame, k: int = 10) -> DataFrame:
    """Each user's ``k`` heaviest tags.

    Returns:
        ``user_id``, ``tfidf_top``: array of structs ``(tag, weight)``, heaviest first, ties
        broken by the smaller tag.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return weights.groupBy("user_id").agg(_top_k("tag", "weight", k).alias("_top")).select(
        "user_id",
        F.transform("_top", lambda s: F.struct(s["name"].alias("tag"), (-s["neg"]).alias("weight"))).alias("tfidf_top"),
    )


def user_tags(
    events: DataFrame,
    orders: DataFrame,
    as_of: date,
    weights_df: DataFrame,
    *,
    tfidf_top_k: int = 10,
    **tag_options,
) -> DataFrame:
    """The tags table: :func:`behaviour_tags` with each user's :func:`top_tags` (``tfidf_top``, empty
    for a user without tag weights).

    Args:
        weights_df: Output of :func:`tfidf`.
        tfidf_top_k: Tags kept per user in ``tfidf_top``.
        tag_options: Keyword arguments of :func:`behaviour_tags`.
    """
    return (
        behaviour_tags(events, orders, as_of, **tag_options)
        .join(top_tags(weights_df, tfidf_top_k), "user_id", "left")
        .withColumn("tfidf_top", F.coalesce("tfidf_top", F.array().cast("array<struct<tag:string,weight:double>>")))
    )


def interactions(events: DataFrame, orders: DataFrame, as_of: date,
                 values: Mapping[str, int] = INTERACTION_VALUES) -> DataFrame:
    """The user-item interaction strength before ``as_of``, in sparse form.

    Args:
        events: Raw-zone events.
        orders: Raw-zone orders (paid order lines count as :data:`ORDER_ACTION`).
        as_of: Later records are ignored.
        values: Action -> cell value; actions not listed (``remove_cart``) are ignored.

    Returns:
        ``user_id``, ``item_id``, ``value`` (int, the maximum over the user's records of the
        item: 1 view / click / favorite / cart, 2 purchase); records without an item are skipped.
    """
    table = F.create_map(*[F.lit(x) for kv in values.items() for x in kv])
    return (
        behaviour(events, orders, as_of)
        .where(F.col("item_id").isNotNull())
        .withColumn("_v", table[F.col("action")].cast("int"))
        .where(F.col("_v").isNotNull())
        .groupBy("user_id", "item_id")
        .agg(F.max("_v").alias("value"))
    )


def _index(ids: DataFrame, column: str) -> DataFrame:
    """Distinct ``column`` values numbered 0..n-1 in sorted order (``<column minus _id>_idx``)."""
    idx = column.removesuffix("_id") + "_idx"
    spark = ids.sparkSession
    # zipWithIndex numbers a sorted RDD without gathering it in one partition (a global window would).
    numbered = ids.select(column).distinct().orderBy(column).rdd.map(lambda r: r[0]).zipWithIndex()
    schema = StructType([StructField(column, StringType(), False), StructField(idx, LongType(), False)])
    return spark.createDataFrame(numbered, schema).select(F.col(idx).cast("int"), column)


def index_interactions(entries: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Number users and items and express the interactions by index.

    Args:
        entries: Output of :func:`interactions`.

    Returns:
        ``(matrix, users, items)``: ``matrix`` has ``user_idx``, ``item_idx``, ``value``;
        ``users`` maps ``user_idx`` -> ``user_id`` and ``items`` ``item_idx`` -> ``item_id``,
        numbered 0..n-1 in id order.
    """
    users = _index(entries, "user_id")
    items = _index(entries, "item_id")
    matrix = entries.join(users, "user_id").join(items, "item_id").select("user_idx", "item_idx", "value")
    return matrix, users, items


def _pairs(items: list[Row] | None, name: str, score: str) -> str:
    return json.dumps([[r[name], round(float(r[score]), 4)] for r in items or []], ensure_ascii=False)


def _cells(r: Row) -> dict:
    return {
        TAG_COLUMNS["top_categories"]: _pairs(r.top_categories, "name", "score"),
        TAG_COLUMNS["top_brands"]: _pairs(r.top_brands, "name", "score"),
        TAG_COLUMNS["last_viewed_categories"]: json.dumps(list(r.last_viewed_categories), ensure_ascii=False),
        TAG_COLUMNS["cart_abandons_7d"]: int(r.cart_abandons_7d),
        TAG_COLUMNS["purchases_by_category"]: json.dumps(
            dict(sorted(r.purchases_by_category.items())), ensure_ascii=False
        ),
        TAG_COLUMNS["tfidf_top"]: _pairs(r.tfidf_top, "tag", "weight"),
    }


def _write_interactions(ctx: JobContext, entries: DataFrame, base: dict) -> dict:
    """Index the interactions, write the matrix and both indexes; returns the metadata to publish."""
    matrix, user_index, item_index = index_interactions(entries)
    user_index, item_index = user_index.cache(), item_index.cache()
    ctx.write_run(INTERACTIONS, user_index, "users")
    ctx.write_run(INTERACTIONS, item_index, "items")
    path = ctx.write_run(INTERACTIONS, matrix, "matrix")
    n_users, n_items = user_index.count(), item_index.count()
    nonzero = ctx.read_run(INTERACTIONS, "matrix").count()
    user_index.unpersist()
    item_index.unpersist()
    return {**base, "users": n_users, "items": n_items, "nonzero": nonzero, "path": path,
            "values": dict(INTERACTION_VALUES)}


def main(
    settings: Settings,
    *,
    as_of: date | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    top_k: int = 3,
    last_viewed: int = 5,
    abandon_window_hours: float = 24.0,
    tfidf_top_k: int = 10,
    half_life_days: float | None = None,
    weights: Mapping[str, float] = ACTION_WEIGHTS,
) -> dict:
    """Build tags, TF-IDF weights and the interaction matrix; write the lake and the profile store.

    Args:
        settings: Platform settings (lake, Spark, profile store).
        as_of: The day features are computed for; by default the day after the last order
            (:func:`spark_jobs.transforms.default_as_of`, so RFM and tags of one batch agree).
        run_id: Run id; default :func:`cluster.core.catalog.new_run_id`.
        progress: Called as ``progress(step, fraction)`` with fraction in [0, 1].
        top_k: Categories and brands kept per user.
        last_viewed: Last-viewed categories kept per user.
        abandon_window_hours: Time a cart has to be bought in before it counts as abandoned.
        tfidf_top_k: Tags kept per user in ``tfidf_top``.
        half_life_days: Time decay of TF-IDF (:func:`tfidf`); ``None`` for none.
        weights: Action weights of the top-category / top-brand score.

    Returns:
        Run metadata: ``run_id``, ``as_of``, ``users``, ``tag_weights``, ``items``,
        ``interactions`` (non-zero cells), ``paths`` (lake-relative, per feature).

    Raises:
        FailedPrecondition: no orders have been ingested yet.
    """
    ctx = JobContext.start(settings, "pmkt-tags", run_id=run_id, progress=progress)
    ctx.require_raw("orders")
    ctx.step("reading orders and events", 0.0)
    # Events are optional in a delivery: tags then come from orders alone.
    orders, events = ctx.read_raw("orders"), ctx.read_events(empty_schema=EVENT_COLUMNS)
    as_of = as_of or default_as_of(orders)
    base = {"run_id": ctx.run_id, "as_of": as_of.isoformat()}
    ctx.step("computing TF-IDF weights", 0.1)
    records = tag_records(behaviour(events, orders, as_of))
    weights_df = tfidf(records, as_of=as_of, half_life_days=half_life_days).cache()
    weights_path = ctx.write_run(TAG_WEIGHTS, weights_df)
    weights_meta = {**base, "rows": weights_df.count(), "path": weights_path, "half_life_days": half_life_days}
    ctx.step("computing behaviour tags", 0.3)
    tags = user_tags(events, orders, as_of, weights_df, top_k=top_k, last_viewed=last_viewed, tfidf_top_k=tfidf_top_k,
                     abandon_window=timedelta(hours=abandon_window_hours), weights=weights).cache()
    params = {"top_k": top_k, "last_viewed": last_viewed, "abandon_window_hours": abandon_window_hours,
              "tfidf_top_k": tfidf_top_k, "half_life_days": half_life_days, "weights": dict(weights)}
    tags_path = ctx.write_run(TAGS, tags)
    tags_meta = {**base, "users": tags.count(), "path": tags_path, "params": params}
    weights_df.unpersist()
    ctx.step("building the interaction matrix", 0.5)
    matrix_meta = _write_interactions(ctx, interactions(events, orders, as_of), base)
    ctx.step("writing profiles", 0.7)
    ctx.write_profiles(tags, _cells, {TAG_COLUMNS["as_of"]: base["as_of"], TAG_COLUMNS["run_id"]: ctx.run_id})
    tags.unpersist()
    for table, meta in ((TAG_WEIGHTS, weights_meta), (INTERACTIONS, matrix_meta), (TAGS, tags_meta)):
        ctx.publish(table, meta)
    ctx.step("done", 1.0)
    log.info("tags run %s: %d users, %d tag weights, %d interactions as of %s", ctx.run_id, tags_meta["users"],
             weights_meta["rows"], matrix_meta["nonzero"], as_of)
    paths = {TAGS.path: tags_path, TAG_WEIGHTS.path: weights_path, INTERACTIONS.path: matrix_meta["path"]}
    return {**base, "users": tags_meta["users"], "tag_weights": weights_meta["rows"], "items": matrix_meta["items"],
            "interactions": matrix_meta["nonzero"], "paths": paths}
