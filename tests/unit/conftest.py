"""Fixtures shared by unit-test modules: generated data built once per session."""

from __future__ import annotations

import pytest

#: Generated data behind the training-table and churn tests (one build serves both).
TABLES_USERS, TABLES_DAYS, TABLES_SEED = 4000, 180, 7


def lake_settings(settings, root):
    """``settings`` with the lake moved to ``root`` (each fixture gets its own lake)."""
    return settings.model_copy(update={"lake": settings.lake.model_copy(update={"root": root})})


@pytest.fixture(scope="session")
def built_tables(settings, spark, tmp_path_factory):
    """4,000 generated users over 180 days, ingested, the training tables built (read-only:
    tests that write build their own)."""
    from cluster.datagen import generate
    from spark_jobs import ingest
    from spark_jobs import training_tables as tt

    base = tmp_path_factory.mktemp("built-tables")
    summary = generate(base / "input", users=TABLES_USERS, days=TABLES_DAYS, seed=TABLES_SEED)
    s = lake_settings(settings, base / "lake")
    ingest.main(s, base / "input", run_id="run-ingest")
    steps: list[tuple[str, float]] = []
    meta = tt.main(s, run_id="run-tables", progress=lambda step, frac: steps.append((step, frac)))
    return {"settings": s, "meta": meta, "steps": steps, "base": base, "summary": summary}
