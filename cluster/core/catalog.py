"""The lake catalog: every table the platform keeps in the lake, named once.

A :class:`Table` says where a table lives (zone and folder), how it is laid out, how it is
partitioned, its schema version and whether it holds personal data (rows or files keyed by a
user). Writers and readers go through it, so no other module spells a lake path:

* **runs** (feature tables): each build writes ``<zone>/<path>/run=<run_id>/`` with a
  ``_meta.json``, then :meth:`Table.publish` swaps the ``latest.json`` pointer beside the runs.
  The pointer is written last and atomically (the lake's ``write_json``), so a reader sees the old
  run or the new one, never half of one; :meth:`Table.latest` and :meth:`Table.require_latest`
  read it.
* **partitioned** (the raw zone): one Parquet dataset, partitioned by day, appended or overwritten
  by ingest and the real-time intake.
* **reports**: one JSON document per run (``<run_id>.json``) and ``latest.json``.
* **files**: a folder of small files a module manages itself (the registry, tombstones, staged
  input), reached through :meth:`Table.parts`.

:data:`TABLES` lists them all; :func:`personal_tables` is what forget/purge and the PII tests walk.
Run ids come from :func:`new_run_id`. docs/architecture.md says how to add a table.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from cluster.core.contract import DATASETS
from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.storage.lake import Lake, Zone

__all__ = [
    "Layout",
    "Table",
    "TABLES",
    "table",
    "personal_tables",
    "new_run_id",
    "check_run_id",
    "LATEST",
    "META",
    "RAW",
    "QUARANTINE",
    "RT_EVENTS",
    "LANDING",
    "CLEAN",
    "RFM",
    "CLV",
    "TAGS",
    "TAG_WEIGHTS",
    "INTERACTIONS",
    "CTR_TRAIN",
    "CTR_USERS",
    "CHURN",
    "CAMPAIGNS",
    "CAMPAIGN_DAILY",
    "FUNNELS",
    "DEMAND",
    "ATTRIBUTES",
    "INGEST_REPORTS",
    "CLEAN_REPORTS",
    "PROFILE_REPORTS",
    "ATTRIBUTE_REPORTS",
    "REVEAL_AUDIT",
    "PURGE_REPORTS",
    "REGISTRY",
    "TOMBSTONES",
    "FEATURE_SPEC",
    "ATTRIBUTE_STORED",
    "ATTRIBUTE_LATEST",
    "MODEL_FILE",
    "MODEL_META",
    "MODEL_METRICS",
    "MODEL_PARAMS",
    "MODEL_TUNING",
    "MODEL_CURRENT",
    "MODEL_SIGNATURE",
]

#: The pointer file naming a table's newest run (or a report folder's newest report).
LATEST = "latest.json"
#: A run's own metadata, beside its Parquet files.
META = "_meta.json"
#: The CTR table's feature spec (``encode_ctr``'s input), beside a ``features/ctr_train`` run's files.
FEATURE_SPEC = "_feature_spec.json"
#: Files of ATTRIBUTE_REPORTS per target (``.format(target=...)``): the users holding a live
#: prediction (personal), and the newest prediction run's counts.
ATTRIBUTE_STORED = "{target}-stored.json"
ATTRIBUTE_LATEST = "{target}-latest.json"
#: Files of a REGISTRY version (``<model>/<version>/``); its meta file goes last, so a version
#: folder without it is incomplete. MODEL_CURRENT (``<model>/current.json``) points at the serving one.
MODEL_FILE = "model.pkl"
MODEL_META = "meta.json"
MODEL_METRICS = "metrics.json"
MODEL_PARAMS = "params.json"
MODEL_TUNING = "tuning.json"
MODEL_CURRENT = "current.json"
#: A version's signature (cluster.core.signing): every file's SHA-256 and an HMAC over the
#: version's metadata with the registry key. Written just before MODEL_META.
MODEL_SIGNATURE = "signature.json"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261125T150102Z-3fa9``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def check_run_id(run_id: str) -> str:
    """A run id names a folder: letters, digits, ``_.-``, at most 64 characters.

    Raises:
        InvalidArgument: anything else (a path separator, ``..``, an empty id).
    """
    if not _RUN_ID.match(run_id or ""):
        raise InvalidArgument(f"run id must be 1-64 letters, digits, '_', '.' or '-', got {run_id!r}",
                              field="run_id")
    return run_id


class Layout(str, Enum):
    """How a table's files are arranged under its folder."""

    RUNS = "runs"                # run=<run_id>/ folders + latest.json
    PARTITIONED = "partitioned"  # one Parquet dataset partitioned by day (dt=...)
    REPORTS = "reports"          # <run_id>.json + latest.json
    FILES = "files"              # small files its owning module names


