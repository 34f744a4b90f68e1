"""Audiences from the RFM table: consumption level, recency, frequency and segment filters."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from cluster.core.errors import FailedPrecondition, InvalidArgument
from cluster.core.storage import Zone
from cluster.core.storage.lake import LocalLake
from ray_apps.audiences import select_audience

LEVELS = ("low", "medium", "high", "premium")


def _lake(tmp_path, frame: pd.DataFrame) -> LocalLake:
    lake = LocalLake(tmp_path / "lake")
    buf = io.BytesIO()
    frame.to_parquet(buf)
    lake.write_bytes(buf.getvalue(), Zone.FEATURES, "rfm/run=r1", "part-0.parquet")
    lake.write_json({"run_id": "r1", "path": "features/rfm/run=r1"}, Zone.FEATURES, "rfm", "latest.json")
    return lake


@pytest.fixture()
def lake(tmp_path):
    return _lake(tmp_path, pd.DataFrame({
        "user_id": ["u4", "u1", "u2", "u3"], "recency_days": [10, 5, 200, 40], "frequency": [1, 6, 2, 3],
        "monetary": [900.0, 8000.0, 300.0, 2500.0], "avg_monthly_spend": [900.0, 3100.0, 50.0, 420.0],
        "consumption_level": ["medium", "premium", "low", "medium"], "last_order_time": pd.NaT}))


def test_filters_combine_and_the_list_is_sorted(lake):
    got, meta = select_audience(lake, levels=["medium", "premium"], known_levels=LEVELS)
    assert got["user_id"].tolist() == ["u1", "u3", "u4"] and meta["run_id"] == "r1"
    got, _ = select_audience(lake, levels=["medium"], max_recency_days=30, known_levels=LEVELS)
    assert got["user_id"].tolist() == ["u4"]
    got, _ = select_audience(lake, min_frequency=3)
    assert got["user_id"].tolist() == ["u1", "u3"]
    everyone, _ = select_audience(lake)
    assert len(everyone) == 4


def test_segments_come_from_the_model_callable(lake):
    def segment_of(frame):
        return frame["monetary"].map(lambda m: "big" if m > 1000 else "small")

    got, _ = select_audience(lake, segments=["big"], segment_of=segment_of)
    assert got["user_id"].tolist() == ["u1", "u3"] and set(got["segment"]) == {"big"}
    with pytest.raises(InvalidArgument) as err:
        select_audience(lake, segments=["big"])
    assert err.value.field == "segment"


def test_unknown_level_and_old_tables_are_clear_errors(lake, tmp_path):
    with pytest.raises(InvalidArgument) as err:
        select_audience(lake, levels=["gold"], known_levels=LEVELS)
    assert err.value.field == "level" and "gold" in err.value.message
    old = _lake(tmp_path / "old", pd.DataFrame({"user_id": ["u1"], "recency_days": [1], "frequency": [1],
                                                 "monetary": [1.0]}))
    with pytest.raises(FailedPrecondition, match="pmkt features rfm"):
        select_audience(old)
    with pytest.raises(FailedPrecondition, match="pmkt features rfm"):
        select_audience(LocalLake(tmp_path / "empty"))
