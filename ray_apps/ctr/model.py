"""Click-through-rate model: L2 logistic regression on the CTR table's sparse feature vectors.

The model reads what :func:`spark_jobs.training_tables.ctr_vectors` wrote and scores what a
serving request carries, with the same encoder (:func:`cluster.core.feature_io.encode_ctr`) and the
feature spec stored with the table, so training and serving vectors cannot drift apart.

**Per-group regularisation.** The vector mixes a few dense, well-estimated features (channel,
position, device, purchase behaviour) with many sparse ones (city, age band, hashed ad and
campaign ids and their crosses, a few dozen impressions per slot). One L2 strength for all of
them either shrinks the dense signal or lets the sparse slots fit noise. :class:`CtrModel`
multiplies the columns of a group by a scale ``s`` before fitting; since ``(w / s) * (s * x) =
w * x``, this is the same model with that group's L2 penalty multiplied by ``1 / s**2``. The
scales are hyper-parameters (the Tune search chooses them), and the coefficients reported by
:meth:`CtrModel.coefficients` are on the unscaled features.

Serving API (the object in the registry, ``model.pkl``)::

    model.predict_proba_records([{"channel": "search", "ad_position": 1, "device_type": "ios",
                                  "ad_id": "ad0001", "campaign_id": "cmp001", "gender": "F",
                                  "age_band": "25-34", "city": "上海", "recency_band": "8-30",
                                  "frequency": 3, "monetary": 420.0, "events_recent": 5,
                                  "top_category": "美妆", "top_category_share": 0.4}])
    -> array([0.071])   # e.g.: the click probability of each user-ad pair

Record keys are ``model.inputs`` (``spec["inputs"]``); a missing key or ``None`` is an unknown
value, encoded as it was in training.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.feature_io import encode_ctr, feature_names

__all__ = ["FEATURE_GROUPS", "CtrModel", "calibration_curve", "column_groups"]

log = logging.getLogger(__name__)

#: Feature groups whose L2 strength is scaled separately: group -> one-hot inputs of the spec
#: (``"numeric"`` is the numeric block, ``"hashed"`` the hashed block). One-hot inputs not
#: listed here are in ``ad``.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    # what the platform chooses: one-hot with a handful of well-populated levels each
    "ad": ("channel", "ad_position", "device_type"),
    # the user's purchase and browsing behaviour as of the impression day
    "behaviour": ("numeric", "recency_band"),
    # static or slowly changing user attributes: many levels, weak main effects
    "user": ("gender", "age_band", "city", "top_category"),
    # ad and campaign ids and their crosses (campaign x top category): very many sparse slots
    "ids": ("hashed",),
}


def column_groups(spec: Mapping[str, Any]) -> np.ndarray:
    """The :data:`FEATURE_GROUPS` name of every column of a spec's vector, in vector order."""
    groups = {inp: g for g, inputs in FEATURE_GROUPS.items() for inp in inputs}
    out = [groups.get("numeric", "ad")] * len(spec["numeric"])
    for block in spec["onehot"]:
        out += [groups.get(block["input"], "ad")] * (len(block["values"]) + 1)
    out += [groups.get("hashed", "ids")] * int(spec["hashed"]["buckets"])
    if len(out) != int(spec["size"]):
        raise InvalidArgument(f"feature spec lays out {len(out)} columns but declares size {spec['size']}",
                              field="spec")
    return np.asarray(out, dtype=object)


