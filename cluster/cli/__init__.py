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
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from pathlib import Path

import click

from cluster.cli.analytics import audience_cmd, funnel_cmd, goal_gap_cmd, pricing_group
from cluster.cli.experiment import experiment_group
from cluster.cli.progress import console, err_console, failed_step, progress_bar
from cluster.cli.render import print_segments, serve_until_interrupted
from cluster.core.errors import InvalidArgument, NotFound, PlatformError, describe, unwrap
from cluster.core.settings import Settings, load_settings
from ray_apps.tuning import FAMILIES

__all__ = ["main", "cli"]

log = logging.getLogger(__name__)

#: The command being run (its path, e.g. ``pmkt tune ctr``) and ``-v``'s count, for main()'s error line.
_run: dict = {"path": "pmkt", "verbose": 0}


class _Ctx:
    def __init__(self, profile: str | None, settings_file: str | None) -> None:
        self.profile = profile
        self.settings_file = settings_file
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(profile=self.profile, path=self.settings_file)
        return self._settings


pass_ctx = click.make_pass_decorator(_Ctx)


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
    _run["verbose"] = verbose
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = _Ctx(profile, settings_file)


# -- settings -----------------------------------------------------------------------------
@cli.group("settings")
def settings_group() -> None:
    """Inspect the effective settings."""


@settings_group.command("show")
@pass_ctx
def settings_show(c: _Ctx) -> None:
    """Print the effective settings (after environment overrides) as JSON."""
    console.print_json(c.settings.model_dump_json())


# -- data ---------------------------------------------------------------------------------
@cli.group("data")
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


# -- ingest -------------------------------------------------------------------------------
@cli.command("ingest")
@click.argument("input_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the reconciliation report (JSON) here.")
@click.option("--run-id", help="Run id (default: a new UTC timestamp id).")
@pass_ctx
def ingest_cmd(c: _Ctx, input_dir: Path, report_path: Path | None, run_id: str | None) -> None:
    """Apply the data contract to INPUT_DIR: accepted rows to the lake's raw zone,
    rejected rows to quarantine with a reason, and a reconciliation report.

    Re-ingesting the same folder is idempotent: the days it contains are replaced.
    """
    from spark_jobs import ingest

    with progress_bar("ingest") as progress:
        report = ingest.main(c.settings, input_dir, report_path=report_path, run_id=run_id, progress=progress)
    console.print(ingest.format_report(report), highlight=False)


# -- privacy ------------------------------------------------------------------------------
@cli.group("privacy")
def privacy_group() -> None:
    """Personal data: the encryption keys and lawful access (docs/privacy.md)."""


@privacy_group.command("init-key", short_help="Create the key file (a random key, mode 0600) unless it exists.")
@click.option("--key-id", default="k1", show_default=True, help="Id of the new key (letters, digits, _ or -).")
@pass_ctx
def privacy_init_key(c: _Ctx, key_id: str) -> None:
    """Create privacy.key_file with one random AES-256 key (mode 0600), unless it exists.

    Running it again changes nothing. The key itself is never printed.
    """
    import os

    from cluster.core.errors import ConfigError, InvalidArgument
    from cluster.core.privacy import init_key_file, load_key_file

    privacy = c.settings.privacy
    if privacy.key_file is None:
        raise ConfigError("privacy.key_file is not set: name the file to create in the settings",
                          field="privacy.key_file")
    try:
        created = init_key_file(privacy.key_file, key_id=key_id)
    except ValueError as exc:
        raise InvalidArgument(str(exc), field="key_id") from None
    ring = load_key_file(privacy.key_file, privacy.active_key_id)  # read back as ingest will
    what = "created" if created else "exists, left unchanged"
    console.print(f"key file {privacy.key_file}: {what} (keys: {', '.join(ring.key_ids)}; "
                  f"active: {ring.active_key_id})", highlight=False)
    if os.environ.get(privacy.key_env, "").strip():
        err_console.print(f"note: {privacy.key_env} is set, and its keys are used instead of this file")


@privacy_group.command("forget")
@click.argument("user_id")
@click.option("--reason", default="data subject request", show_default=True,
              help="Recorded in the tombstone (a ticket reference, never personal data).")
