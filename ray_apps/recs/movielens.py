"""MovieLens-100k from the installed ``recbole`` wheel, and the Recommenders benchmark split.

GroupLens terms forbid redistributing MovieLens, so the platform never holds a copy: the
ratings are read from ``recbole/dataset_example/ml-100k/ml-100k.inter`` inside the installed
package (``pip install --no-deps recbole``; the package is located without importing it, so
its torch dependency is never needed). The file has the 100,000 rows of ``u.data`` in the same
order, which matters: the stratified split shuffles each user's rows in input order.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from cluster.core.errors import FailedPrecondition
from ray_apps.recs.model import stratified_split

__all__ = ["MovieLensSplit", "load_ml100k", "ml100k_path", "split_ml100k"]

_INTER = ("dataset_example", "ml-100k", "ml-100k.inter")


def ml100k_path() -> Path:
    """Where the installed recbole wheel keeps ``ml-100k.inter``.

    Raises:
        FailedPrecondition: recbole is not installed (``make install`` installs it).
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition("MovieLens-100k comes from the recbole wheel: run `make install` "
                                 "(pip install --no-deps recbole)")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_INTER)
    if not path.is_file():
        raise FailedPrecondition(f"the installed recbole has no {'/'.join(_INTER)}")
    return path


def load_ml100k(path: Path | None = None):
    """The 100,000 ratings as pandas, in file order.

    Returns:
        ``user_id``, ``item_id`` (int), ``rating`` (float), ``timestamp`` (int).
    """
    import pandas as pd

    frame = pd.read_csv(path or ml100k_path(), sep="\t", header=0,
                        names=["user_id", "item_id", "rating", "timestamp"])
    return frame.astype({"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"})


class MovieLensSplit(NamedTuple):
    """The benchmark split as matrices over one user and item index."""

    #: users x items, 1 where the rating is on the training side.
    train: sp.csr_matrix
    #: users x items, 1 where the rating is held out (relevant at evaluation).
    test: sp.csr_matrix
    #: MovieLens user id of each row, item id of each column (ascending).
    user_ids: np.ndarray
    item_ids: np.ndarray


def split_ml100k(frame=None, ratio: float = 0.75, seed: int = 42) -> MovieLensSplit:
    """The Recommenders benchmark split: ``python_stratified_split(ratio=0.75, seed=42)``.

    Every rating counts as an interaction (no rating threshold). Items that appear only in the
    test side keep their column: no model can recommend them, as in the benchmark.

    Args:
        frame: :func:`load_ml100k` output (loaded when omitted).
        ratio: Training share of each user's ratings.
        seed: Shuffle seed.
    """
    frame = load_ml100k() if frame is None else frame
    train_mask = stratified_split(frame["user_id"].to_numpy(), ratio, seed)
    user_ids, rows = np.unique(frame["user_id"].to_numpy(), return_inverse=True)
    item_ids, cols = np.unique(frame["item_id"].to_numpy(), return_inverse=True)
    shape = (len(user_ids), len(item_ids))

    def matrix(mask: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((np.ones(int(mask.sum())), (rows[mask], cols[mask])), shape=shape)
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    return MovieLensSplit(matrix(train_mask), matrix(~train_mask), user_ids, item_ids)