@dataclass(frozen=True)
class Table:
    """One table of the lake.

    Attributes:
        name: Catalog name, ``<zone>.<path with dots>`` (``features.ctr_train``).
        zone: Top-level folder.
        path: Folder under the zone (``rfm``, ``clean/users``).
        layout: How its files are arranged (:class:`Layout`).
        partitioning: Partition columns of its Parquet files (``("dt",)``, ``("split",)``).
        schema_version: Bumped when a column changes meaning or type.
        personal: Whether it holds rows or files keyed by a user (forget/purge walk these).
        user_column: The column naming the user, for personal Parquet tables.
        built_by: The command that writes it (named in "run it first" errors).
        doc: One line on what it holds.
    """

    name: str
    zone: Zone
    path: str
    layout: Layout
    partitioning: tuple[str, ...] = ()
    schema_version: int = 1
    personal: bool = False
    user_column: str | None = None
    built_by: str = ""
    doc: str = ""

    # -- paths ---------------------------------------------------------------------------
    def parts(self, *sub: str) -> tuple[Zone | str, ...]:
        """Lake path parts of the table's folder, or of ``sub`` below it (for ``lake.*`` calls)."""
        return (self.zone, self.path, *sub)

    def rel(self, *sub: str) -> str:
        """Lake-relative POSIX path (``features/rfm/run=...``), as run metadata records it."""
        return "/".join(p for p in (self.zone.value, self.path, *sub) if p != ".")

    def uri(self, lake: Lake, *sub: str) -> str:
        """The URI Spark reads or writes (the whole table, or ``sub`` below it)."""
        return lake.uri(*self.parts(*sub))

    def exists(self, lake: Lake, *sub: str) -> bool:
        return lake.exists(*self.parts(*sub))

    def list_dir(self, lake: Lake, *sub: str) -> list[str]:
        return lake.list_dir(*self.parts(*sub))

    def delete(self, lake: Lake, *sub: str) -> None:
        lake.delete(*self.parts(*sub))

    def read_json(self, lake: Lake, *sub: str) -> Any:
        return lake.read_json(*self.parts(*sub))

    def write_json(self, lake: Lake, obj: Any, *sub: str) -> None:
        lake.write_json(obj, *self.parts(*sub))

    # -- runs ----------------------------------------------------------------------------
    @staticmethod
    def run_folder(run_id: str) -> str:
        return f"run={run_id}"

    def run_parts(self, run_id: str, *sub: str) -> tuple[Zone | str, ...]:
        return self.parts(self.run_folder(run_id), *sub)

    def run_rel(self, run_id: str, *sub: str) -> str:
        return self.rel(self.run_folder(run_id), *sub)

    def run_uri(self, lake: Lake, run_id: str, *sub: str) -> str:
        return lake.uri(*self.run_parts(run_id, *sub))

    def runs(self, lake: Lake) -> list[str]:
        """Run ids present, oldest first (run ids sort by time)."""
        prefix = "run="
        return sorted(n[len(prefix):] for n in self.list_dir(lake) if n.startswith(prefix))

    def latest(self, lake: Lake) -> dict | None:
        """The newest run's metadata (``latest.json``), or None before the first build."""
        if not lake.exists(*self.parts(LATEST)):
            return None
        return lake.read_json(*self.parts(LATEST))

    def require_latest(self, lake: Lake) -> dict:
        """The newest run's metadata.

        Raises:
            FailedPrecondition: the table has not been built yet (names the command that builds it).
        """
        meta = self.latest(lake)
        if meta is None:
            hint = f": run `{self.built_by}` first" if self.built_by else ""
            raise FailedPrecondition(f"the lake has no {self.rel()} table yet{hint}")
        return meta

    def run_meta(self, lake: Lake, run_id: str) -> dict:
        """A run's ``_meta.json``."""
        return lake.read_json(*self.run_parts(run_id, META))

    def publish(self, lake: Lake, run_id: str, meta: dict, *, run_meta: bool = True) -> dict:
        """Make ``run_id`` the table's newest run: its ``_meta.json``, then the ``latest.json`` pointer.

        The pointer goes last, so readers never see a run whose files or metadata are missing.
        ``run_meta=False`` for tables whose run folder holds other tables' runs (``clean``).
        """
        if run_meta:
            lake.write_json(meta, *self.run_parts(run_id, META))
        lake.write_json(meta, *self.parts(LATEST))
        return meta

    def read_parquet(self, lake: Lake, run_id: str, *sub: str, columns: list[str] | None = None):
        """A run's Parquet files (or ``sub`` below the run) as a pandas DataFrame."""
        return lake.read_parquet(*self.run_parts(run_id, *sub), columns=columns)

    # -- reports -------------------------------------------------------------------------
    def write_report(self, lake: Lake, run_id: str, report: dict) -> dict:
        """Store a run's report as ``<run_id>.json`` and as ``latest.json``."""
        lake.write_json(report, *self.parts(f"{run_id}.json"))
        lake.write_json(report, *self.parts(LATEST))
        return report