@pass_ctx
def privacy_forget(c: _Ctx, user_id: str, reason: str) -> None:
    """Forget USER_ID (right to erasure): delete the profile and counters and record a tombstone,
    so every later build leaves the user out and real-time events for them are rejected.
    Idempotent. The raw zone keeps the delivered rows; builds skip them."""
    from cluster.core.forget import forget

    new = forget(c.settings, user_id, reason)
    console.print(f"{user_id}: {'forgotten' if new else 'already forgotten; profile deleted again'}", highlight=False)


@privacy_group.command("reveal-id", short_help="Print a user's ID number: DSAR and legal requests only.")
@click.argument("user_id")
@click.option("--reason", required=True,
              help="The DSAR or legal request this answers (its reference); kept in the audit record.")
@pass_ctx
def privacy_reveal_id(c: _Ctx, user_id: str, reason: str) -> None:
    """Print USER_ID's ID number, decrypted: only for data-subject access and legal requests.

    Needs the keys (privacy settings). Every call leaves an audit record in the lake
    (reports/privacy/reveal/), the ID number excepted.
    """
    from cluster.core.privacy import reveal_id_numbers

    for value in reveal_id_numbers(c.settings, user_id, reason):
        click.echo(value)


@cli.command("clean")
@click.option("--run-id", help="Run id (default: a new UTC timestamp id).")
@pass_ctx
def clean_cmd(c: _Ctx, run_id: str | None) -> None:
    """Clean the raw zone after ingest: de-duplicate, flag or cap IQR outliers, impute missing
    values (mean, median, KNN, per column: settings cleaning.rules), and build the user feature
    table where never-purchasing users get the maximum recency. Prints the cleaning report."""
    from spark_jobs import clean

    with progress_bar("clean") as progress:
        report = clean.main(c.settings, run_id=run_id, progress=progress)
    console.print(clean.format_report(report), highlight=False)


# -- features -----------------------------------------------------------------------------
@cli.group("features")
def features_group() -> None:
    """Feature builds (Spark) into the lake's feature zone and the profile store."""


@features_group.command("rfm")
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), help="As-of day (default: day after the last order).")
@pass_ctx
def features_rfm(c: _Ctx, as_of) -> None:
    """Recency, frequency and monetary value per user."""
    from spark_jobs import rfm

    with progress_bar("rfm") as progress:
        meta = rfm.main(c.settings, as_of=as_of.date() if as_of else None, progress=progress)
    console.print(f"RFM run {meta['run_id']}: {meta['users']:,} users as of {meta['as_of']} -> {meta['path']}")


@features_group.command("clv")
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), help="As-of day (default: day after the last order).")
@pass_ctx
def features_clv(c: _Ctx, as_of) -> None:
    """Customer lifetime value: historic, and BG/NBD + Gamma-Gamma predicted (settings: clv.*)."""
    from spark_jobs import clv

    with progress_bar("clv") as progress:
        meta = clv.main(c.settings, as_of=as_of.date() if as_of else None, progress=progress)
    p = meta["params"]
    console.print(f"CLV run {meta['run_id']}: {meta['users']:,} users ({meta['repeat_customers']:,} repeat) as of "
                  f"{meta['as_of']}; BG/NBD r={p['r']:.3f} alpha={p['alpha']:.3f} a={p['a']:.3f} b={p['b']:.3f}, "
                  f"Gamma-Gamma p={p['p']:.3f} q={p['q']:.3f} v={p['v']:.3f} -> {meta['path']}", highlight=False)


@features_group.command("tags")
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), help="As-of day (default: day after the last order).")
@pass_ctx
def features_tags(c: _Ctx, as_of) -> None:
    """Behaviour tags, TF-IDF tag weights and the user-item interaction matrix (settings: tags.*)."""
    from spark_jobs import tags

    t = c.settings.tags
    with progress_bar("tags") as progress:
        meta = tags.main(c.settings, as_of=as_of.date() if as_of else None, progress=progress, top_k=t.top_k,
                         last_viewed=t.last_viewed, abandon_window_hours=t.abandon_window_hours,
                         tfidf_top_k=t.tfidf_top_k, half_life_days=t.half_life_days, weights=t.action_weights)
    console.print(f"tags run {meta['run_id']}: {meta['users']:,} users, {meta['tag_weights']:,} tag weights, "
                  f"{meta['interactions']:,} interactions over {meta['items']:,} items (as of {meta['as_of']})",
                  highlight=False)


