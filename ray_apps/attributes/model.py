"""A classifier of a static attribute (gender first) from behaviour, and its calibration metrics.

:class:`AttributeModel` is a scikit-learn style estimator over the attribute feature table
(:mod:`spark_jobs.attributes`, read from the lake as pandas): L2-regularised multinomial logistic
regression on standardised features. Why logistic regression:

* **The signal is log-linear.** Category preferences are Dirichlet draws whose weights the
  attribute tilts (``cluster/datagen/params.py``, ``Category.male_tilt``). The Dirichlet log-density is
  ``sum_k (alpha_k - 1) log x_k``, so the log-odds of one value against another is *linear in the
  log shares* ``log x_k``: the ``log_share`` transform below makes the logistic model the right
  shape, and nothing is left for trees to find in interactions (docs/models-attributes.md
  compares gradient boosting on the same split).
* **Calibrated probabilities.** A prediction is stored only above ``attributes.min_probability``;
  that threshold means what it says only if the probabilities are calibrated, which a log-loss fit
  gives without a separate calibration step.
* It fits in well under a second on the 2-core machine, and its coefficients are readable.

Share transform (``share_transform``): ``share`` uses the table's shares as they are; ``log_share``
uses ``log((share * n + 0.5) / (n + 0.5 K))``, the log of the share with half a pseudo-count per
value (``n`` the user's rows behind the share, ``K`` the values of the group), so a user with two
views is not certain about the eight categories they did not view.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.errors import FailedPrecondition, InvalidArgument

__all__ = ["SHARE_TRANSFORMS", "AttributeModel", "reliability_table", "score"]

log = logging.getLogger(__name__)

#: How share columns enter the model (see the module docstring).
SHARE_TRANSFORMS = ("share", "log_share")
#: Share-column prefix -> the count column that says how many rows the shares come from.
_SHARE_GROUPS = {"view_share__": "views", "order_share__": "paid_orders", "device_share__": "events",
                 "hour_share__": "events"}
_COUNTS = ("events", "views", "active_days", "paid_orders", "paid_amount")
_PRICE = "mean_unit_price"
#: Pseudo-count per value of a share group in ``log_share``.
_PSEUDO = 0.5


class AttributeModel:
    """Multinomial logistic regression of the declared attribute on behaviour features.

    Args:
        C: Inverse L2 strength (scikit-learn's ``C``) on standardised features.
        share_transform: ``share`` or ``log_share`` (module docstring).
        max_iter: L-BFGS iteration cap.
        label_col: The column with the declared value (``None`` = unknown, not used in ``fit``).
    """

    def __init__(self, C: float = 1.0, share_transform: str = "log_share", max_iter: int = 1000,
                 label_col: str = "declared") -> None:
        self.C = C
        self.share_transform = share_transform
        self.max_iter = max_iter
        self.label_col = label_col

    def get_params(self) -> dict[str, Any]:
        return {"C": self.C, "share_transform": self.share_transform, "max_iter": self.max_iter,
                "label_col": self.label_col}

    # -- features ---------------------------------------------------------------------------------
    def _design(self, frame: pd.DataFrame) -> np.ndarray:
        """The feature matrix in ``feature_names_`` order; a share column the frame lacks (a value
        not seen) is 0, as in the table."""
        cols: dict[str, np.ndarray] = {}
        n = len(frame)
        for prefix, count_col in _SHARE_GROUPS.items():
            names = [c for c in self.share_columns_ if c.startswith(prefix)]
            if not names:
                continue
            rows = pd.to_numeric(frame[count_col], errors="coerce").fillna(0).to_numpy(float) \
                if count_col in frame else np.zeros(n)
            for c in names:
                share = pd.to_numeric(frame[c], errors="coerce").fillna(0).to_numpy(float) if c in frame \
                    else np.zeros(n)
                if self.share_transform == "log_share":
                    share = np.log((share * rows + _PSEUDO) / (rows + _PSEUDO * len(names)))
                cols[c] = share
        for c in _COUNTS:
            value = pd.to_numeric(frame[c], errors="coerce").fillna(0).to_numpy(float) if c in frame else np.zeros(n)
            cols[f"log1p_{c}"] = np.log1p(np.maximum(value, 0))
        price = pd.to_numeric(frame[_PRICE], errors="coerce").to_numpy(float) if _PRICE in frame \
            else np.full(n, np.nan)
        has_price = np.isfinite(price) & (price > 0)
        cols["has_paid_order"] = has_price.astype(float)
        # Users without a paid order get the training median: with the indicator beside it the
        # model learns their offset, and the price coefficient stays that of the buyers.
        cols[f"log_{_PRICE}"] = np.where(has_price, np.log(np.where(has_price, price, 1.0)), self.price_fill_)
        return np.column_stack([cols[c] for c in self.feature_names_])

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, frame: pd.DataFrame) -> AttributeModel:
        """Fit on the rows with a declared value.

        Args:
            frame: Attribute-table rows (``label_col`` and the feature columns).

        Returns:
            self.

        Raises:
            InvalidArgument: bad hyper-parameters, or no ``label_col``.
            FailedPrecondition: fewer than two declared values among the rows.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if not self.C > 0:
            raise InvalidArgument(f"C must be > 0, got {self.C!r}", field="C")
        if self.share_transform not in SHARE_TRANSFORMS:
            raise InvalidArgument(f"share_transform must be one of {SHARE_TRANSFORMS}, got {self.share_transform!r}",
                                  field="share_transform")
        if self.label_col not in frame:
            raise InvalidArgument(f"the rows lack the label column {self.label_col!r}", field=self.label_col)
        known = frame[frame[self.label_col].notna()]
        y = known[self.label_col].astype(str).to_numpy()
        if len(np.unique(y)) < 2:
            raise FailedPrecondition(f"need at least two declared values to learn from, got {sorted(set(y))}")
        self.share_columns_ = sorted(c for c in known.columns if c.startswith(tuple(_SHARE_GROUPS)))
        self.feature_names_ = [*self.share_columns_, *(f"log1p_{c}" for c in _COUNTS), "has_paid_order",
                               f"log_{_PRICE}"]
        price = pd.to_numeric(known.get(_PRICE), errors="coerce")
        price = price[np.isfinite(price) & (price > 0)] if price is not None else pd.Series(dtype=float)
        self.price_fill_ = float(np.log(price.median())) if len(price) else 0.0
        X = self._design(known)
        self.pipeline_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))
        self.pipeline_.fit(X, y)
        self.classes_ = [str(c) for c in self.pipeline_.classes_]
        self.n_train_ = len(y)
        self.n_iter_ = int(np.max(self.pipeline_[-1].n_iter_))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "pipeline_"):
            raise FailedPrecondition("the attribute model is not fitted")

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Probabilities, one column per value of ``classes_``."""
        self._check_fitted()
        if len(frame) == 0:
            return np.zeros((0, len(self.classes_)))
        return self.pipeline_.predict_proba(self._design(frame))

    def predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The most probable value per row and its probability."""
        proba = self.predict_proba(frame)
        best = proba.argmax(axis=1) if len(proba) else np.zeros(0, int)
        return np.asarray(self.classes_, dtype=object)[best], proba.max(axis=1) if len(proba) else np.zeros(0)

    def coefficients(self, top: int = 12) -> dict[str, dict[str, float]]:
        """The largest standardised coefficients per value (for two values, of the second one)."""
        self._check_fitted()
        coef = self.pipeline_[-1].coef_
        labels = self.classes_[1:] if coef.shape[0] == 1 else self.classes_
        out = {}
        for label, row in zip(labels, coef):
            order = np.argsort(-np.abs(row))[:top]
            out[label] = {self.feature_names_[i]: round(float(row[i]), 4) for i in order}
        return out


