"""Customer lifetime value per user: historic CLV, and a BG/NBD + Gamma-Gamma forecast.

``clv_summary`` is a pure transform from raw-zone orders to the frequency / recency / T /
monetary summary the models need (the "buy till you die" summary of Fader, Hardie and Lee).
``ClvModel`` fits BG/NBD (purchase rate and drop-out) and Gamma-Gamma (spend per purchase)
with the ``lifetimes`` library on that summary, collected to the driver: it is one row
per customer and four numbers wide. ``main`` reads the lake's raw orders, writes the
feature table to ``features/clv/run=<run_id>/`` and the values to the profile store.

docs/features-clv.md describes the model and the check against the published CDNOW fit.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cluster.core.catalog import CLV
from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.settings import Settings
from spark_jobs.context import JobContext, Progress, column_cells
from spark_jobs.transforms import default_as_of

__all__ = ["clv_summary", "ClvModel", "fit_clv", "predict_features", "main", "CLV_COLUMNS", "UNITS",
           "SUMMARY_COLUMNS"]

log = logging.getLogger(__name__)

#: Time units the summary and the models can be expressed in, as a number of days.
UNITS = {"days": 1, "weeks": 7}

#: Columns of the summary the models read (``lifetimes`` names).
SUMMARY_COLUMNS = ("frequency", "recency", "T", "monetary_value")

#: Profile-store columns written by this job.
CLV_COLUMNS = {
    "clv_historic": "m:clv_historic",
    "clv_predicted": "m:clv_predicted",
    "p_alive": "m:p_alive",
    "expected_purchases": "m:expected_purchases",
    "as_of": "m:clv_as_of",
    "run_id": "m:clv_run",
}

#: Length of the discounting period in days: lifetimes discounts per 30-day month.
_MONTH_DAYS = 30

_cells = column_cells(CLV_COLUMNS, dict.fromkeys(("clv_historic", "clv_predicted", "p_alive", "expected_purchases"),
                                                 float))


def _unit_days(unit: str) -> int:
    try:
        return UNITS[unit]
    except KeyError:
        raise InvalidArgument(f"unit must be one of {sorted(UNITS)}, got {unit!r}", field="unit") from None


def clv_summary(orders: DataFrame, as_of: date, unit: str = "days") -> DataFrame:
    """The BG/NBD summary per user over paid orders before ``as_of``.

    Purchases are counted per UTC calendar day, as in the BG/NBD literature: several
    orders on one day are one purchase whose value is their sum. The observation period
    of a user runs from the day of the first purchase to the day before ``as_of``.

    Args:
        orders: Raw-zone orders (``user_id``, ``order_id``, ``order_time`` as UTC timestamp,
            ``amount``, ``status``); order ids are unique, as the raw zone guarantees.
        as_of: The day features are computed for; orders on or after it are ignored.
        unit: Time unit of ``recency`` and ``T``: ``days`` or ``weeks`` (7 days, fractional).

    Returns:
        One row per user with at least one paid order: ``user_id``, ``frequency`` (purchase
        days after the first one), ``recency`` (first to last purchase day), ``T`` (first
        purchase day to the day before ``as_of``), ``monetary_value`` (mean value of the
        repeat purchases, 0 without any), ``clv_historic`` (sum of paid amounts, 2 decimals).

    Raises:
        InvalidArgument: unknown ``unit``.
    """
    unit_days = _unit_days(unit)
    cutoff = datetime.combine(as_of, datetime.min.time())
    last_observed = as_of - timedelta(days=1)
    paid = orders.where((F.col("status") == "paid") & (F.col("order_time") < F.lit(cutoff)))
    purchases = paid.groupBy("user_id", F.to_date("order_time").alias("day")).agg(F.sum("amount").alias("value"))
    per_user = purchases.groupBy("user_id").agg(
        F.min("day").alias("first_day"),
        F.max("day").alias("last_day"),
        F.count("*").alias("purchase_days"),
        F.sum("value").alias("total"),
        F.min_by("value", "day").alias("first_value"),
    )
    repeats = F.col("purchase_days") - 1
    return per_user.select(
        "user_id",
        repeats.cast("int").alias("frequency"),
        (F.datediff("last_day", "first_day") / unit_days).alias("recency"),
        (F.datediff(F.lit(last_observed), "first_day") / unit_days).alias("T"),
        # Gamma-Gamma models repeat spend (Fader-Hardie): a first purchase is often atypical.
        F.when(repeats > 0, (F.col("total") - F.col("first_value")) / repeats)
        .otherwise(0.0)
        .alias("monetary_value"),
        F.round("total", 2).alias("clv_historic"),
    )


class ClvModel:
    """BG/NBD for purchases and drop-out, Gamma-Gamma for spend per purchase.

    Args:
        penalizer: L2 penalty on the log-parameters of both fits (``lifetimes``'
            ``penalizer_coef``). 0 is maximum likelihood, as published; even 0.001 moves
            the CDNOW Gamma-Gamma estimates far from it, so raise it only when that fails.
        unit: Time unit of the summary's ``recency`` and ``T`` (a key of :data:`UNITS`).

    Attributes:
        bgnbd_: The fitted ``lifetimes.BetaGeoFitter``.
        gamma_gamma_: The fitted ``lifetimes.GammaGammaFitter`` (repeat customers only).
        params_: ``r``, ``alpha``, ``a``, ``b`` (BG/NBD; ``alpha`` in ``unit``) and ``p``,
            ``q``, ``v`` (Gamma-Gamma) as floats.
        n_customers_: Customers in the BG/NBD fit.
        n_repeat_customers_: Customers in the Gamma-Gamma fit.
    """

    def __init__(self, penalizer: float = 0.0, unit: str = "days") -> None:
        self.penalizer = penalizer
        self.unit = unit

    def fit(self, summary: pd.DataFrame) -> ClvModel:
        """Fit both models on a summary as :func:`clv_summary` returns it.

        Args:
            summary: At least the columns of :data:`SUMMARY_COLUMNS`, one row per customer.

        Returns:
            ``self``.

        Raises:
            InvalidArgument: bad ``unit`` or ``penalizer``, or a summary column is missing.
            FailedPrecondition: no customers, no repeat customers, a fit that does not
                converge, or a spend distribution without a finite mean (``q <= 1``).
        """
        from lifetimes import BetaGeoFitter, GammaGammaFitter
        from lifetimes.utils import ConvergenceError

        _unit_days(self.unit)
        if not self.penalizer >= 0:
            raise InvalidArgument(f"penalizer must be >= 0, got {self.penalizer}", field="penalizer")
        _check_columns(summary)
        if summary.empty:
            raise FailedPrecondition("no customers to fit the CLV model on")
        # Gamma-Gamma models the mean of positive repeat spends; free repeat orders are left out.
        repeat = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
        if repeat.empty:
            raise FailedPrecondition("no repeat customers: the Gamma-Gamma spend model needs some")
        try:
            self.bgnbd_ = BetaGeoFitter(penalizer_coef=self.penalizer).fit(
                summary["frequency"], summary["recency"], summary["T"]
            )
            self.gamma_gamma_ = GammaGammaFitter(penalizer_coef=self.penalizer).fit(
                repeat["frequency"], repeat["monetary_value"]
            )
        except ConvergenceError as e:
            raise FailedPrecondition(f"the CLV model did not converge: {e}") from e
        self.params_ = {k: float(v) for k, v in (*self.bgnbd_.params_.items(), *self.gamma_gamma_.params_.items())}
        self.n_customers_ = len(summary)
        self.n_repeat_customers_ = len(repeat)
        if self.params_["q"] <= 1:
            raise FailedPrecondition(
                f"Gamma-Gamma q = {self.params_['q']:.3f} <= 1: the expected spend per purchase is unbounded"
            )
        log.info("CLV fit on %d customers (%d repeat): %s", self.n_customers_, self.n_repeat_customers_,
                 {k: round(v, 4) for k, v in self.params_.items()})
        return self

    def predict(
        self, summary: pd.DataFrame, horizon_days: int = 365, monthly_discount_rate: float = 0.01
    ) -> pd.DataFrame:
        """Expected purchases, P(alive) and discounted CLV over the next ``horizon_days``.

        CLV is discounted per 30-day month, as ``lifetimes`` does: the purchases expected in
        month k are worth ``spend / (1 + rate) ** k``; a last, partial month ending on day
        d is discounted by ``(1 + rate) ** (d / 30)``. With a horizon of whole months it
        equals ``lifetimes``' ``customer_lifetime_value`` on a model fitted in days.

        Args:
            summary: The columns of :data:`SUMMARY_COLUMNS` in the model's ``unit``.
            horizon_days: Forecast horizon in days, >= 1.
            monthly_discount_rate: Discount rate per 30 days, >= 0.

        Returns:
            A frame on ``summary``'s index: ``expected_purchases`` (over the horizon),
            ``p_alive``, ``expected_spend`` (Gamma-Gamma mean value of a future purchase)
            and ``clv_predicted`` (discounted expected spend over the horizon).

        Raises:
            InvalidArgument: bad horizon or rate, or a summary column is missing.
        """
        if horizon_days < 1:
            raise InvalidArgument(f"horizon_days must be >= 1, got {horizon_days}", field="horizon_days")
        if not monthly_discount_rate >= 0:
            raise InvalidArgument(
                f"monthly_discount_rate must be >= 0, got {monthly_discount_rate}", field="monthly_discount_rate"
            )
        _check_columns(summary)
        unit_days = _unit_days(self.unit)
        x, t_x, T = (summary[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))

        def purchases_by(days: float) -> np.ndarray:
            return np.asarray(
                self.bgnbd_.conditional_expected_number_of_purchases_up_to_time(days / unit_days, x, t_x, T)
            )

        ends = np.append(np.arange(_MONTH_DAYS, horizon_days, _MONTH_DAYS), horizon_days)
        cumulative = np.column_stack([purchases_by(e) for e in ends])
        per_month = np.diff(cumulative, axis=1, prepend=0.0)
        discount = (1.0 + monthly_discount_rate) ** -(ends / _MONTH_DAYS)
        spend = np.asarray(
            self.gamma_gamma_.conditional_expected_average_profit(summary["frequency"], summary["monetary_value"]),
            dtype=float,
        )
        return pd.DataFrame(
            {
                "expected_purchases": cumulative[:, -1],
                "p_alive": np.asarray(self.bgnbd_.conditional_probability_alive(x, t_x, T), dtype=float),
                "expected_spend": spend,
                "clv_predicted": spend * (per_month @ discount),
            },
            index=summary.index,
        )


def fit_clv(summary: pd.DataFrame, *, penalizer: float = 0.0, unit: str = "days") -> ClvModel:
    """Fit BG/NBD and Gamma-Gamma on a summary: ``ClvModel(penalizer, unit).fit(summary)``."""
    return ClvModel(penalizer=penalizer, unit=unit).fit(summary)


def _check_columns(summary: pd.DataFrame) -> None:
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
    if missing:
        raise InvalidArgument(f"the CLV summary lacks columns {missing}", field="summary")


def predict_features(summary: pd.DataFrame, model: ClvModel, horizon_days: int,
                     monthly_discount_rate: float) -> pd.DataFrame:
    """The feature table: the summary and the model's predictions side by side, money to 2 decimals."""
    predicted = model.predict(summary, horizon_days=horizon_days, monthly_discount_rate=monthly_discount_rate)
    features = pd.concat([summary, predicted], axis=1)
    features["clv_predicted"] = features["clv_predicted"].round(2)
    features["expected_spend"] = features["expected_spend"].round(2)
    return features


