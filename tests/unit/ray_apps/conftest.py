"""Checks every model family's tests make the same way: serving imports stay free of Spark, and
the family's search through ``pmkt tune``'s runner registers a model that loads."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Top-level packages a Serve replica must not import (it runs without pyspark installed).
SPARK_PACKAGES = ("pyspark", "spark_jobs")


@pytest.fixture()
def spark_free_import():
    """``check(*modules)``: import the modules (and :mod:`ray_apps.tuning`) in a fresh interpreter
    and fail if that loaded a module of :data:`SPARK_PACKAGES`."""

    def check(*modules: str) -> None:
        code = (f"import sys, ray_apps.tuning, {', '.join(modules)}; "
                f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {SPARK_PACKAGES!r}); "
                "assert not bad, bad")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

    return check


@pytest.fixture()
def tune_and_load():
    """``run(settings, spec, **run_tune_options) -> (outcome, model, version)``: the family's search
    through :func:`ray_apps.tuning.run_tune` (trials in Ray workers; Ray shut down after), then the
    current version of ``spec.name`` loaded back from the registry."""
    from cluster.core.storage import open_lake
    from ray_apps.registry import open_registry
    from ray_apps.runtime import shutdown_ray
    from ray_apps.tuning import run_tune

    def run(settings, spec, **options):
        try:
            outcome = run_tune(settings, spec, **options)
        finally:
            shutdown_ray()
        model, version = open_registry(settings).load(spec.name)
        return outcome, model, version

    return run