@features_group.command("tables")
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), help="Cut-off day (default: day after the last record).")
@pass_ctx
def features_tables(c: _Ctx, as_of) -> None:
    """CTR training table (impressions + user/ad features, time split) and churn table
    (tenure, churned after training_tables.inactivity_days, censoring)."""
    from spark_jobs import training_tables

    t = c.settings.training_tables
    with progress_bar("tables") as progress:
        meta = training_tables.main(
            c.settings, as_of=as_of.date() if as_of else None, progress=progress, inactivity_days=t.inactivity_days,
            hash_buckets=t.hash_buckets, min_count=t.min_count, test_fraction=t.test_fraction,
            lookback_days=t.lookback_days, ctr_prior=t.ctr_prior)
    ctr, churn = meta["ctr"], meta["churn"]
    console.print(f"training tables run {meta['run_id']} as of {meta['as_of']}: CTR {ctr['rows']:,} impressions "
                  f"(click rate {(ctr['positive_rate'] or 0) * 100:.2f}%); churn {churn['users']:,} users "
                  f"(churned {(churn['churn_rate'] or 0) * 100:.1f}%, censored {(churn['censoring_rate'] or 0) * 100:.1f}%)",
                  highlight=False)


@features_group.command("profiles")
@pass_ctx
def features_profiles(c: _Ctx) -> None:
    """360° profiles in bulk: users (masked), RFM, CLV and tags -> the profile store."""
    from spark_jobs import profiles

    with progress_bar("profiles") as progress:
        meta = profiles.main(c.settings, progress=progress)
    console.print(f"profiles run {meta['run_id']}: {meta['profiles']:,} profiles written (as of {meta['as_of']})",
                  highlight=False)


@features_group.command("campaigns")
@click.option("--window-days", type=click.IntRange(1, 90), default=None,
              help="Attribution window (default evaluation.attribution_window_days, 7).")
@pass_ctx
def features_campaigns(c: _Ctx, window_days: int | None) -> None:
    """Campaign table: impressions, clicks, cost and last-click attributed orders per user,
    campaign and channel (the input of campaign metrics and `pmkt report`)."""
    from spark_jobs import campaigns

    with progress_bar("campaigns") as progress:
        meta = campaigns.main(c.settings, window_days=window_days, progress=progress)
    console.print(f"campaign table run {meta['run_id']}: {meta['rows']:,} user x campaign x channel rows "
                  f"(attribution window {meta['window_days']} days)", highlight=False)


@features_group.command("funnels")
@click.option("--steps", default=None, help="Ad-hoc funnel: comma-separated actions in order (with --name).")
@click.option("--window-hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Ad-hoc funnel: hours from the first to the last step (default 24).")
@click.option("--name", default=None, help="Name of the ad-hoc funnel (default adhoc).")
@pass_ctx
def features_funnels(c: _Ctx, steps: str | None, window_hours: float | None, name: str | None) -> None:
    """Funnel table: per user, the deepest step of each funnel of funnels.definitions within its
    window, the step times, device and ad channel (`pmkt funnel` and GetFunnel read it). With
    --steps, builds only that ad-hoc funnel instead (it replaces the table's funnels)."""
    from spark_jobs import funnels

    adhoc = None
    if steps is not None or window_hours is not None or name is not None:
        if steps is None:
            raise InvalidArgument("an ad-hoc funnel needs --steps", field="steps")
        adhoc = {name or "adhoc": {"steps": [x.strip() for x in steps.split(",") if x.strip()],
                                   "window_hours": window_hours or 24.0}}
    with progress_bar("funnels") as progress:
        meta = funnels.main(c.settings, progress=progress, funnels=adhoc)
    for fname, f in meta["funnels"].items():
        console.print(f"funnel {fname}: {' > '.join(f['steps'])} within {f['window_hours']:g} h, "
                      f"{f.get('users', 0):,} users entered", highlight=False)
    console.print(f"funnel table run {meta['run_id']}: {meta['rows']:,} rows", highlight=False)


