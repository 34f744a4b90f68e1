"""Demand forecast and own-price elasticity per product category: a Poisson GLM on the demand table.

For category c, local date d and hour h (``spark_jobs.demand``)::

    log E[orders] = a_c + hour_c[h] + weekday_c[wd(d)] + trend_c(d) + b_c * log(price index)

with elasticity_c = -b_c (a 10 % lower price multiplies expected orders by 0.9 ** -elasticity).
``trend_c`` is piecewise linear in the day with a knot every ``knot_days`` days (0 = one straight
line; ``trend=False`` = none); forecasts continue the last piece's slope. Every effect belongs to
one category, so each category is fitted on its own rows by Newton's method (a few dozen
coefficients each). The hour and weekday dummies and the trend's slope changes at the knots carry
a ridge penalty (``ridge``; a tiny floor keeps the dummies identifiable next to the intercept); the
intercept, the first slope and the price coefficient are not penalised.

Standard errors come from the inverse penalised Fisher information, scaled by the Pearson
dispersion when it exceeds 1 (quasi-Poisson). The dispersion is taken at the larger of two levels:
the table's cells, and the category's days (the price changes per day, so a day-level misfit of
the time trend is what would make the elasticity look more certain than it is). For the price
coefficient the larger of that and a sandwich estimate clustered by day is reported.

The price regressor is ``day_price_index`` (the category's price level on that local day); a day
with no order of the category has no observed price and counts as list price (index 1.0).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.errors import InvalidArgument

__all__ = [
    "FIT_COLUMNS",
    "DemandModel",
    "holdout_metrics",
    "mape",
    "poisson_deviance",
    "r_squared",
    "split_holdout",
]

log = logging.getLogger(__name__)

#: Demand-table columns ``fit`` needs (``predict`` needs all but ``orders`` and ``list_revenue``).
FIT_COLUMNS = ("category", "date", "hour", "orders", "list_revenue", "day_price_index")
#: Ridge floor on the dummy effects: makes them identifiable next to the intercept when ridge=0.
_RIDGE_FLOOR = 1e-6
_N_HOURS, _N_DAYS = 24, 7
# Column layout of one category's design: intercept, 24 hours, 7 weekdays, log price, trend slope,
# then one slope change per knot.
_HOURS = slice(1, 1 + _N_HOURS)
_WEEKDAYS = slice(1 + _N_HOURS, 1 + _N_HOURS + _N_DAYS)
_PRICE = 1 + _N_HOURS + _N_DAYS
_TREND = _PRICE + 1


def _dates(values: Any) -> np.ndarray:
    return pd.to_datetime(pd.Series(values)).to_numpy().astype("datetime64[D]")


def _weekday(days: np.ndarray) -> np.ndarray:
    return (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday


class DemandModel:
    """Poisson demand model per category with hour, weekday, trend and own-price effects.

    Args:
        ridge: Penalty on the hour and weekday dummies and the trend's slope changes (0 =
            unpenalised but for a 1e-6 floor).
        trend: Fit a per-category trend over the days (its last slope is extrapolated).
        knot_days: Days between the trend's knots (0 = a straight line).
        max_iter: Newton iterations per category at most.
        tol: Stop when the largest coefficient step is below this.

    Attributes (after ``fit``):
        categories_: Categories in the training data, sorted.
        elasticity_: Category -> own-price elasticity (-coefficient of log price index).
        elasticity_se_: Category -> its standard error (quasi-Poisson).
        order_value_: Category -> mean revenue at list price per order (CNY).
        coef_: Category -> coefficients (intercept, 24 hours, 7 weekdays, log price, trend slope per
            30 days, slope changes at ``knots_``).
        knots_: Knot positions of the trend, in days after ``first_date_``.
        dispersion_: Category -> Pearson dispersion (1 for Poisson data).
        first_date_, last_date_: The training dates.
        n_rows_, n_orders_: Training cells and orders.
    """

    def __init__(self, ridge: float = 1.0, trend: bool = True, knot_days: int = 30, max_iter: int = 50,
                 tol: float = 1e-8):
        self.ridge = ridge
        self.trend = trend
        self.knot_days = knot_days
        self.max_iter = max_iter
        self.tol = tol

    # --- fitting -----------------------------------------------------------------------------

    @property
    def _n_coef(self) -> int:
        return _TREND + (1 + len(self.knots_) if self.trend else 0)

    def _design(self, dates: np.ndarray, hours: np.ndarray, price: np.ndarray) -> np.ndarray:
        x = np.zeros((len(dates), self._n_coef))
        x[:, 0] = 1.0
        x[np.arange(len(dates)), _HOURS.start + hours] = 1.0
        x[np.arange(len(dates)), _WEEKDAYS.start + _weekday(dates)] = 1.0
        x[:, _PRICE] = np.log(price)
        if self.trend:
            # Per 30 days, so the ridge on slope changes means the same whatever the table's length.
            t = (dates - self.first_date_).astype(np.int64).astype(float)
            x[:, _TREND] = t / 30.0
            for j, k in enumerate(self.knots_):
                x[:, _TREND + 1 + j] = np.maximum(t - k, 0.0) / 30.0
        return x

    def _penalty(self) -> np.ndarray:
        pen = np.zeros(self._n_coef)
        pen[_HOURS] = pen[_WEEKDAYS] = max(float(self.ridge), _RIDGE_FLOOR)
        pen[_TREND + 1:] = max(float(self.ridge), _RIDGE_FLOOR)
        return pen

    def _newton(self, x: np.ndarray, y: np.ndarray, day: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        pen = self._penalty()
        n_coef = len(pen)
        beta = np.zeros(n_coef)
        beta[0] = np.log(max(y.mean(), 1e-6))

        def objective(b: np.ndarray) -> float:
            eta = x @ b
            return float(np.sum(np.exp(eta) - y * eta) + 0.5 * np.sum(pen * b * b))

        current = objective(beta)
        for _ in range(self.max_iter):
            mu = np.exp(x @ beta)
            grad = x.T @ (mu - y) + pen * beta
            hess = (x * mu[:, None]).T @ x + np.diag(pen)
            step = np.linalg.solve(hess, grad)
            scale = 1.0
            while scale > 1e-4:  # step halving: the Poisson objective is convex, this always ends
                trial = beta - scale * step
                value = objective(trial)
                if value <= current + 1e-12:
                    break
                scale /= 2
            beta, current = trial, value
            if np.max(np.abs(scale * step)) < self.tol:
                break
        mu = np.exp(x @ beta)
        hess = (x * mu[:, None]).T @ x + np.diag(pen)
        cell = float(np.sum((y - mu) ** 2 / np.maximum(mu, 1e-12)) / max(len(y) - n_coef, 1))
        y_day, mu_day = np.bincount(day, y), np.bincount(day, mu)
        seen = mu_day > 0
        # Day-level coefficients: weekdays, price, trend (the hours only split a day's total).
        dof_day = max(int(seen.sum()) - (n_coef - _N_HOURS), 1)
        daily = float(np.sum((y_day[seen] - mu_day[seen]) ** 2 / mu_day[seen]) / dof_day)
        bread = np.linalg.inv(hess)
        cov = bread * max(cell, daily, 1.0)
        # Sandwich covariance clustered by day: orders of one day share its users and its price,
        # which the Poisson cells do not know. The price SE is the larger of the two estimates.
        scores = np.zeros((int(day.max()) + 1, n_coef))
        np.add.at(scores, day, x * (y - mu)[:, None])
        robust = bread @ (scores.T @ scores) @ bread
        cov[_PRICE, _PRICE] = max(cov[_PRICE, _PRICE], robust[_PRICE, _PRICE])
        return beta, cov, max(cell, daily)

    def fit(self, frame: pd.DataFrame) -> DemandModel:
        """Fit every category of a demand table (one row per category, local date and hour).

        Args:
            frame: Rows with :data:`FIT_COLUMNS` (dense: zero-order cells included).

        Returns:
            self.

        Raises:
            InvalidArgument: a hyper-parameter is out of range, a column is missing, counts are
                negative, or there are no rows.
        """
        if not float(self.ridge) >= 0:
            raise InvalidArgument(f"ridge must be >= 0, got {self.ridge}", field="ridge")
        if int(self.knot_days) < 0:
            raise InvalidArgument(f"knot_days must be >= 0, got {self.knot_days}", field="knot_days")
        if int(self.max_iter) < 1:
            raise InvalidArgument(f"max_iter must be >= 1, got {self.max_iter}", field="max_iter")
        missing = [c for c in FIT_COLUMNS if c not in frame.columns]
        if missing:
            raise InvalidArgument(f"the demand frame lacks {missing}", field="frame")
        if frame.empty:
            raise InvalidArgument("the demand frame has no rows", field="frame")
        y_all = frame["orders"].to_numpy(dtype=float)
        if (y_all < 0).any():
            raise InvalidArgument("orders must be >= 0", field="orders")
        dates = _dates(frame["date"])
        self.first_date_, self.last_date_ = dates.min(), dates.max()
        span = int((self.last_date_ - self.first_date_).astype(np.int64))
        step = int(self.knot_days)
        # The last piece gets at least knot_days of data: its slope is what forecasts extrapolate.
        self.knots_ = [float(k) for k in range(step, span - step + 1, step)] if step > 0 else []
        day_index = (dates - self.first_date_).astype(np.int64)
        hours = frame["hour"].to_numpy(dtype=np.int64)
        price = self._price(frame)
        cats = frame["category"].astype(str).to_numpy()
        self.categories_ = sorted(set(cats))
        self.coef_, self.cov_, self.dispersion_ = {}, {}, {}
        self.elasticity_, self.elasticity_se_, self.order_value_ = {}, {}, {}
        for c in self.categories_:
            rows = cats == c
            beta, cov, phi = self._newton(self._design(dates[rows], hours[rows], price[rows]), y_all[rows],
                                          day_index[rows])
            self.coef_[c], self.cov_[c], self.dispersion_[c] = beta, cov, phi
            self.elasticity_[c] = float(-beta[_PRICE])
            self.elasticity_se_[c] = float(np.sqrt(self.cov_[c][_PRICE, _PRICE]))
            n = y_all[rows].sum()
            self.order_value_[c] = float(frame.loc[rows, "list_revenue"].sum() / n) if n > 0 else 0.0
        self.n_rows_, self.n_orders_ = len(frame), int(y_all.sum())
        log.info("demand model: %d categories, %d cells, %d orders", len(self.categories_), self.n_rows_,
                 self.n_orders_)
        return self

    @staticmethod
    def _price(frame: pd.DataFrame) -> np.ndarray:
        if "day_price_index" not in frame.columns:
            return np.ones(len(frame))
        price = pd.to_numeric(frame["day_price_index"], errors="coerce").to_numpy(dtype=float)
        price = np.where(np.isfinite(price) & (price > 0), price, 1.0)
        return price

    # --- using it ------------------------------------------------------------------------------

    def _check(self, category: str) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise InvalidArgument("the demand model is not fitted", field="model")
        if category not in self.coef_:
            raise InvalidArgument(f"unknown category {category!r}; known: {', '.join(self.categories_)}",
                                  field="category")
        return self.coef_[category]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Expected orders of each row (``category``, ``date``, ``hour``; ``day_price_index``
        optional, missing or null = list price).

        Raises:
            InvalidArgument: an unknown category or a missing column.
        """
        missing = [c for c in ("category", "date", "hour") if c not in frame.columns]
        if missing:
            raise InvalidArgument(f"the frame lacks {missing}", field="frame")
        out = np.zeros(len(frame))
        cats = frame["category"].astype(str).to_numpy()
        dates = _dates(frame["date"])
        hours = frame["hour"].to_numpy(dtype=np.int64)
        price = self._price(frame)
        for c in pd.unique(cats):
            beta = self._check(c)
            rows = cats == c
            out[rows] = np.exp(self._design(dates[rows], hours[rows], price[rows]) @ beta)
        return out

    def weekly_demand(self, category: str, price_ratio: float | np.ndarray = 1.0) -> np.ndarray:
        """Expected orders per weekday (rows, 0 = Monday) and local hour over the week after training.

        Args:
            category: A category of ``categories_``.
            price_ratio: Price / list price, a scalar or a (7, 24) array (one per slot).

        Returns:
            A (7, 24) array.

        Raises:
            InvalidArgument: an unknown category, or a ratio that is not positive or not (7, 24).
        """
        beta = self._check(category)
        ratio = np.broadcast_to(np.asarray(price_ratio, dtype=float), (_N_DAYS, _N_HOURS)) \
            if np.ndim(price_ratio) == 0 else np.asarray(price_ratio, dtype=float)
        if ratio.shape != (_N_DAYS, _N_HOURS):
            raise InvalidArgument(f"price_ratio must be a number or a 7 x 24 array, got shape {ratio.shape}",
                                  field="price_ratio")
        if not np.all(np.isfinite(ratio) & (ratio > 0)):
            raise InvalidArgument("price_ratio must be positive", field="price_ratio")
        week = self.last_date_ + np.arange(1, 8)
        day_of = {int(wd): d for wd, d in zip(_weekday(week), week)}
        dates = np.repeat(np.array([day_of[wd] for wd in range(_N_DAYS)]), _N_HOURS)
        hours = np.tile(np.arange(_N_HOURS), _N_DAYS)
        return np.exp(self._design(dates, hours, ratio.reshape(-1)) @ beta).reshape(_N_DAYS, _N_HOURS)


