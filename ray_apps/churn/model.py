"""Churn survival models: Cox proportional hazards or a Weibull AFT model, fitted with lifelines.

:class:`ChurnModel` is a scikit-learn style estimator over the churn table
(:func:`spark_jobs.training_tables.churn_table`, read with :func:`cluster.core.feature_io.load_churn_frame`).
It turns raw table rows into covariates itself (:func:`cluster.core.feature_io.churn_design`, plus an
optional hinge basis of the basket value), so a serving replica passes the columns the table has.

**Time scale.** A churner's ``duration_days`` is the day the churn becomes *observable*: the last
activity plus ``W + 1`` days, ``W`` being the table's ``inactivity_days``. Nobody can churn before day
``W + 1`` of their tenure, so the models are fitted on ``tau = duration_days - offset_days`` (with
``offset_days = W``; rows with ``tau <= 0`` carry no information and are left out): for a churner
``tau`` is the active span (first to last active day, inclusive), the day the silence starts. The
Cox partial likelihood and the concordance do not change under this shift; the Weibull model
needs it, as its hazard would otherwise have to be zero for the first ``W`` days.

**Definitions** (per user, days counted from *today*, the table's ``as_of``; see docs/models-churn.md):

* ``risk``: the hazard ratio against the average training user (Cox: ``exp((x - mean) . beta)``;
  the Weibull AFT model with one shape ``rho`` is a proportional-hazards model too, with
  ``exp(-rho (x - mean) . beta)``). It is time-invariant, and the ranking the concordance scores.
* ``survival``: ``S(d) = P(churn not observable by tenure t0 + d | what is known today)``, ``t0`` the
  user's tenure today (``duration_days`` of an active row), for ``d = 0 .. horizon``. Known today:
  no churn by ``t0``; with the row's ``inactive_days`` ``g`` also none before day ``W - g + 1`` (the
  user was active ``g`` days ago, and churn becomes observable only after ``W`` silent days), so
  ``S(d) = 1`` up to ``W - g``. The Cox baseline (Breslow) is only known up to the longest follow-up
  seen in training, so a Cox curve stops there.
* ``median_days``: the first day with ``S(d) <= 0.5``; ``None`` (and ``median_beyond_horizon``) when
  the curve never gets there.
* ``peak_day``: the day the churn is most likely to become observable: the maximum of the daily churn
  probability ``S(d-1) - S(d)``; for Cox after a centred moving average over ``smooth_days`` (the
  Breslow baseline jumps only on training event days, with day-to-day noise; the Weibull density is
  smooth already). ``None`` when the curve does not fall within the horizon.
* ``contact_day``: ``max(0, peak_day - offset_days - lead_days)``. Churn on ``peak_day`` means the
  user went silent ``offset_days`` days earlier; the contact goes ``lead_days`` before that silence.
  0 means "now".
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.feature_io import AGE_EDGES, MISSING, churn_design

__all__ = ["INPUT_COLUMNS", "KINDS", "ChurnModel"]

log = logging.getLogger(__name__)

#: Model kinds: Cox proportional hazards (Breslow baseline) and the Weibull accelerated failure time model.
KINDS = ("cox", "weibull_aft")
#: Raw churn-table columns a prediction needs (``duration_days`` and ``churned`` are optional: a row
#: without them is a user on their first day, not churned).
INPUT_COLUMNS: tuple[str, ...] = (
    "opt_in_sms", "opt_in_push", "opt_in_email", "gender", "age_band",
    "account_age_days", "has_paid_order", "avg_order_value", "ad_ctr",
)
_FLAGS = ("opt_in_sms", "opt_in_push", "opt_in_email")
_NUMERIC = ("has_paid_order", "avg_order_value", "ad_ctr")
_AOV = "log_avg_order_value"
#: The table's age bands (churn_design's default edges) and the unknown band.
_AGE_BANDS = (f"<{AGE_EDGES[0]}", *(f"{lo}-{hi - 1}" for lo, hi in pairwise(AGE_EDGES)),
              f"{AGE_EDGES[-1]}+", MISSING)


def _smooth(p: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that averages over the days inside the array at the edges."""
    if window <= 1 or len(p) < 2:
        return p
    kernel = np.ones(window)
    return np.convolve(p, kernel, mode="same") / np.convolve(np.ones_like(p), kernel, mode="same")