@features_group.command("demand")
@pass_ctx
def features_demand(c: _Ctx) -> None:
    """Demand table: paid orders, units, revenue and the price index per category, local date and
    hour (every cell, zeros included): the input of `pmkt tune demand`."""
    from spark_jobs import demand

    with progress_bar("demand") as progress:
        meta = demand.main(c.settings, progress=progress)
    console.print(f"demand table run {meta['run_id']}: {meta['rows']:,} cells, {meta['categories']} categories, "
                  f"{meta['first_date']}..{meta['last_date']}, {meta['orders']:,} paid orders", highlight=False)


@features_group.command("attributes")
@pass_ctx
def features_attributes(c: _Ctx) -> None:
    """Attribute features: per user, behaviour shares (categories viewed and bought, devices,
    hours) and the declared value of attributes.target: the input of `pmkt tune attributes`."""
    from spark_jobs import attributes

    with progress_bar("attributes") as progress:
        meta = attributes.main(c.settings, progress=progress)
    console.print(f"attribute features run {meta['run_id']}: " + ", ".join(
        f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in meta.items()
        if k not in ("run_id", "path") and not isinstance(v, (list, dict))), highlight=False)


@cli.group("attributes")
def attributes_group() -> None:
    """Predicted static attributes (docs/models-attributes.md)."""


@attributes_group.command("predict")
@click.option("--version", default=None, help="Model version (default: the current one).")
@pass_ctx
def attributes_predict(c: _Ctx, version: str | None) -> None:
    """Predict attributes.target (gender) for every user without a declared value and store it in
    the profile store, marked as predicted with its probability and model version. A declared
    value is never overwritten; re-running replaces earlier predictions."""
    from ray_apps.attributes.service import predict_and_store

    with progress_bar("predict attributes") as progress:
        meta = predict_and_store(c.settings, version=version, progress=progress)
    console.print(" ".join(f"{k}={v}" for k, v in meta.items() if not isinstance(v, (list, dict))), highlight=False)


# -- tune / train -------------------------------------------------------------------------
_FAMILY_HELP = "\b\n" + "\n".join(f"  {name:<10} {family.summary}" for name, family in FAMILIES.items())


@cli.command("tune", help=f"""Tune MODEL with Ray Tune, refit the best configuration and register it.

\b
MODEL is one of:
{_FAMILY_HELP}

The search runs on the Ray of the settings profile (on a cluster the trials spread over
its nodes). Its state lives under ray.tune_storage: running the same command again after an
interruption resumes it (finished trials are kept); --fresh starts over. The registered
version holds the model, its metrics, the trial table (tuning.json), the feature run and the
code version; by default it becomes the version serving uses (`pmkt models rollback MODEL`
undoes that).""")
@click.argument("model", metavar="MODEL",
                type=click.Choice(list(FAMILIES)))
@click.option("--scheduler", type=click.Choice(["grid", "asha"]), default="grid", show_default=True,
              help="grid: every combination to completion; asha: --trials samples, weak ones stopped early.")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Configurations ASHA samples (default per model); ignored by grid.")
@click.option("--smoke-test", is_flag=True, help="A tiny search space, for tests and first runs.")
@click.option("--fresh", is_flag=True, help="Discard an earlier run of the same search instead of resuming it.")
@click.option("--promote/--no-promote", default=True, show_default=True,
              help="Make the new version the one serving uses.")
@pass_ctx
def tune_cmd(c: _Ctx, model: str, scheduler: str, trials: int | None, smoke_test: bool, fresh: bool,
             promote: bool) -> None:
    from ray_apps.runtime import shutdown_ray
    from ray_apps.tuning import get_spec, run_tune

    spec = get_spec(model)
    try:
        with progress_bar(f"tune {model}") as progress:
            outcome = run_tune(c.settings, spec, scheduler=scheduler, trials=trials, smoke_test=smoke_test,
                               fresh=fresh, promote=promote, progress=progress)
    finally:
        shutdown_ray()
    mv, cu = outcome.version, outcome.compute
    if not outcome.complete:
        console.print(f"search {outcome.experiment} was interrupted after {cu['trials']} finished trials; "
                      "nothing registered. Run the same command again to resume it.", highlight=False)
        raise SystemExit(3)
    console.print(f"{mv.ref} registered{' and serving' if promote else ''}: best {spec.metric} "
                  f"{outcome.best_score:.4f} with {outcome.best_config}", highlight=False)
    console.print(f"search {outcome.experiment}{' (resumed)' if outcome.resumed else ''}: {cu['trials']} trials, "
                  f"{cu['iterations']} iterations, {cu['trial_seconds']:.1f} trial-s, {cu['wall_seconds']:.1f} s wall, "
                  f"{cu['nodes']} Ray node(s)", highlight=False)
    if model == "segments":
        print_segments(mv)


