"""``pmkt data generate``, ``pmkt ingest`` and ``pmkt clean``: from delivered files to the lake's
raw zone, and synthetic files to start from."""

from __future__ import annotations

from pathlib import Path

import click

from cluster.cli.context import CliContext, pass_ctx
from cluster.cli.progress import console, progress_bar

__all__ = ["data_group", "ingest_cmd", "clean_cmd"]


@click.group("data")
def data_group() -> None:
    """Synthetic data in the data contract (docs/data-contract.md)."""


@data_group.command("generate")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--users", default=20_000, show_default=True, type=click.IntRange(100, 800_000), help="Number of users.")
@click.option("--days", default=180, show_default=True, type=click.IntRange(min=7), help="Days of history.")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed (same seed, same files).")
@click.option(
    "--end-date", type=click.DateTime(["%Y-%m-%d"]), default="2026-06-30", show_default=True,
    help="Last day of the history.",
)
@click.option("--defects/--no-defects", default=True, show_default=True, help="Plant defective rows.")
@click.option(
    "--style", type=click.Choice(["default", "varied"]), default="default", show_default=True,
    help="Shape of the files. default: the usual files (same seed, same bytes). varied: the same simulated "
         "behaviour in other shapes the data contract allows, as another company's export might look: "
         "placement names as ad positions, other id patterns (user ids of 6-40 characters), ISO timestamps "
         "with other offsets and fractions, a UTF-8 BOM and CRLF line ends, other cities, brands, channels, "
         "campaigns and device names, and registered-only users on top of --users (2/7 more, so that about "
         "30 % of the users have no order).",
)
def data_generate(out: Path, users: int, days: int, seed: int, end_date, defects: bool, style: str) -> None:
    """Write users.csv, orders.csv, events.jsonl and impressions.csv to OUT.

    The planted structure (archetypes, category preferences, click model, churn times) and
    the exact reconciliation ingest must report go to OUT/_truth/ (docs/synthetic-data.md).
    With --style varied the truth is renamed to match and its manifest maps every name used.
    """
    from cluster.datagen import generate

    with progress_bar("generate") as progress:
        summary = generate(out, users=users, days=days, seed=seed, end_date=end_date.date(), defects=defects,
                           progress=progress, style=style)
    for name, rows in summary.rows.items():
        console.print(f"{name:<12} {rows:>10,} rows")
    console.print(f"written to {out}")


@click.command("ingest")
@click.argument("input_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the reconciliation report (JSON) here.")
@click.option("--run-id", help="Run id (default: a new UTC timestamp id).")
@pass_ctx
def ingest_cmd(c: CliContext, input_dir: Path, report_path: Path | None, run_id: str | None) -> None:
    """Apply the data contract to INPUT_DIR: accepted rows to the lake's raw zone,
    rejected rows to quarantine with a reason, and a reconciliation report.

    Re-ingesting the same folder is idempotent: the days it contains are replaced.
    """
    from spark_jobs import ingest

    with progress_bar("ingest") as progress:
        report = ingest.main(c.settings, input_dir, report_path=report_path, run_id=run_id, progress=progress)
    console.print(ingest.format_report(report), highlight=False)


@click.command("clean")
@click.option("--run-id", help="Run id (default: a new UTC timestamp id).")
@pass_ctx
def clean_cmd(c: CliContext, run_id: str | None) -> None:
    """Clean the raw zone after ingest: de-duplicate, flag or cap IQR outliers, impute missing
    values (mean, median, KNN, per column: settings cleaning.rules), and build the user feature
    table where never-purchasing users get the maximum recency. Prints the cleaning report."""
    from spark_jobs import clean

    with progress_bar("clean") as progress:
        report = clean.main(c.settings, run_id=run_id, progress=progress)
    console.print(clean.format_report(report), highlight=False)
