"""``pmkt features ...`` and ``pmkt store init``: the Spark feature builds into the lake's feature
zone and the profile store, and the profile store's tables."""

from __future__ import annotations

from datetime import date, datetime

import click

from cluster.cli.context import CliContext, pass_ctx
from cluster.cli.progress import console, progress_bar
from cluster.core.errors import InvalidArgument

__all__ = ["features_group", "store_group"]


def _day(_ctx: click.Context, _param: click.Parameter, value: datetime | None) -> date | None:
    return value.date() if value else None


def _as_of_option(help_text: str = "As-of day (default: day after the last order)."):
    """``--as-of YYYY-MM-DD``, handed to the command as a ``date`` (None when not given)."""
    return click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), callback=_day, help=help_text)


def _build(title: str, job_main, c: CliContext, **kwargs) -> dict:
    """Run a feature job's ``main(settings, ..., progress=...)`` under a progress bar; its metadata."""
    with progress_bar(title) as progress:
        return job_main(c.settings, progress=progress, **kwargs)


@click.group("features")
def features_group() -> None:
    """Feature builds (Spark) into the lake's feature zone and the profile store."""


@features_group.command("rfm")
@_as_of_option()
@pass_ctx
def features_rfm(c: CliContext, as_of: date | None) -> None:
    """Recency, frequency and monetary value per user."""
    from spark_jobs import rfm

    meta = _build("rfm", rfm.main, c, as_of=as_of)
    console.print(f"RFM run {meta['run_id']}: {meta['users']:,} users as of {meta['as_of']} -> {meta['path']}")


@features_group.command("clv")
@_as_of_option()
@pass_ctx
def features_clv(c: CliContext, as_of: date | None) -> None:
    """Customer lifetime value: historic, and BG/NBD + Gamma-Gamma predicted (settings: clv.*)."""
    from spark_jobs import clv

    meta = _build("clv", clv.main, c, as_of=as_of)
    p = meta["params"]
    console.print(f"CLV run {meta['run_id']}: {meta['users']:,} users ({meta['repeat_customers']:,} repeat) as of "
                  f"{meta['as_of']}; BG/NBD r={p['r']:.3f} alpha={p['alpha']:.3f} a={p['a']:.3f} b={p['b']:.3f}, "
                  f"Gamma-Gamma p={p['p']:.3f} q={p['q']:.3f} v={p['v']:.3f} -> {meta['path']}", highlight=False)


@features_group.command("tags")
@_as_of_option()
@pass_ctx
def features_tags(c: CliContext, as_of: date | None) -> None:
    """Behaviour tags, TF-IDF tag weights and the user-item interaction matrix (settings: tags.*)."""
    from spark_jobs import tags

    t = c.settings.tags
    meta = _build("tags", tags.main, c, as_of=as_of, top_k=t.top_k, last_viewed=t.last_viewed,
                  abandon_window_hours=t.abandon_window_hours, tfidf_top_k=t.tfidf_top_k,
                  half_life_days=t.half_life_days, weights=t.action_weights)
    console.print(f"tags run {meta['run_id']}: {meta['users']:,} users, {meta['tag_weights']:,} tag weights, "
                  f"{meta['interactions']:,} interactions over {meta['items']:,} items (as of {meta['as_of']})",
                  highlight=False)


@features_group.command("tables")
@_as_of_option("Cut-off day (default: day after the last record).")
@pass_ctx
def features_tables(c: CliContext, as_of: date | None) -> None:
    """CTR training table (impressions + user/ad features, time split) and churn table
    (tenure, churned after training_tables.inactivity_days, censoring)."""
    from spark_jobs import training_tables

    t = c.settings.training_tables
    meta = _build("tables", training_tables.main, c, as_of=as_of, inactivity_days=t.inactivity_days,
                  hash_buckets=t.hash_buckets, min_count=t.min_count, test_fraction=t.test_fraction,
                  lookback_days=t.lookback_days, ctr_prior=t.ctr_prior)
    ctr, churn = meta["ctr"], meta["churn"]
    console.print(f"training tables run {meta['run_id']} as of {meta['as_of']}: CTR {ctr['rows']:,} impressions "
                  f"(click rate {(ctr['positive_rate'] or 0) * 100:.2f}%); churn {churn['users']:,} users "
                  f"(churned {(churn['churn_rate'] or 0) * 100:.1f}%, censored {(churn['censoring_rate'] or 0) * 100:.1f}%)",
                  highlight=False)