# --- held-out error -----------------------------------------------------------------------------


def mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute percentage error over the cells whose actual value is > 0 (zeros have no
    percentage error and are excluded); NaN when there are none."""
    a, p = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    keep = a > 0
    return float(np.mean(np.abs(a[keep] - p[keep]) / a[keep])) if keep.any() else float("nan")


def r_squared(actual: np.ndarray, predicted: np.ndarray) -> float:
    """1 - residual sum of squares / total sum of squares around the actual mean."""
    a, p = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    total = np.sum((a - a.mean()) ** 2)
    return float(1.0 - np.sum((a - p) ** 2) / total) if total > 0 else float("nan")


def poisson_deviance(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean Poisson deviance per cell (0 for a perfect fit; ``y log(y / mu)`` is 0 at y = 0)."""
    a, p = np.asarray(actual, dtype=float), np.maximum(np.asarray(predicted, dtype=float), 1e-12)
    term = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / p), 0.0)
    return float(np.mean(2.0 * (term - (a - p))))


def split_holdout(frame: pd.DataFrame, days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows before and within the last ``days`` dates of the frame.

    Raises:
        InvalidArgument: ``days`` < 1, or it leaves fewer than 14 training days.
    """
    dates = _dates(frame["date"])
    n_days = int((dates.max() - dates.min()).astype(int)) + 1 if len(dates) else 0
    if days < 1 or n_days - days < 14:
        raise InvalidArgument(f"holdout_days={days} leaves {n_days - days} of {n_days} days to train on "
                              "(14 at least)", field="holdout_days")
    cut = dates.max() - np.timedelta64(days - 1, "D")
    hold = dates >= cut
    return frame[~hold].reset_index(drop=True), frame[hold].reset_index(drop=True)


def holdout_metrics(frame: pd.DataFrame, predicted: np.ndarray) -> dict[str, float]:
    """Forecast error on held-out rows at two aggregates where counts are large enough to judge.

    ``slot``: per category x weekday x hour, summed over the held-out weeks (the unit a
    time-slot discount acts on); ``day``: per category x date. For each, MAPE (zero-actual
    cells excluded) and R^2; ``deviance`` is the mean Poisson deviance per table cell, and
    ``r2_day_ceiling`` the R^2 a perfect forecast would reach in expectation, given Poisson noise
    (1 - sum of predicted means / total sum of squares).
    """
    df = pd.DataFrame({"category": frame["category"].astype(str).to_numpy(),
                       "date": _dates(frame["date"]), "hour": frame["hour"].to_numpy(),
                       "actual": frame["orders"].to_numpy(dtype=float), "predicted": np.asarray(predicted)})
    df["weekday"] = _weekday(df["date"].to_numpy())
    slot = df.groupby(["category", "weekday", "hour"])[["actual", "predicted"]].sum()
    day = df.groupby(["category", "date"])[["actual", "predicted"]].sum()
    total = np.sum((day["actual"] - day["actual"].mean()) ** 2)
    return {
        "mape_slot": mape(slot["actual"], slot["predicted"]),
        "r2_slot": r_squared(slot["actual"], slot["predicted"]),
        "mape_day": mape(day["actual"], day["predicted"]),
        "r2_day": r_squared(day["actual"], day["predicted"]),
        "r2_day_ceiling": float(1.0 - day["predicted"].sum() / total) if total > 0 else float("nan"),
        "deviance": poisson_deviance(df["actual"], df["predicted"]),
        "zero_slots_excluded": int((slot["actual"] == 0).sum()),
        "zero_days_excluded": int((day["actual"] == 0).sum()),
    }