def calibration_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Mean predicted probability against the observed click rate in ``bins`` equal-count bins.

    Equal-count (quantile) bins, not equal-width ones: click probabilities of a few per cent
    would all fall into the first of ten equal-width bins.

    Returns:
        One row per bin, lowest predictions first: ``mean_predicted``, ``observed_rate``,
        ``count``, ``p_low`` and ``p_high`` (the bin's prediction range).
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    rows = []
    for part in np.array_split(order, min(bins, len(p))):
        if len(part) == 0:
            continue
        rows.append({
            "mean_predicted": round(float(p[part].mean()), 6),
            "observed_rate": round(float(y[part].mean()), 6),
            "count": len(part),
            "p_low": round(float(p[part].min()), 6),
            "p_high": round(float(p[part].max()), 6),
        })
    return rows


class CtrModel:
    """L2 logistic regression on CTR feature vectors, with per-group regularisation.

    Args:
        C: Inverse L2 strength of the base groups (``ad``, ``behaviour``), as in scikit-learn.
        class_weight: ``None`` or ``"balanced"`` (each class weighted by ``n / (2 n_class)``).
            Balanced weights trade calibration for nothing in ranking: the predicted
            probabilities are no longer click rates.
        user_scale: Column scale of the ``user`` group (its L2 strength is ``1 / user_scale**2``
            times the base one); 0 leaves the group out.
        id_scale: Column scale of the ``ids`` group (hashed ids and crosses), likewise.
        max_iter: L-BFGS iterations of :meth:`fit` (and of each :meth:`partial_fit` round).
        tol: L-BFGS gradient tolerance.

    Attributes (after fitting):
        spec_: The feature spec of the training vectors.
        columns_: The vector columns the model uses (those non-zero in training and not scaled to 0).
        scale_: Column scale of each used column.
        estimator_: The fitted ``sklearn.linear_model.LogisticRegression`` on the used, scaled columns.
        n_iter_: L-BFGS iterations run so far.
        converged_: Whether the last (partial) fit converged.
    """

    def __init__(
        self,
        C: float = 0.1,
        class_weight: str | None = None,
        user_scale: float = 1.0,
        id_scale: float = 1.0,
        max_iter: int = 300,
        tol: float = 1e-4,
    ) -> None:
        self.C = C
        self.class_weight = class_weight
        self.user_scale = user_scale
        self.id_scale = id_scale
        self.max_iter = max_iter
        self.tol = tol

    # -- fitting ------------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters (what ``params.json`` records)."""
        return {"C": self.C, "class_weight": self.class_weight, "user_scale": self.user_scale,
                "id_scale": self.id_scale, "max_iter": self.max_iter, "tol": self.tol}

    def _validate(self) -> None:
        if not self.C > 0:
            raise InvalidArgument(f"C must be positive, got {self.C}", field="C")
        if self.class_weight not in (None, "balanced"):
            raise InvalidArgument(f"class_weight must be None or 'balanced', got {self.class_weight!r}",
                                  field="class_weight")
        for name in ("user_scale", "id_scale"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must be >= 0", field=name)
        if self.max_iter < 1:
            raise InvalidArgument("max_iter must be >= 1", field="max_iter")

    def _setup(self, X: Any, y: np.ndarray, spec: Mapping[str, Any]) -> None:
        from sklearn.linear_model import LogisticRegression

        self._validate()
        if X.shape[1] != int(spec["size"]):
            raise InvalidArgument(f"X has {X.shape[1]} columns, the spec {spec['size']}", field="X")
        if len(np.unique(y)) != 2:
            raise FailedPrecondition("the training rows need both clicks and non-clicks")
        scale_of = {"ad": 1.0, "behaviour": 1.0, "user": float(self.user_scale), "ids": float(self.id_scale)}
        col_scale = np.array([scale_of[g] for g in column_groups(spec)])
        # Columns that are zero in every training row get a zero weight under L2 anyway; leaving
        # them out makes a fit over a 16 k-slot hashed block as cheap as over the slots in use.
        used = np.flatnonzero((np.asarray(X.getnnz(axis=0)) > 0) & (col_scale > 0))
        self.spec_ = dict(spec)
        self.columns_ = used
        self.scale_ = col_scale[used]
        self.estimator_ = LogisticRegression(
            C=self.C, class_weight=self.class_weight, solver="lbfgs", max_iter=self.max_iter, tol=self.tol,
            warm_start=True,
        )
        self.n_iter_ = 0
        self.converged_ = False

    def _design(self, X: Any) -> Any:
        import scipy.sparse as sp

        return (sp.csr_matrix(X)[:, self.columns_] @ sp.diags(self.scale_)).tocsr()

    def partial_fit(self, X: Any, y: np.ndarray, *, spec: Mapping[str, Any] | None = None) -> CtrModel:
        """Run ``max_iter`` more L-BFGS iterations from the current weights (the first call sets up).

        Used by the Tune trial so that every round's validation metrics can be reported.

        Args:
            X: CSR rows of the CTR table (``spec["size"]`` columns).
            y: 0/1 labels.
            spec: The feature spec; needed on the first call only.

        Returns:
            self.
        """
        from sklearn.exceptions import ConvergenceWarning

        y = np.asarray(y, dtype=int)
        if not hasattr(self, "estimator_"):
            if spec is None:
                raise InvalidArgument("the first partial_fit needs the feature spec", field="spec")
            self._setup(X, y, spec)
        with warnings.catch_warnings():
            # Running out of iterations is the point of a round, not a problem.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.estimator_.fit(self._design(X), y)
        ran = int(np.max(self.estimator_.n_iter_))
        self.n_iter_ += ran
        self.converged_ = ran < self.max_iter
        return self

    def fit(self, X: Any, y: np.ndarray, *, spec: Mapping[str, Any]) -> CtrModel:
        """Fit from scratch to convergence (or ``max_iter`` iterations).

        Args:
            X: CSR rows of the CTR table (``spec["size"]`` columns).
            y: 0/1 labels.
            spec: The feature spec the rows were encoded with (``CtrMatrix.spec``).

        Returns:
            self.

        Raises:
            InvalidArgument: a hyper-parameter is out of range or ``X`` does not match the spec.
            FailedPrecondition: ``y`` has a single class.
        """
        for attr in ("estimator_", "spec_", "columns_", "scale_"):
            self.__dict__.pop(attr, None)
        self.partial_fit(X, y, spec=spec)
        if not self.converged_:
            log.warning("CTR logistic regression stopped after %d iterations without converging", self.n_iter_)
        return self

    # -- scoring ------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise FailedPrecondition("the CTR model has not been fitted")

    @property
    def inputs(self) -> list[str]:
        """The record keys :meth:`predict_proba_records` reads."""
        self._check_fitted()
        return list(self.spec_["inputs"])

    def decision_function(self, X: Any) -> np.ndarray:
        """Logit of the click probability of each row of ``X`` (CSR, ``spec["size"]`` columns)."""
        self._check_fitted()
        return self.estimator_.decision_function(self._design(X)) + getattr(self, "logit_offset_", 0.0)

    def correct_prior(self, y: np.ndarray) -> CtrModel:
        """Undo the class weights' shift of the click rate (King and Zeng's prior correction).

        Balanced weights fit the model as if clicks were half of the rows: the logit is off by
        ``ln(n_clicks / n_non_clicks)`` from the true rate's. Adding that back makes the outputs
        click probabilities again; the ranking (AUC) is unchanged. A no-op without class weights.
        """
        y = np.asarray(y, dtype=int)
        n1, n0 = int(y.sum()), int(len(y) - y.sum())
        self.logit_offset_ = float(np.log(n1 / n0)) if self.class_weight == "balanced" and n1 and n0 else 0.0
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Click probability of each row of ``X`` (one column, unlike scikit-learn's two)."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(X)))

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> Any:
        """Featurise raw records with :func:`cluster.core.feature_io.encode_ctr` and the stored spec (CSR)."""
        import scipy.sparse as sp

        self._check_fitted()
        indptr, indices, values = self._encode_flat(records)
        return sp.csr_matrix((values, indices, indptr), shape=(len(records), int(self.spec_["size"])))

    def _encode_flat(self, records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR parts (row pointer, column indices, values) of the encoded ``records``."""
        indptr, indices, values = [0], [], []
        for r in records:
            idx, vals = encode_ctr(r, self.spec_)
            indices.extend(idx)
            values.extend(vals)
            indptr.append(len(indices))
        return np.asarray(indptr), np.asarray(indices, dtype=np.int64), np.asarray(values, dtype=np.float64)

    def predict_proba_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Click probability of each raw user-ad record, featurised as in training (no Spark needed).

        Args:
            records: Dicts keyed by :attr:`inputs` (ad columns and the user's features as of
                the request day); missing keys and ``None`` are unknown values.

        Returns:
            A float array, one probability per record.
        """
        if len(records) == 0:
            return np.zeros(0)
        # Serving path: the weights folded onto the spec's columns once, then one gather and a
        # segmented sum over the encoded rows; the same logit as decision_function without
        # building matrices or scikit-learn's input checks (with the regex id checks, a 20-ad
        # ScoreBatch went from 1.5 to 0.5 ms).
        self._check_fitted()
        indptr, indices, values = self._encode_flat(records)
        if (np.diff(indptr) == 0).any():  # reduceat cannot sum an empty row
            return self.predict_proba(self.encode_records(records))
        sums = np.add.reduceat(self._folded_weights()[indices] * values, indptr[:-1])
        logit = sums + float(self.estimator_.intercept_[0]) + getattr(self, "logit_offset_", 0.0)
        return 1.0 / (1.0 + np.exp(-logit))

    def _folded_weights(self) -> np.ndarray:
        """One weight per spec column (zero for unused ones): ``coef * scale`` on ``columns_``."""
        coef = self.estimator_.coef_
        cached = getattr(self, "_folded", None)
        if cached is None or cached[0] is not coef:  # (re)fitting assigns a new coef_ array
            weights = np.zeros(int(self.spec_["size"]))
            weights[self.columns_] = coef.ravel() * self.scale_
            cached = self._folded = (coef, weights)
        return cached[1]

    def coefficients(self) -> dict[str, float]:
        """Weight of every used feature on its unscaled value (a column's weight times its scale)."""
        self._check_fitted()
        names = feature_names(self.spec_)
        w = self.estimator_.coef_.ravel() * self.scale_
        return {names[j]: float(v) for j, v in zip(self.columns_, w)}

    def top_features(self, n: int = 20) -> list[dict[str, Any]]:
        """The ``n`` features with the largest absolute weight (hashed slots as ``hash[j]``)."""
        ranked = sorted(self.coefficients().items(), key=lambda kv: -abs(kv[1]))[:n]
        return [{"feature": k, "coef": round(v, 6)} for k, v in ranked]

    @property
    def intercept(self) -> float:
        """The model's intercept (logit)."""
        self._check_fitted()
        return float(self.estimator_.intercept_[0])
