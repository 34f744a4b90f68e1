"""Feature tables as the models read them: no Spark, no JVM, only the lake, pandas and scipy.

The Spark jobs (:mod:`spark_jobs.training_tables`, :mod:`spark_jobs.tags`) write these tables;
the trainers and the serving side (:mod:`ray_apps`) read them back with the functions here, and
featurise a serving request with the same :func:`encode_ctr` and the spec stored with the table.
``ray_apps`` never imports ``spark_jobs``: a Serve replica must not need pyspark.

* :func:`load_ctr_matrix`: a CTR table split as ``scipy.sparse`` + labels (+ the feature spec);
* :func:`encode_ctr`: one impression (training row or request) into sparse indices and values;
* :func:`load_churn_frame` and :func:`churn_design`: the churn table as a lifelines design frame;
* :func:`load_interactions`: the user-item interaction matrix as a ``csr_matrix``;
* :func:`load_latest`: any feature table's newest run as pandas, with its metadata.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, NamedTuple

from cluster.core import catalog
from cluster.core.catalog import CTR_TRAIN, INTERACTIONS, Table
from cluster.core.errors import InvalidArgument, NotFound
from cluster.core.storage import Lake

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from scipy.sparse import csr_matrix

__all__ = [
    "AGE_EDGES",
    "RECENCY_BANDS",
    "recency_band",
    "CTR_USER_INPUTS",
    "CTR_USER_CELLS",
    "ctr_user_features",
    "MISSING",
    "OTHER",
    "SPEC_FORMAT",
    "CHURN_COVARIATES",
    "hash_bucket",
    "encode_ctr",
    "feature_names",
    "churn_design",
    "CtrMatrix",
    "load_ctr_matrix",
    "Interactions",
    "load_interactions",
    "load_latest",
    "load_run",
    "load_churn_frame",
]

#: Lower bounds (years) of the age bands after the first: ``<25``, ``25-34``, ... ``65+``.
AGE_EDGES: tuple[int, ...] = (25, 35, 45, 55, 65)
#: Value of the age band (and of any categorical feature) when the input is unknown.
#: Recency bands of the CTR table (days since the last paid order): upper bounds and labels;
#: beyond the last bound the label is "<last + 1>+", and "none" without an order.
RECENCY_BANDS: tuple[tuple[int, str], ...] = ((7, "1-7"), (30, "8-30"), (90, "31-90"))


def recency_band(days: float | None) -> str:
    """The CTR table's recency band of ``days`` (the serving side of ``_recency_band``)."""
    if days is None or (isinstance(days, float) and math.isnan(days)):
        return "none"
    for upper, label in RECENCY_BANDS:
        if days <= upper:
            return label
    return f"{RECENCY_BANDS[-1][0] + 1}+"


#: The CTR model's user inputs, in the order :func:`spark_jobs.training_tables.ctr_user_inputs`
#: computes them (``recency_days`` becomes the one-hot ``recency_band``; the rest are inputs as named).
CTR_USER_INPUTS: tuple[str, ...] = (
    "gender", "age_band", "city", "recency_days", "frequency", "monetary", "events_recent", "top_category",
    "top_category_share",
)
#: Profile cell of each CTR user input as of the CTR table's cut-off (``features/ctr_users``, written
#: by ``spark_jobs.profiles``), plus the day they hold for (``as_of``).
CTR_USER_CELLS: dict[str, str] = {**{c: f"f:ctr_{c}" for c in CTR_USER_INPUTS}, "as_of": "f:ctr_as_of"}
_CTR_TEXT_INPUTS = frozenset({"gender", "age_band", "city", "top_category"})


def ctr_user_features(cells: Mapping[str, bytes] | None, today: date) -> dict[str, Any]:
    """The CTR model's user inputs for a request on ``today``, from the profile's ``f:ctr_*`` cells.

    The cells hold :func:`spark_jobs.training_tables.ctr_user_inputs` as of the day in
    ``f:ctr_as_of``, the very values a training row of that day carries. Recency moves on with the
    calendar (days since that day are added); the other inputs stay as they were on that day.

    Args:
        cells: The user's cells (any of :data:`CTR_USER_CELLS`); empty or None for a user without them.
        today: The request's UTC day.

    Returns:
        Record keys of the CTR model (``{}`` when the profile has no CTR inputs): a missing cell
        is an unknown value, encoded as in training.
    """
    if not cells or CTR_USER_CELLS["as_of"] not in cells:
        return {}
    out: dict[str, Any] = {}
    for name in CTR_USER_INPUTS:
        raw = cells.get(CTR_USER_CELLS[name])
        if raw is None:
            out[name] = None
        elif name in _CTR_TEXT_INPUTS:
            out[name] = raw.decode("utf-8")
        else:
            out[name] = float(raw.decode("ascii"))
    days = out.pop("recency_days")
    if days is not None:
        try:
            as_of = date.fromisoformat(cells[CTR_USER_CELLS["as_of"]].decode("ascii"))
            days += max((today - as_of).days, 0)
        except ValueError:
            pass
    out["recency_band"] = recency_band(days)
    return out