def _raw(name: str, doc: str) -> Table:
    return Table(f"raw.{name}", Zone.RAW, name, Layout.PARTITIONED, ("dt",), personal=True, user_column="user_id",
                 built_by="pmkt ingest DIR", doc=doc)


def _features(path: str, doc: str, *, built_by: str, personal: bool = True, partitioning: tuple[str, ...] = (),
              user_column: str | None = "user_id") -> Table:
    return Table(f"features.{path.replace('/', '.')}", Zone.FEATURES, path, Layout.RUNS, partitioning,
                 personal=personal, user_column=user_column if personal else None, built_by=built_by, doc=doc)


def _reports(path: str, doc: str, *, built_by: str, personal: bool = False) -> Table:
    return Table(f"reports.{path.replace('/', '.')}", Zone.REPORTS, path, Layout.REPORTS, personal=personal,
                 built_by=built_by, doc=doc)


#: The raw zone: one table per contract dataset (accepted rows, partitioned by day).
RAW: dict[str, Table] = {ds.name: _raw(ds.name, f"accepted rows of {ds.name}.{ds.fmt}") for ds in DATASETS}
#: Events taken by the real-time intake (``TrackEvents``), beside the delivered ones.
RT_EVENTS = Table("raw.events_rt", Zone.RAW, "events_rt", Layout.PARTITIONED, ("dt",), personal=True,
                  user_column="user_id", built_by="TrackEvents", doc="events taken in real time")
#: Rejected input rows with their reason, one folder per dataset and run (``<dataset>/run=<id>``).
QUARANTINE = Table("quarantine", Zone.QUARANTINE, ".", Layout.FILES, personal=True, built_by="pmkt ingest DIR",
                   doc="rejected rows with their reason and line number")
#: Input files staged for Spark on a cluster (``<run_id>/<file>``), deleted after the run.
LANDING = Table("landing", Zone.LANDING, ".", Layout.FILES, personal=True, built_by="pmkt ingest DIR",
                doc="delivered files staged for the executors during one ingest run")

CLEAN = _features("clean", "cleaned tables (clean/<table>/run=<id>), latest.json names every path",
                  built_by="pmkt clean")
