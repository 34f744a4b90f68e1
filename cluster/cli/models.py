"""``pmkt tune | train | models | attributes``: Ray Tune searches, the model registry, and the
predicted attributes written back to the profile store."""

from __future__ import annotations

import json

import click

from cluster.cli.context import CliContext, pass_ctx, shutting_down_ray
from cluster.cli.progress import console, progress_bar
from cluster.cli.render import print_segments
from cluster.core.catalog import MODEL_TUNING
from cluster.core.errors import FailedPrecondition, NotFound, PlatformError
from ray_apps.tuning import FAMILIES

__all__ = ["tune_cmd", "train_group", "models_group", "attributes_group"]

_FAMILY_HELP = "\b\n" + "\n".join(f"  {name:<10} {family.summary}" for name, family in FAMILIES.items())


@click.command("tune", help=f"""Tune MODEL with Ray Tune, refit the best configuration and register it.

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
def tune_cmd(c: CliContext, model: str, scheduler: str, trials: int | None, smoke_test: bool, fresh: bool,
             promote: bool) -> None:
    from ray_apps.tuning import get_spec, run_tune

    spec = get_spec(model)
    with shutting_down_ray(), progress_bar(f"tune {model}") as progress:
        outcome = run_tune(c.settings, spec, scheduler=scheduler, trials=trials, smoke_test=smoke_test,
                           fresh=fresh, promote=promote, progress=progress)
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


@click.group("train")
def train_group() -> None:
    """Shortcuts for `pmkt tune` with the default search."""


@train_group.command("segments")
@click.option("--smoke-test", is_flag=True, help="Search only three values of k (for tests).")
@pass_ctx
def train_segments_cmd(c: CliContext, smoke_test: bool) -> None:
    """Same as `pmkt tune segments`: K-means for k in segments.k_min..k_max, k chosen by silhouette."""
    from ray_apps.segments.train import train_segments

    with shutting_down_ray(), progress_bar("train segments") as progress:
        mv = train_segments(c.settings, smoke_test=smoke_test, progress=progress)
    print_segments(mv)


@click.group("models")
def models_group() -> None:
    """The model registry in the lake: versions, metrics, promote and rollback.

    \b
    Serving re-reads the current version every serve.model_refresh_s seconds, so promote
    and rollback take effect without a restart; every answer names the version it used.

    \b
    Every version is signed with the registry key (settings registry.*): promote, rollback,
    show and serving check the files against the signature before using them, and refuse a
    changed, unsigned or foreign version. `pmkt models verify` checks versions on demand.
    """


def _registry(c: CliContext):
    from cluster.core.storage import open_lake
    from ray_apps.registry import open_registry

    return open_registry(c.settings, open_lake(c.settings))


def _headline(metrics: dict) -> str:
    keys = ("silhouette", "chosen_k", "test_auc", "auc", "val_ndcg_at_10", "ndcg_at_10", "concordance",
            "val_concordance")
    return ", ".join(f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
                     for k in keys if k in metrics)


@models_group.command("list")
@click.argument("model", required=False)
@pass_ctx
def models_list(c: CliContext, model: str | None) -> None:
    """Every model (or MODEL's versions) with the current version marked by *."""
    from rich.table import Table

    reg = _registry(c)
    names = [model] if model else reg.models()
    if not names:
        console.print("no models registered yet: run `pmkt tune MODEL`", highlight=False)
        return
    table = Table("model", "version", "", "created", "feature run", "code", "signature", "metrics")
    for name in names:
        versions = reg.versions(name)
        if model and not versions:
            raise NotFound(f"model {name} has no versions: run `pmkt tune {name}`", field="model")
        try:
            current = reg.current_version(name)
        except PlatformError:
            current = None
        for v in versions:
            mv = reg.get(name, v, verify=False)  # listed whatever its state; the column says it
            problem = reg.problem(name, v)
            table.add_row(name, v, "*" if v == current else "", mv.created_at, mv.feature_run_id or "-",
                          mv.code_version, "ok" if problem is None else f"REFUSED: {problem}",
                          _headline(mv.metrics))
    console.print(table)


@models_group.command("show")
@click.argument("model")
@click.argument("version", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print metadata, metrics, parameters and the search as JSON.")
@pass_ctx
def models_show(c: CliContext, model: str, version: str | None, as_json: bool) -> None:
    """One version (default: the current one): metrics, parameters, search, pointer history."""
    reg = _registry(c)
    mv = reg.get(model, version)
    try:
        tuning = reg.extra(model, mv.version, MODEL_TUNING)
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
def models_promote(c: CliContext, model: str, version: str) -> None:
    """Make VERSION the version serving uses (within serve.model_refresh_s, no restart)."""
    mv = _registry(c).promote(model, version)
    console.print(f"{mv.ref} is current", highlight=False)


@models_group.command("verify")
@click.argument("model")
@click.argument("version", required=False)
@pass_ctx
def models_verify(c: CliContext, model: str, version: str | None) -> None:
    """Check VERSION (default: every version of MODEL) against its signature; exits 1 if any fails."""
    reg = _registry(c)
    versions = [version] if version else reg.versions(model)
    if not versions:
        raise NotFound(f"model {model} has no versions: run `pmkt tune {model}`", field="model")
    failed = 0
    for v in versions:
        problem = reg.problem(model, v)
        failed += problem is not None
        console.print(f"{model}/{v}: " + ("ok" if problem is None else f"REFUSED: {problem}"), highlight=False)
    if failed:
        raise FailedPrecondition(f"{failed} of {len(versions)} version(s) of {model} fail verification")


@models_group.command("sign")
@click.argument("model")
@click.argument("version")
@click.option("--trust-content", is_flag=True, required=True,
              help="Required: you checked that the files are the ones the platform wrote.")
@pass_ctx
def models_sign(c: CliContext, model: str, version: str, trust_content: bool) -> None:
    """(Re-)sign VERSION as its files are now, with the registry key.

    For a version registered before signing existed or before a key rotation. It vouches for
    whatever the files hold, so only after checking them (docs/security.md#signed-model-artifacts).
    """
    mv = _registry(c).sign(model, version)
    console.print(f"{mv.ref} signed", highlight=False)


@models_group.command("rollback")
@click.argument("model")
@pass_ctx
def models_rollback(c: CliContext, model: str) -> None:
    """Return MODEL to the version that was current before the current one."""
    mv = _registry(c).rollback(model)
    console.print(f"{mv.ref} is current", highlight=False)


@click.group("attributes")
def attributes_group() -> None:
    """Predicted static attributes (docs/models-attributes.md)."""


@attributes_group.command("predict")
@click.option("--version", default=None, help="Model version (default: the current one).")
@pass_ctx
def attributes_predict(c: CliContext, version: str | None) -> None:
    """Predict attributes.target (gender) for every user without a declared value and store it in
    the profile store, marked as predicted with its probability and model version. A declared
    value is never overwritten; re-running replaces earlier predictions."""
    from ray_apps.attributes.service import predict_and_store

    with progress_bar("predict attributes") as progress:
        meta = predict_and_store(c.settings, version=version, progress=progress)
    console.print(" ".join(f"{k}={v}" for k, v in meta.items() if not isinstance(v, (list, dict))), highlight=False)