MISSING = "__missing__"
#: One-hot slot of a value not seen in the training split.
OTHER = "__other__"
#: Version tag of the feature spec JSON; bump when :func:`encode_ctr` changes meaning.
SPEC_FORMAT = "pmkt.ctr-features/1"


#: Numeric covariates :func:`churn_design` returns (besides ``duration_days`` and ``churned``).
CHURN_COVARIATES: tuple[str, ...] = (
    "opt_in_sms", "opt_in_push", "opt_in_email", "gender_F", "gender_M",
    "age_lt25", "age_25_34", "age_45_54", "age_55_64", "age_65plus", "age_unknown",
    "log_account_age_days",
    "has_paid_order", "log_avg_order_value", "ad_ctr_pct",
)



def hash_bucket(token: str, buckets: int) -> int:
    """Stable bucket of a token: SHA-256, first 8 bytes big-endian, modulo ``buckets``.

    Unlike Python's ``hash`` this does not depend on ``PYTHONHASHSEED``, the process or the machine.
    """
    return int.from_bytes(hashlib.sha256(token.encode("utf-8")).digest()[:8], "big") % buckets


def _category(value: Any) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def encode_ctr(record: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[list[int], list[float]]:
    """Encode one impression (a training row or a serving request) into sparse indices and values.

    Args:
        record: Values of ``spec["inputs"]``; missing keys and ``None`` are unknown values.
            Categorical values are compared as strings (``ad_position`` ``3`` and ``"3"`` agree).
        spec: The spec of :func:`fit_ctr_spec` (as stored in the lake's ``_feature_spec.json``).

    Returns:
        Strictly increasing indices and their values (colliding hashed tokens are summed).
    """
    out: dict[int, float] = {}
    i = 0
    for num in spec["numeric"]:
        raw = record.get(num["input"])
        x = 0.0 if raw is None or (isinstance(raw, float) and math.isnan(raw)) else float(raw)
        if num["transform"] == "log1p":
            x = math.log1p(x)
        value = (x - num["mean"]) / num["std"]
        if value != 0.0:
            out[i] = value
        i += 1
    for block in spec["onehot"]:
        values = block["values"]
        v = _category(record.get(block["input"]))
        # Vocabularies are short (a few dozen values); a linear scan keeps the spec plain JSON.
        out[i + (values.index(v) if v in values else len(values))] = 1.0
        i += len(values) + 1
    hashed = spec["hashed"]
    for cols in hashed["inputs"]:
        token = "*".join(cols) + "=" + "|".join(_category(record.get(c)) for c in cols)
        j = hashed["offset"] + hash_bucket(token, hashed["buckets"])
        out[j] = out.get(j, 0.0) + 1.0
    indices = sorted(out)
    return indices, [out[j] for j in indices]


def feature_names(spec: Mapping[str, Any]) -> list[str]:
    """Names of every vector slot: the spec's named features, then ``hash[0]`` ... ``hash[n-1]``."""
    return list(spec["feature_names"]) + [f"hash[{j}]" for j in range(spec["hashed"]["buckets"])]



def churn_design(frame: pd.DataFrame, age_edges: Sequence[int] = AGE_EDGES) -> pd.DataFrame:
    """The churn table as a numeric frame for lifelines: ``duration_days``, ``churned`` and covariates.

    Categorical covariates become indicators against a fixed reference level (unknown gender,
    age ``35-44`` for the default edges), so the columns are the same for every run.

    Args:
        frame: A pandas frame of :func:`churn_table` rows.
        age_edges: The edges the table was built with.

    Returns:
        A pandas frame with ``duration_days``, ``churned`` and :data:`CHURN_COVARIATES` (default
        edges) or the matching ``age_*`` indicators (other edges), no missing values.
    """
    import numpy as np
    import pandas as pd

    inner = [f"{lo}-{hi - 1}" for lo, hi in zip(age_edges, age_edges[1:])]
    bands = [f"<{age_edges[0]}", *inner, f"{age_edges[-1]}+"]
    reference = bands[(len(bands) - 1) // 2]
    out = pd.DataFrame(
        {"duration_days": frame["duration_days"].astype(int), "churned": frame["churned"].astype(int)}
    )
    for c in ("opt_in_sms", "opt_in_push", "opt_in_email"):
        out[c] = frame[c].astype(int)
    for g in ("F", "M"):
        out[f"gender_{g}"] = (frame["gender"] == g).astype(int)
    for band in bands + [MISSING]:
        if band == reference:
            continue
        label = band.replace("<", "lt").replace("+", "plus").replace("-", "_")
        out["age_unknown" if band == MISSING else f"age_{label}"] = (frame["age_band"] == band).astype(int)
    # A user without a signup time (orders of users absent from users.csv) gets the median: an
    # indicator column for a handful of rows only destabilises the fit.
    age = frame["account_age_days"].astype(float)
    out["log_account_age_days"] = np.log1p(age.fillna(age.median() if age.notna().any() else 0.0).clip(lower=0))
    out["has_paid_order"] = frame["has_paid_order"].astype(int)
    out["log_avg_order_value"] = np.log1p(frame["avg_order_value"].astype(float))
    out["ad_ctr_pct"] = 100.0 * frame["ad_ctr"].astype(float)
    return out



# ---------------------------------------------------------------------------------------------
# Reading the CTR table back (no Spark needed)
# ---------------------------------------------------------------------------------------------


class CtrMatrix(NamedTuple):
    """A split of the CTR table, ready for scikit-learn."""

    X: Any  # scipy.sparse.csr_matrix, rows x spec["size"]
    y: Any  # numpy int array of 0/1 labels
    impression_ids: list[str]
    spec: dict


def _vectors_to_csr(struct: pa.StructArray, size: int) -> Any:
    """CSR matrix from an Arrow column of Spark ML vectors (struct type/size/indices/values)."""
    import numpy as np
    import scipy.sparse as sp

    kinds = struct.field("type").to_numpy(zero_copy_only=False)
    if len(kinds) and (kinds == 0).all():
        indices = struct.field("indices")
        offsets = indices.offsets.to_numpy()
        indptr = offsets - offsets[0]
        cols = indices.flatten().to_numpy(zero_copy_only=False).astype(np.int32)
        vals = struct.field("values").flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        return sp.csr_matrix((vals, cols, indptr), shape=(len(kinds), size))
    rows = []
    for v in struct.to_pylist():  # dense rows (never written by ctr_vectors, handled for safety)
        if v["type"] == 1:
            rows.append(sp.csr_matrix(np.asarray(v["values"], dtype=np.float64).reshape(1, -1)))
        else:
            rows.append(sp.csr_matrix((v["values"], v["indices"], [0, len(v["indices"])]), shape=(1, size)))
    return sp.vstack(rows, format="csr") if rows else sp.csr_matrix((0, size))


def load_ctr_matrix(lake: Lake, split: str | None = None, run_id: str | None = None) -> CtrMatrix:
    """Read a CTR table split into ``scipy.sparse`` features and labels.

    Args:
        lake: The lake (``open_lake(settings)``).
        split: ``train``, ``test`` or ``None`` for both (train first).
        run_id: A :data:`~cluster.core.catalog.CTR_TRAIN` run; default the newest.

    Returns:
        ``X`` (CSR, ``spec["size"]`` columns), ``y``, the impression ids in row order, the spec.

    Raises:
        InvalidArgument: ``split`` is not ``train``, ``test`` or ``None``.
        NotFound: no CTR table has been written (or ``run_id`` does not exist).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    if split not in (None, "train", "test"):
        raise InvalidArgument("split must be 'train', 'test' or None", field="split")
    if run_id is None:
        latest = CTR_TRAIN.latest(lake)
        if latest is None:
            raise NotFound(f"no CTR training table yet: run `{CTR_TRAIN.built_by}` first")
        run_id = latest["run_id"]
    spec = lake.read_json(*CTR_TRAIN.run_parts(run_id, catalog.FEATURE_SPEC))
    parts = []
    for name in ("train", "test") if split is None else (split,):
        folder = CTR_TRAIN.run_parts(run_id, f"split={name}")
        for f in lake.list_dir(*folder):
            if f.endswith(".parquet"):
                data = lake.read_bytes(*folder, f)
                parts.append(pq.read_table(io.BytesIO(data), columns=["impression_id", "label", "features"]))
    if not parts:
        return CtrMatrix(sp.csr_matrix((0, spec["size"])), np.zeros(0, dtype=int), [], spec)
    table = pa.concat_tables(parts)
    X = _vectors_to_csr(table.column("features").combine_chunks(), int(spec["size"]))
    y = table.column("label").to_numpy().astype(int)
    return CtrMatrix(X, y, table.column("impression_id").to_pylist(), spec)



class Interactions(NamedTuple):
    """The interaction matrix as the recommender uses it."""

    #: Shape (users, items); row i is ``user_ids[i]``, column j is ``item_ids[j]``.
    matrix: csr_matrix
    #: User id of each row.
    user_ids: list[str]
    #: Item id of each column.
    item_ids: list[str]
    #: The run's metadata (its ``_meta.json``: run id, as-of day, counts, path).
    meta: dict


def load_interactions(lake: Lake, run_id: str | None = None, dtype: str = "float32") -> Interactions:
    """Load an interaction matrix written by :func:`main` into a ``scipy.sparse.csr_matrix``.

    Reads Parquet through the lake (no Spark), so the recommender can use it as it is.

    Args:
        lake: The lake (:func:`cluster.core.storage.open_lake`).
        run_id: The run to load; the newest :data:`~cluster.core.catalog.INTERACTIONS` run by default.
        dtype: Value type of the matrix (float32 suits implicit-feedback models).

    Raises:
        NotFound: no interaction matrix (or no such run) in the lake.
    """
    from scipy.sparse import csr_matrix

    meta = INTERACTIONS.run_meta(lake, run_id) if run_id else INTERACTIONS.latest(lake)
    if meta is None:
        raise NotFound(f"no interaction matrix yet: run `{INTERACTIONS.built_by}` first")
    run_id = meta["run_id"]
    users = INTERACTIONS.read_parquet(lake, run_id, "users").sort_values("user_idx")
    items = INTERACTIONS.read_parquet(lake, run_id, "items").sort_values("item_idx")
    cells = INTERACTIONS.read_parquet(lake, run_id, "matrix")
    # Indices are 0..n-1 by construction (index_interactions), so row i is users' i-th id.
    matrix = csr_matrix(
        (cells["value"].to_numpy(dtype=dtype), (cells["user_idx"].to_numpy(), cells["item_idx"].to_numpy())),
        shape=(len(users), len(items)),
    )
    return Interactions(matrix, users["user_id"].tolist(), items["item_id"].tolist(), meta)




def _feature_table(table: Table | str) -> Table:
    """A catalog table, or the feature table of that path (``"rfm"`` is ``catalog.RFM``)."""
    return table if isinstance(table, Table) else catalog.table(f"features.{table.replace('/', '.')}")


def load_latest(lake: Lake, table: Table | str, columns: Sequence[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """The newest run of a feature table (``catalog.RFM``, or its path ``"rfm"``) as pandas, with its metadata.

    Raises:
        FailedPrecondition: the table has never been built (the message names the command that builds it).
        InvalidArgument: the catalog has no such table.
    """
    meta = _feature_table(table).require_latest(lake)
    return lake.read_parquet(meta["path"], columns=list(columns) if columns else None), meta


def load_churn_frame(lake: Lake) -> tuple[pd.DataFrame, dict]:
    """The newest churn table (one row per user, :func:`spark_jobs.training_tables.churn_table`)."""
    return load_latest(lake, catalog.CHURN)


def load_run(lake: Lake, table: Table | str, run_id: str,
             columns: Sequence[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """One run of a feature table (``catalog.CHURN`` or ``"churn"``) as pandas, with its metadata.

    A model is trained on one run (its registry version's ``feature_run_id``); serving and the
    parity tests read that very run when the newest one is not the same table.

    Raises:
        NotFound: the run does not exist (or has no ``_meta.json``).
        InvalidArgument: the catalog has no such table.
    """
    t = _feature_table(table)
    if not lake.exists(*t.run_parts(run_id, catalog.META)):
        raise NotFound(f"no run {run_id!r} of the {t.rel()} table")
    meta = t.run_meta(lake, run_id)
    return lake.read_parquet(meta["path"], columns=list(columns) if columns else None), meta