@cli.group("train")
def train_group() -> None:
    """Shortcuts for `pmkt tune` with the default search."""


@train_group.command("segments")
@click.option("--smoke-test", is_flag=True, help="Search only three values of k (for tests).")
@pass_ctx
def train_segments_cmd(c: _Ctx, smoke_test: bool) -> None:
    """Same as `pmkt tune segments`: K-means for k in segments.k_min..k_max, k chosen by silhouette."""
    from ray_apps.runtime import shutdown_ray
    from ray_apps.segments.train import train_segments

    try:
        with progress_bar("train segments") as progress:
            mv = train_segments(c.settings, smoke_test=smoke_test, progress=progress)
    finally:
        shutdown_ray()
    print_segments(mv)


# -- models (registry) --------------------------------------------------------------------
@cli.group("models")
def models_group() -> None:
    """The model registry in the lake: versions, metrics, promote and rollback.

    \b
    Serving re-reads the current version every serve.model_refresh_s seconds, so promote
    and rollback take effect without a restart; every answer names the version it used.
    """


def _registry(c: _Ctx):
    from cluster.core.storage import open_lake
    from ray_apps.registry import ModelRegistry

    return ModelRegistry(open_lake(c.settings))


def _headline(metrics: dict) -> str:
    keys = ("silhouette", "chosen_k", "test_auc", "auc", "val_ndcg_at_10", "ndcg_at_10", "concordance",
            "val_concordance")
    return ", ".join(f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
                     for k in keys if k in metrics)


@models_group.command("list")
@click.argument("model", required=False)
@pass_ctx
def models_list(c: _Ctx, model: str | None) -> None:
    """Every model (or MODEL's versions) with the current version marked by *."""
    from rich.table import Table

    reg = _registry(c)
    names = [model] if model else reg.models()
    if not names:
        console.print("no models registered yet: run `pmkt tune MODEL`", highlight=False)
        return
    table = Table("model", "version", "", "created", "feature run", "code", "metrics")
    for name in names:
        versions = reg.versions(name)
        if model and not versions:
            raise NotFound(f"model {name} has no versions: run `pmkt tune {name}`", field="model")
        try:
            current = reg.current_version(name)
        except PlatformError:
            current = None
        for v in versions:
            mv = reg.get(name, v)
            table.add_row(name, v, "*" if v == current else "", mv.created_at, mv.feature_run_id or "-",
                          mv.code_version, _headline(mv.metrics))
    console.print(table)


