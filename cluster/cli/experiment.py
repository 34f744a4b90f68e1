"""`pmkt experiment ...`: the ExperimentService's statistics and the channel-policy simulation
from the command line (docs/experiments.md). Results print as JSON, the API's own shape."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click

__all__ = ["experiment_group"]


def _print(message) -> None:
    from google.protobuf.json_format import MessageToDict

    click.echo(json.dumps(MessageToDict(message, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True), indent=2, ensure_ascii=False))


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    from cluster.core.errors import InvalidArgument

    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidArgument(f"{path}: the header needs the column(s) {', '.join(missing)}", field=missing[0])
        rows = list(reader)
    if not rows:
        raise InvalidArgument(f"{path}: no rows", field="file")
    return rows


def _number(row: dict[str, str], column: str, line: int, parse: type = int, default: float | None = None):
    """``row[column]`` as ``parse`` (int or float); an empty optional cell is ``default``."""
    from cluster.core.errors import InvalidArgument

    text = row.get(column)
    if not text and default is not None:
        return default
    try:
        return parse(text)
    except (TypeError, ValueError):
        what = "a whole number" if parse is int else "a number"
        raise InvalidArgument(f"line {line}: {column} must be {what}, got {text!r}", field=column) from None


@click.group("experiment")
def experiment_group() -> None:
    """A/B test statistics and channel-policy simulation (docs/experiments.md).

    \b
    The same computations as the API's ExperimentService, on files:
      pmkt experiment sample-size --baseline 0.05 --variant 0.06
      pmkt experiment conversions arms.csv          (arm,conversions,trials; control first)
      pmkt experiment sequential looks.csv          (one row per look, cumulative counts)
      pmkt experiment simulate-channels --contacts 20000
    """


@experiment_group.command("sample-size")
@click.option("--baseline", type=float, required=True, help="Control conversion rate, e.g. 0.05.")
@click.option("--variant", type=float, required=True, help="The rate to detect, e.g. 0.06.")
@click.option("--alpha", type=float, default=0.05, show_default=True)
@click.option("--power", type=float, default=0.8, show_default=True)
@click.option("--ratio", type=float, default=1.0, show_default=True, help="Variant users per control user.")
@click.option("--one-sided", is_flag=True, help="Test only for an increase.")
@click.option("--trials", type=int, default=0, help="Also print the power reached with this many control users.")
def sample_size_cmd(baseline: float, variant: float, alpha: float, power: float, ratio: float, one_sided: bool,
                    trials: int) -> None:
    """Users per arm to detect BASELINE -> VARIANT (normal approximation, Cohen's h)."""
    from protos.marketing.v1 import experiment_pb2 as pb
    from ray_apps.evaluation.service import sample_size

    _print(sample_size(pb.SampleSizeRequest(baseline_rate=baseline, variant_rate=variant, alpha=alpha, power=power,
                                            ratio=ratio, alternative="larger" if one_sided else "two-sided",
                                            control_trials=trials)))


@experiment_group.command("conversions")
@click.argument("arms_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--alpha", type=float, default=0.05, show_default=True)
@click.option("--correction", type=click.Choice(["holm", "bh", "none"]), default="holm", show_default=True,
              help="Over the variants' p-values: holm (family-wise error) or bh (false discovery rate).")
def conversions_cmd(arms_csv: Path, alpha: float, correction: str) -> None:
    """Z-test of each variant against the control, with a sample-ratio check.

    ARMS_CSV has the columns arm, conversions, trials and optionally planned_weight; the first
    row is the control.
    """
    from protos.marketing.v1 import experiment_pb2 as pb
    from ray_apps.evaluation.service import analyze_conversions

    rows = _rows(arms_csv, ("arm", "conversions", "trials"))
    arms = [pb.Arm(name=r["arm"], conversions=_number(r, "conversions", i + 2), trials=_number(r, "trials", i + 2),
                   planned_weight=_number(r, "planned_weight", i + 2, float, 0.0)) for i, r in enumerate(rows)]
    _print(analyze_conversions(pb.AnalyzeConversionsRequest(control=arms[0], variants=arms[1:], alpha=alpha,
                                                            correction=correction)))


@experiment_group.command("sequential")
@click.argument("looks_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--alpha", type=float, default=0.05, show_default=True)
@click.option("--mixture-sd", type=float, default=0.0,
              help="Scale of differences the test is tuned to (default: a tenth of the first look's rate).")
def sequential_cmd(looks_csv: Path, alpha: float, mixture_sd: float) -> None:
    """Always-valid p-values (mSPRT) after each look; safe to run every hour.

    LOOKS_CSV has one row per look with cumulative counts: control_conversions,
    control_trials, variant_conversions, variant_trials.
    """
    from protos.marketing.v1 import experiment_pb2 as pb
    from ray_apps.evaluation.service import sequential_test

    cols = ("control_conversions", "control_trials", "variant_conversions", "variant_trials")
    rows = _rows(looks_csv, cols)
    looks = [pb.Look(**{c: _number(r, c, i + 2) for c in cols}) for i, r in enumerate(rows)]
    _print(sequential_test(pb.SequentialTestRequest(looks=looks, alpha=alpha, mixture_sd=mixture_sd)))


@experiment_group.command("simulate-channels")
@click.option("--arm", "arms", multiple=True, metavar="NAME:RATE[:VALUE[:COST]]",
              help="A channel: conversion rate, revenue per conversion, cost per contact. Repeat per "
                   "channel. Default: sms 0.035, push 0.045, email 0.020 (150 per conversion).")
@click.option("--contacts", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def simulate_channels_cmd(arms: tuple[str, ...], contacts: int, seed: int) -> None:
    """Thompson sampling (the ChannelService's own code), UCB1 and a fixed split on the same
    simulated outcomes: regret, conversions, revenue and each policy's channel shares."""
    from cluster.core.errors import InvalidArgument
    from ray_apps.evaluation.bandit_sim import Arm, simulate

    parsed = []
    for spec in arms or ("sms:0.035:150:0.05", "push:0.045:150:0.01", "email:0.020:150:0.002"):
        parts = spec.split(":")
        try:
            parsed.append(Arm(parts[0], *[float(p) for p in parts[1:4]]))
        except (TypeError, ValueError):
            raise InvalidArgument(f"--arm {spec!r}: expected NAME:RATE[:VALUE[:COST]]", field="arm") from None
    results = simulate(parsed, contacts=contacts, seed=seed)
    click.echo(json.dumps([{"policy": r.policy, "contacts": r.contacts, "conversions": r.conversions,
                            "regret": round(r.regret, 3), "revenue": round(r.revenue, 2), "share": r.share}
                           for r in results], indent=2))
