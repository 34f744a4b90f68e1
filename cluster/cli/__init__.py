"""``pmkt``: the platform's command line.

Every command reads the same settings (``--profile`` / ``--settings``, or the
``PMKT_PROFILE`` / ``PMKT_SETTINGS`` environment variables).

No traceback reaches the user: any failure prints one line on stderr that names the command
(and, for ``pmkt demo``, the step), then what is at fault (file, field or setting, never a
field value), and exits non-zero:

* a platform error (:class:`~cluster.core.errors.PlatformError`) or a usage error exits with status 2:
  ``error in pmkt ingest (orders.coupon): orders.csv: unknown column 'coupon' in the header ...``;
* anything else is unexpected (a bug, or a back-end failing) and exits with status 1, its
  type and first meaningful line only: ``error in pmkt tune ctr: ValueError: ... (run with -v
  for the trace)``;
* Ctrl-C exits with status 130.

``-v`` shows info logs and, on failure, the full trace before the line; ``-vv`` debug logs.

This module holds the root group, the registration of the command groups and :func:`main`; each
group lives in its own module (``data``, ``features``, ``models``, ``serve``, ...), and what they
share (the settings handle, the run state main() reports from) in :mod:`cluster.cli.context`.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback

import click

from cluster.cli.analytics import audience_cmd, funnel_cmd, goal_gap_cmd, pricing_group, report_cmd
from cluster.cli.cluster_cmds import cluster_group
from cluster.cli.context import CliContext, run_state
from cluster.cli.data import clean_cmd, data_group, ingest_cmd
from cluster.cli.demo import demo_cmd
from cluster.cli.experiment import experiment_group
from cluster.cli.features import features_group, store_group
from cluster.cli.models import attributes_group, models_group, train_group, tune_cmd
from cluster.cli.privacy import privacy_group
from cluster.cli.progress import failed_step
from cluster.cli.serve import segment_cmd, serve_group
from cluster.cli.settings_cmds import settings_group
from cluster.core.errors import PlatformError, describe, unwrap

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--profile", envvar="PMKT_PROFILE", help="Bundled settings profile: embedded (default) or cluster.")
@click.option(
    "--settings", "settings_file", envvar="PMKT_SETTINGS", type=click.Path(dir_okay=False),
    help="Settings YAML file; wins over --profile.",
)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, profile: str | None, settings_file: str | None, verbose: int) -> None:
    """Precision-marketing data platform: ingest, features, models and the marketing API.

    \b
    The chain, step by step:
      pmkt data generate var/input      synthetic data in the contract
      pmkt ingest var/input             contract checks -> lake raw + quarantine
      pmkt features rfm                 RFM per user -> lake features + profile store
      pmkt features clv|tags|tables     CLV, tags, interactions, CTR / churn tables
      pmkt features campaigns           clicks, cost and attributed orders per campaign (and per day)
      pmkt features funnels|demand|attributes  funnels, demand per slot, attribute features
      pmkt tune MODEL                   Ray Tune -> model registry (pmkt models ...)
      pmkt attributes predict           predicted gender (etc.) into profiles, never over a declared one
      pmkt serve                        gRPC + HTTP API on Ray Serve
      pmkt report                       the results as one HTML file of plots
    or all of it at once: pmkt demo (it ends by writing the report).
    A/B statistics and channel-policy simulation: pmkt experiment ...
    Analytics: pmkt audience | funnel | goal-gap | pricing forecast|discounts
    """
    run_state["verbose"] = verbose
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = CliContext(profile, settings_file)


# -- the command groups -------------------------------------------------------------------
for _command in (
    settings_group, data_group, ingest_cmd, privacy_group, clean_cmd, features_group, attributes_group,
    tune_cmd, train_group, models_group, cluster_group, serve_group, store_group, segment_cmd, demo_cmd,
    report_cmd, experiment_group, audience_cmd, funnel_cmd, goal_gap_cmd, pricing_group,
):
    cli.add_command(_command)


# -- the one error line -------------------------------------------------------------------
def _record_path(command: click.Command) -> None:
    """Wrap the callbacks of ``command`` and its subcommands so that main() knows which command
    failed: each records its path when it starts, and the innermost one starts last. An
    argument with a fixed choice names a step as a subcommand would (``pmkt tune ctr``)."""
    callback = command.callback
    if callback is not None and not getattr(callback, "_pmkt_recorded", False):
        @functools.wraps(callback)
        def recorded(*args, **kwargs):
            ctx = click.get_current_context()
            chosen = [str(ctx.params[p.name]) for p in ctx.command.params
                      if isinstance(p, click.Argument) and isinstance(p.type, click.Choice)
                      and ctx.params.get(p.name) is not None]
            run_state["path"] = " ".join([ctx.command_path, *chosen])
            return callback(*args, **kwargs)

        recorded._pmkt_recorded = True  # type: ignore[attr-defined]
        command.callback = recorded
    for sub in getattr(command, "commands", {}).values():
        _record_path(sub)


_record_path(cli)


#: Click (8.2+) raises this for a group called without a command.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _where(exc: BaseException | None = None) -> str:
    """``pmkt demo, step ingest``: the command, and the step that failed when the command's
    name does not already say it."""
    path = run_state["path"]
    step = failed_step(exc) if exc is not None else None
    if step and not set(step.split()) <= set(path.split()):
        return f"{path}, step {step}"
    return path


def _say(where: str, what: str) -> None:
    click.echo(click.style("error", fg="red", bold=True) + f" in {where}: {what}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI; any failure becomes one line on stderr.

    Returns:
        0, or the exit status: 2 for a platform error or a usage error, 1 for an unexpected
        error (``-v`` prints its trace first), 130 when interrupted.
    """
    run_state.update(path="pmkt", verbose=0)
    try:
        cli.main(args=argv, prog_name="pmkt", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo(f"{run_state['path']}: interrupted", err=True)
        return 130
    except _NO_ARGS_IS_HELP as err:  # `pmkt features` alone: the help is the answer, not an error
        err.show()
        return err.exit_code
    except click.ClickException as err:
        ctx = getattr(err, "ctx", None)
        where = ctx.command_path if ctx is not None else run_state["path"]
        help_hint = f" (see {where} -h)" if isinstance(err, click.UsageError) else ""
        _say(where, _one_line(err.format_message()) + help_hint)
        return err.exit_code
    except Exception as exc:
        if run_state["verbose"]:
            traceback.print_exception(exc, file=sys.stderr)
        cause = unwrap(exc)
        if isinstance(cause, PlatformError):
            field = f" ({cause.field})" if cause.field else ""
            lines = [ln for ln in cause.message.splitlines() if ln.strip()]
            _say(_where(exc) + field, _one_line(lines[0] if lines else cause.code))
            return 2
        hint = "trace above" if run_state["verbose"] else "run with -v for the trace"
        _say(_where(exc), f"{_one_line(describe(exc))} ({hint})")
        return 1
    return 0