@models_group.command("show")
@click.argument("model")
@click.argument("version", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print metadata, metrics, parameters and the search as JSON.")
@pass_ctx
def models_show(c: _Ctx, model: str, version: str | None, as_json: bool) -> None:
    """One version (default: the current one): metrics, parameters, search, pointer history."""
    from cluster.core.errors import NotFound

    reg = _registry(c)
    mv = reg.get(model, version)
    try:
        tuning = reg.extra(model, mv.version, "tuning.json")
    except NotFound:
        tuning = None
    doc = {"model": mv.ref, "created_at": mv.created_at, "feature_run_id": mv.feature_run_id,
           "code_version": mv.code_version, "current": reg.current_version(model) == mv.version,
           "metrics": mv.metrics, "params": mv.params, "tuning": tuning, "history": reg.history(model)}
    if as_json:
        click.echo(json.dumps(doc, ensure_ascii=False, indent=2, default=str))
        return
    console.print(f"{mv.ref}{' (current)' if doc['current'] else ''}  created {mv.created_at}  "
                  f"features {mv.feature_run_id}  code {mv.code_version}", highlight=False)
    for k, v in mv.metrics.items():
        if isinstance(v, (int, float, str)):
            console.print(f"  {k}: {v}", highlight=False)
    console.print(f"  params: {json.dumps(mv.params, ensure_ascii=False, default=str)[:500]}", highlight=False)
    if tuning:
        cu = tuning["compute"]
        console.print(f"  search: {tuning['scheduler']}, {cu['trials']} trials, {cu['iterations']} iterations, "
                      f"best {tuning['metric']}={tuning['best_score']:.4f} {tuning['best_config']}", highlight=False)
    if model == "segments":
        print_segments(mv)


@models_group.command("promote")
@click.argument("model")
@click.argument("version")
@pass_ctx
def models_promote(c: _Ctx, model: str, version: str) -> None:
    """Make VERSION the version serving uses (within serve.model_refresh_s, no restart)."""
    mv = _registry(c).promote(model, version)
    console.print(f"{mv.ref} is current", highlight=False)


@models_group.command("rollback")
@click.argument("model")
@pass_ctx
def models_rollback(c: _Ctx, model: str) -> None:
    """Return MODEL to the version that was current before the current one."""
    mv = _registry(c).rollback(model)
    console.print(f"{mv.ref} is current", highlight=False)


# -- cluster ------------------------------------------------------------------------------
@cli.group("cluster")
def cluster_group() -> None:
    """Provision, stop and check the 1-master/2-worker cluster (ansible/, docs/deploy-ansible.md)."""


@cluster_group.command("up")
@pass_ctx
def cluster_up(c: _Ctx) -> None:
    """Run ansible/site.yml: HDFS, ZooKeeper, HBase, Spark and Ray, waiting for health.

    A second run changes nothing. The rendered platform settings are written where the
    inventory says (var/cluster/pmkt-cluster.yaml for the local inventory).
    """
    from cluster.provision import run_playbook

    run_playbook(c.settings, "site.yml")


@cluster_group.command("down")
@click.option("--wipe", is_flag=True, help="Also delete the cluster's data (HDFS, HBase, ZooKeeper).")
@pass_ctx
def cluster_down(c: _Ctx, wipe: bool) -> None:
    """Run ansible/teardown.yml: stop every daemon and Ray process."""
    from cluster.provision import run_playbook

    run_playbook(c.settings, "teardown.yml", {"pmkt_wipe_data": "true" if wipe else "false"})


@cluster_group.command("status")
@pass_ctx
def cluster_status_cmd(c: _Ctx) -> None:
    """Each daemon and its health; exits 1 when anything is not healthy."""
    from rich.table import Table

    from cluster.provision import cluster_status

    checks = cluster_status(c.settings)
    table = Table("check", "state", "detail", title=f"cluster ({c.settings.source})")
    for check in checks:
        table.add_row(check.name, "[green]ok[/green]" if check.ok else "[red]FAIL[/red]", check.detail)
    console.print(table)
    if not all(check.ok for check in checks):
        raise SystemExit(1)


# -- serve --------------------------------------------------------------------------------
@cli.group("serve", invoke_without_command=True)
@click.pass_context
def serve_group(ctx: click.Context) -> None:
    """Serve the API (gRPC and HTTP) on Ray Serve.

    \b
    Without a subcommand: start serving and stay in the foreground until Ctrl-C (the
    embedded default's private Ray stops with it).
    On a Ray cluster, `pmkt serve deploy` deploys the application and returns; it keeps
    serving, and picks up newly trained models from the registry by itself.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ray_apps.runtime import shutdown_ray
    from ray_apps.serve.launcher import start_serving

    c = ctx.find_object(_Ctx)
    front = None
    try:
        start_serving(c.settings)
        front = _maybe_tls_front(c.settings.serve)
        serve_until_interrupted(c.settings.serve)
    finally:
        if front is not None:
            front.stop(grace=2)
        shutdown_ray()


def _maybe_tls_front(sv, upstream: str | None = None):
    """Start the gRPC TLS front when serve.tls.grpc_port is set (docs/api.md#tls), forwarding
    to ``upstream`` (default: Serve's plaintext port on this host); None when not set."""
    if sv.tls.grpc_port is None:
        return None
    from ray_apps.serve.tls_front import start_tls_front

    server, _ = start_tls_front(certfile=sv.tls.certfile, keyfile=sv.tls.keyfile, port=sv.tls.grpc_port,
                                upstream=upstream or f"127.0.0.1:{sv.grpc_port}")
    return server


@serve_group.command("tls-front")
@click.option("--upstream", default=None, metavar="HOST:PORT",
              help="Serve's plaintext gRPC port to forward to (default 127.0.0.1:<serve.grpc_port>).")
@pass_ctx
def serve_tls_front(c: _Ctx, upstream: str | None) -> None:
    """Terminate TLS for gRPC on serve.tls.grpc_port and forward every call to Serve's gRPC
    proxy, until Ctrl-C. Serve's gRPC proxy has no TLS of its own: run this on each node
    that runs a proxy (`pmkt serve` in the foreground starts it itself)."""
    sv = c.settings.serve
    server = _maybe_tls_front(sv, upstream)
    if server is None:
        raise InvalidArgument("serve.tls.grpc_port (with certfile and keyfile) is not set", field="serve.tls.grpc_port")
    console.print(f"gRPC TLS front on :{sv.tls.grpc_port} -> {upstream or f'127.0.0.1:{sv.grpc_port}'}; Ctrl-C stops",
                  highlight=False)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=2)


@serve_group.command("deploy")
@click.option("--redeploy", is_flag=True, help="Redeploy even if the application is running (after an upgrade).")
@pass_ctx
def serve_deploy(c: _Ctx, redeploy: bool) -> None:
    """Deploy the API on the Ray cluster and return (idempotent: a running application is
    left alone). Prints `deployed` or `unchanged`."""
    from ray_apps.runtime import shutdown_ray
    from ray_apps.serve.launcher import deploy

    try:
        changed = deploy(c.settings, redeploy=redeploy)
    finally:
        shutdown_ray()
    sv = c.settings.serve
    console.print(f"{'deployed' if changed else 'unchanged'}: gRPC {sv.grpc_client_host}:{sv.grpc_port}, "
                  f"HTTP http://{sv.http_client_host}:{sv.http_port}", highlight=False)


@serve_group.command("status")
@pass_ctx
def serve_status(c: _Ctx) -> None:
    """The application's status on the Ray cluster, the gRPC target clients dial (with
    direct ingress: the replicas) and the Prometheus endpoints; exits 1 unless RUNNING."""
    from ray_apps.runtime import shutdown_ray
    from ray_apps.serve.launcher import (
        APP_NAME,
        app_status,
        grpc_target,
        metrics_endpoints,
    )

    target, metrics = None, []
    try:
        status = app_status(c.settings)
        if status == "RUNNING":
            target, metrics = grpc_target(c.settings), metrics_endpoints(c.settings)
    finally:
        shutdown_ray()
    console.print(f"{APP_NAME}: {status or 'not deployed'}", highlight=False)
    if status != "RUNNING":
        raise SystemExit(1)
    sv = c.settings.serve
    if sv.tls.grpc_port is not None:
        target = f"{sv.grpc_client_host}:{sv.tls.grpc_port} (TLS front; Serve's plaintext port {target})"
    scheme = "https" if sv.tls.enabled else "http"
    console.print(f"gRPC ({sv.ingress}): {target}\nHTTP: {scheme}://{sv.http_client_host}:{sv.http_port}",
                  highlight=False)
    for url in metrics:
        console.print(f"metrics: {url}", highlight=False)


@serve_group.command("delete")
@pass_ctx
def serve_delete(c: _Ctx) -> None:
    """Remove the application from the Ray cluster (no error if absent)."""
    from ray_apps.runtime import shutdown_ray
    from ray_apps.serve.launcher import delete

    try:
        removed = delete(c.settings)
    finally:
        shutdown_ray()
    console.print("deleted" if removed else "not deployed", highlight=False)


# -- profile store ------------------------------------------------------------------------
@cli.group("store")
def store_group() -> None:
    """The profile store (SQLite embedded, HBase on the cluster)."""


@store_group.command("init")
@pass_ctx
def store_init(c: _Ctx) -> None:
    """Create the profile store's tables if missing (idempotent). Prints `created` or `exists`."""
    from cluster.core.storage import open_profile_store

    store = open_profile_store(c.settings)
    created = store.ensure_schema()
    where = getattr(store, "table_name", None) or getattr(store, "path", "")
    console.print(f"{'created' if created else 'exists'}: {where}", highlight=False)


@cli.command("segment")
@click.argument("user_id")
@click.option("--http", "use_http", is_flag=True, help="Call the HTTP endpoint instead of gRPC.")
@pass_ctx
def segment_cmd(c: _Ctx, user_id: str, use_http: bool) -> None:
    """Ask the running API for USER_ID's segment (prints JSON). When the API has keys, set
    PMKT_API_KEY to this client's key."""
    from google.protobuf.json_format import MessageToDict

    from ray_apps.client import MarketingClient

    with MarketingClient.from_settings(c.settings) as client:
        resp = client.get_segment_http(user_id) if use_http else client.get_segment(user_id)
    console.print_json(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), ensure_ascii=False))