RFM = _features("rfm", "recency, frequency, monetary and consumption level per buyer", built_by="pmkt features rfm")
CLV = _features("clv", "historic and predicted CLV per buyer (BG/NBD + Gamma-Gamma)", built_by="pmkt features clv")
TAGS = _features("tags", "behaviour tags and TF-IDF top tags per user", built_by="pmkt features tags")
TAG_WEIGHTS = _features("tag_weights", "TF-IDF weight per user and tag", built_by="pmkt features tags")
INTERACTIONS = _features("interactions", "user x item matrix (users/, items/, matrix/)",
                         built_by="pmkt features tags")
CTR_TRAIN = _features("ctr_train", "one row per impression with user and ad features", partitioning=("split",),
                      built_by="pmkt features tables")
CTR_USERS = _features("ctr_users", "the CTR model's user inputs for every known user",
                      built_by="pmkt features tables")
CHURN = _features("churn", "survival rows (duration, event) per buyer", built_by="pmkt features tables")
CAMPAIGNS = _features("campaigns", "clicks, cost and attributed orders per campaign", personal=False,
                      built_by="pmkt features campaigns")
CAMPAIGN_DAILY = _features("campaign_daily", "the same per campaign and day", personal=False,
                           built_by="pmkt features campaigns")
FUNNELS = _features("funnels", "deepest step per user and funnel, device and last-click channel",
                    built_by="pmkt features funnels")
DEMAND = _features("demand", "orders per category x weekday x hour with price", personal=False,
                   built_by="pmkt features demand")
ATTRIBUTES = _features("attributes", "behaviour shares per user and the declared attribute",
                       built_by="pmkt features attributes")

INGEST_REPORTS = _reports("ingest", "per-file reconciliation of each ingest run", built_by="pmkt ingest DIR")
CLEAN_REPORTS = _reports("clean", "rows in/out, duplicates, fills and outliers per cleaned table",
                         built_by="pmkt clean")
PROFILE_REPORTS = _reports("profiles", "profile build counts", built_by="pmkt profiles build")
ATTRIBUTE_REPORTS = _reports("attributes", "predicted-attribute runs and the users holding a live prediction",
                             built_by="pmkt attributes predict", personal=True)
REVEAL_AUDIT = Table("reports.privacy.reveal", Zone.REPORTS, "privacy/reveal", Layout.FILES,
                     built_by="pmkt privacy reveal", doc="who revealed which user's clear PII, and why")

REGISTRY = Table("registry", Zone.REGISTRY, ".", Layout.FILES, built_by="pmkt tune MODEL",
                 doc="<model>/<version>/{model.pkl, meta.json, metrics.json, params.json, tuning.json}, current.json")
PURGE_REPORTS = _reports("privacy/purge", "files rewritten and rows removed per table by each purge (counts only)",
                         built_by="pmkt privacy purge")
TOMBSTONES = Table("privacy.tombstones", Zone.PRIVACY, "tombstones", Layout.FILES, personal=True,
                   built_by="pmkt privacy forget", doc="one JSON file per forgotten user")

#: Every table, by catalog name.
TABLES: dict[str, Table] = {
    t.name: t
    for t in (*RAW.values(), RT_EVENTS, QUARANTINE, LANDING, CLEAN, RFM, CLV, TAGS, TAG_WEIGHTS, INTERACTIONS,
              CTR_TRAIN, CTR_USERS, CHURN, CAMPAIGNS, CAMPAIGN_DAILY, FUNNELS, DEMAND, ATTRIBUTES, INGEST_REPORTS,
              CLEAN_REPORTS, PROFILE_REPORTS, ATTRIBUTE_REPORTS, REVEAL_AUDIT, PURGE_REPORTS, REGISTRY, TOMBSTONES)
}


def table(name: str) -> Table:
    """A table by catalog name.

    Raises:
        InvalidArgument: no such table.
    """
    try:
        return TABLES[name]
    except KeyError:
        raise InvalidArgument(f"the lake catalog has no table {name!r}; known: {', '.join(sorted(TABLES))}",
                              field="table") from None


def personal_tables() -> Iterator[Table]:
    """The tables holding a user's data: what forget/purge and the PII tests walk."""
    return (t for t in TABLES.values() if t.personal)