class ChurnModel:
    """A survival model of churn with per-user survival curves and a recommended contact day.

    Args:
        kind: ``cox`` or ``weibull_aft``.
        penalizer: lifelines' penalizer (on standardised covariates), ``>= 0``.
        l1_ratio: Share of the penalty that is L1 (lifelines' elastic net), in ``[0, 1]``.
        aov_knots: Knots of a hinge basis ``max(log_avg_order_value - k, 0)`` at training quantiles
            of the paying users (churn-table mode only). The archetypes' price bands make churn
            non-monotone in the basket value, which one linear term cannot follow.
        offset_days: Days of tenure before which no churn can be observed (the table's
            ``inactivity_days``); 0 for ordinary survival data.
        horizon_days: Days ahead the survival curve covers.
        lead_days: Days the contact goes before the silence that leads to the peak churn day.
        smooth_days: Width of the moving average applied to a Cox model's daily churn probability
            before its peak is taken (odd; 1 disables it).
        covariates: ``None`` for churn-table rows (covariates from :func:`churn_design`); else the
            numeric columns of an already numeric frame (e.g. a textbook data set).
        duration_col: Duration column (days, or any unit in generic mode).
        event_col: Event column (1 = the event happened, 0 = censored).
    """

    def __init__(
        self,
        kind: str = "cox",
        penalizer: float = 0.01,
        l1_ratio: float = 0.0,
        aov_knots: int = 0,
        offset_days: int = 0,
        horizon_days: int = 365,
        lead_days: int = 7,
        smooth_days: int = 15,
        covariates: Sequence[str] | None = None,
        duration_col: str = "duration_days",
        event_col: str = "churned",
    ) -> None:
        self.kind = kind
        self.penalizer = penalizer
        self.l1_ratio = l1_ratio
        self.aov_knots = aov_knots
        self.offset_days = offset_days
        self.horizon_days = horizon_days
        self.lead_days = lead_days
        self.smooth_days = smooth_days
        self.covariates = covariates
        self.duration_col = duration_col
        self.event_col = event_col

    # -- features ---------------------------------------------------------------------------------

    @property
    def _table_mode(self) -> bool:
        return self.covariates is None

    def _prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Raw churn-table rows with serving-side gaps filled as the table fills them."""
        missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
        if missing:
            raise InvalidArgument(f"churn rows lack the columns {missing}", field=missing[0])
        f = frame.copy()
        for c in (*_NUMERIC, *_FLAGS, "account_age_days"):
            value = pd.to_numeric(f[c], errors="coerce")
            if (value.isna() & f[c].notna()).any():
                raise InvalidArgument(f"{c} must be a number", field=c)
            if c in _NUMERIC and value.isna().any():
                raise InvalidArgument(f"{c} must be a number, got null", field=c)
            f[c] = value
        for c in _FLAGS:  # the table's rule: missing consent = no consent
            f[c] = f[c].fillna(0).astype(int)
        f["age_band"] = f["age_band"].where(f["age_band"].notna(), MISSING)
        unknown = sorted(set(f["age_band"]) - set(_AGE_BANDS))
        if unknown:
            raise InvalidArgument(f"age_band must be one of {list(_AGE_BANDS)}, got {unknown}", field="age_band")
        f["account_age_days"] = f["account_age_days"].fillna(self.account_age_fill_)
        f[self.duration_col] = f[self.duration_col].fillna(0) if self.duration_col in f else 0
        f[self.event_col] = f[self.event_col].fillna(0) if self.event_col in f else 0
        return f

    def _design(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Covariates (``feature_names_`` order), with the duration and event columns."""
        if not self._table_mode:
            cols = [*self.covariates, self.duration_col, self.event_col]
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise InvalidArgument(f"frame lacks the columns {missing}", field=missing[0])
            return frame[cols].astype(float)
        d = churn_design(self._prepare(frame))
        for i, k in enumerate(self.knots_):
            d[f"{_AOV}_hinge{i}"] = np.maximum(d[_AOV].to_numpy() - k, 0.0)
        return d

    # -- fitting ----------------------------------------------------------------------------------

    def _check_params(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}", field="kind")
        checks = {
            "penalizer": self.penalizer >= 0,
            "l1_ratio": 0 <= self.l1_ratio <= 1,
            "aov_knots": self.aov_knots >= 0 and (self.aov_knots == 0 or self._table_mode),
            "offset_days": self.offset_days >= 0,
            "horizon_days": self.horizon_days >= 1,
            "lead_days": self.lead_days >= 0,
            "smooth_days": self.smooth_days >= 1,
            # churn_design names the label columns itself
            "duration_col": not self._table_mode or self.duration_col == "duration_days",
            "event_col": not self._table_mode or self.event_col == "churned",
        }
        for name, ok in checks.items():
            if not ok:
                raise InvalidArgument(f"invalid {name}: {getattr(self, name)!r}", field=name)

    def fit(self, frame: pd.DataFrame) -> ChurnModel:
        """Fit on churn-table rows (or, with ``covariates``, a numeric frame).

        Args:
            frame: One row per user with the duration and event columns.

        Returns:
            self.

        Raises:
            InvalidArgument: a hyper-parameter is out of range or a column is missing.
            FailedPrecondition: no row is followed beyond ``offset_days`` or none has the event.
        """
        from lifelines import CoxPHFitter, WeibullAFTFitter

        self._check_params()
        if self._table_mode:
            for c in (self.duration_col, self.event_col):
                if c not in frame.columns:
                    raise InvalidArgument(f"churn rows lack the column {c!r}", field=c)
            age = frame["account_age_days"].astype(float) if "account_age_days" in frame else pd.Series(dtype=float)
            self.account_age_fill_ = float(age.median()) if age.notna().any() else 0.0
            self.knots_: list[float] = []
            design = self._design(frame)
            if self.aov_knots:
                paying = design.loc[design["has_paid_order"] == 1, _AOV].to_numpy()
                if len(paying) == 0:
                    raise FailedPrecondition("no paying user to place the basket-value knots")
                qs = np.linspace(0, 1, self.aov_knots + 2)[1:-1]
                self.knots_ = sorted({round(float(k), 6) for k in np.quantile(paying, qs)})
                design = self._design(frame)
        else:
            self.knots_ = []
            self.account_age_fill_ = 0.0
            design = self._design(frame)
        self.feature_names_ = [c for c in design.columns if c not in (self.duration_col, self.event_col)]
        tau = design[self.duration_col].to_numpy(dtype=float) - self.offset_days
        keep = tau > 0
        data = design.loc[keep, self.feature_names_].copy()
        data["_tau"] = tau[keep]
        data["_event"] = design.loc[keep, self.event_col].to_numpy(dtype=int)
        if not len(data) or not data["_event"].any():
            raise FailedPrecondition(
                f"no churn to learn from: {int(keep.sum())} rows followed beyond {self.offset_days} days, "
                f"{int(data['_event'].sum()) if len(data) else 0} with the event"
            )
        with warnings.catch_warnings():
            # lifelines warns about near-constant covariates (rare age bands) and converges anyway
            warnings.simplefilter("ignore")
            if self.kind == "cox":
                f = CoxPHFitter(penalizer=self.penalizer, l1_ratio=self.l1_ratio).fit(data, "_tau", "_event")
            else:
                f = WeibullAFTFitter(penalizer=self.penalizer, l1_ratio=self.l1_ratio).fit(data, "_tau", "_event")
        self._learn_from(f, data)
        return self

    def _learn_from(self, f: Any, data: pd.DataFrame) -> None:
        """Keep the numbers prediction needs, not the lifelines fitter (which holds the training data)."""
        names = self.feature_names_
        self.means_ = data[names].mean().to_numpy()
        self.n_rows_ = len(data)
        self.n_events_ = int(data["_event"].sum())
        self.tau_max_ = math.ceil(data["_tau"].max())
        self.follow_up_days_ = self.offset_days + self.tau_max_
        self.concordance_ = float(f.concordance_index_)
        self.log_likelihood_ = float(f.log_likelihood_)
        summary = f.summary
        if self.kind == "cox":
            self.coef_ = f.params_.loc[names].astype(float)
            self.aic_ = float(f.AIC_partial_)
            # cumulative baseline hazard (at the training means) on every whole day 0 .. tau_max
            base = f.baseline_cumulative_hazard_.iloc[:, 0]
            idx = np.searchsorted(base.index.to_numpy(dtype=float), np.arange(self.tau_max_ + 1), side="right") - 1
            self.baseline_cumhaz_ = np.where(idx >= 0, base.to_numpy()[np.clip(idx, 0, None)], 0.0)
            self.rho_ = None
            self.intercept_ = None
            table = summary.loc[names]
        else:
            lam = f.params_.loc["lambda_"]
            self.coef_ = lam.loc[names].astype(float)
            self.intercept_ = float(lam.loc["Intercept"])
            self.rho_ = float(np.exp(f.params_.loc[("rho_", "Intercept")]))
            self.aic_ = float(f.AIC_)
            self.baseline_cumhaz_ = None
            table = summary.loc["lambda_"].loc[names]
        self.summary_ = pd.DataFrame({
            "coef": table["coef"].astype(float),
            "ci_lower": table["coef lower 95%"].astype(float),
            "ci_upper": table["coef upper 95%"].astype(float),
            "p": table["p"].astype(float),
        })

    # -- scoring ----------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise FailedPrecondition("the churn model is not fitted yet")

    def _log_hazard_ratio(self, design: pd.DataFrame) -> np.ndarray:
        x = design[self.feature_names_].to_numpy(dtype=float) - self.means_
        lp = x @ self.coef_.to_numpy()
        # Weibull AFT: log-time coefficients; with one shape the hazard ratio is exp(-rho * lp)
        return lp if self.kind == "cox" else -self.rho_ * lp

    def risk(self, frame: pd.DataFrame) -> np.ndarray:
        """Hazard ratio of every row against the average training user (higher = churns sooner)."""
        self._check_fitted()
        return np.exp(self._log_hazard_ratio(self._design(frame)))

    def concordance(self, frame: pd.DataFrame) -> float:
        """Harrell's concordance index of :meth:`risk` on labelled rows (0.5 = chance)."""
        from lifelines.utils import concordance_index

        self._check_fitted()
        design = self._design(frame)
        return float(concordance_index(
            design[self.duration_col], -self._log_hazard_ratio(design), design[self.event_col]
        ))

    def _cumhaz(self, tau: np.ndarray, log_hr: np.ndarray) -> np.ndarray:
        """Cumulative hazard at ``tau`` (days past the offset; rows x days), 0 for ``tau <= 0``."""
        t = np.clip(tau, 0, None)
        if self.kind == "cox":
            h0 = self.baseline_cumhaz_[np.clip(t, 0, self.tau_max_).astype(int)]
            return h0 * np.exp(log_hr)[:, None]
        # Weibull: H(t) = (t / lambda)^rho with log lambda = intercept + x . beta = intercept + m . beta + lp
        log_lam = self.intercept_ + float(self.means_ @ self.coef_.to_numpy()) - log_hr / self.rho_
        return (t / np.exp(log_lam)[:, None]) ** self.rho_

    def log_likelihood(self, frame: pd.DataFrame) -> float:
        """Mean log-likelihood per row of labelled rows, on whole days (comparable across kinds).

        A churn on day ``tau`` scores ``log(S(tau - 1) - S(tau))``, a censored row ``log S(tau)``;
        rows not followed beyond ``offset_days`` are left out. Probabilities are floored at 1e-9
        (a Breslow baseline has no jump on a day without a training event).
        """
        self._check_fitted()
        design = self._design(frame)
        tau = design[self.duration_col].to_numpy(dtype=float) - self.offset_days
        keep = tau > 0
        if not keep.any():
            return float("nan")
        tau = np.round(tau[keep]).astype(int)
        event = design[self.event_col].to_numpy()[keep] == 1
        log_hr = self._log_hazard_ratio(design.loc[keep])
        h = self._cumhaz(np.stack([tau - 1, tau], axis=1), log_hr)
        s_prev, s = np.exp(-h[:, 0]), np.exp(-h[:, 1])
        p = np.where(event, s_prev - s, s)
        return float(np.mean(np.log(np.maximum(p, 1e-9))))

    # -- per-user predictions ---------------------------------------------------------------------

    def predict_users(self, frame: pd.DataFrame, curve_step_days: int = 1) -> list[dict[str, Any]]:
        """Per-user churn outlook for churn-table rows (see the module docstring for definitions).

        Args:
            frame: Rows with :data:`INPUT_COLUMNS` (churn-table mode) or the model's covariates;
                ``duration_days`` is the tenure today (0 if absent), ``churned`` 1 for a churned user,
                ``inactive_days`` (optional) the days since the last activity.
            curve_step_days: Spacing of the returned survival points (the last day is always included).

        Returns:
            One dict per row: ``status`` (``active``/``churned``), ``tenure_days``, ``risk``,
            ``horizon_days``, ``survival`` (``[[day, S(day)], ...]``), ``median_days`` (int or None),
            ``median_beyond_horizon``, ``peak_day`` (int or None), ``contact_day`` (int or None).

        Raises:
            InvalidArgument: a needed column is missing or null.
        """
        self._check_fitted()
        if curve_step_days < 1:
            raise InvalidArgument("curve_step_days must be at least 1", field="curve_step_days")
        design = self._design(frame)
        log_hr = self._log_hazard_ratio(design)
        tenure = np.maximum(design[self.duration_col].to_numpy(dtype=float), 0).round().astype(int)
        churned = design[self.event_col].to_numpy() == 1
        # Known not to churn up to this tenure: today, or, when the row says how long the user has
        # been silent (g days), until the churn that silence could become observable (W - g days on).
        known = tenure.copy()
        if self._table_mode and "inactive_days" in frame.columns:
            g = pd.to_numeric(frame["inactive_days"], errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(g)
            known[ok] += np.maximum(self.offset_days - np.maximum(g[ok], 0), 0).round().astype(int)
        days = np.arange(self.horizon_days + 1)
        h = self._cumhaz(tenure[:, None] + days[None, :] - self.offset_days, log_hr)
        h_known = self._cumhaz((known - self.offset_days)[:, None], log_hr)[:, 0]
        out = []
        for i in range(len(design)):
            base = {"tenure_days": int(tenure[i]), "risk": float(np.exp(log_hr[i]))}
            if churned[i]:
                # A churned user is a win-back case: nothing left to forecast, contact now.
                out.append({**base, "status": "churned", "horizon_days": 0, "survival": [[0, 0.0]],
                            "median_days": 0, "median_beyond_horizon": False, "peak_day": None,
                            "contact_day": 0})
                continue
            horizon = self.horizon_days
            if self.kind == "cox":
                horizon = int(np.clip(self.follow_up_days_ - tenure[i], 0, self.horizon_days))
            d_known = int(known[i] - tenure[i])
            s = np.exp(-np.maximum(h[i, : horizon + 1] - h_known[i], 0.0))
            s[: d_known + 1] = 1.0
            below = np.flatnonzero(s <= 0.5)
            median = int(below[0]) if len(below) else None
            peak = contact = None
            if horizon > d_known:
                # daily churn probability of days d_known + 1 .. horizon (zero before)
                p = s[d_known:-1] - s[d_known + 1:]
                if self.kind == "cox":
                    p = _smooth(p, self.smooth_days)
                if p.max() > 0:
                    peak = d_known + 1 + int(np.argmax(p))
                    contact = max(0, peak - self.offset_days - self.lead_days)
            shown = sorted({*range(0, horizon + 1, curve_step_days), horizon})
            out.append({**base, "status": "active", "horizon_days": horizon,
                        "survival": [[d, float(s[d])] for d in shown], "median_days": median,
                        "median_beyond_horizon": median is None, "peak_day": peak, "contact_day": contact})
        return out

    def predict_user(self, row: Mapping[str, Any], curve_step_days: int = 1) -> dict[str, Any]:
        """The churn outlook of one user from their churn-table row (the serving API).

        Args:
            row: The user's churn-table values (:data:`INPUT_COLUMNS`, plus ``duration_days``
                = tenure today, ``churned`` and ``inactive_days`` when known); extra keys are ignored.
            curve_step_days: Spacing of the returned survival points.

        Returns:
            As one element of :meth:`predict_users`.

        Raises:
            InvalidArgument: a needed value is missing.
        """
        return self.predict_users(pd.DataFrame([dict(row)]), curve_step_days)[0]

    def coefficients(self) -> dict[str, dict[str, float]]:
        """Coefficients with 95 % confidence intervals and p-values (JSON-ready).

        Cox: log hazard ratios. Weibull AFT: log time ratios (positive = churns later); ``rho_``
        is the shape.
        """
        self._check_fitted()
        return {
            name: {k: round(float(v), 6) for k, v in row.items()}
            for name, row in self.summary_.to_dict("index").items()
        }
