"""How a predicted attribute is kept in the profile store: one JSON cell per attribute.

``m:predicted_<name>`` (family ``m``, model outputs; HBase keeps 3 versions of it for audits)
holds ``{"model_version": "attributes/v0002", "probability": 0.830046, "value": "F"}``. A prediction
that no longer stands (the user declared the attribute since, or a newer model is no longer sure
enough) is *retracted*: the cell is rewritten as ``{"model_version": ..., "retracted": "<why>",
"value": null}``, as the store's interface overwrites cells but does not delete single ones. One
cell rather than three keeps value, probability and version from ever disagreeing, and JSON
keeps the cell readable in the HBase shell. The declared value lives apart in ``a:<name>``, which
nothing here ever writes.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PREDICTABLE", "PREDICTED_PREFIX", "decode_prediction", "encode_prediction", "encode_retraction",
           "predicted_cell"]

#: Attributes a model may predict (``attributes.target``), each also an ``a:`` cell of its own.
PREDICTABLE = ("city", "gender")
PREDICTED_PREFIX = "m:predicted_"


def predicted_cell(name: str) -> str:
    """The profile column of the predicted ``name``: ``m:predicted_<name>``."""
    return f"{PREDICTED_PREFIX}{name}"


def encode_prediction(value: str, probability: float, model_version: str) -> str:
    """The cell text of a prediction (keys sorted and the probability rounded to 6 places, so the
    same prediction always gives the same bytes and a re-run can tell that nothing changed)."""
    return json.dumps({"model_version": model_version, "probability": round(float(probability), 6),
                       "value": str(value)}, sort_keys=True, ensure_ascii=False)


def encode_retraction(model_version: str, reason: str) -> str:
    """The cell text of a retracted prediction (``reason``: ``declared``, ``below_min_probability``,
    ``no_features``)."""
    return json.dumps({"model_version": model_version, "retracted": reason, "value": None}, sort_keys=True)


def decode_prediction(raw: bytes | str | None) -> dict[str, Any] | None:
    """``{"value", "probability", "model_version"}`` of a live prediction; None for a missing,
    retracted or malformed cell."""
    if raw is None:
        return None
    try:
        cell = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        if not isinstance(cell, dict) or not cell.get("value"):
            return None
        return {"value": str(cell["value"]), "probability": float(cell["probability"]),
                "model_version": str(cell.get("model_version", ""))}
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
