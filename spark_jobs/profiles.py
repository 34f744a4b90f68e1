"""360-degree profiles in bulk: one row per user, written to the profile store with batched
mutations per partition (HBase on the cluster, SQLite embedded).

Each profile joins

* the users table of the raw zone: gender, city, the phone **masked**, whether an ID
  number is on file (its ciphertext stays in the lake), sign-up time, consent flags, and the
  birth date turned into an **age band** (the date itself never reaches a profile);
* the latest RFM features (``f:rfm_*``);
* the latest feature tables of the other builds when they exist (:data:`EXTRA_FEATURES`:
  CLV scores to ``m:``, weighted tags and behaviour tags to ``t:``).

Users who asked to be forgotten are excluded (tombstones), and a user who exists only in
orders still gets a profile (attributes empty). Cells are documented in
:mod:`ray_apps.profiles.service` and docs/profile-store.md.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timezone

from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

from cluster.core.catalog import CLV, CTR_USERS, PROFILE_REPORTS, RFM
from cluster.core.errors import FailedPrecondition
from cluster.core.feature_io import CTR_USER_CELLS
from cluster.core.privacy import age_band_column
from cluster.core.settings import Settings
from spark_jobs.context import JobContext, Progress

__all__ = ["build_profiles", "main", "ATTRIBUTE_COLUMNS", "EXTRA_FEATURES"]

log = logging.getLogger(__name__)

#: users column -> profile cell.
ATTRIBUTE_COLUMNS = {
    "gender": "a:gender",
    "city": "a:city",
    "phone_masked": "a:phone_masked",
    "has_id_number": "a:has_id_number",
    "signup_time": "a:signup_time",
    "opt_in_sms": "a:opt_in_sms",
    "opt_in_push": "a:opt_in_push",
    "opt_in_email": "a:opt_in_email",
    "age_band": "a:age_band",
}
RFM_CELLS = {"recency_days": "f:rfm_recency_days", "frequency": "f:rfm_frequency", "monetary": "f:rfm_monetary"}
#: Other feature builds joined when their latest table exists: feature folder -> {column: cell}.
EXTRA_FEATURES: dict[str, dict[str, str]] = {
    CLV.path: {"clv_historic": "m:clv_historic", "clv_predicted": "m:clv_predicted", "p_alive": "m:p_alive",
            "expected_purchases": "m:expected_purchases"},
    # the CTR model's user inputs as of the training tables' cut-off, computed by the code that
    # builds the CTR training rows (spark_jobs.training_tables.ctr_user_inputs)
    CTR_USERS.path: dict(CTR_USER_CELLS),
}
_EXTRA_TABLES = (CLV, CTR_USERS)


_NOTHING_TO_BUILD = "nothing to build profiles from: run `pmkt ingest DIR` (users) or `pmkt features rfm` first"


def build_profiles(users: DataFrame | None, rfm: DataFrame | None, as_of: date,
                   extras: dict[str, DataFrame] | None = None) -> DataFrame:
    """One row per user with a column per profile cell (named like the cell, e.g. ``a:city``).

    Args:
        users: Raw-zone users (or None when no users file was ever delivered).
        rfm: The RFM feature table (``user_id``, ``recency_days``, ``frequency``, ``monetary``).
        as_of: Day the age bands are computed for.
        extras: Further feature tables keyed like :data:`EXTRA_FEATURES`.
    """
    parts: list[DataFrame] = []
    if users is not None:
        cols = [F.col("user_id")]
        for column, cell in ATTRIBUTE_COLUMNS.items():
            if column == "age_band":
                value = age_band_column(F.col("birth_date"), as_of) if "birth_date" in users.columns else F.lit(None)
            elif column == "has_id_number":
                value = F.col(column).cast("int") if column in users.columns else F.lit(None)
            elif column == "signup_time":
                value = F.date_format(F.col(column), "yyyy-MM-dd'T'HH:mm:ss'Z'") if column in users.columns else F.lit(None)
            else:
                value = F.col(column) if column in users.columns else F.lit(None)
            cols.append(value.cast("string").alias(cell))
        parts.append(users.select(*cols))
    if rfm is not None:
        parts.append(rfm.select("user_id", *[F.col(c).alias(cell) for c, cell in RFM_CELLS.items()],
                                F.col("as_of").cast("string").alias("f:rfm_as_of")))
    for name, frame in (extras or {}).items():
        mapping = {c: cell for c, cell in EXTRA_FEATURES.get(name, {}).items() if c in frame.columns}
        if mapping:
            parts.append(frame.select("user_id", *[F.col(c).alias(cell) for c, cell in mapping.items()]))
    if not parts:
        raise FailedPrecondition(_NOTHING_TO_BUILD)
    out = parts[0]
    for frame in parts[1:]:
        out = out.join(frame, on="user_id", how="full_outer")
    return out


def _cells(row: Row) -> dict:
    return {k: v for k, v in row.asDict().items() if k != "user_id" and v is not None}


def _read_sources(ctx: JobContext) -> tuple[DataFrame | None, dict | None, DataFrame | None, dict[str, DataFrame]]:
    """Raw users, the latest RFM run (metadata and table, with ``as_of``) and the other latest feature tables."""
    users = ctx.read_raw("users") if ctx.has_raw("users") else None
    rfm_meta, rfm = ctx.read_latest(RFM) or (None, None)
    if rfm is not None and "as_of" not in rfm.columns:
        rfm = rfm.withColumn("as_of", F.lit(rfm_meta["as_of"]))
    extras = {t.path: latest[1] for t in _EXTRA_TABLES if (latest := ctx.read_latest(t)) is not None}
    return users, rfm_meta, rfm, extras


def main(settings: Settings, *, as_of: date | None = None, run_id: str | None = None,
         progress: Progress | None = None) -> dict:
    """Build every profile and write it to the profile store; returns run metadata.

    Raises:
        FailedPrecondition: neither users nor RFM features exist yet.
    """
    ctx = JobContext.start(settings, "pmkt-profiles", run_id=run_id, progress=progress)
    if not ctx.has_raw("users") and not any(t.latest(ctx.lake) for t in (RFM, *_EXTRA_TABLES)):
        # build_profiles would say so too, but only after a minute of Spark start-up
        raise FailedPrecondition(_NOTHING_TO_BUILD)
    ctx.step("reading users and features", 0.0)
    users, rfm_meta, rfm, extras = _read_sources(ctx)
    as_of = as_of or (date.fromisoformat(rfm_meta["as_of"]) if rfm_meta else datetime.now(timezone.utc).date())
    profiles = ctx.exclude_forgotten(build_profiles(users, rfm, as_of, extras)).cache()
    total = profiles.count()
    ctx.step(f"writing {total:,} profiles", 0.4)
    built_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    ctx.write_profiles(profiles, _cells, {"f:profile_built_at": built_at})
    profiles.unpersist()
    meta = PROFILE_REPORTS.write_report(ctx.lake, ctx.run_id, {
        "run_id": ctx.run_id, "as_of": as_of.isoformat(), "profiles": total, "built_at": built_at,
        "sources": {"users": users is not None, "rfm": rfm_meta["run_id"] if rfm_meta else None,
                    **{k: True for k in extras}},
    })
    ctx.step("done", 1.0)
    log.info("profiles run %s: %d profiles", ctx.run_id, total)
    return meta
