"""Top-N recommenders on an implicit user-item matrix, their ranking metrics and the serving object.

Estimators (scikit-learn style: ``__init__`` stores hyper-parameters, ``fit(X)`` returns self,
learned attributes end in ``_``) all take ``X``, a ``scipy.sparse`` users x items matrix whose
non-zero cells are interactions, and score every item for a user as ``X[u] @ W`` for an
item-item matrix ``W`` (popularity: a constant row):

* :class:`Popularity`: items by the number of users who interacted with them;
* :class:`ItemKNN`: item-based collaborative filtering, cosine similarity of item columns,
  optionally only the ``n_neighbours`` most similar items per item;
* :class:`EASE`: Steck's "Embarrassingly Shallow Autoencoder" (WWW 2019), the closed-form
  ridge regression of every item column on all the others with a zero diagonal:
  ``P = (X'X + l2 I)^-1``, ``W = -P / diag(P)``, ``diag(W) = 0``. Cubic in items: fine for
  the platform's catalogue (hundreds) and MovieLens (1,682), not for a million SKUs;
* :class:`RP3beta`: the 3-step random walk user -> item -> user -> item of Paudel et al.
  (2017), with item popularity penalised by ``pop ** beta``.

:func:`ranking_metrics` computes precision@k, recall@k, NDCG@k and MAP over the users with at
least one relevant item, as the Microsoft Recommenders evaluation does (docs/models-recs.md).
:func:`stratified_split` is the Recommenders ``python_stratified_split`` (a random share of
each user's interactions, one seed for every user). :class:`RecModel` wraps a fitted
estimator for serving, with the cold-start fallbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator

__all__ = [
    "ALGORITHMS",
    "EASE",
    "REASON_CATEGORY",
    "REASON_MODEL",
    "REASON_POPULARITY",
    "ItemKNN",
    "Popularity",
    "RP3beta",
    "RecModel",
    "Recommendations",
    "category_fallback_top_n",
    "category_popularity_scores",
    "history_category_shares",
    "make_estimator",
    "ranking_metrics",
    "recommend_top_n",
    "split_matrix",
    "stratified_split",
    "top_n",
]

log = logging.getLogger(__name__)

#: Reasons :meth:`RecModel.recommend` answers with.
REASON_MODEL = "model"
REASON_CATEGORY = "fallback:category-popularity"
REASON_POPULARITY = "fallback:popularity"

#: Users scored per block: a block's dense score matrix is block x items floats.
_BLOCK = 2048


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _as_csr(X, name: str = "X") -> sp.csr_matrix:
    if not sp.issparse(X):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"{name} must be a 2-d users x items matrix, got shape {X.shape}")
    # A copy: arrays shipped through Ray's object store are read-only, and the calls below
    # sort and prune in place.
    X = sp.csr_matrix(X, dtype=np.float64, copy=True)
    X.sum_duplicates()
    X.sort_indices()
    if X.nnz and (not np.isfinite(X.data).all() or (X.data < 0).any()):
        raise ValueError(f"{name} must hold finite non-negative interaction strengths")
    X.eliminate_zeros()
    return X


# ---------------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------------


class _ItemScorer(BaseEstimator):
    """Base of the estimators: ``scores(X) = X @ W`` with a learned item-item ``W``."""

    def _validate(self, X) -> sp.csr_matrix:
        X = _as_csr(X)
        if X.shape[1] < 1:
            raise ValueError("X has no items")
        return X

    def _fit(self, X: sp.csr_matrix) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, X, y=None):
        """Learn from the users x items interaction matrix ``X`` (non-zero = interaction)."""
        X = self._validate(X)
        self.n_items_ = X.shape[1]
        self.item_popularity_ = np.asarray((X > 0).sum(axis=0)).ravel().astype(np.float64)
        self._fit(X)
        return self

    def _check_fitted(self, X) -> sp.csr_matrix:
        if not hasattr(self, "n_items_"):
            raise ValueError(f"{type(self).__name__} is not fitted")
        X = _as_csr(X)
        if X.shape[1] != self.n_items_:
            raise ValueError(f"X has {X.shape[1]} items, the model was fitted on {self.n_items_}")
        return X

    def scores(self, X) -> np.ndarray:
        """Dense scores (rows of ``X`` x items); higher is better. Seen items are not masked."""
        X = self._check_fitted(X)
        return self._scores(X)

    def _scores(self, X: sp.csr_matrix) -> np.ndarray:
        out = X @ self.W_
        return np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float64)


class Popularity(_ItemScorer):
    """Every user gets the items most users interacted with (the baseline every model must beat)."""

    def _fit(self, X: sp.csr_matrix) -> None:
        pass

    def _scores(self, X: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.item_popularity_, (X.shape[0], self.n_items_)).copy()


def _prune_columns(S: sp.spmatrix, k: int | None) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of every column of ``S`` (all when ``k`` is None)."""
    S = sp.csc_matrix(S)
    S.eliminate_zeros()
    if k is None or k <= 0:
        return S.tocsr()
    indptr, indices, data = S.indptr, S.indices, S.data
    keep = np.zeros(len(data), dtype=bool)
    for j in range(S.shape[1]):
        lo, hi = indptr[j], indptr[j + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
        else:
            top = np.argpartition(-data[lo:hi], k - 1)[:k]
            keep[lo + top] = True
    cols = np.repeat(np.arange(S.shape[1]), np.diff(indptr))
    return sp.csr_matrix((data[keep], (indices[keep], cols[keep])), shape=S.shape)


class ItemKNN(_ItemScorer):
    """Item-based collaborative filtering with cosine similarity.

    ``sim(i, j) = x_i . x_j / (|x_i| |x_j| + shrink)`` over item columns of the (binarised)
    matrix, zero on the diagonal; a user's score of item j sums the similarities of j to the
    items the user interacted with, weighted by the interaction strength.

    Args:
        n_neighbours: Keep only the most similar items of every item (None: all).
        shrink: Added to the norm product; damps similarities resting on few common users.
        binary: Compute similarities on 0/1 interactions (strengths still weight the scores).

    Attributes:
        W_: Item x item similarities (CSR), column j holding item j's neighbours.
    """

    def __init__(self, n_neighbours: int | None = None, shrink: float = 0.0, binary: bool = True) -> None:
        self.n_neighbours = n_neighbours
        self.shrink = shrink
        self.binary = binary

    def _fit(self, X: sp.csr_matrix) -> None:
        if self.n_neighbours is not None and int(self.n_neighbours) < 1:
            raise ValueError(f"n_neighbours must be >= 1 or None, got {self.n_neighbours}")
        if self.shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {self.shrink}")
        B = (X > 0).astype(np.float64) if self.binary else X
        norms = np.sqrt(np.asarray(B.multiply(B).sum(axis=0)).ravel())
        G = sp.csr_matrix(B.T @ B)
        G.setdiag(0.0)
        G.eliminate_zeros()
        coo = G.tocoo()
        denom = norms[coo.row] * norms[coo.col] + float(self.shrink)
        S = sp.csr_matrix((coo.data / denom, (coo.row, coo.col)), shape=G.shape)
        self.W_ = _prune_columns(S, None if self.n_neighbours is None else int(self.n_neighbours))


class EASE(_ItemScorer):
    """Embarrassingly Shallow Autoencoder (Steck 2019): closed-form item-item regression.

    ``dropout`` > 0 adds the emphasised-denoising penalty of EDLAE (Steck, NeurIPS 2020):
    ``p / (1 - p) * diag(X'X)`` on the diagonal, i.e. training as if each input interaction
    were dropped with probability p, which penalises popular items' self-reconstruction more
    (measured on MovieLens-100k: +0.004 P@10 at l2 250, nothing at 500; chosen by validation).

    Args:
        l2: Ridge penalty; larger values shrink the weights towards popularity-like scores.
        dropout: EDLAE dropout probability in [0, 1).
        binary: Fit on 0/1 interactions instead of the strengths.

    Attributes:
        W_: Dense item x item weights with a zero diagonal (float32).
    """

    def __init__(self, l2: float = 500.0, dropout: float = 0.0, binary: bool = True) -> None:
        self.l2 = l2
        self.dropout = dropout
        self.binary = binary

    def _fit(self, X: sp.csr_matrix) -> None:
        if not self.l2 > 0:
            raise ValueError(f"l2 must be > 0, got {self.l2}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        B = (X > 0).astype(np.float64) if self.binary else X
        G = np.asarray((B.T @ B).toarray(), dtype=np.float64)
        G[np.diag_indices_from(G)] += float(self.l2) + self.dropout / (1.0 - self.dropout) * np.diag(G)
        P = np.linalg.inv(G)
        W = P / -np.diag(P)
        W[np.diag_indices_from(W)] = 0.0
        self.W_ = W.astype(np.float32)

    def _scores(self, X: sp.csr_matrix) -> np.ndarray:
        B = (X > 0).astype(np.float32) if self.binary else X.astype(np.float32)
        return np.asarray(B @ self.W_, dtype=np.float64)


class RP3beta(_ItemScorer):
    """Random walk user -> item -> user -> item with a popularity penalty (Paudel et al. 2017).

    ``W[i, j] = (sum_u P(u|i) P(j|u)) ** alpha / pop(j) ** beta`` with transition probabilities
    from the row-normalised matrices, each row of ``W`` pruned to its ``n_neighbours`` largest.

    Args:
        alpha: Exponent of the transition probabilities.
        beta: Popularity penalty (0: plain P3alpha).
        n_neighbours: Entries kept per item (None: all).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, n_neighbours: int | None = 200) -> None:
        self.alpha = alpha
        self.beta = beta
        self.n_neighbours = n_neighbours

    def _fit(self, X: sp.csr_matrix) -> None:
        if self.alpha <= 0 or self.beta < 0:
            raise ValueError(f"need alpha > 0 and beta >= 0, got {self.alpha}, {self.beta}")
        B = (X > 0).astype(np.float64)
        user_deg = np.asarray(B.sum(axis=1)).ravel()
        item_deg = np.asarray(B.sum(axis=0)).ravel()
        Pui = sp.diags(1.0 / np.maximum(user_deg, 1)) @ B
        Piu = sp.diags(1.0 / np.maximum(item_deg, 1)) @ B.T.tocsr()
        W = sp.csr_matrix(Piu @ Pui)
        if self.alpha != 1:
            W.data **= float(self.alpha)
        W = W @ sp.diags(1.0 / np.maximum(item_deg, 1) ** float(self.beta))
        W = sp.csr_matrix(W)
        W.setdiag(0.0)
        # Keep each item's strongest successors: prune rows (= columns of the transpose).
        k = None if self.n_neighbours is None else int(self.n_neighbours)
        self.W_ = _prune_columns(W.T, k).T.tocsr()

    def _scores(self, X: sp.csr_matrix) -> np.ndarray:
        B = (X > 0).astype(np.float64)
        return np.asarray((B @ self.W_).toarray(), dtype=np.float64)


#: Algorithm name -> estimator class (the ``algorithm`` of a tuning configuration).
ALGORITHMS: dict[str, type[_ItemScorer]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "ease": EASE,
    "rp3beta": RP3beta,
}


def make_estimator(algorithm: str, **params) -> _ItemScorer:
    """An unfitted estimator by name; parameters it does not take are ignored.

    Raises:
        ValueError: unknown algorithm.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {sorted(ALGORITHMS)}")
    cls = ALGORITHMS[algorithm]
    accepted = cls().get_params()
    return cls(**{k: v for k, v in params.items() if k in accepted})


# ---------------------------------------------------------------------------------------------
# Top-N and metrics
# ---------------------------------------------------------------------------------------------


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the ``n`` best finite scores per row, best first, ``-1`` padding.

    Ties go to the smaller item index, so lists do not depend on the sort algorithm.
    """
    rows, cols = scores.shape
    n_eff = min(n, cols)
    if n_eff < cols:
        # argpartition alone picks an arbitrary subset of the items tied at the cut: keep every item
        # above the n-th best score, then the tied ones by index.
        kth = -np.partition(-scores, n_eff - 1, axis=1)[:, n_eff - 1:n_eff]
        better = scores > kth
        tied = scores == kth
        room = n_eff - better.sum(axis=1, keepdims=True)
        keep = better | (tied & (np.cumsum(tied, axis=1) <= room))
        part = np.nonzero(keep)[1].reshape(rows, n_eff)
    else:
        part = np.tile(np.arange(cols), (rows, 1))
    top_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -top_scores), axis=1)
    best = np.take_along_axis(part, order, axis=1)
    best = np.where(np.isfinite(np.take_along_axis(top_scores, order, axis=1)), best, -1)
    if n_eff < n:
        best = np.hstack([best, np.full((rows, n - n_eff), -1, dtype=best.dtype)])
    return best


def _excluded(exclude, n_rows: int, n_items: int) -> sp.csr_matrix | None:
    if exclude is None:
        return None
    E = sp.csr_matrix(exclude)
    if E.shape != (n_rows, n_items):
        raise ValueError(f"exclude must be (users={n_rows}, items={n_items}), got {E.shape}")
    return E


def recommend_top_n(model: _ItemScorer, X, n: int = 10, users: Sequence[int] | None = None,
                    exclude_seen: bool = True, exclude=None) -> np.ndarray:
    """The ``n`` best items for each of ``users`` (rows of ``X``), ``-1`` where none is left.

    Args:
        model: A fitted estimator.
        X: The users x items history the scores come from (and the seen items).
        n: List length.
        users: Row indices; default every row.
        exclude_seen: Never list an item the user has in ``X``.
        exclude: Optional users x items matrix of ``X``'s shape: a non-zero cell is an item never
            to list for that user (a request's ``exclude_item_ids``).

    Returns:
        int array (len(users), n) of item indices, best first.
    """
    return _blocked_top_n(model.scores, X, n, users, exclude_seen, exclude)


def _blocked_top_n(scores_of: Callable[[sp.csr_matrix], np.ndarray], X, n: int, users: Sequence[int] | None,
                   exclude_seen: bool, exclude) -> np.ndarray:
    """:func:`top_n` of ``scores_of(rows of X)`` per block of users, seen and excluded items at -inf."""
    X = _as_csr(X)
    E = _excluded(exclude, *X.shape)
    rows = np.arange(X.shape[0]) if users is None else np.asarray(users, dtype=np.int64)
    out = np.empty((len(rows), n), dtype=np.int64)
    for start in range(0, len(rows), _BLOCK):
        block = rows[start:start + _BLOCK]
        Xb = X[block]
        scores = scores_of(Xb)
        if exclude_seen:
            r, c = Xb.nonzero()
            scores[r, c] = -np.inf
        if E is not None:
            r, c = E[block].nonzero()
            scores[r, c] = -np.inf
        out[start:start + len(block)] = top_n(scores, n)
    return out


def ranking_metrics(recommended: np.ndarray, relevant, k: int = 10, per_user: bool = False) -> dict:
    """Precision@k, recall@k, NDCG@k and MAP@k of top-k lists against held-out items.

    Averages run over the users with at least one relevant item (the Recommenders evaluation
    takes the users common to the test set and the predictions; every user gets a list here).
    With ``hits`` the relevant items among the first k of a list, ``R`` a user's relevant items:

    * precision = hits / k (a list shorter than k is not rewarded);
    * recall = hits / R;
    * NDCG = sum over hit ranks r of 1/log(1 + r), divided by the same sum over ranks
      1..min(R, k) (binary relevance; the log base cancels);
    * ``map_at_k`` = (sum over hit ranks r of hits-up-to-r / r) / R: the definition of the
      published Recommenders table (their ``map_at_k`` before 1.2, ``map`` since);
    * ``map_at_k_capped``: the same sum divided by min(R, k) (Recommenders >= 1.2 ``map_at_k``,
      Spark's ``meanAveragePrecisionAt``).

    Args:
        recommended: int array (users, >= k), item indices best first, ``-1`` for an empty slot.
        relevant: users x items sparse matrix; non-zero = relevant (held-out) item.
        k: Cut-off.
        per_user: Also return the per-user arrays (``*_per_user``) and the ``users`` evaluated.

    Returns:
        ``precision_at_k``, ``recall_at_k``, ``ndcg_at_k``, ``map_at_k``, ``map_at_k_capped``
        (means) and ``users`` (how many were evaluated).
    """
    rel = _as_csr(relevant, "relevant")
    recs = np.asarray(recommended)
    if recs.ndim != 2 or recs.shape[0] != rel.shape[0] or recs.shape[1] < k:
        raise ValueError(f"recommended must be (users={rel.shape[0]}, >= {k}), got {recs.shape}")
    n_rel = np.diff(rel.indptr)
    users = np.flatnonzero(n_rel > 0)
    recs = recs[users, :k]
    n_items = rel.shape[1]
    rel_keys = np.repeat(np.arange(rel.shape[0], dtype=np.int64), n_rel) * n_items + rel.indices
    rec_keys = users[:, None].astype(np.int64) * n_items + recs
    hits = (recs >= 0) & np.isin(rec_keys, rel_keys)
    R = n_rel[users].astype(np.float64)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    discount = 1.0 / np.log(1.0 + ranks)
    n_hits = hits.sum(axis=1)
    precision = n_hits / k
    recall = n_hits / R
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(R, k).astype(int)]
    ndcg = (hits * discount).sum(axis=1) / ideal
    prec_at_hits = (np.cumsum(hits, axis=1) / ranks) * hits
    ap_sum = prec_at_hits.sum(axis=1)
    out = {
        "precision_at_k": float(precision.mean()) if len(users) else 0.0,
        "recall_at_k": float(recall.mean()) if len(users) else 0.0,
        "ndcg_at_k": float(ndcg.mean()) if len(users) else 0.0,
        "map_at_k": float((ap_sum / R).mean()) if len(users) else 0.0,
        "map_at_k_capped": float((ap_sum / np.minimum(R, k)).mean()) if len(users) else 0.0,
        "users": len(users),
    }
    if per_user:
        out.update(users_evaluated=users, precision_per_user=precision, recall_per_user=recall,
                   ndcg_per_user=ndcg, map_per_user=ap_sum / R)
    return out


# ---------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------


def stratified_split(users: Sequence, ratio: float = 0.75, seed: int = 42) -> np.ndarray:
    """Which interactions go to the training side: a random ``ratio`` of each user's.

    The Microsoft Recommenders ``python_stratified_split(ratio, filter_by="user", seed)``
    exactly: each user's rows, in input order, are shuffled with ``RandomState(seed)`` (the
    same seed for every user, as pandas ``sample(frac=1, random_state=seed)`` does) and the
    first ``round(ratio * n)`` (Python's round: half to even) are training rows.

    Args:
        users: The user of every interaction row, in row order.
        ratio: Training share, in (0, 1).
        seed: Shuffle seed.

    Returns:
        Boolean mask over the rows: True for training.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    users = np.asarray(users)
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]]) if len(users) else np.array([], int)
    ends = np.r_[starts[1:], len(users)]
    train = np.zeros(len(users), dtype=bool)
    perms: dict[int, np.ndarray] = {}  # one seed for every user: the shuffle depends only on n
    for lo, hi in zip(starts, ends):
        n = int(hi - lo)
        if n not in perms:
            perms[n] = np.random.RandomState(seed).permutation(n)[: round(ratio * n)]
        train[order[lo + perms[n]]] = True
    return train


def split_matrix(X, ratio: float = 0.75, seed: int = 42) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split a users x items matrix by :func:`stratified_split` over its non-zero cells.

    Cells are taken in row-major order (items ascending within a user). A user with one
    interaction keeps it on the training side (``round(0.75) = 1``).

    Returns:
        ``(train, held_out)``, both of ``X``'s shape.
    """
    X = _as_csr(X)
    coo = X.tocoo()
    mask = stratified_split(coo.row, ratio, seed)
    train = sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=X.shape)
    held = sp.csr_matrix((coo.data[~mask], (coo.row[~mask], coo.col[~mask])), shape=X.shape)
    return train, held


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------


def category_popularity_scores(shares: np.ndarray, item_category: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Ranking keys of the category fallback for a block of users.

    An item of category c gets ``share[c] x popularity[item]``; every item of the user's
    categories ranks above every other item, and the others follow by popularity (so a list
    is topped up with popular items when the categories run out).

    Args:
        shares: users x categories, each row the user's category shares (summing to 1, or 0).
        item_category: Category index of every item, ``-1`` for none.
        popularity: Users per item.

    Returns:
        users x items keys; higher ranks first.
    """
    padded = np.concatenate([np.asarray(shares, dtype=np.float64), np.zeros((len(shares), 1))], axis=1)
    in_category = padded[:, item_category] * popularity  # item_category -1 picks the zero column
    offset = float(popularity.max()) + 1.0
    return np.where(in_category > 0, offset + in_category, popularity / offset)


def history_category_shares(X, item_category: np.ndarray, n_categories: int) -> np.ndarray:
    """Each user's category shares from their own interactions: the cold-start fallback's input.

    The share of category c is the user's interaction strength on items of c over their strength on
    items with a category. Training measures the fallback with these shares (its validation cannot
    use the tags table, which saw the held-out interactions) and serving scores a user with a short
    history with them, so the threshold chosen on validation is applied to the same lists.

    Args:
        X: users x items interactions (rows of the users to score).
        item_category: Category index of every item, ``-1`` for none.
        n_categories: Number of categories.

    Returns:
        users x categories, each row summing to 1 (or all 0 without a categorised interaction).
    """
    X = _as_csr(X)
    item_category = np.asarray(item_category, dtype=np.int64)
    # Items without a category go to an extra column that is dropped.
    column = np.where(item_category >= 0, item_category, n_categories)
    onehot = sp.csr_matrix((np.ones(len(column)), (np.arange(len(column)), column)),
                           shape=(len(column), n_categories + 1))
    shares = np.asarray((X @ onehot).todense(), dtype=np.float64)[:, :n_categories]
    totals = shares.sum(axis=1, keepdims=True)
    return np.divide(shares, totals, out=np.zeros_like(shares), where=totals > 0)


def category_fallback_top_n(X, item_category: np.ndarray, n_categories: int, popularity: np.ndarray, n: int = 10,
                            users: Sequence[int] | None = None, exclude=None) -> np.ndarray:
    """The category-popularity lists of ``users`` (rows of ``X``) from their own category shares.

    Keys are :func:`category_popularity_scores` of :func:`history_category_shares`; items the user
    has in ``X`` and the non-zero cells of ``exclude`` (same shape as ``X``) are never listed.

    Returns:
        int array (len(users), n) of item indices, best first, ``-1`` where none is left.
    """
    popularity = np.asarray(popularity, dtype=np.float64)
    return _blocked_top_n(
        lambda Xb: category_popularity_scores(history_category_shares(Xb, item_category, n_categories),
                                              item_category, popularity),
        X, n, users, True, exclude)


class Recommendations(NamedTuple):
    """What :meth:`RecModel.recommend` answers: the list and why it is that list."""

    #: ``(item_id, score)`` pairs, best first. Scores are comparable within one list only.
    items: list[tuple[str, float]]
    #: :data:`REASON_MODEL`, :data:`REASON_CATEGORY` or :data:`REASON_POPULARITY`.
    reason: str


class RecModel:
    """A fitted recommender ready to serve: ids, histories, the estimator and the fallbacks.

    Rules of :meth:`recommend`, for one user:

    1. the user has at least ``min_interactions`` interactions in the training matrix: the
       estimator's scores (reason ``model``);
    2. otherwise, when the user's category shares are known: items of those categories, scored by
       ``category share x item popularity`` so a category the user prefers twice as much
       weighs twice as much (reason ``fallback:category-popularity``), topped up with globally
       popular items if the categories hold fewer than ``n`` unseen items. A user in the matrix
       gets the shares of their own interactions (:func:`history_category_shares`, the fallback
       the training validated and chose ``min_interactions`` with); a user outside it the top
       categories of the ``features/tags`` table, or those passed by the caller from a fresher
       profile;
    3. otherwise the globally most popular items (reason ``fallback:popularity``).

    :meth:`recommend` answers one user; the batch functions :func:`recommend_top_n` and
    :func:`category_fallback_top_n` give the same lists for rows of :attr:`history`.

    Items the user has interacted with and items in ``exclude`` are never listed.

    Args:
        estimator: A fitted estimator (:data:`ALGORITHMS`).
        history: The users x items matrix the estimator was fitted on.
        user_ids: Id of each row of ``history``.
        item_ids: Id of each column.
        item_category: item id -> category (items without one only come from popularity).
        user_categories: user id -> ``[(category, score), ...]`` best first.
        min_interactions: Fewer than this and the user gets a fallback list.
    """

    def __init__(self, estimator: _ItemScorer, history, user_ids: Sequence[str], item_ids: Sequence[str],
                 item_category: Mapping[str, str] | None = None,
                 user_categories: Mapping[str, Sequence[tuple[str, float]]] | None = None,
                 min_interactions: int = 1) -> None:
        history = _as_csr(history, "history")
        if history.shape != (len(user_ids), len(item_ids)):
            raise ValueError(f"history is {history.shape}, ids are {len(user_ids)} x {len(item_ids)}")
        if min_interactions < 1:
            raise ValueError(f"min_interactions must be >= 1, got {min_interactions}")
        self.estimator = estimator
        self.history = history
        self.user_ids = list(user_ids)
        self.item_ids = list(item_ids)
        self.min_interactions = int(min_interactions)
        self._user_row = {u: i for i, u in enumerate(self.user_ids)}
        self._item_col = {t: j for j, t in enumerate(self.item_ids)}
        self.popularity = np.asarray((history > 0).sum(axis=0)).ravel().astype(np.float64)
        cats = item_category or {}
        names = sorted({c for c in cats.values() if c is not None})
        self.categories = names
        index = {c: i for i, c in enumerate(names)}
        self.item_category_index = np.array([index.get(cats.get(t), -1) for t in self.item_ids], dtype=np.int64)
        self.user_categories = {u: [(str(c), float(s)) for c, s in v] for u, v in (user_categories or {}).items()}

    # -- helpers ---------------------------------------------------------------------------

    def _blocked(self, row: int | None, exclude: Iterable[str]) -> np.ndarray:
        mask = np.zeros(len(self.item_ids), dtype=bool)
        if row is not None:
            mask[self.history.indices[self.history.indptr[row]:self.history.indptr[row + 1]]] = True
        for t in exclude:
            j = self._item_col.get(t)
            if j is not None:
                mask[j] = True
        return mask

    def _ranked(self, keys: np.ndarray, shown: np.ndarray, n: int) -> list[tuple[str, float]]:
        best = top_n(keys[None, :], n)[0]
        return [(self.item_ids[j], float(shown[j])) for j in best if j >= 0]

    def category_shares(self, categories: Sequence[tuple[str, float]]) -> np.ndarray:
        """The user's share of each of :attr:`categories` (zeros when none is known)."""
        index = {c: i for i, c in enumerate(self.categories)}
        shares = np.zeros(len(self.categories))
        for c, s in categories:
            if c in index:
                shares[index[c]] += max(float(s), 0.0)
        total = shares.sum()
        return shares / total if total > 0 else shares

    # -- serving API -----------------------------------------------------------------------

    def recommend(self, user_id: str, n: int = 10, exclude: Iterable[str] = (),
                  categories: Sequence[tuple[str, float]] | None = None, *,
                  anonymous: bool = False) -> Recommendations:
        """The ``n`` best unseen items for a user and the reason for the list.

        Scores: the estimator's score (reason ``model``); ``share x interactions`` of the item's
        category for the category fallback (0 for the popular items that fill the list); the
        item's number of users for the popularity fallback.

        Args:
            user_id: Platform user id; unknown users get a fallback list.
            n: List length (>= 1); shorter only if the catalogue runs out.
            exclude: Item ids never to list (e.g. already in the basket), on top of the seen ones.
            categories: The user's top categories as ``(name, score)`` best first, overriding the
                ones stored at training time (a fresher profile); only used for a user without
                interactions in the training matrix.
            anonymous: Ignore everything the model holds of the user (a forgotten user): the
                popularity list, ``exclude`` still applied.

        Returns:
            :class:`Recommendations` ``(items, reason)``.

        Raises:
            ValueError: ``n`` < 1.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        row = None if anonymous else self._user_row.get(user_id)
        if anonymous:
            categories = ()
        blocked = self._blocked(row, exclude)
        n_seen = 0 if row is None else int(self.history.indptr[row + 1] - self.history.indptr[row])
        if row is not None and n_seen >= self.min_interactions:
            scores = self.estimator.scores(self.history[row])[0]
            keys = np.where(blocked, -np.inf, scores)
            return Recommendations(self._ranked(keys, scores, n), REASON_MODEL)
        if n_seen:
            shares = history_category_shares(self.history[row], self.item_category_index, len(self.categories))[0]
        else:
            cats = categories if categories is not None else self.user_categories.get(user_id, ())
            shares = self.category_shares(cats)
        if shares.any():
            keys = category_popularity_scores(shares[None, :], self.item_category_index, self.popularity)[0]
            shown = np.append(shares, 0.0)[self.item_category_index] * self.popularity
            return Recommendations(self._ranked(np.where(blocked, -np.inf, keys), shown, n), REASON_CATEGORY)
        keys = np.where(blocked, -np.inf, self.popularity)
        return Recommendations(self._ranked(keys, self.popularity, n), REASON_POPULARITY)

    def interactions_of(self, user_id: str) -> int:
        """How many items the user has in the training history (0 for an unknown user)."""
        row = self._user_row.get(user_id)
        return 0 if row is None else int(self.history.indptr[row + 1] - self.history.indptr[row])

    def __repr__(self) -> str:
        return (f"RecModel({type(self.estimator).__name__}, users={len(self.user_ids)}, "
                f"items={len(self.item_ids)}, min_interactions={self.min_interactions})")