# -- demo ---------------------------------------------------------------------------------
@cli.command("demo")
@click.option("--input", "input_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Run on this folder (in the data contract) instead of generated data.")
@click.option("--users", default=20_000, show_default=True, type=click.IntRange(100, 800_000), help="Generated users.")
@click.option("--days", default=180, show_default=True, type=click.IntRange(min=14), help="Generated days.")
@click.option("--seed", default=7, show_default=True, type=int, help="Generator seed.")
@click.option("--smoke-test", is_flag=True, help="Small Tune search (three values of k).")
@click.option("--keep-serving", is_flag=True, help="Leave the API up after the summary (Ctrl-C stops).")
@pass_ctx
def demo_cmd(c: _Ctx, input_dir: Path | None, users: int, days: int, seed: int, smoke_test: bool,
             keep_serving: bool) -> None:
    """Run the whole chain once: generate, ingest, RFM, train segments, serve, call the API
    over gRPC and HTTP, print a summary, shut down. Exits non-zero on any failure."""
    if input_dir is not None:
        from spark_jobs.ingest import check_delivery

        # A broken folder fails here in seconds, before the chain loads every stage's code.
        with progress_bar("ingest") as progress:
            progress(f"checking {input_dir}", 0.0)
            check_delivery(c.settings, input_dir)
    from cluster.cli.demo import run_demo

    run_demo(c.settings, input_dir=input_dir, users=users, days=days, seed=seed, smoke_test=smoke_test,
             keep_serving=keep_serving)


