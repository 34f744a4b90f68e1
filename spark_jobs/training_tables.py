"""Training tables: CTR (one row per ad impression) and churn (one row per user).

Both tables are built from the raw zone and never look past their cut-off:

* **CTR** (:func:`ctr_rows`, :func:`fit_ctr_spec`, :func:`ctr_vectors`): every impression with
  the ad's own columns, the user's static attributes *on the impression day* (age band, never the
  birth date) and the user's behaviour *as of the start of the impression's UTC day*: orders and
  events of that day or later are never seen, so nothing the ad may have caused leaks into its
  features. ``cost`` is not a feature: search ads are charged per click, so a zero cost *is* the
  label. Features are encoded into one sparse vector by :func:`encode_ctr`, a pure function driven
  by a JSON feature spec, so the serving side featurises a request with the same code and spec.
* **Churn** (:func:`churn_table`): duration, churn flag and covariates for a survival model (see the
  censoring rule there).

``main`` reads the lake's raw zone and writes ``features/ctr_train/run=<run_id>/split=train|test/``
and ``features/churn/run=<run_id>/`` with ``_meta.json`` and ``latest.json``, as ``spark_jobs.rfm``
does. :func:`load_ctr_matrix` reads the CTR table back as ``scipy.sparse`` + labels for
scikit-learn; it needs neither Spark nor a JVM.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from cluster.core.catalog import CHURN, CTR_TRAIN, CTR_USERS, FEATURE_SPEC
from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.feature_io import (  # re-exported: the Spark-free half of this module's API
    AGE_EDGES,
    CHURN_COVARIATES,
    CTR_USER_INPUTS,
    MISSING,
    OTHER,
    RECENCY_BANDS,
    SPEC_FORMAT,
    CtrMatrix,
    churn_design,
    encode_ctr,
    feature_names,
    hash_bucket,
    load_ctr_matrix,
)
from cluster.core.settings import Settings
from spark_jobs.context import JobContext, Progress

__all__ = [
    "AGE_EDGES",
    "MISSING",
    "OTHER",
    "CTR_ONEHOT",
    "CTR_HASHED",
    "CTR_NUMERIC",
    "CHURN_COVARIATES",
    "SPEC_FORMAT",
    "age_band",
    "behaviour_as_of",
    "ctr_rows",
    "ctr_user_inputs",
    "time_split",
    "fit_ctr_spec",
    "hash_bucket",
    "encode_ctr",
    "feature_names",
    "ctr_vectors",
    "churn_table",
    "churn_design",
    "default_as_of",
    "CtrMatrix",
    "load_ctr_matrix",
    "main",
]

log = logging.getLogger(__name__)

#: Low-cardinality categorical inputs, one-hot encoded (vocabulary learnt on the train split).
CTR_ONEHOT: tuple[str, ...] = (
    "channel", "ad_position", "device_type", "gender", "age_band", "city", "recency_band", "top_category",
)
#: High-cardinality inputs, hashed into one shared block; a tuple of several columns is a cross.
CTR_HASHED: tuple[tuple[str, ...], ...] = (("ad_id",), ("campaign_id",), ("campaign_id", "top_category"))
#: Numeric inputs: (input column, transform); standardised with the train split's mean and std.
CTR_NUMERIC: tuple[tuple[str, str], ...] = (
    ("frequency", "log1p"), ("monetary", "log1p"), ("events_recent", "log1p"), ("top_category_share", "identity"),
)
#: Recency bands (days since the last paid order, as of the impression day): upper bounds.
_RECENCY_BANDS = RECENCY_BANDS

# Minimal raw-zone schemas of the optional datasets (users, events), for deliveries that lack them.
_EMPTY_SCHEMAS = {
    "users": "user_id string, gender string, birth_date date, city string, signup_time timestamp, "
             "opt_in_sms boolean, opt_in_push boolean, opt_in_email boolean",
    "events": "event_id string, user_id string, ts timestamp, action string, category string",
}


# ---------------------------------------------------------------------------------------------
# Shared column helpers
# ---------------------------------------------------------------------------------------------


def age_band(birth_date: Column, on: Column, edges: Sequence[int] = AGE_EDGES) -> Column:
    """Age band on a given day, from a birth date (whole years, birthdays counted exactly).

    Args:
        birth_date: Date column; null gives :data:`MISSING`.
        on: Date column of the day the age is taken on.
        edges: Increasing lower bounds of the bands after the first.

    Returns:
        A string column: ``<25``, ``25-34``, ..., ``65+`` for the default edges.
    """
    if not edges or list(edges) != sorted(set(edges)):
        raise InvalidArgument("age band edges must be a non-empty increasing sequence", field="age_edges")
    years = F.floor(F.months_between(on, birth_date) / 12)
    band = F.when(birth_date.isNull(), F.lit(MISSING)).when(years < edges[0], F.lit(f"<{edges[0]}"))
    for lo, hi in zip(edges, edges[1:]):
        band = band.when(years < hi, F.lit(f"{lo}-{hi - 1}"))
    return band.otherwise(F.lit(f"{edges[-1]}+"))


def _day_start(day: Column) -> Column:
    # Midnight UTC of a date (the session time zone is UTC, see spark_jobs.session).
    return day.cast("timestamp")


def behaviour_as_of(keys: DataFrame, orders: DataFrame, events: DataFrame, lookback_days: int = 30) -> DataFrame:
    """Per (user, day): purchase and browsing behaviour strictly before that UTC day.

    Only orders and events with a time before ``as_of_day`` 00:00 UTC are used, so an impression's
    features cannot see the impression's own day or anything later. For a single day the RFM part
    equals :func:`spark_jobs.transforms.rfm` as of that day.

    Args:
        keys: ``user_id``, ``as_of_day`` (date); duplicates are ignored.
        orders: Raw-zone orders.
        events: Raw-zone events (``user_id``, ``ts``, ``category``).
        lookback_days: Window of ``events_recent``, in days before ``as_of_day``.

    Returns:
        One row per distinct key: ``user_id``, ``as_of_day``, ``recency_days`` (days from the last
        paid order's UTC date, null without one), ``frequency`` (distinct paid orders, 0 without),
        ``monetary`` (sum of paid amounts, 0.0 without), ``events_recent`` (events in the lookback),
        ``top_category`` (most frequent category of paid orders and events, ties by name; null
        without history) and ``top_category_share`` (its share of those rows, 0.0 without).
    """
    if lookback_days < 1:
        raise InvalidArgument("lookback_days must be >= 1", field="lookback_days")
    keys = keys.select("user_id", "as_of_day").distinct().withColumn("_cut", _day_start(F.col("as_of_day")))
    paid = orders.where(F.col("status") == "paid").select(
        "user_id", "order_id", F.col("order_time").alias("_t"), "amount", "category"
    )
    k = keys.alias("k")
    bought = (
        k.join(paid.alias("o"), "user_id")
        .where(F.col("o._t") < F.col("k._cut"))
        .groupBy("user_id", "as_of_day")
        .agg(
            F.max("_t").alias("_last"),
            F.countDistinct("order_id").cast("int").alias("frequency"),
            F.round(F.sum("amount"), 2).alias("monetary"),
        )
        .withColumn("recency_days", F.datediff(F.col("as_of_day"), F.to_date("_last")).cast("int"))
        .drop("_last")
    )
    activity = paid.select("user_id", "_t", "category", F.lit(False).alias("_event")).unionByName(
        events.select("user_id", F.col("ts").alias("_t"), "category", F.lit(True).alias("_event"))
    )
    recent_from = F.col("k._cut") - F.expr(f"INTERVAL {int(lookback_days)} DAYS")
    per_cat = (
        k.join(activity.alias("a"), "user_id")
        .where(F.col("a._t") < F.col("k._cut"))
        .groupBy("user_id", "as_of_day", F.coalesce(F.col("category"), F.lit(MISSING)).alias("_cat"))
        .agg(
            F.count(F.lit(1)).alias("_n"),
            F.sum(F.when(F.col("_event") & (F.col("a._t") >= recent_from), 1).otherwise(0)).alias("_recent"),
        )
    )
    known = F.col("_cat") != MISSING
    per_user = Window.partitionBy("user_id", "as_of_day")
    ranked = per_cat.select(
        "user_id",
        "as_of_day",
        F.sum("_recent").over(per_user).cast("int").alias("events_recent"),
        F.sum(F.when(known, F.col("_n")).otherwise(0)).over(per_user).alias("_known"),
        F.when(known, F.col("_cat")).alias("top_category"),
        F.col("_n"),
        F.row_number().over(per_user.orderBy(known.desc(), F.col("_n").desc(), F.col("_cat"))).alias("_rank"),
    ).where(F.col("_rank") == 1)
    browsed = ranked.select(
        "user_id",
        "as_of_day",
        "events_recent",
        "top_category",
        F.when(F.col("top_category").isNotNull(), F.col("_n") / F.col("_known")).alias("top_category_share"),
    )
    return (
        keys.drop("_cut")
        .join(bought, ["user_id", "as_of_day"], "left")
        .join(browsed, ["user_id", "as_of_day"], "left")
        .select(
            "user_id",
            "as_of_day",
            "recency_days",
            F.coalesce("frequency", F.lit(0)).alias("frequency"),
            F.coalesce("monetary", F.lit(0.0)).alias("monetary"),
            F.coalesce("events_recent", F.lit(0)).alias("events_recent"),
            "top_category",
            F.coalesce("top_category_share", F.lit(0.0)).alias("top_category_share"),
        )
    )


def _recency_band(days: Column) -> Column:
    band = F.when(days.isNull(), F.lit("none"))
    for upper, label in _RECENCY_BANDS:
        band = band.when(days <= upper, F.lit(label))
    return band.otherwise(F.lit(f"{_RECENCY_BANDS[-1][0] + 1}+"))


# ---------------------------------------------------------------------------------------------
# CTR table
# ---------------------------------------------------------------------------------------------


def ctr_rows(
    impressions: DataFrame,
    users: DataFrame,
    orders: DataFrame,
    events: DataFrame,
    *,
    age_edges: Sequence[int] = AGE_EDGES,
    lookback_days: int = 30,
) -> DataFrame:
    """One row per impression: label, ad columns and leak-free user features (not yet encoded).

    Args:
        impressions: Raw-zone impressions (the rows to label; filter them by time before calling).
        users: Raw-zone users (``gender``, ``birth_date``, ``city``); a user absent here gets nulls.
        orders: Raw-zone orders.
        events: Raw-zone events.
        age_edges: See :func:`age_band`.
        lookback_days: See :func:`behaviour_as_of`.

    Returns:
        ``impression_id``, ``user_id``, ``ts``, ``label`` (int 0/1, from ``clicked``), the ad columns
        ``ad_id``, ``campaign_id``, ``channel``, ``ad_position``, ``device_type``, the user columns
        ``gender``, ``age_band`` (on the impression's UTC day), ``city`` and the columns of
        :func:`behaviour_as_of` plus ``recency_band``. No birth date, no cost.
    """
    imp = impressions.select(
        "impression_id", "user_id", "ts", "ad_id", "campaign_id", "channel", "ad_position", "device_type",
        F.col("clicked").cast("int").alias("label"), F.to_date("ts").alias("as_of_day"),
    )
    user_inputs = ctr_user_inputs(imp.select("user_id", "as_of_day"), users, orders, events,
                                  age_edges=age_edges, lookback_days=lookback_days)
    return (
        imp.join(user_inputs, ["user_id", "as_of_day"], "left")
        .select(
            "impression_id", "user_id", "ts", "label",
            "ad_id", "campaign_id", "channel", "ad_position", "device_type",
            *CTR_USER_INPUTS[:3], "recency_days", _recency_band(F.col("recency_days")).alias("recency_band"),
            *CTR_USER_INPUTS[4:],
        )
    )


def ctr_user_inputs(
    keys: DataFrame,
    users: DataFrame,
    orders: DataFrame,
    events: DataFrame,
    *,
    age_edges: Sequence[int] = AGE_EDGES,
    lookback_days: int = 30,
) -> DataFrame:
    """The CTR model's user inputs per (user, day): what a training row and a served request both use.

    The CTR table joins these to every impression (as of the impression's day); the profile
    store keeps them as of the table's cut-off (``features/ctr_users``, cells
    :data:`cluster.core.feature_io.CTR_USER_CELLS`), where the serving side reads them back. One
    computation for both, so a served request is featurised exactly like a training row.

    Args:
        keys: ``user_id``, ``as_of_day`` (date); duplicates are ignored.
        users: Raw-zone users; a user absent here gets nulls (and the age band :data:`MISSING`).
        orders: Raw-zone orders.
        events: Raw-zone events.
        age_edges: See :func:`age_band`.
        lookback_days: See :func:`behaviour_as_of`.

    Returns:
        ``user_id``, ``as_of_day`` and :data:`cluster.core.feature_io.CTR_USER_INPUTS`.
    """
    behaviour = behaviour_as_of(keys, orders, events, lookback_days)
    people = users.select("user_id", "gender", "birth_date", "city")
    return behaviour.join(people, "user_id", "left").select(
        "user_id", "as_of_day",
        "gender", age_band(F.col("birth_date"), F.col("as_of_day"), age_edges).alias("age_band"), "city",
        *CTR_USER_INPUTS[3:],
    )


def time_split(
    rows: DataFrame, test_fraction: float = 0.2, split_date: date | None = None
) -> tuple[DataFrame, date]:
    """Split by impression time: everything before a UTC midnight is train, the rest is test.

    Args:
        rows: Rows with a ``ts`` timestamp.
        test_fraction: Wanted share of test rows; the split moves back to the start of the UTC day
            holding that quantile, so the test share is at least this (one day's worth more at most).
        split_date: Use this day instead of the quantile.

    Returns:
        ``rows`` with a ``split`` column (``train`` / ``test``) and the split day (first test day).

    Raises:
        InvalidArgument: ``test_fraction`` is not in (0, 1).
        FailedPrecondition: ``rows`` is empty.
    """
    if split_date is None:
        if not 0.0 < test_fraction < 1.0:
            raise InvalidArgument("test_fraction must be between 0 and 1", field="test_fraction")
        q = rows.select(F.unix_seconds("ts").alias("s")).approxQuantile("s", [1.0 - test_fraction], 1e-4)
        if not q:
            raise FailedPrecondition("there are no impressions to split: ingest impressions first")
        split_date = datetime.fromtimestamp(q[0], tz=timezone.utc).date()
    cut = datetime.combine(split_date, datetime.min.time())
    return rows.withColumn("split", F.when(F.col("ts") < F.lit(cut), "train").otherwise("test")), split_date


def fit_ctr_spec(train: DataFrame, hash_buckets: int = 2**14, min_count: int = 5) -> dict:
    """Learn the feature spec (vocabularies, numeric scaling, layout) from the train split only.

    Layout of the vector: the numeric features, then per one-hot input its vocabulary (sorted)
    followed by one ``__other__`` slot, then one block of ``hash_buckets`` slots shared by the
    hashed inputs.

    Args:
        train: Train rows of :func:`ctr_rows`.
        hash_buckets: Size of the hashed block.
        min_count: A categorical value seen fewer times than this in train goes to ``__other__``.

    Returns:
        A JSON-serialisable spec for :func:`encode_ctr`.

    Raises:
        InvalidArgument: ``hash_buckets`` or ``min_count`` is below 1.
    """
    if hash_buckets < 1:
        raise InvalidArgument("hash_buckets must be >= 1", field="hash_buckets")
    if min_count < 1:
        raise InvalidArgument("min_count must be >= 1", field="min_count")
    numeric = []
    for col, transform in CTR_NUMERIC:
        x = F.col(col).cast("double")
        x = F.log1p(F.coalesce(x, F.lit(0.0))) if transform == "log1p" else F.coalesce(x, F.lit(0.0))
        numeric.append(x.alias(col))
    stats = train.select(*numeric).agg(
        *[F.mean(c).alias(f"{c}_mean") for c, _ in CTR_NUMERIC],
        *[F.stddev_pop(c).alias(f"{c}_std") for c, _ in CTR_NUMERIC],
    ).first()
    # One job for every vocabulary: (input, value) pairs exploded and counted together.
    pairs = F.explode(F.array(*[
        F.struct(F.lit(c).alias("input"), F.coalesce(F.col(c).cast("string"), F.lit(MISSING)).alias("value"))
        for c in CTR_ONEHOT
    ])).alias("p")
    seen = (
        train.select(pairs).groupBy("p.input", "p.value").count().where(F.col("count") >= min_count).collect()
    )
    onehot = [{"input": c, "values": sorted(r.value for r in seen if r.input == c)} for c in CTR_ONEHOT]
    names = [f"{c}:{t}" for c, t in CTR_NUMERIC]
    for block in onehot:
        names += [f"{block['input']}={v}" for v in block["values"]] + [f"{block['input']}={OTHER}"]
    inputs = sorted({c for c, _ in CTR_NUMERIC} | set(CTR_ONEHOT) | {c for cols in CTR_HASHED for c in cols})
    return {
        "format": SPEC_FORMAT,
        "inputs": inputs,
        "missing": MISSING,
        "other": OTHER,
        "numeric": [
            {
                "input": c,
                "transform": t,
                "mean": float(stats[f"{c}_mean"] or 0.0),
                "std": float(stats[f"{c}_std"] or 0.0) or 1.0,
            }
            for c, t in CTR_NUMERIC
        ],
        "onehot": onehot,
        "hashed": {
            "inputs": [list(cols) for cols in CTR_HASHED],
            "offset": len(names),
            "buckets": hash_buckets,
            "token": "<inputs joined by '*'>=<values joined by '|'>",
            "hash": "first 8 bytes of SHA-256 of the UTF-8 token, big-endian unsigned, modulo buckets",
        },
        "size": len(names) + hash_buckets,
        "feature_names": names,
    }


def ctr_vectors(rows: DataFrame, spec: Mapping[str, Any]) -> DataFrame:
    """Add the ``features`` sparse vector column, computed by :func:`encode_ctr` itself.

    The encoding runs as a Python UDF on purpose: serving calls the very same function with the
    very same spec, so training and serving vectors cannot drift apart.
    """
    from pyspark.ml.linalg import SparseVector, VectorUDT

    spec = dict(spec)
    inputs = list(spec["inputs"])
    size = int(spec["size"])

    def encode(*values: Any) -> SparseVector:
        indices, vals = encode_ctr(dict(zip(inputs, values)), spec)
        return SparseVector(size, indices, vals)

    return rows.withColumn("features", F.udf(encode, VectorUDT())(*[F.col(c) for c in inputs]))


# ---------------------------------------------------------------------------------------------
# Churn table
# ---------------------------------------------------------------------------------------------


def churn_table(
    users: DataFrame,
    orders: DataFrame,
    events: DataFrame,
    impressions: DataFrame,
    as_of: date,
    *,
    inactivity_days: int = 90,
    ctr_prior: float = 20.0,
    age_edges: Sequence[int] = AGE_EDGES,
) -> DataFrame:
    """One row per active user: survival duration, churn flag (event) and leak-free covariates.

    **Activity** is an order (any status) or a behaviour event before ``as_of`` (00:00 UTC);
    ad impressions are something the platform did, not the user, and are not activity.
    Days are UTC dates. Let ``T = as_of`` (the observation end, exclusive), ``W =
    inactivity_days``, ``first``/``last`` the first and last active day, ``gap = T - last``
    (>= 1 day; 1 for a user active on the last observed day).

    **Censoring rule.**

    * ``gap > W``: **churned** (``churned = 1``). The churn becomes observable on day
      ``last + W + 1`` (the first day on which more than ``W`` days have passed without
      activity), which is on or before ``T``; ``duration_days = (last - first) + W + 1``.
    * ``gap <= W`` (exactly ``W`` included): **censored** (``churned = 0``) at the observation end:
      ``duration_days = T - first``. This includes users whose first activity is too recent to be
      judged (``T - first <= W``) and users active on the last day.

    Measuring a churned user's duration up to ``last + W + 1`` rather than to ``last`` keeps the two
    cases consistent: a censored user is only known to have not churned *by T*, and with that
    definition of the event time no churner's event lies after ``T`` and no censored user has
    already had the event. Every duration is >= 1 day, a single-activity churner's is ``W + 1``.

    Worked example, ``T = 2026-07-01``, ``W = 90``:

    ====  =============  =============  ====  =======  =============================
    user  first          last           gap   churned  duration_days
    ====  =============  =============  ====  =======  =============================
    a     2026-01-10     2026-03-01     122   1        50 + 90 + 1 = 141
    b     2026-01-10     2026-04-02     90    0        T - first = 172 (exactly W: censored)
    c     2026-01-10     2026-04-01     91    1        81 + 91 = 172
    d     2026-02-01     2026-02-01     150   1        0 + 91 = 91 (single activity)
    e     2026-06-30     2026-06-30     1     0        1 (first and last on the last day)
    f     2026-05-15     2026-06-20     11    0        47 (too recent to judge: censored)
    ====  =============  =============  ====  =======  =============================

    **Covariates** leave out anything the outcome determines: no recency, frequency or monetary
    *as of T* (``recency > W`` is the churn flag itself, and counts grow with the time a user stays),
    no counts over the follow-up. They are static attributes (consents, gender, ``age_band`` at
    ``T``, ``city``, ``account_age_days`` from signup to the first activity) and per-order or
    per-impression ratios (``has_paid_order``, ``avg_order_value``, ``ad_ctr``: clicks per impression
    shrunk towards the population CTR with ``ctr_prior`` pseudo-impressions). ``refund_share``,
    ``ad_impressions`` and ``ad_clicks`` are kept for inspection but are not in
    :data:`CHURN_COVARIATES`: the counts grow with the time a user stays, and a refund share above
    zero mostly takes several orders (a first order is rarely refunded), which again takes time.

    Args:
        users: Raw-zone users.
        orders: Raw-zone orders.
        events: Raw-zone events.
        impressions: Raw-zone impressions (only for ``ad_ctr``).
        as_of: Observation end ``T``; nothing on or after it is read.
        inactivity_days: ``W``, in days.
        ctr_prior: Pseudo-impressions of the ``ad_ctr`` shrinkage (0 = raw clicks / impressions).
        age_edges: See :func:`age_band`.

    Returns:
        ``user_id``, ``first_active``, ``last_active`` (dates), ``inactive_days`` (``gap``),
        ``duration_days``, ``churned``, ``gender``, ``age_band``, ``city``, ``opt_in_sms``,
        ``opt_in_push``, ``opt_in_email`` (int 0/1), ``account_age_days`` (null without signup
        time), ``has_paid_order``, ``avg_order_value``, ``refund_share``, ``ad_impressions``,
        ``ad_clicks``, ``ad_ctr``.

    Raises:
        InvalidArgument: ``inactivity_days`` < 1 or ``ctr_prior`` < 0.
    """
    if inactivity_days < 1:
        raise InvalidArgument("inactivity_days must be >= 1", field="inactivity_days")
    if ctr_prior < 0:
        raise InvalidArgument("ctr_prior must be >= 0", field="ctr_prior")
    cut = F.lit(datetime.combine(as_of, datetime.min.time()))
    t_end = F.lit(as_of)
    w = inactivity_days
    activity = orders.select("user_id", F.col("order_time").alias("_t")).unionByName(
        events.select("user_id", F.col("ts").alias("_t"))
    ).where(F.col("_t") < cut)
    spans = (
        activity.groupBy("user_id")
        .agg(F.to_date(F.min("_t")).alias("first_active"), F.to_date(F.max("_t")).alias("last_active"))
        .withColumn("inactive_days", F.datediff(t_end, F.col("last_active")))
        .withColumn("churned", (F.col("inactive_days") > w).cast("int"))
        .withColumn(
            "duration_days",
            F.when(F.col("churned") == 1, F.datediff(F.col("last_active"), F.col("first_active")) + w + 1)
            .otherwise(F.datediff(t_end, F.col("first_active"))),
        )
    )
    bought = (
        orders.where(F.col("order_time") < cut)
        .groupBy("user_id")
        .agg(
            F.count(F.lit(1)).alias("_orders"),
            F.sum(F.when(F.col("status") == "paid", 1).otherwise(0)).alias("_paid"),
            F.sum(F.when(F.col("status") == "paid", F.col("amount")).otherwise(0.0)).alias("_paid_amount"),
        )
    )
    seen = impressions.where(F.col("ts") < cut)
    population_ctr = seen.agg(F.avg(F.col("clicked").cast("double"))).first()[0] or 0.0
    ads = seen.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("ad_impressions"), F.sum(F.col("clicked").cast("int")).alias("ad_clicks")
    )
    consents = ("opt_in_sms", "opt_in_push", "opt_in_email")
    people = users.select(
        "user_id", "gender", "birth_date", "city", "signup_time",
        # Consent is never assumed: a missing flag is no consent.
        *[F.coalesce(F.col(c), F.lit(False)).cast("int").alias(c) for c in consents],
    )
    paid = F.coalesce(F.col("_paid"), F.lit(0))
    impressions_n = F.coalesce(F.col("ad_impressions"), F.lit(0))
    clicks_n = F.coalesce(F.col("ad_clicks"), F.lit(0))
    # Shrunk towards the population CTR: a user with 2 impressions and 1 click is not a 50 % clicker.
    ad_ctr = (clicks_n + F.lit(ctr_prior * population_ctr)) / (impressions_n + F.lit(ctr_prior))
    if ctr_prior == 0:
        ad_ctr = F.when(impressions_n > 0, clicks_n / impressions_n).otherwise(F.lit(population_ctr))
    return (
        spans.join(people, "user_id", "left")
        .join(bought, "user_id", "left")
        .join(ads, "user_id", "left")
        .select(
            "user_id", "first_active", "last_active", "inactive_days",
            F.col("duration_days").cast("int").alias("duration_days"), "churned",
            "gender", age_band(F.col("birth_date"), t_end, age_edges).alias("age_band"), "city",
            *[F.coalesce(F.col(c), F.lit(0)).alias(c) for c in consents],
            F.datediff(F.col("first_active"), F.to_date("signup_time")).alias("account_age_days"),
            (paid > 0).cast("int").alias("has_paid_order"),
            F.when(paid > 0, F.round(F.col("_paid_amount") / paid, 2)).otherwise(0.0).alias("avg_order_value"),
            F.when(F.col("_orders") > 0, 1.0 - paid / F.col("_orders")).otherwise(0.0).alias("refund_share"),
            impressions_n.cast("int").alias("ad_impressions"),
            clicks_n.cast("int").alias("ad_clicks"),
            ad_ctr.alias("ad_ctr"),
        )
    )


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


def default_as_of(*frames: tuple[DataFrame, str]) -> date:
    """The day after the last activity of any of ``(frame, time column)`` (one Spark job).

    Raises:
        FailedPrecondition: every frame is empty.
    """
    times = [frame.select(F.col(col).alias("_t")) for frame, col in frames]
    union = times[0]
    for t in times[1:]:
        union = union.unionByName(t)
    last = union.agg(F.max("_t")).first()[0]
    if last is None:
        raise FailedPrecondition("the raw zone has no orders or impressions: run `pmkt ingest` first")
    return last.date() + timedelta(days=1)


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


def main(
    settings: Settings,
    *,
    as_of: date | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    inactivity_days: int = 90,
    hash_buckets: int = 2**14,
    min_count: int = 5,
    test_fraction: float = 0.2,
    lookback_days: int = 30,
    ctr_prior: float = 20.0,
    age_edges: Sequence[int] = AGE_EDGES,
) -> dict:
    """Build the CTR and churn training tables from the raw zone and write them to the lake.

    Args:
        settings: Platform settings (lake, Spark).
        as_of: Cut-off: impressions, orders and events on or after it are ignored; the churn
            observation end. Default: the day after the last order, event or impression.
        run_id: Run id; default a new one.
        progress: Called as ``progress(step, fraction)``.
        inactivity_days: Churn window ``W`` (see :func:`churn_table`).
        hash_buckets: Slots of the hashed block of the CTR vector.
        min_count: Train occurrences a one-hot value needs to get its own slot.
        test_fraction: Share of the latest impressions in the test split.
        lookback_days: Window of the CTR feature ``events_recent``.
        ctr_prior: Pseudo-impressions of the churn covariate ``ad_ctr``.
        age_edges: Age band edges.

    Returns:
        ``run_id``, ``as_of`` and the metadata of both tables (``ctr``, ``churn``) as written to
        their ``latest.json``.

    Raises:
        FailedPrecondition: no orders or no impressions have been ingested.
    """
    ctx = JobContext.start(settings, "pmkt-training-tables", run_id=run_id, progress=progress)
    ctx.require_raw("orders", "impressions")
    ctx.step("reading the raw zone", 0.0)
    # Users and events are optional in a delivery: without them, empty tables of their schema.
    orders, impressions = ctx.read_raw("orders"), ctx.read_raw("impressions")
    users = ctx.read_raw("users", empty_schema=_EMPTY_SCHEMAS["users"])
    events = ctx.read_events(empty_schema=_EMPTY_SCHEMAS["events"])
    as_of = as_of or default_as_of((orders, "order_time"), (events, "ts"), (impressions, "ts"))
    cut = F.lit(datetime.combine(as_of, datetime.min.time()))
    ctx.step("CTR rows", 0.1)
    rows = ctr_rows(impressions.where(F.col("ts") < cut), users, orders, events, age_edges=age_edges,
                    lookback_days=lookback_days).cache()
    ctr_meta = _write_ctr_table(ctx, rows, as_of, test_fraction=test_fraction, hash_buckets=hash_buckets,
                                min_count=min_count, lookback_days=lookback_days)
    rows.unpersist()
    ctx.step("CTR user inputs as of the cut-off", 0.6)
    ctr_users_meta = _write_ctr_users(ctx, as_of, users, orders, events, impressions,
                                      age_edges=age_edges, lookback_days=lookback_days)
    ctx.step("churn table", 0.7)
    churn = churn_table(users, orders, events, impressions, as_of, inactivity_days=inactivity_days,
                        ctr_prior=ctr_prior, age_edges=age_edges)
    churn_meta = _write_churn_table(ctx, churn, as_of, inactivity_days)
    ctx.step("done", 1.0)
    log.info(
        "training tables run %s as of %s: %d impressions (CTR %.4f), %d users (censored %.3f)",
        ctx.run_id, as_of, ctr_meta["rows"], ctr_meta["positive_rate"] or 0.0,
        churn_meta["users"], churn_meta["censoring_rate"] or 0.0,
    )
    return {"run_id": ctx.run_id, "as_of": as_of.isoformat(), "ctr": ctr_meta, "churn": churn_meta,
            "ctr_users": ctr_users_meta}


def _write_ctr_table(ctx: JobContext, base: DataFrame, as_of: date, *, test_fraction: float, hash_buckets: int,
                     min_count: int, lookback_days: int) -> dict:
    """Split the CTR rows by time, learn the feature spec on the train split, write the vectors and
    the spec, publish ``features/ctr_train``; returns its metadata."""
    rows, split_date = time_split(base, test_fraction)
    ctx.step("CTR feature spec", 0.35)
    spec = fit_ctr_spec(rows.where(F.col("split") == "train"), hash_buckets, min_count)
    ctx.step("writing the CTR table", 0.45)
    path = ctx.write_run(CTR_TRAIN, ctr_vectors(rows, spec), partition_by=("split",))
    counts = {r.split: (r.n, r.pos) for r in ctx.read_run(CTR_TRAIN).groupBy("split").agg(
        F.count(F.lit(1)).alias("n"), F.sum("label").alias("pos")).collect()}
    n_train, pos_train = counts.get("train", (0, 0))
    n_test, pos_test = counts.get("test", (0, 0))
    CTR_TRAIN.write_json(ctx.lake, spec, CTR_TRAIN.run_folder(ctx.run_id), FEATURE_SPEC)
    return ctx.publish(CTR_TRAIN, {
        "run_id": ctx.run_id,
        "as_of": as_of.isoformat(),
        "path": path,
        "spec_path": CTR_TRAIN.run_rel(ctx.run_id, FEATURE_SPEC),
        "rows": n_train + n_test,
        "rows_train": n_train,
        "rows_test": n_test,
        "positive_rate": _rate(pos_train + pos_test, n_train + n_test),
        "positive_rate_train": _rate(pos_train, n_train),
        "positive_rate_test": _rate(pos_test, n_test),
        "split_date": split_date.isoformat(),
        "features": spec["size"],
        "hash_buckets": hash_buckets,
        "lookback_days": lookback_days,
    })


def _write_churn_table(ctx: JobContext, churn: DataFrame, as_of: date, inactivity_days: int) -> dict:
    """Write and publish ``features/churn``; returns its metadata."""
    path = ctx.write_run(CHURN, churn)
    stats = ctx.read_run(CHURN).agg(
        F.count(F.lit(1)).alias("n"), F.sum("churned").alias("churned"), F.min("duration_days").alias("min_d")
    ).first()
    n_users, n_churned = stats.n, stats.churned or 0
    return ctx.publish(CHURN, {
        "run_id": ctx.run_id,
        "as_of": as_of.isoformat(),
        "path": path,
        "users": n_users,
        "churned": n_churned,
        "censored": n_users - n_churned,
        "churn_rate": _rate(n_churned, n_users),
        "censoring_rate": _rate(n_users - n_churned, n_users),
        "inactivity_days": inactivity_days,
        "min_duration_days": stats.min_d,
    })


def _write_ctr_users(ctx: JobContext, as_of: date, users: DataFrame, orders: DataFrame, events: DataFrame,
                     impressions: DataFrame, *, age_edges: Sequence[int], lookback_days: int) -> dict:
    """Write ``features/ctr_users``: every known user's CTR inputs as of ``as_of`` (for the profiles)."""
    cut = F.lit(datetime.combine(as_of, datetime.min.time()))
    known = (
        users.select("user_id")
        .unionByName(orders.where(F.col("order_time") < cut).select("user_id"))
        .unionByName(events.where(F.col("ts") < cut).select("user_id"))
        .unionByName(impressions.where(F.col("ts") < cut).select("user_id"))
        .distinct()
        .withColumn("as_of_day", F.lit(as_of))
    )
    inputs = ctr_user_inputs(known, users, orders, events, age_edges=age_edges, lookback_days=lookback_days).select(
        "user_id", *CTR_USER_INPUTS, F.col("as_of_day").cast("string").alias("as_of"),
    )
    return ctx.publish(CTR_USERS, {"run_id": ctx.run_id, "as_of": as_of.isoformat(),
                                   "path": ctx.write_run(CTR_USERS, inputs),
                                   "lookback_days": lookback_days, "age_edges": list(age_edges)})
