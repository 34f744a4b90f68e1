"""The lake catalog: which tables hold personal data, and how runs are published and read back."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from cluster.core import catalog
from cluster.core.catalog import (
    ATTRIBUTE_REPORTS,
    ATTRIBUTES,
    CAMPAIGN_DAILY,
    CAMPAIGNS,
    CHURN,
    CLEAN,
    CLEAN_REPORTS,
    CLV,
    CTR_TRAIN,
    CTR_USERS,
    DEMAND,
    FUNNELS,
    INGEST_REPORTS,
    INTERACTIONS,
    LANDING,
    PROFILE_REPORTS,
    PURGE_REPORTS,
    QUARANTINE,
    RAW,
    REGISTRY,
    REVEAL_AUDIT,
    RFM,
    RT_EVENTS,
    TABLES,
    TAG_WEIGHTS,
    TAGS,
    TOMBSTONES,
    Layout,
)
from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.storage import LocalLake

#: Tables a job writes with one row (or file) per user: forget/purge must find every one.
USER_ROWS = (*RAW.values(), RT_EVENTS, QUARANTINE, LANDING, CLEAN, RFM, CLV, TAGS, TAG_WEIGHTS, INTERACTIONS,
             CTR_TRAIN, CTR_USERS, CHURN, FUNNELS, ATTRIBUTES, ATTRIBUTE_REPORTS, TOMBSTONES)
#: Tables of aggregates (campaigns, categories, counts) or of models, with no row per user.
AGGREGATES = (CAMPAIGNS, CAMPAIGN_DAILY, DEMAND, INGEST_REPORTS, CLEAN_REPORTS, PROFILE_REPORTS, REVEAL_AUDIT,
              PURGE_REPORTS, REGISTRY)


@pytest.mark.parametrize("table", USER_ROWS, ids=lambda t: t.name)
def test_tables_with_user_rows_are_personal(table):
    assert table.personal
    assert table in set(catalog.personal_tables())
    if table.layout in (Layout.RUNS, Layout.PARTITIONED):
        assert table.user_column == "user_id"  # what builds exclude tombstoned users by


def test_every_table_is_classified_as_personal_or_not():
    classified = {t.name for t in USER_ROWS} | {t.name for t in AGGREGATES}
    assert set(TABLES) == classified, "classify a new table in USER_ROWS or AGGREGATES"
    assert not any(t.personal for t in AGGREGATES)


class RecordingLake(LocalLake):
    """A local lake that remembers the order of its writes."""

    def __init__(self, root):
        super().__init__(root)
        self.writes: list[str] = []

    def write_bytes(self, data, *parts):
        self.writes.append("/".join(p.value if hasattr(p, "value") else p for p in parts))
        super().write_bytes(data, *parts)


def test_publish_writes_the_run_metadata_before_the_pointer(tmp_path):
    lake = RecordingLake(tmp_path)
    run_id = catalog.new_run_id()
    meta = {"run_id": run_id, "path": RFM.run_rel(run_id), "users": 3}
    assert RFM.latest(lake) is None
    RFM.publish(lake, run_id, meta)
    assert lake.writes == [f"features/rfm/run={run_id}/_meta.json", "features/rfm/latest.json"]
    assert RFM.latest(lake) == RFM.run_meta(lake, run_id) == meta
    assert RFM.runs(lake) == [run_id]


def test_publish_without_run_metadata_moves_only_the_pointer(tmp_path):
    lake = RecordingLake(tmp_path)
    CLEAN.publish(lake, "r1", {"run_id": "r1"}, run_meta=False)
    assert lake.writes == ["features/clean/latest.json"]


def test_a_run_is_read_back_through_its_table(tmp_path):
    lake = LocalLake(tmp_path)
    folder = tmp_path / "features" / "rfm" / "run=r1"
    folder.mkdir(parents=True)
    pd.DataFrame({"user_id": ["u1", "u2"], "monetary": [1.0, 2.0]}).to_parquet(folder / "part-0.parquet")
    assert RFM.uri(lake, "run=r1") == RFM.run_uri(lake, "r1") == f"file://{folder}"
    assert RFM.read_parquet(lake, "r1", columns=["user_id"])["user_id"].tolist() == ["u1", "u2"]


def test_require_latest_names_the_command_that_builds_the_table(tmp_path):
    with pytest.raises(FailedPrecondition, match=r"features/ctr_train.*run `pmkt features tables` first"):
        CTR_TRAIN.require_latest(LocalLake(tmp_path))


def test_reports_keep_each_run_and_the_latest(tmp_path):
    lake = LocalLake(tmp_path)
    INGEST_REPORTS.write_report(lake, "r1", {"run_id": "r1"})
    INGEST_REPORTS.write_report(lake, "r2", {"run_id": "r2"})
    assert INGEST_REPORTS.list_dir(lake) == ["latest.json", "r1.json", "r2.json"]
    assert INGEST_REPORTS.latest(lake) == {"run_id": "r2"}


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 65])
def test_check_run_id_rejects_ids_that_are_not_one_folder_name(bad):
    with pytest.raises(InvalidArgument):
        catalog.check_run_id(bad)


def test_new_run_ids_and_plain_ids_pass_the_check():
    run_id = catalog.new_run_id()
    assert catalog.check_run_id(run_id) == run_id
    assert catalog.check_run_id("run-tables") == "run-tables"


def test_table_by_name_lists_the_known_ones_when_unknown():
    assert catalog.table("features.rfm") is RFM
    with pytest.raises(InvalidArgument, match="features.rfm"):
        catalog.table("features.nope")


def test_tombstones_live_in_the_catalog_table(tmp_path):
    from cluster.core.tombstones import Tombstones

    lake = LocalLake(tmp_path)
    stones = Tombstones(lake)
    assert stones.add("u1") is True and stones.add("u1") is False
    assert len(TOMBSTONES.list_dir(lake)) == 1 and stones.is_forgotten("u1")
    assert stones.all() == {"u1"} and stones.uri() == TOMBSTONES.uri(lake)


def test_forget_reports_every_personal_table(settings_factory, caplog):
    from cluster.core.forget import erasure_notes, forget
    from cluster.core.storage import open_lake

    settings = settings_factory()
    with caplog.at_level(logging.INFO, logger="cluster.core.forget"):
        assert forget(settings, "u1") is True
    assert forget(settings, "u1") is False
    assert TOMBSTONES.list_dir(open_lake(settings))
    notes = erasure_notes()
    personal = list(catalog.personal_tables())
    assert len(notes) == len(personal)
    for table, note in zip(personal, notes):
        assert note.startswith(f"{table.name} ({table.rel()}): ")
        assert table.name in caplog.text
    assert any("pmkt features rfm" in n for n in notes)