@cli.command("report")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write (default: evaluation.report_dir/report.html).")
@pass_ctx
def report_cmd(c: _Ctx, output: Path | None) -> None:
    """One self-contained HTML file (inline plots, works offline): segments, the CTR model's ROC
    and calibration, churn survival by segment, recommendation quality, ROI by channel, campaign
    comparisons with intervals and the budget allocation. A section whose inputs are missing
    says which command builds them."""
    from ray_apps.evaluation.report import plot_count, write_report

    with progress_bar("report") as progress:
        path, sections = write_report(c.settings, output, progress=progress)
    for s in sections:
        if s.missing:
            console.print(f"[yellow]{s.title}: not available[/yellow] ({s.missing})", highlight=False,
                          soft_wrap=True)
    console.print(f"report with {plot_count(sections)} plots written to {path}", highlight=False)


cli.add_command(experiment_group)
for _command in (audience_cmd, funnel_cmd, goal_gap_cmd, pricing_group):
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
            _run["path"] = " ".join([ctx.command_path, *chosen])
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
    path = _run["path"]
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
    _run.update(path="pmkt", verbose=0)
    try:
        cli.main(args=argv, prog_name="pmkt", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo(f"{_run['path']}: interrupted", err=True)
        return 130
    except _NO_ARGS_IS_HELP as err:  # `pmkt features` alone: the help is the answer, not an error
        err.show()
        return err.exit_code
    except click.ClickException as err:
        ctx = getattr(err, "ctx", None)
        where = ctx.command_path if ctx is not None else _run["path"]
        help_hint = f" (see {where} -h)" if isinstance(err, click.UsageError) else ""
        _say(where, _one_line(err.format_message()) + help_hint)
        return err.exit_code
    except Exception as exc:
        if _run["verbose"]:
            traceback.print_exception(exc, file=sys.stderr)
        cause = unwrap(exc)
        if isinstance(cause, PlatformError):
            field = f" ({cause.field})" if cause.field else ""
            lines = [ln for ln in cause.message.splitlines() if ln.strip()]
            _say(_where(exc) + field, _one_line(lines[0] if lines else cause.code))
            return 2
        hint = "trace above" if _run["verbose"] else "run with -v for the trace"
        _say(_where(exc), f"{_one_line(describe(exc))} ({hint})")
        return 1
    return 0
