"""The end-to-end chain, run once per session on generated data with the embedded profile:
generate -> ingest -> RFM -> CLV -> tags -> training tables -> profiles -> campaigns -> funnels, demand and
attribute features -> Tune (segments, and a smoke search of CTR, recommendations, churn, attributes and
demand) -> predicted attributes -> Serve. Each test checks one promise of it."""

from __future__ import annotations

import json

import pytest

USERS, DAYS, SEED = 3000, 120, 11
#: 120 days cannot show a 90-day churn: a 30-day inactivity window gives the churn model churners.
INACTIVITY_DAYS = 30


@pytest.fixture(scope="session")
def chain(settings_factory, tmp_path_factory, spark):
    from cluster.core.settings import CampaignGoal
    from cluster.datagen import generate
    from ray_apps.attributes.service import predict_and_store
    from ray_apps.runtime import shutdown_ray
    from ray_apps.segments.train import train_segments
    from ray_apps.serve.launcher import start_serving
    from ray_apps.tuning import get_spec, run_tune
    from spark_jobs import attributes, campaigns, clv, demand, funnels, ingest, profiles, rfm, tags, training_tables

    # Replicas re-read the tombstones every 2 s (30 s by default), for the forget test.
    settings = settings_factory(PMKT_EVENTS__TOMBSTONE_TTL_S="2")
    # A campaign with targets, for the report's goal-gap section.
    goal = CampaignGoal(duration_days=150, conversions=40, ctr=0.05, budget=30)
    settings = settings.model_copy(update={"evaluation": settings.evaluation.model_copy(
        update={"goals": {"cmp001": goal}})})
    data = tmp_path_factory.mktemp("slice") / "input"
    generate(data, users=USERS, days=DAYS, seed=SEED)
    report_path = data.parent / "report.json"
    report = ingest.main(settings, data, report_path=report_path)
    rfm_meta = rfm.main(settings)
    clv_meta = clv.main(settings)
    tags_meta = tags.main(settings)
    tables_meta = training_tables.main(settings, inactivity_days=INACTIVITY_DAYS)
    profiles_meta = profiles.main(settings)
    campaigns_meta = campaigns.main(settings)
    funnels_meta = funnels.main(settings)
    demand_meta = demand.main(settings)
    attributes.main(settings)
    model_version = train_segments(settings)
    tuned = {name: run_tune(settings, get_spec(name), scheduler="grid", smoke_test=True).version
             for name in ("ctr", "recs", "churn", "attributes", "demand")}
    predicted = predict_and_store(settings)
    start_serving(settings)
    try:
        yield {
            "settings": settings,
            "data": data,
            "report": report,
            "report_path": report_path,
            "rfm": rfm_meta,
            "clv": clv_meta,
            "tags": tags_meta,
            "tables": tables_meta,
            "profiles": profiles_meta,
            "campaigns": campaigns_meta,
            "funnels": funnels_meta,
            "demand": demand_meta,
            "predicted": predicted,
            "model": model_version,
            "tuned": tuned,
            "manifest": json.loads((data / "_truth" / "manifest.json").read_text(encoding="utf-8")),
        }
    finally:
        shutdown_ray()


#: The varied data set: `pmkt data generate --style varied` (placement names as ad positions, other
#: id patterns, every timestamp style, BOM and CRLF, users without orders), run through `pmkt demo --input`.
VARIED_USERS, VARIED_DAYS, VARIED_SEED = 2000, 120, 23


@pytest.fixture(scope="session")
def varied_chain(tmp_path_factory):
    """`pmkt demo --input` on a varied data set, as a user runs it (the CLI in a subprocess): its
    output, and the settings of its lake, registry and profile store for the parity tests. It runs
    before the in-process chain starts Ray (tests/e2e/test_a_varied.py is the first module)."""
    import os
    import subprocess
    import sys
    import time

    from cluster.core.settings import load_settings
    from tests.ports import free_port

    env = {**os.environ, "PMKT_HOME": str(tmp_path_factory.mktemp("varied-home")),
           "PMKT_SERVE__HTTP_PORT": str(free_port()), "PMKT_SERVE__GRPC_PORT": str(free_port()),
           "PMKT_SPARK__SHUFFLE_PARTITIONS": "2", "PMKT_TRAINING_TABLES__INACTIVITY_DAYS": str(INACTIVITY_DAYS),
           "COLUMNS": "160"}
    env.pop("PMKT_SETTINGS", None)
    env.pop("PMKT_PROFILE", None)
    settings = load_settings("embedded", env=env)
    data = tmp_path_factory.mktemp("varied") / "input"
    pmkt = [sys.executable, "-m", "cluster.cli"]
    started = time.monotonic()
    generated = subprocess.run([*pmkt, "data", "generate", str(data), "--style", "varied", "--users",
                                str(VARIED_USERS), "--days", str(VARIED_DAYS), "--seed", str(VARIED_SEED)],
                               env=env, capture_output=True, text=True, timeout=600)
    demo = subprocess.run([*pmkt, "demo", "--input", str(data), "--smoke-test"], env=env, capture_output=True,
                          text=True, timeout=1800)
    return {"settings": settings, "env": env, "data": data, "generate": generated, "demo": demo,
            "seconds": time.monotonic() - started,
            "manifest": json.loads((data / "_truth" / "manifest.json").read_text(encoding="utf-8"))
            if (data / "_truth" / "manifest.json").exists() else {}}
