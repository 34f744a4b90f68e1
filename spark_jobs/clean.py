"""Cleaning after ingest: de-duplication, IQR outliers and imputation, with a reconciliation report.

Three tables are cleaned (docs/cleaning.md):

* ``orders`` and ``users`` from the raw zone (users get a derived ``age``);
* ``user_features``: one row per user, the users joined with RFM over the cleaned orders
  (:func:`spark_jobs.transforms.rfm`), so that users who never paid are present with missing RFM values
  that the rules fill (recency = the maximum observed recency, frequency and monetary 0).

Each table is de-duplicated first (:func:`deduplicate`), then every numeric column is treated by its
:class:`ColumnRule`: outliers by the IQR rule (:func:`iqr_bounds`, :func:`apply_outliers`), then
missing values (:func:`fill_values`, :func:`impute`, :func:`knn_impute`). Every row and every
missing value is accounted for, and :func:`main` fails the run if the counts do not add up::

    rows_in == rows_out + duplicates_removed           (per table)
    missing_in == missing_filled + missing_out         (per column)
    outliers_capped == outliers_flagged if the column is capped, else 0

Only :func:`main` reads and writes the lake; the other functions take DataFrames and parameters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from functools import reduce
from types import MappingProxyType

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from cluster.core.catalog import CLEAN, CLEAN_REPORTS, Table
from cluster.core.errors import FailedPrecondition, InvalidArgument, PlatformError
from cluster.core.privacy import ID_NUMBER_COLUMN, PHONE_COLUMN
from cluster.core.settings import CleaningSettings, Settings
from spark_jobs.context import JobContext, Progress
from spark_jobs.transforms import default_as_of, rfm

__all__ = [
    "ColumnRule",
    "CleanOptions",
    "Bounds",
    "DEFAULT_RULES",
    "IMPUTE_METHODS",
    "OUTLIER_ACTIONS",
    "LINEAGE_COLUMNS",
    "with_age",
    "deduplicate",
    "user_features",
    "iqr_bounds",
    "apply_outliers",
    "fill_values",
    "impute",
    "knn_impute",
    "treat",
    "main",
    "format_report",
]

log = logging.getLogger(__name__)

#: How a column's missing values are filled. ``max`` is the largest observed value and ``zero``
#: the constant 0 (the "never purchased" rules of ``user_features``).
IMPUTE_METHODS = ("none", "mean", "median", "knn", "max", "zero")
#: What happens to a value outside the IQR fences: nothing, a ``<col>_outlier`` flag, or flag and clip.
OUTLIER_ACTIONS = ("none", "flag", "cap")
#: Raw-zone columns that say where a row came from, not what it says: ignored when comparing rows.
LINEAGE_COLUMNS = ("_ingest_run", "dt")
# Also ignored when comparing rows: the ID-number token gets a fresh random nonce at every ingest.
_NOT_CONTENT = (*LINEAGE_COLUMNS, ID_NUMBER_COLUMN)
# Personal data the cleaned users table does not carry into the features zone (docs/privacy.md):
# the phone and ID number are not used by features, and the birth date survives only as ``age``.
_PERSONAL = (PHONE_COLUMN, ID_NUMBER_COLUMN, "birth_date")


def _publishable(df: DataFrame) -> DataFrame:
    """What leaves the job: no phone, ID token or birth date, and the (imputed) exact age only
    as its age band (docs/privacy.md: features see the birth date only as a band)."""
    df = df.drop(*_PERSONAL)
    if "age" not in df.columns:
        return df
    from cluster.core.privacy import AGE_BANDS

    band = None
    for lowest, name in reversed(AGE_BANDS):
        cond = F.col("age") >= lowest
        band = F.when(cond, F.lit(name)) if band is None else band.when(cond, F.lit(name))
    return df.withColumn("age_band", band).drop("age")


@dataclass(frozen=True)
class ColumnRule:
    """How one numeric column is cleaned.

    Attributes:
        impute: One of :data:`IMPUTE_METHODS`.
        knn_k: Neighbours averaged by ``knn``.
        outlier: One of :data:`OUTLIER_ACTIONS`.
        iqr_k: Fences at ``Q1 - k * IQR`` and ``Q3 + k * IQR``.
        log_scale: Compute the quartiles and fences on ``log1p(x)`` (values must be >= 0) and map
            the fences back with ``expm1``. Right-skewed money columns need it: on the generated
            orders the linear fences flag 16 % of ordinary orders, the log fences 3-4 %.

    Raises:
        InvalidArgument: an unknown method or action, ``knn_k < 1`` or ``iqr_k < 0``.
    """

    impute: str = "none"
    knn_k: int = 5
    outlier: str = "none"
    iqr_k: float = 1.5
    log_scale: bool = False

    def __post_init__(self) -> None:
        if self.impute not in IMPUTE_METHODS:
            raise InvalidArgument(f"impute must be one of {', '.join(IMPUTE_METHODS)}, got {self.impute!r}",
                                  field="impute")
        if self.outlier not in OUTLIER_ACTIONS:
            raise InvalidArgument(f"outlier must be one of {', '.join(OUTLIER_ACTIONS)}, got {self.outlier!r}",
                                  field="outlier")
        if self.knn_k < 1:
            raise InvalidArgument(f"knn_k must be at least 1, got {self.knn_k}", field="knn_k")
        if not (self.iqr_k >= 0 and math.isfinite(self.iqr_k)):
            raise InvalidArgument(f"iqr_k must be a finite number >= 0, got {self.iqr_k}", field="iqr_k")


@dataclass(frozen=True)
class CleanOptions:
    """Tunables that are not per column.

    Attributes:
        relative_error: 0 computes quartiles and medians exactly (Spark ``percentile``, linear
            interpolation between order statistics, as numpy's default); above 0, Spark
            ``percentile_approx`` with that relative rank error (accuracy ``1 / relative_error``).
            Exact keeps a map of distinct values per column, fine for the millions of rows of
            this platform; switch to e.g. 0.001 for much larger tables.
        knn_fit_rows: KNN donors: at most this many complete rows, a deterministic sample by
            hash of the key.
        knn_max_rows: KNN runs on the driver: more rows with a missing value than this fails the
            run rather than exhaust the driver (use ``median`` or raise the limit).
        seed: Seed of the donor sample's hash.
    """

    relative_error: float = 0.0
    knn_fit_rows: int = 5_000
    knn_max_rows: int = 50_000
    seed: int = 42

    def __post_init__(self) -> None:
        if not (self.relative_error == 0.0 or 1e-6 <= self.relative_error < 1.0):
            raise InvalidArgument(f"relative_error must be 0 (exact) or in [1e-6, 1), got {self.relative_error}",
                                  field="relative_error")
        if self.knn_fit_rows < 1 or self.knn_max_rows < 1:
            raise InvalidArgument("knn_fit_rows and knn_max_rows must be at least 1", field="knn_fit_rows")


@dataclass(frozen=True)
class Bounds:
    """IQR fences of one column, on the column's own scale.

    ``q1`` and ``q3`` are the quartiles (for ``log_scale``, ``expm1`` of the quartiles of
    ``log1p(x)``, which are the quartiles of ``x`` up to interpolation); a value is an outlier when
    it is below ``lower`` or above ``upper``.
    """

    q1: float
    q3: float
    lower: float
    upper: float
    k: float
    log_scale: bool

    def as_dict(self) -> dict:
        """The report form: ``log_scale`` becomes ``scale`` (``linear`` or ``log1p``)."""
        d = asdict(self)
        log_scale = d.pop("log_scale")
        return {**d, "scale": "log1p" if log_scale else "linear"}


def _rules(mapping: Mapping[str, Mapping[str, ColumnRule]]) -> Mapping[str, Mapping[str, ColumnRule]]:
    return MappingProxyType({name: MappingProxyType(dict(cols)) for name, cols in mapping.items()})


#: Rules per table and column. The contract makes ``orders.amount`` required and fills an empty
#: ``quantity`` with 1, so nothing is imputed there; ``users.age`` stays missing when the birth date
#: is (the users table keeps what was delivered) and is imputed in ``user_features`` by KNN on the
#: RFM values. Money and counts are right-skewed, so their fences are on the log scale. Age uses
#: wide fences (k = 3): the generated ages run from 18 to 75 with a long right tail, which k = 1.5
#: flags above 54. Only the model-facing age is capped: a flagged order or a big spender is a fact
#: to look at, not an error to overwrite.
DEFAULT_RULES: Mapping[str, Mapping[str, ColumnRule]] = _rules(
    {
        "orders": {
            "amount": ColumnRule(outlier="flag", log_scale=True),
            "quantity": ColumnRule(outlier="flag", log_scale=True),
        },
        "users": {
            "age": ColumnRule(outlier="flag", iqr_k=3.0),
        },
        "user_features": {
            "recency_days": ColumnRule(impute="max", outlier="flag"),
            "frequency": ColumnRule(impute="zero", outlier="flag", log_scale=True),
            "monetary": ColumnRule(impute="zero", outlier="flag", log_scale=True),
            "age": ColumnRule(impute="knn", knn_k=5, outlier="cap", iqr_k=3.0),
        },
    }
)

# Key and newest-first ordering of each table (see deduplicate).
_KEYS = {"orders": ("order_id",), "users": ("user_id",), "user_features": ("user_id",)}
_NEWEST = {"orders": ("_ingest_run", "order_time"), "users": ("_ingest_run", "signup_time"), "user_features": ()}


# --- pure transforms ---------------------------------------------------------------------------


def with_age(users: DataFrame, as_of: date) -> DataFrame:
    """Add ``age``: completed years from ``birth_date`` to ``as_of`` (int; null without a birth date)."""
    years = F.floor(F.months_between(F.lit(as_of), F.col("birth_date")) / 12)
    return users.withColumn("age", years.cast("int"))


def deduplicate(df: DataFrame, key: Sequence[str], newest: Sequence[str] = ()) -> DataFrame:
    """Mark duplicate rows in ``_duplicate``: ``exact``, ``key`` or null for the row to keep.

    Ingest drops identical lines and quarantines conflicting ids within one file, but uniqueness is
    judged per delivery: an order re-delivered with a corrected ``order_time`` lands in another
    ``dt`` partition and is then in the raw zone twice (docs/data-contract.md, section 9).

    * Rows equal in every column except :data:`LINEAGE_COLUMNS` (and the encrypted ID number, whose
      token differs at every ingest) are *exact* duplicates: one is kept.
    * Among the remaining rows, several rows with the same ``key`` are *key* duplicates: the first
      by ``newest`` (each column descending, nulls last; then a hash of the row, so the choice does
      not depend on partitioning) is kept. For raw tables ``newest`` starts with ``_ingest_run``:
      the latest delivery wins, as it does for the days it replaces.

    Args:
        df: Any table.
        key: Columns that identify a row.
        newest: Columns that order copies of a key, most recent first.
    """
    content = [c for c in df.columns if c not in _NOT_CONTENT]
    order = [F.col(c).desc_nulls_last() for c in newest] + [F.xxhash64(*content)]
    copy = F.row_number().over(Window.partitionBy(*content).orderBy(*order))
    df = df.withColumn("_copy", copy)
    rank = F.row_number().over(Window.partitionBy(*key, F.col("_copy") == 1).orderBy(*order))
    duplicate = F.when(F.col("_copy") > 1, "exact").when(F.col("_rank") > 1, "key")
    return df.withColumn("_rank", rank).withColumn("_duplicate", duplicate).drop("_copy", "_rank")


def user_features(users: DataFrame, rfm_features: DataFrame) -> DataFrame:
    """One row per user: the RFM values, ``age`` and ``has_paid_order``.

    Args:
        users: De-duplicated users with ``user_id`` and ``age`` (:func:`with_age`).
        rfm_features: :func:`spark_jobs.transforms.rfm` output over the cleaned orders.

    Returns:
        ``user_id``, ``recency_days``, ``frequency``, ``monetary`` (null for a user without a paid
        order before as-of: the rules fill them), ``age``, ``has_paid_order``. Buyers without a
        users row are left out (there is nothing to say about them but RFM).
    """
    r = rfm_features.select("user_id", "recency_days", "frequency", "monetary")
    joined = users.select("user_id", "age").join(r, "user_id", "left")
    return joined.select(
        "user_id", "recency_days", "frequency", "monetary", "age",
        F.col("recency_days").isNotNull().alias("has_paid_order"),
    )


def _quantiles(col: Column, probs: list[float], relative_error: float) -> Column:
    if relative_error == 0.0:
        return F.percentile(col, probs)
    return F.percentile_approx(col, probs, max(1, round(1.0 / relative_error)))


def iqr_bounds(
    df: DataFrame, rules: Mapping[str, ColumnRule], relative_error: float = 0.0
) -> dict[str, Bounds | None]:
    """IQR fences of every column whose rule flags or caps outliers, in one aggregation.

    Quartiles are taken over the non-null values. A column without any value gets ``None``.

    Raises:
        FailedPrecondition: a ``log_scale`` column has a negative value.
    """
    columns = [c for c, r in rules.items() if r.outlier != "none"]
    if not columns:
        return {}
    aggs = []
    for c in columns:
        x = F.col(c).cast("double")
        aggs.append(_quantiles(F.log1p(x) if rules[c].log_scale else x, [0.25, 0.75], relative_error).alias(f"q_{c}"))
        aggs.append(F.min(x).alias(f"min_{c}"))
    row = df.agg(*aggs).first()
    out: dict[str, Bounds | None] = {}
    for c in columns:
        rule, q = rules[c], row[f"q_{c}"]
        if q is None:
            out[c] = None
            continue
        if rule.log_scale and row[f"min_{c}"] < 0:
            raise FailedPrecondition(f"{c}: log_scale needs values >= 0, found {row[f'min_{c}']}", field=c)
        q1, q3 = float(q[0]), float(q[1])
        lo, hi = q1 - rule.iqr_k * (q3 - q1), q3 + rule.iqr_k * (q3 - q1)
        if rule.log_scale:
            q1, q3, lo, hi = (math.expm1(v) for v in (q1, q3, lo, hi))
        out[c] = Bounds(q1=q1, q3=q3, lower=lo, upper=hi, k=rule.iqr_k, log_scale=rule.log_scale)
    return out


def apply_outliers(df: DataFrame, bounds: Mapping[str, Bounds | None], rules: Mapping[str, ColumnRule]) -> DataFrame:
    """Add ``<col>_outlier`` (false for a missing value) and clip the columns whose rule is ``cap``.

    A capped column becomes double (its fences rarely are whole numbers).
    """
    for c, b in bounds.items():
        x = F.col(c)
        if b is None:
            df = df.withColumn(f"{c}_outlier", F.lit(False))
            continue
        outside = (x < F.lit(b.lower)) | (x > F.lit(b.upper))
        df = df.withColumn(f"{c}_outlier", F.coalesce(outside, F.lit(False)))
        if rules[c].outlier == "cap":
            capped = F.when(x < F.lit(b.lower), F.lit(b.lower)).when(x > F.lit(b.upper), F.lit(b.upper))
            df = df.withColumn(c, capped.otherwise(x.cast("double")))
    return df


def fill_values(
    df: DataFrame, rules: Mapping[str, ColumnRule], relative_error: float = 0.0
) -> dict[str, float | None]:
    """The constant each ``mean``, ``median``, ``max`` or ``zero`` column is filled with.

    Computed over the non-null values of ``df`` in one aggregation (after capping, so a capped
    outlier does not drag the mean). ``None`` when the column has no value at all.
    """
    aggs = {
        "mean": lambda x: F.avg(x),
        "median": lambda x: _quantiles(x, [0.5], relative_error)[0],
        "max": lambda x: F.max(x),
    }
    columns = [c for c, r in rules.items() if r.impute in aggs]
    values: dict[str, float | None] = {c: 0.0 for c, r in rules.items() if r.impute == "zero"}
    if columns:
        row = df.agg(*[aggs[rules[c].impute](F.col(c).cast("double")).alias(c) for c in columns]).first()
        values.update({c: None if row[c] is None else float(row[c]) for c in columns})
    return values


def impute(df: DataFrame, fills: Mapping[str, float | None]) -> DataFrame:
    """Fill the nulls of each column with its constant (as double); add ``<col>_imputed``."""
    for c, value in fills.items():
        df = df.withColumn(f"{c}_imputed", F.col(c).isNull() & F.lit(value is not None))
        if value is not None:
            df = df.withColumn(c, F.coalesce(F.col(c).cast("double"), F.lit(float(value))))
    return df


def _any(conditions: Sequence[Column]) -> Column:
    return reduce(lambda a, b: a | b, conditions)


def knn_impute(
    df: DataFrame,
    key: Sequence[str],
    features: Sequence[str],
    targets: Sequence[str],
    k: int = 5,
    *,
    fit_rows: int = 5_000,
    max_rows: int = 50_000,
    seed: int = 42,
) -> DataFrame:
    """Fill the nulls of ``targets`` with the mean of the ``k`` nearest rows (scikit-learn ``KNNImputer``).

    Distances are nan-Euclidean over ``features`` (the targets included), each standardised by the
    mean and population standard deviation of the donors, so that a column in CNY does not drown
    one in days. Donors are the rows with every target present, at most ``fit_rows`` of them
    (the lowest hashes of the key). The rows to fill and the donors are collected on the driver:
    the work is about ``rows to fill x donors x features`` (see docs/cleaning.md for timings).

    Args:
        df: A table whose ``key`` is unique.
        key: Columns to join the filled values back on.
        features: Numeric columns that measure closeness.
        targets: Columns to fill (a subset of ``features``); they become double.
        k: Neighbours averaged.
        fit_rows: Donor sample size.
        max_rows: Most rows with a missing target this will collect.
        seed: Seed of the donor hash.

    Returns:
        ``df`` with the targets filled where a donor had a value, and ``<target>_imputed``.

    Raises:
        FailedPrecondition: more than ``max_rows`` rows to fill, or no donor.
    """
    import numpy as np
    import pandas as pd
    from sklearn.impute import KNNImputer

    features = list(dict.fromkeys([*features, *targets]))
    missing_any = _any([F.col(t).isNull() for t in targets])
    flagged = df.withColumns({f"{t}_imputed": F.col(t).isNull() for t in targets})
    missing = df.where(missing_any).select(*key, *[F.col(c).cast("double") for c in features])
    n_missing = missing.count()
    if n_missing == 0:
        return flagged
    if n_missing > max_rows:
        raise FailedPrecondition(
            f"KNN imputation of {', '.join(targets)}: {n_missing:,} rows to fill, more than the limit of "
            f"{max_rows:,} rows collected on the driver; use median imputation or raise knn_max_rows",
            field="knn_max_rows",
        )
    donors = (
        df.where(~missing_any)
        .orderBy(F.xxhash64(*key, F.lit(seed)))
        .limit(fit_rows)
        .select(*[F.col(c).cast("double") for c in features])
        .toPandas()
    )
    if donors.empty:
        raise FailedPrecondition(f"KNN imputation of {', '.join(targets)}: no row has every target", field=targets[0])
    fit = donors[features].to_numpy(dtype=float)
    mean, std = np.nanmean(fit, axis=0), np.nanstd(fit, axis=0)
    std[~(std > 0)] = 1.0
    receivers = missing.toPandas()
    x = receivers[features].to_numpy(dtype=float)
    imputer = KNNImputer(n_neighbors=min(k, len(fit)), keep_empty_features=True)
    filled = imputer.fit((fit - mean) / std).transform((x - mean) / std) * std + mean
    out = receivers[list(key)].copy()
    for t in targets:
        j = features.index(t)
        out[f"_knn_{t}"] = np.where(np.isnan(x[:, j]), filled[:, j], x[:, j])
    schema = df.select(*key).schema
    for t in targets:
        schema = schema.add(f"_knn_{t}", "double")
    spark = df.sparkSession
    values = spark.createDataFrame(pd.DataFrame(out).astype({f"_knn_{t}": float for t in targets}), schema)
    joined = flagged.join(F.broadcast(values), list(key), "left")
    for t in targets:
        joined = joined.withColumn(t, F.coalesce(F.col(t).cast("double"), F.col(f"_knn_{t}")))
    return joined.drop(*[f"_knn_{t}" for t in targets]).select(*flagged.columns)


def treat(
    df: DataFrame,
    rules: Mapping[str, ColumnRule],
    *,
    key: Sequence[str],
    options: CleanOptions | None = None,
) -> tuple[DataFrame, dict[str, dict]]:
    """Outliers, then imputation, for every ruled column of a de-duplicated table.

    Fences are computed over the values as delivered; fill values over the values after capping;
    an imputed value is never flagged. Adds ``<col>_outlier`` per flagged or capped column and
    ``<col>_imputed`` per imputed column.

    Returns:
        The treated frame (same rows) and, per column, the report entry without the counts that
        need the result (``missing_filled``, ``missing_out``, ``outliers_flagged``, ``outliers_capped``;
        see :func:`_column_counts`).

    Raises:
        InvalidArgument: a rule names a column the table does not have.
    """
    options = options or CleanOptions()
    unknown = [c for c in rules if c not in df.columns]
    if unknown:
        raise InvalidArgument(f"rules name columns the table does not have: {', '.join(unknown)}", field=unknown[0])
    missing_in = df.agg(*[F.count_if(F.col(c).isNull()).alias(c) for c in rules]).first().asDict() if rules else {}
    bounds = iqr_bounds(df, rules, options.relative_error)
    treated = apply_outliers(df, bounds, rules)
    fills = fill_values(treated, rules, options.relative_error)
    treated = impute(treated, fills)
    by_k: dict[int, list[str]] = {}
    for c, r in rules.items():
        if r.impute == "knn":
            by_k.setdefault(r.knn_k, []).append(c)
    for k, targets in sorted(by_k.items()):
        treated = knn_impute(
            treated, key, list(rules), targets, k,
            fit_rows=options.knn_fit_rows, max_rows=options.knn_max_rows, seed=options.seed,
        )
    entries = {
        c: {
            "impute": r.impute,
            **({"knn_k": r.knn_k} if r.impute == "knn" else {}),
            "fill_value": fills.get(c),
            "outlier": r.outlier,
            "bounds": bounds[c].as_dict() if bounds.get(c) else None,
            "missing_in": int(missing_in[c]),
        }
        for c, r in rules.items()
    }
    return treated, entries


# --- counting ------------------------------------------------------------------------------------


def _column_counts(df: DataFrame, columns: Mapping[str, dict]) -> tuple[int, dict[str, dict[str, int]]]:
    """Rows of a treated table and, per column, filled, missing, flagged and capped values (one job).

    A value counts as capped when it is flagged and now sits exactly on a fence: a cap that did
    not happen shows up as a reconciliation failure rather than being assumed.
    """
    aggs = [F.count(F.lit(1)).alias("_rows")]
    for c, e in columns.items():
        x = F.col(c)
        aggs.append(F.count_if(x.isNull()).alias(f"out_{c}"))
        aggs.append(F.count_if(F.col(f"{c}_imputed") if e["impute"] != "none" else F.lit(False)).alias(f"fill_{c}"))
        flagged = F.col(f"{c}_outlier") if e["outlier"] != "none" else F.lit(False)
        aggs.append(F.count_if(flagged).alias(f"flag_{c}"))
        b = e["bounds"]
        on_fence = F.lit(False) if b is None or e["outlier"] != "cap" else (
            (x == F.lit(b["lower"])) | (x == F.lit(b["upper"]))
        )
        aggs.append(F.count_if(flagged & on_fence).alias(f"cap_{c}"))
    row = df.agg(*aggs).first()
    counts = {
        c: {
            "missing_filled": int(row[f"fill_{c}"]),
            "missing_out": int(row[f"out_{c}"]),
            "outliers_flagged": int(row[f"flag_{c}"]),
            "outliers_capped": int(row[f"cap_{c}"]),
        }
        for c in columns
    }
    return int(row["_rows"]), counts


def _check(name: str, entry: dict) -> None:
    """Raise PlatformError if a table's report does not reconcile (a bug, never bad data)."""
    problems = []
    if entry["rows_in"] != entry["rows_out"] + entry["duplicates_removed"]:
        problems.append(
            f"{entry['rows_in']} rows in but {entry['rows_out']} out + {entry['duplicates_removed']} duplicates"
        )
    for c, e in entry["columns"].items():
        if e["missing_in"] != e["missing_filled"] + e["missing_out"]:
            problems.append(
                f"{c}: {e['missing_in']} missing in but {e['missing_filled']} filled + {e['missing_out']} left"
            )
        if e["outlier"] == "cap" and e["outliers_capped"] != e["outliers_flagged"]:
            problems.append(f"{c}: {e['outliers_flagged']} flagged but {e['outliers_capped']} capped")
    if problems:
        raise PlatformError(f"cleaning {name}: reconciliation failed: " + "; ".join(problems))


def _by_method(columns: dict[str, dict]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for e in columns.values():
        if e["missing_filled"]:
            totals[e["impute"]] = totals.get(e["impute"], 0) + e["missing_filled"]
    return totals


# --- the job -----------------------------------------------------------------------------------


def _clean_table(
    name: str, deduped: DataFrame, dup_counts: dict[str, int], rules: Mapping[str, ColumnRule], options: CleanOptions
) -> tuple[DataFrame, dict]:
    """Treat one de-duplicated table; the cached result and its reconciled report entry."""
    treated, columns = treat(deduped, rules, key=_KEYS[name], options=options)
    treated = treated.cache()
    rows_out, counts = _column_counts(treated, columns)
    for c in columns:
        columns[c].update(counts[c])
    entry = {
        "skipped": False,
        "key": list(_KEYS[name]),
        **dup_counts,
        "rows_out": rows_out,
        "missing_filled": _by_method(columns),
        "outliers_flagged": sum(e["outliers_flagged"] for e in columns.values()),
        "outliers_capped": sum(e["outliers_capped"] for e in columns.values()),
        "columns": columns,
        "path": None,
    }
    _check(name, entry)
    return treated, entry


def _dedupe(name: str, df: DataFrame) -> tuple[DataFrame, DataFrame, dict[str, int]]:
    """The marked rows (cached: unpersist when done), the kept rows and the duplicate counts."""
    marked = deduplicate(df, _KEYS[name], [c for c in _NEWEST[name] if c in df.columns]).cache()
    row = marked.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_if(F.col("_duplicate") == "exact").alias("exact"),
        F.count_if(F.col("_duplicate") == "key").alias("key"),
    ).first()
    counts = {
        "rows_in": int(row["rows"]),
        "duplicates_removed": int(row["exact"]) + int(row["key"]),
        "exact_duplicates": int(row["exact"]),
        "key_duplicates": int(row["key"]),
    }
    return marked, marked.where(F.col("_duplicate").isNull()).drop("_duplicate"), counts


def main(
    settings: Settings,
    *,
    run_id: str | None = None,
    progress: Progress | None = None,
    as_of: date | None = None,
    rules: Mapping[str, Mapping[str, ColumnRule]] | None = None,
    options: CleanOptions | None = None,
) -> dict:
    """Clean the raw zone's orders and users, build ``user_features``, write tables and report.

    Tables go to ``features/clean/<table>/run=<run_id>/`` (``features/clean/latest.json`` names the
    newest run); the report to ``reports/clean/<run_id>.json`` and ``reports/clean/latest.json``.

    Args:
        settings: Platform settings (lake, Spark).
        run_id: Run id; default a new sortable id.
        progress: Called as ``progress(step, fraction)`` with fraction in [0, 1].
        as_of: Day ages and recency are computed for; default the day after the last order.
        rules: Table -> column -> rule; default ``settings.cleaning.rules`` over
            :data:`DEFAULT_RULES` (a table given replaces
            that table's defaults as a whole).
        options: Quantile and KNN tunables; default from ``settings.cleaning``.

    Returns:
        The report (see docs/cleaning.md).

    Raises:
        FailedPrecondition: no orders in the raw zone, or KNN over its limit.
        InvalidArgument: a bad run id, or a rule for a column a table lacks.
        PlatformError: the report does not reconcile (a bug, never bad data).
    """
    started = datetime.now(timezone.utc)
    ctx = JobContext.start(settings, "pmkt-clean", run_id=run_id, progress=progress)
    rules, options = _rules_and_options(settings.cleaning, rules, options)
    ctx.require_raw("orders")
    # Users who asked to be forgotten stay out of every build; rows_in counts what is left.
    raw_orders = ctx.read_raw("orders")
    as_of = as_of or default_as_of(raw_orders)
    cached: list[DataFrame] = []
    try:
        _, orders, entry = _dedupe_and_treat(ctx, "orders", raw_orders, rules, options, cached, at=(0.0, 0.15))
        outputs, tables = {"orders": orders}, {"orders": entry}
        if ctx.has_raw("users"):
            _clean_users(ctx, orders, as_of, rules, options, cached, outputs, tables)
        else:
            log.info("clean: the raw zone has no users; users and user_features skipped")
            tables.update(users={"skipped": True}, user_features={"skipped": True})
        ctx.step("writing", 0.8)
        for name, df in outputs.items():
            tables[name]["path"] = _write_table(ctx, name, df, tables[name])
    finally:
        for df in cached:
            df.unpersist()
    report = {
        "run_id": ctx.run_id,
        "as_of": as_of.isoformat(),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quantiles": "exact" if options.relative_error == 0 else f"approx (relative error {options.relative_error})",
        "tables": tables,
    }
    ctx.step("writing report", 0.98)
    paths = {n: t["path"] for n, t in tables.items() if t.get("path")}
    # clean/latest.json names every table's run; the run folders are per table, without a _meta.json.
    CLEAN.publish(ctx.lake, ctx.run_id, {"run_id": ctx.run_id, "as_of": report["as_of"], "paths": paths},
                  run_meta=False)
    CLEAN_REPORTS.write_report(ctx.lake, ctx.run_id, report)
    ctx.step("done", 1.0)
    return report


def _rules_and_options(
    cs: CleaningSettings, rules: Mapping[str, Mapping[str, ColumnRule]] | None, options: CleanOptions | None
) -> tuple[dict[str, Mapping[str, ColumnRule]], CleanOptions]:
    """The rules per table (given, else ``cleaning.rules``, over :data:`DEFAULT_RULES`) and the options.

    Raises:
        InvalidArgument: rules for a table that is not cleaned.
    """
    unknown = sorted(set(rules or {}) - set(DEFAULT_RULES))
    if unknown:
        raise InvalidArgument(f"rules for unknown tables: {', '.join(unknown)} (tables: {', '.join(DEFAULT_RULES)})",
                              field="rules")
    if rules is None and cs.rules:
        rules = {table: {col: ColumnRule(**r.model_dump()) for col, r in cols.items()}
                 for table, cols in cs.rules.items()}
    options = options or CleanOptions(relative_error=cs.relative_error, knn_fit_rows=cs.knn_fit_rows,
                                      knn_max_rows=cs.knn_max_rows, seed=cs.seed)
    return {**DEFAULT_RULES, **(rules or {})}, options


def _dedupe_and_treat(
    ctx: JobContext, name: str, df: DataFrame, rules: Mapping[str, Mapping[str, ColumnRule]], options: CleanOptions,
    cached: list[DataFrame], *, at: tuple[float, float],
) -> tuple[DataFrame, DataFrame, dict]:
    """De-duplicate then treat one table: the kept rows, the treated table and its report entry.

    What it caches is appended to ``cached`` (the caller unpersists it, on failure too); ``at`` is
    the progress fraction of each half.
    """
    ctx.step(f"{name}: de-duplicating", at[0])
    marked, kept, counts = _dedupe(name, df)
    cached.append(marked)
    ctx.step(f"{name}: outliers and missing values", at[1])
    treated, entry = _clean_table(name, kept, counts, rules[name], options)
    cached.append(treated)
    return kept, treated, entry


def _clean_users(
    ctx: JobContext, orders: DataFrame, as_of: date, rules: Mapping[str, Mapping[str, ColumnRule]],
    options: CleanOptions, cached: list[DataFrame], outputs: dict[str, DataFrame], tables: dict[str, dict],
) -> None:
    """Clean ``users`` and build ``user_features`` from them and the cleaned ``orders`` (into
    ``outputs`` and ``tables``)."""
    raw_users = with_age(ctx.read_raw("users"), as_of)
    users, outputs["users"], tables["users"] = _dedupe_and_treat(ctx, "users", raw_users, rules, options, cached,
                                                                 at=(0.35, 0.45))
    buyers = rfm(orders, as_of).cache()
    cached.append(buyers)
    _, outputs["user_features"], entry = _dedupe_and_treat(
        ctx, "user_features", user_features(users, buyers), rules, options, cached, at=(0.6, 0.7)
    )
    orphans = buyers.join(users.select("user_id"), "user_id", "left_anti").count()
    never = outputs["user_features"].where(~F.col("has_paid_order")).count()
    tables["user_features"] = {**entry, "never_purchased": never, "buyers_without_user": orphans}


def _write_table(ctx: JobContext, name: str, df: DataFrame, entry: dict) -> str:
    """Write one cleaned table (what may leave the job: :func:`_publishable`); its lake-relative path."""
    run = Table.run_folder(ctx.run_id)
    _publishable(df).write.mode("overwrite").parquet(CLEAN.uri(ctx.lake, name, run))
    log.info(
        "clean %s: %d in, %d out, %d duplicates removed, %d values filled, %d outliers flagged",
        name, entry["rows_in"], entry["rows_out"], entry["duplicates_removed"],
        sum(entry["missing_filled"].values()), entry["outliers_flagged"],
    )
    return CLEAN.rel(name, run)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def format_report(report: dict) -> str:
    """A human-readable summary of a cleaning report, one block per table."""
    lines = [f"Clean run {report['run_id']}  (as of {report['as_of']}, quantiles {report['quantiles']})"]
    width = max(len(n) for n in report["tables"]) if report["tables"] else 0
    col_width = max((len(c) for t in report["tables"].values() for c in t.get("columns", {})), default=0)
    for name, t in report["tables"].items():
        if t["skipped"]:
            lines.append(f"  {name:<{width}}  skipped (no users in the raw zone)")
            continue
        lines.append(
            f"  {name:<{width}}  rows {t['rows_in']:,} = kept {t['rows_out']:,} + duplicates removed "
            f"{t['duplicates_removed']:,} (exact {t['exact_duplicates']:,}, same {'/'.join(t['key'])} "
            f"{t['key_duplicates']:,})"
        )
        pad = " " * (width + 4)
        if "never_purchased" in t:
            lines.append(
                pad + f"never purchased {t['never_purchased']:,}; buyers without a users row "
                f"{t['buyers_without_user']:,} (left out)"
            )
        for c, e in t["columns"].items():
            parts = []
            if e["missing_in"]:
                how = e["impute"] if e["impute"] != "knn" else f"knn k={e['knn_k']}"
                if e["fill_value"] is not None:
                    how += f" {_num(e['fill_value'])}"
                fill = f"filled {e['missing_filled']:,} ({how})" if e["impute"] != "none" else "not filled"
                parts.append(f"missing {e['missing_in']:,}: {fill}, left {e['missing_out']:,}")
            if e["outlier"] != "none":
                b = e["bounds"]
                scale = "log1p " if b is not None and b["scale"] == "log1p" else ""
                fences = "no values" if b is None else (
                    f"{_num(b['lower'])} .. {_num(b['upper'])}, {scale}IQR x{b['k']:g}"
                )
                capped = f", {e['outliers_capped']:,} capped" if e["outlier"] == "cap" else ""
                parts.append(f"outliers {e['outliers_flagged']:,} flagged{capped} [{fences}]")
            lines.append(pad + f"{c:<{col_width}}  " + ("; ".join(parts) or "nothing to do"))
        if t.get("path"):
            lines.append(pad + f"table: {t['path']}")
    return "\n".join(lines)