def main(
    settings: Settings,
    *,
    as_of: date | None = None,
    run_id: str | None = None,
    unit: str | None = None,
    horizon_days: int | None = None,
    monthly_discount_rate: float | None = None,
    penalizer: float | None = None,
    progress: Progress | None = None,
) -> dict:
    """Build CLV features from the raw zone; write the lake table and the profile store.

    The tunables default to ``settings.clv``.

    Args:
        settings: Platform settings (lake, profile store, Spark).
        as_of: Orders on or after this day are ignored; default the day after the last order.
        run_id: Run id; a new one by default.
        unit: Time unit the models are fitted in (``days`` or ``weeks``).
        horizon_days: Horizon of ``expected_purchases`` and ``clv_predicted``.
        monthly_discount_rate: Discount rate per 30 days of the predicted CLV.
        penalizer: L2 penalty of both fits (0: maximum likelihood).
        progress: Called as ``progress(step_name, fraction_done)``.

    Returns:
        Run metadata: ``run_id``, ``as_of``, ``users``, ``repeat_customers``, ``path``
        (lake-relative), ``unit``, ``horizon_days``, ``monthly_discount_rate``,
        ``penalizer`` and the fitted ``params``.

    Raises:
        FailedPrecondition: no orders have been ingested yet, or the model cannot be fitted.
        InvalidArgument: a bad tunable.
    """
    cs = settings.clv
    unit = unit or cs.unit
    horizon_days = horizon_days or cs.horizon_days
    monthly_discount_rate = cs.monthly_discount_rate if monthly_discount_rate is None else monthly_discount_rate
    penalizer = cs.penalizer if penalizer is None else penalizer
    ctx = JobContext.start(settings, "pmkt-clv", run_id=run_id, progress=progress)
    ctx.require_raw("orders")
    ctx.step("reading orders", 0.0)
    orders = ctx.read_raw("orders")
    as_of = as_of or default_as_of(orders)
    ctx.step("computing the summary", 0.1)
    summary = clv_summary(orders, as_of, unit).toPandas()
    ctx.step("fitting BG/NBD and Gamma-Gamma", 0.4)
    model = fit_clv(summary, penalizer=penalizer, unit=unit)
    features = predict_features(summary, model, horizon_days, monthly_discount_rate)
    ctx.step("writing features", 0.6)
    frame = ctx.spark.createDataFrame(features).cache()
    path = ctx.write_run(CLV, frame)
    ctx.step("writing profiles", 0.8)
    ctx.write_profiles(frame, _cells, {CLV_COLUMNS["as_of"]: as_of.isoformat(), CLV_COLUMNS["run_id"]: ctx.run_id})
    frame.unpersist()
    meta = ctx.publish(CLV, {
        "run_id": ctx.run_id, "as_of": as_of.isoformat(), "users": len(features),
        "repeat_customers": model.n_repeat_customers_, "path": path, "unit": unit, "horizon_days": horizon_days,
        "monthly_discount_rate": monthly_discount_rate, "penalizer": penalizer, "params": model.params_,
    })
    ctx.step("done", 1.0)
    log.info("CLV run %s: %d users as of %s", ctx.run_id, len(features), as_of)
    return meta
