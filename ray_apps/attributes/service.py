"""Store predicted attributes in the profile store, never over a declared value.

:func:`predict_and_store` loads the registered attribute model, scores every user of the newest
attribute feature table who has no declared value, and writes ``m:predicted_<target>``
(:mod:`ray_apps.attributes.cells`) for those whose top probability reaches
``attributes.min_probability``. Rules:

* **A declared value is never overwritten.** Predictions live in their own cell; the declared
  ``a:<target>`` is never written here. A user declared in the feature table is not scored, and
  one whose profile holds a declared value (the profile store can be newer than the feature
  table) gets no prediction either.
* **A stale prediction is retracted.** A user who declared since the last run, or whom the current
  model is no longer sure about, has their prediction cell rewritten as retracted. Until that run,
  GetProfile already shows the declared value and hides the prediction (the read-side rule in
  :mod:`ray_apps.profiles.service`), so a declaration counts from the moment it is in the profile.
* **Idempotent.** A cell is written only when its bytes would change (no timestamps in it): a
  re-run with the same model and features writes nothing.
* Forgotten users (tombstones) are skipped, so a prediction never brings a profile back.

The users holding a live prediction after a run are listed in the lake
(:data:`~cluster.core.catalog.ATTRIBUTE_REPORTS`, ``<target>-stored.json``): the next run checks them
for declarations without reading every declared user's profile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from cluster.core.catalog import ATTRIBUTE_LATEST, ATTRIBUTE_REPORTS, ATTRIBUTE_STORED, ATTRIBUTES
from cluster.core.errors import FailedPrecondition, NotFound
from cluster.core.feature_io import load_latest
from cluster.core.settings import Settings
from cluster.core.storage import ProfileStore, decode_str, open_lake, open_profile_store
from cluster.core.tombstones import Tombstones
from ray_apps.attributes.cells import (
    decode_prediction,
    encode_prediction,
    encode_retraction,
    predicted_cell,
)
from ray_apps.registry import open_registry

__all__ = ["MODEL_NAME", "predict_and_store", "store_predictions"]

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]
MODEL_NAME = "attributes"


def _declared(raw: bytes | None) -> bool:
    return raw is not None and decode_str(raw).strip() != ""


def store_predictions(store: ProfileStore, frame: pd.DataFrame, model: Any, model_version: str, *,
                      target: str, min_probability: float, previous: Iterable[str] = (),
                      skip: Iterable[str] = ()) -> dict[str, Any]:
    """Score the undeclared users of ``frame`` and bring their prediction cells up to date.

    Args:
        store: The profile store.
        frame: Attribute-table rows (``user_id``, ``declared`` and the model's feature columns).
        model: A fitted :class:`~ray_apps.attributes.model.AttributeModel`.
        model_version: Registry reference stored with each prediction (``attributes/v0002``).
        target: The attribute (``a:<target>`` is the declared cell).
        min_probability: Least top probability a stored prediction has.
        previous: Users that held a live prediction after the last run (checked for declarations).
        skip: Users never to write (the forgotten).

    Returns:
        Counts: ``scored``, ``stored`` (live predictions after the run), ``written`` (cells whose
        bytes changed), ``unchanged``, ``abstained`` (below ``min_probability``), ``declared_in_store``
        (undeclared in the features, declared in the profile), ``retracted``; and ``live``, the users
        holding a live prediction.
    """
    cell = predicted_cell(target)
    declared_cell = f"a:{target}"
    skip = set(skip)
    undeclared = frame[frame["declared"].isna() & ~frame["user_id"].isin(skip)].reset_index(drop=True)
    values, probabilities = model.predict(undeclared)
    counts = {"scored": len(undeclared), "stored": 0, "written": 0, "unchanged": 0, "abstained": 0,
              "declared_in_store": 0, "retracted": 0}
    live: list[str] = []
    writes: list[tuple[str, dict[str, str]]] = []

    def put(user_id: str, text: str, existing: bytes | None) -> None:
        if existing is not None and existing == text.encode("utf-8"):
            counts["unchanged"] += 1
        else:
            writes.append((user_id, {cell: text}))
            counts["written"] += 1

    def retract(user_id: str, existing: bytes | None, reason: str) -> None:
        # Only a live prediction needs retracting; an absent or already retracted cell stays as it is.
        if decode_prediction(existing) is not None:
            writes.append((user_id, {cell: encode_retraction(model_version, reason)}))
            counts["retracted"] += 1

    scored = set()
    for user_id, value, p in zip(undeclared["user_id"], values, probabilities):
        scored.add(user_id)
        cells = store.read(user_id, columns=[declared_cell, cell]) or {}
        existing = cells.get(cell)
        if _declared(cells.get(declared_cell)):
            counts["declared_in_store"] += 1
            retract(user_id, existing, "declared")
        elif p >= min_probability:
            put(user_id, encode_prediction(value, p, model_version), existing)
            live.append(user_id)
        else:
            counts["abstained"] += 1
            retract(user_id, existing, "below_min_probability")
    in_frame = set(frame["user_id"])
    for user_id in sorted(set(previous) - scored):
        reason = "declared" if user_id in in_frame else "no_features"
        if user_id in skip:
            continue  # forgotten: their profile is gone and must stay gone
        retract(user_id, (store.read(user_id, columns=[cell]) or {}).get(cell), reason)
    if writes:
        store.write_batch(writes)
    counts["stored"] = len(live)
    return {**counts, "live": live}


def predict_and_store(settings: Settings, *, version: str | None = None,
                      progress: Progress | None = None) -> dict:
    """Predict ``attributes.target`` for every user without a declared value and store it.

    Args:
        settings: Platform settings (lake, profile store, ``attributes``).
        version: Registry version to use (default: the current one).
        progress: Optional ``(step, fraction)`` callback.

    Returns:
        Run metadata: ``model_version``, ``target``, ``feature_run_id``, ``min_probability``, the
        counts of :func:`store_predictions` (without the user list) and ``finished_at``.

    Raises:
        FailedPrecondition: no attribute model or features yet, or they are for another target.
        NotFound: ``version`` is not registered.
    """
    step = progress or (lambda _s, _f: None)
    cfg = settings.attributes
    lake = open_lake(settings)
    registry = open_registry(settings, lake)
    step("loading the attribute model", 0.0)
    if version is None:
        try:
            version = registry.current_version(MODEL_NAME)
        except NotFound as e:
            raise FailedPrecondition(f"no {MODEL_NAME} model has been trained yet: "
                                     f"run `pmkt tune {MODEL_NAME}`") from e
    model, mv = registry.load(MODEL_NAME, version)
    target = str(mv.params.get("target", ""))
    if target != cfg.target:
        raise FailedPrecondition(f"{mv.ref} predicts {target!r}, attributes.target is {cfg.target!r}: "
                                 f"run `pmkt tune {MODEL_NAME}` for {cfg.target!r}")
    frame, meta = load_latest(lake, ATTRIBUTES)  # FailedPrecondition naming the command before the first build
    if meta.get("target") != target:
        raise FailedPrecondition(f"the attribute features were built for {meta.get('target')!r}, the model "
                                 f"predicts {target!r}: run `pmkt features attributes` again")
    record = ATTRIBUTE_STORED.format(target=target)
    previous = ATTRIBUTE_REPORTS.read_json(lake, record) if ATTRIBUTE_REPORTS.exists(lake, record) else []
    forgotten = Tombstones(lake).all()
    step(f"scoring {int(frame['declared'].isna().sum()):,} users without a declared {target}", 0.2)
    store = open_profile_store(settings)
    try:
        counts = store_predictions(store, frame, model, mv.ref, target=target, min_probability=cfg.min_probability,
                                   previous=previous, skip=forgotten)
    finally:
        store.close()
    live = sorted(counts.pop("live"))
    ATTRIBUTE_REPORTS.write_json(lake, live, record)
    result = {"model_version": mv.ref, "target": target, "feature_run_id": meta.get("run_id"),
              "min_probability": cfg.min_probability, **counts,
              "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
    ATTRIBUTE_REPORTS.write_json(lake, result, ATTRIBUTE_LATEST.format(target=target))
    step("done", 1.0)
    log.info("%s predictions by %s: %d stored (%d written), %d abstained, %d retracted", target, mv.ref,
             counts["stored"], counts["written"], counts["abstained"], counts["retracted"])
    return result