def reliability_table(correct: np.ndarray, confidence: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Top-label reliability: per equal-width bin of the predicted probability of the chosen value,
    its mean against the share of rows where that value was right.

    Empty bins are left out. For two values the confidence is at least 0.5, so only the upper
    half of the bins can hold rows.

    Returns:
        One row per non-empty bin, lowest first: ``p_low``, ``p_high`` (the bin's edges),
        ``count``, ``mean_predicted``, ``observed_rate``.
    """
    correct = np.asarray(correct, dtype=float)
    confidence = np.asarray(confidence, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        rows.append({"p_low": round(float(edges[b]), 6), "p_high": round(float(edges[b + 1]), 6),
                     "count": int(inside.sum()), "mean_predicted": round(float(confidence[inside].mean()), 6),
                     "observed_rate": round(float(correct[inside].mean()), 6)})
    return rows


def score(model: AttributeModel, frame: pd.DataFrame, *, bins: int = 10, min_probability: float = 0.0,
          majority: str | None = None, prior: Sequence[float] | None = None) -> dict[str, Any]:
    """Held-out metrics of a fitted model on rows with a declared value.

    Args:
        model: The fitted model.
        frame: Rows with ``model.label_col`` set (others are ignored).
        bins: Bins of the reliability table and the expected calibration error.
        min_probability: The abstention threshold: ``coverage`` and ``stored_accuracy`` describe the
            rows whose top probability reaches it (the ones :mod:`ray_apps.attributes.service` stores).
        majority: The value the majority baseline always predicts (default: the most frequent in
            ``frame``; pass the training one for an honest baseline).
        prior: Class frequencies (``model.classes_`` order) the constant baseline's log loss uses.

    Returns:
        ``users``, ``accuracy``, ``majority_class``, ``majority_accuracy``, ``log_loss``,
        ``prior_log_loss`` (when ``prior`` is given), ``brier``, ``ece``, ``reliability``,
        ``min_probability``, ``coverage``, ``stored_accuracy``, ``stored_users``.
        ``brier`` is the mean over rows of ``sum_k (p_k - [y = k])^2 / 2``: for two values, the
        usual binary Brier score.
    """
    from sklearn.metrics import log_loss

    known = frame[frame[model.label_col].notna()]
    y = known[model.label_col].astype(str).to_numpy()
    if len(y) == 0:
        raise FailedPrecondition("no rows with a declared value to score")
    proba = model.predict_proba(known)
    classes = np.asarray(model.classes_, dtype=object)
    onehot = (y[:, None] == classes[None, :]).astype(float)
    chosen = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    correct = classes[chosen] == y
    table = reliability_table(correct, confidence, bins)
    ece = sum(r["count"] * abs(r["mean_predicted"] - r["observed_rate"]) for r in table) / len(y)
    if majority is None:
        values, counts = np.unique(y, return_counts=True)
        majority = str(values[counts.argmax()])
    stored = confidence >= min_probability
    out: dict[str, Any] = {
        "users": len(y),
        "accuracy": round(float(correct.mean()), 6),
        "majority_class": majority,
        "majority_accuracy": round(float((y == majority).mean()), 6),
        "log_loss": round(float(log_loss(onehot, np.clip(proba, 1e-12, 1.0))), 6),
        "brier": round(float(((proba - onehot) ** 2).sum(axis=1).mean() / 2), 6),
        "ece": round(float(ece), 6),
        "reliability": table,
        "min_probability": min_probability,
        "coverage": round(float(stored.mean()), 6),
        "stored_users": int(stored.sum()),
        "stored_accuracy": round(float(correct[stored].mean()), 6) if stored.any() else None,
    }
    if prior is not None:
        p = np.broadcast_to(np.clip(np.asarray(prior, dtype=float), 1e-12, 1.0), proba.shape)
        out["prior_log_loss"] = round(float(log_loss(onehot, p)), 6)
    return out