@features_group.command("profiles")
@pass_ctx
def features_profiles(c: CliContext) -> None:
    """360° profiles in bulk: users (masked), RFM, CLV and tags -> the profile store."""
    from spark_jobs import profiles

    meta = _build("profiles", profiles.main, c)
    console.print(f"profiles run {meta['run_id']}: {meta['profiles']:,} profiles written (as of {meta['as_of']})",
                  highlight=False)


@features_group.command("campaigns")
@click.option("--window-days", type=click.IntRange(1, 90), default=None,
              help="Attribution window (default evaluation.attribution_window_days, 7).")
@pass_ctx
def features_campaigns(c: CliContext, window_days: int | None) -> None:
    """Campaign table: impressions, clicks, cost and last-click attributed orders per user,
    campaign and channel (the input of campaign metrics and `pmkt report`)."""
    from spark_jobs import campaigns

    meta = _build("campaigns", campaigns.main, c, window_days=window_days)
    console.print(f"campaign table run {meta['run_id']}: {meta['rows']:,} user x campaign x channel rows "
                  f"(attribution window {meta['window_days']} days)", highlight=False)


@features_group.command("funnels")
@click.option("--steps", default=None, help="Ad-hoc funnel: comma-separated actions in order (with --name).")
@click.option("--window-hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Ad-hoc funnel: hours from the first to the last step (default 24).")
@click.option("--name", default=None, help="Name of the ad-hoc funnel (default adhoc).")
@pass_ctx
def features_funnels(c: CliContext, steps: str | None, window_hours: float | None, name: str | None) -> None:
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
    meta = _build("funnels", funnels.main, c, funnels=adhoc)
    for fname, f in meta["funnels"].items():
        console.print(f"funnel {fname}: {' > '.join(f['steps'])} within {f['window_hours']:g} h, "
                      f"{f.get('users', 0):,} users entered", highlight=False)
    console.print(f"funnel table run {meta['run_id']}: {meta['rows']:,} rows", highlight=False)


@features_group.command("demand")
@pass_ctx
def features_demand(c: CliContext) -> None:
    """Demand table: paid orders, units, revenue and the price index per category, local date and
    hour (every cell, zeros included): the input of `pmkt tune demand`."""
    from spark_jobs import demand

    meta = _build("demand", demand.main, c)
    console.print(f"demand table run {meta['run_id']}: {meta['rows']:,} cells, {meta['categories']} categories, "
                  f"{meta['first_date']}..{meta['last_date']}, {meta['orders']:,} paid orders", highlight=False)


@features_group.command("attributes")
@pass_ctx
def features_attributes(c: CliContext) -> None:
    """Attribute features: per user, behaviour shares (categories viewed and bought, devices,
    hours) and the declared value of attributes.target: the input of `pmkt tune attributes`."""
    from spark_jobs import attributes

    meta = _build("attributes", attributes.main, c)
    console.print(f"attribute features run {meta['run_id']}: " + ", ".join(
        f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in meta.items()
        if k not in ("run_id", "path") and not isinstance(v, (list, dict))), highlight=False)


@click.group("store")
def store_group() -> None:
    """The profile store (SQLite embedded, HBase on the cluster)."""


@store_group.command("init")
@pass_ctx
def store_init(c: CliContext) -> None:
    """Create the profile store's tables if missing (idempotent). Prints `created` or `exists`."""
    from cluster.core.storage import open_profile_store

    store = open_profile_store(c.settings)
    created = store.ensure_schema()
    where = getattr(store, "table_name", None) or getattr(store, "path", "")
    console.print(f"{'created' if created else 'exists'}: {where}", highlight=False)
