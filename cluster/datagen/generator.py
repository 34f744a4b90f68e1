""":func:`generate`: every step in order, one random stream each, and the files written."""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.contract import dataset
from cluster.datagen.defects import _assemble, _csv_join, _FilePlan, _plant
from cluster.datagen.events import _build_events, _event_rows
from cluster.datagen.helpers import _ids
from cluster.datagen.impressions import _build_impressions, _impression_rows
from cluster.datagen.orders import _build_orders, _order_rows
from cluster.datagen.params import TRUTH_DIR
from cluster.datagen.truth import _manifest, _truth_promotions, _truth_users
from cluster.datagen.users import _build_users
from cluster.datagen.varied import STYLES, _vary
from cluster.datagen.world import _promotions

log = logging.getLogger(__name__)

#: ``progress(step_name, fraction_done)``.
Progress = Callable[[str, float], None]

# New steps go last: spawned streams are positional, so the earlier steps keep their draws.
_STEPS = ("users", "orders", "events", "impressions", "defects", "writing", "truth", "promotions", "varied")


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`generate` wrote.

    Attributes:
        out_dir: The input folder.
        files: Dataset name -> path of the file written.
        rows: Dataset name -> data rows written (header excluded; defects and duplicates included).
        defects: Dataset name -> planted defect kind -> rows involved (a conflicting pair is 2 rows).
        expected: Dataset name -> the reconciliation the ingest job must report
            (``rows_read``, ``accepted``, ``quarantined``, ``duplicates_dropped``,
            ``field_issues`` and, for orders, ``unknown_users``).
        manifest_path: ``_truth/manifest.json``.
        seconds: Wall time of the generation.
    """

    out_dir: Path
    files: dict[str, Path]
    rows: dict[str, int]
    defects: dict[str, dict[str, int]]
    expected: dict[str, dict]
    manifest_path: Path
    seconds: float


def _write_text(path: Path, text: str, compress: bool) -> None:
    data = text.encode("utf-8")
    if compress:
        with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                     compresslevel=6) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)


def generate(
    out_dir: Path,
    users: int = 20_000,
    days: int = 180,
    seed: int = 7,
    *,
    end_date: date = date(2026, 6, 30),
    defects: bool = True,
    compress: bool = False,
    progress: Progress | None = None,
    style: str = "default",
) -> GenerationSummary:
    """Write a synthetic input folder in the data contract, with ground truth.

    Args:
        out_dir: Folder to write to (created; existing contract files are overwritten).
        users: Number of clean users (defect rows in users.csv come on top).
        days: Length of the window; it ends at ``end_date`` inclusive.
        seed: Seed of every random draw; the same seed gives the same bytes.
        end_date: Last local day of the window; features are computed as of the day after.
        defects: Plant defective rows (DEFECT_PLAN); ``False`` writes clean files only.
        compress: Write ``.csv.gz`` / ``.jsonl.gz`` instead of plain files.
        progress: Called as ``progress(step_name, fraction_done)`` as the generation goes.
        style: ``"default"`` writes the files as they always were (same seed, same bytes).
            ``"varied"`` writes the same simulated world in other shapes the contract allows:
            placement names as ad positions, other id patterns and lengths (user ids 6-40
            characters), ISO timestamps in other zones with fractions next to local and epoch-ms
            ones, a UTF-8 BOM and CRLF line ends, other cities, brands, channels, campaign ids and
            device spellings, reordered CSV columns and JSON keys; it adds registered-only users
            (about 2/7 of ``users`` on top, archetype ``dormant`` in the truth), so that about
            30 % of the users have no order. The truth is renamed to match; the manifest has
            ``"style": "varied"`` and the mappings under ``"varied"``.

    Returns:
        What was written, including the reconciliation the ingest job must report.

    Raises:
        ValueError: ``users`` or ``days`` is too small (or too large for 6-digit user ids), or
            ``style`` is not one of :data:`STYLES`.
    """
    if users < 100 or users > 800_000:
        raise ValueError(f"users must be between 100 and 800,000, got {users}")
    if days < 7:
        raise ValueError(f"days must be >= 7, got {days}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    began = time.perf_counter()
    step = progress or (lambda _name, _fraction: None)
    out_dir = Path(out_dir)
    truth_dir = out_dir / TRUTH_DIR
    truth_dir.mkdir(parents=True, exist_ok=True)
    streams = dict(zip(_STEPS, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(_STEPS)))))

    step("users", 0.0)
    w = _build_users(streams["users"], users, days, end_date)
    step("orders", 0.10)
    w.price_ratio = _promotions(streams["promotions"], days)
    _build_orders(streams["orders"], w)
    step("events", 0.20)
    _build_events(streams["events"], w)
    step("impressions", 0.40)
    camps = _build_impressions(streams["impressions"], w)

    step("formatting", 0.50)
    fmt = streams["writing"]
    tables = {
        "users": w.users.copy(),
        "orders": _order_rows(fmt, w),
        "events": _event_rows(fmt, w),
        "impressions": _impression_rows(fmt, w, camps),
    }
    varied = _vary(streams["varied"], w, camps, tables, end_date) if style == "varied" else None
    if varied is not None:
        tables = varied.tables
    prefixes = {"users": ("u", 6), "orders": ("o", 7), "events": ("e", 8), "impressions": ("im", 8)}
    plans = {
        name: _FilePlan(name, df, [], [], len(df) + 1, *prefixes[name])
        if varied is None else
        _FilePlan(name, df, [], [], len(df) + 1, *prefixes[name], columns=varied.columns[name],
                  make_id=varied.make_id[name], serialise=varied.serialise[name])
        for name, df in tables.items()
    }
    step("defects", 0.60)
    if defects:
        for plan in plans.values():  # users first: unknown user ids start well above its fresh ids
            start = plans["users"].next_id + 1000
            _plant(streams["defects"], plan, unknown_user=lambda i, s=start: plans["users"].id_for(s + i))

    files: dict[str, Path] = {}
    rows: dict[str, int] = {}
    planted: dict[str, dict[str, int]] = {}
    expected: dict[str, dict] = {}
    register: list[dict[str, Any]] = []
    for i, (name, plan) in enumerate(plans.items()):
        step(f"writing {name}", 0.65 + 0.07 * i)
        lines, reg, exp = _assemble(streams["defects"], plan)
        ds = dataset(name)
        path = out_dir / ds.file_names()[1 if compress else 0]
        (out_dir / ds.file_names()[0 if compress else 1]).unlink(missing_ok=True)  # never both variants
        header = [_csv_join(plan.columns)] if ds.fmt == "csv" else []
        if varied is None:
            _write_text(path, "\n".join(header + lines) + "\n", compress)
        else:  # a byte-order mark on the CSV files, CRLF line ends everywhere
            bom = "\ufeff" if ds.fmt == "csv" else ""
            _write_text(path, bom + "\r\n".join(header + lines) + "\r\n", compress)
        files[name], rows[name], expected[name] = path, len(lines), exp
        kinds: dict[str, int] = {}
        for r in reg:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        planted[name] = dict(sorted(kinds.items()))
        register.extend(reg)

    step("truth", 0.95)
    truth_users = _truth_users(w) if varied is None else varied.truth_users
    truth_users.to_csv(truth_dir / "users.csv", index=False, lineterminator="\n")
    pd.DataFrame({
        "impression_id": _ids("im", 1, len(w.impressions), 8) if varied is None else varied.impression_ids,
        "p_click": np.char.mod("%.6f", w.p_click),
    }).to_csv(truth_dir / "impressions.csv", index=False, lineterminator="\n")
    pd.DataFrame(register, columns=["dataset", "line", "record_id", "kind", "expected"]).to_csv(
        truth_dir / "defects.csv", index=False, lineterminator="\n")
    _truth_promotions(w).to_csv(truth_dir / "promotions.csv", index=False, lineterminator="\n")
    manifest = _manifest(seed, users, days, end_date, defects, compress, w, files, rows, planted, expected,
                         truth_users)
    if varied is not None:  # the default manifest stays byte-identical: no "style" key there
        manifest = {**manifest, "style": style, "timestamp_formats": varied.manifest["timestamp_formats"],
                    "varied": varied.manifest}
    manifest_path = truth_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - began
    step("done", 1.0)
    log.info("generated %s in %.1f s: %s", out_dir, seconds, ", ".join(f"{k}={v}" for k, v in rows.items()))
    return GenerationSummary(out_dir, files, rows, planted, expected, manifest_path, seconds)
