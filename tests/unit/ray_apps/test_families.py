"""Every model family ``pmkt tune`` knows has the one shape: a package with ``model.py``,
``train.py`` and ``service.py``, whose ``train`` module declares the family's TuneSpec from its
four steps (``load``, ``space``, ``trial``, ``fit``)."""

import importlib
from pathlib import Path

import pytest

from ray_apps.tuning import FAMILIES, STEPS, TuneSpec, family_spec, get_spec


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_has_model_train_and_service(name):
    module = FAMILIES[name].spec.split(":")[0]
    package, _, leaf = module.rpartition(".")
    assert leaf == "train", f"{name}: its TuneSpec lives in {module}, not in <package>.train"
    folder = Path(importlib.import_module(package).__file__).parent
    assert {"model.py", "train.py", "service.py"} <= {p.name for p in folder.glob("*.py")}, folder
    spec = get_spec(name)
    assert type(spec) is TuneSpec and spec is importlib.import_module(module).SPEC
    assert {getattr(spec, step).__module__ for step in STEPS} == {module}


def test_a_train_module_without_its_four_steps_is_refused():
    with pytest.raises(TypeError, match="must define load, space, trial, fit"):
        family_spec(__name__, "nothing", metric="m", mode="max")
