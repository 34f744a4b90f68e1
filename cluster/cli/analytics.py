"""`pmkt audience | funnel | goal-gap | pricing ... | report`: the analytics of the lake and the
registry from the command line, computed here (no server needed). Service answers print as JSON in the
API's own shape; the same requests go over gRPC and HTTP through ``MarketingClient``."""

from __future__ import annotations

from pathlib import Path

import click

from cluster.cli.context import CliContext, pass_ctx
from cluster.cli.experiment import _print  # the API's JSON shape, as `pmkt experiment` prints it
from cluster.cli.progress import console, progress_bar

__all__ = ["audience_cmd", "funnel_cmd", "goal_gap_cmd", "pricing_group", "report_cmd"]


@click.command("audience")
@click.option("--level", "levels", multiple=True, metavar="LEVEL",
              help="Consumption level to keep (repeat for several; tags.consumption_bands names).")
@click.option("--segment", "segments", multiple=True, metavar="NAME",
              help="Segment name to keep (repeat for several; needs a segments model).")
@click.option("--max-recency-days", type=click.IntRange(0), default=None, help="Last paid order at most this old.")
@click.option("--min-frequency", type=click.IntRange(0), default=None, help="At least this many paid orders.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the audience as CSV (user_id, level, spend, RFM); without it only counts print.")
@click.pass_obj
def audience_cmd(c, levels, segments, max_recency_days, min_frequency, out: Path | None) -> None:
    """Select the users a campaign targets by consumption level, segment and recency.

    \b
    Reads the newest RFM table (`pmkt features rfm`), e.g.:
      pmkt audience --level high --level premium --max-recency-days 90 --out vip.csv
      pmkt audience --segment champions --level medium
    Consent is checked per message by the channel service, not here.
    """
    from cluster.core.storage import open_lake
    from ray_apps.audiences import select_audience

    settings = c.settings
    lake = open_lake(settings)
    segment_of = None
    if segments:
        from ray_apps.registry import open_registry
        from ray_apps.segments.service import user_segments_of

        model, _ = open_registry(settings, lake).load("segments")
        segment_of = lambda frame: user_segments_of(lake, model).reindex(frame["user_id"]).fillna("")  # noqa: E731
    frame, meta = select_audience(lake, levels=levels, segments=segments, segment_of=segment_of,
                                  max_recency_days=max_recency_days, min_frequency=min_frequency,
                                  known_levels=list(settings.tags.consumption_bands))
    counts = frame["consumption_level"].value_counts()
    summary = ", ".join(f"{n} {int(counts.get(n, 0)):,}" for n in settings.tags.consumption_bands)
    click.echo(f"audience: {len(frame):,} users (RFM run {meta['run_id']}, as of {meta.get('as_of', '?')}): {summary}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False)
        click.echo(f"written to {out}")


@click.command("funnel")
@click.option("--name", default="default", show_default=True, help="A funnel of funnels.definitions.")
@click.option("--by", type=click.Choice(["", "segment", "channel", "device"]), default="", show_default=True,
              help="Group users by segment, ad channel (last click) or device of the first step.")
@click.option("--from", "from_date", default="", help="First day of the first step, YYYY-MM-DD.")
@click.option("--to", "to_date", default="", help="Last day of the first step, YYYY-MM-DD.")
@click.pass_obj
def funnel_cmd(c, name: str, by: str, from_date: str, to_date: str) -> None:
    """Users at each step of a funnel, conversion and drop-off between steps, and the median time
    between steps, from the newest funnel table (`pmkt features funnels`; an ad-hoc funnel:
    `pmkt features funnels --steps view,cart,purchase --window-hours 48 --name quick`)."""
    from cluster.core.storage import open_lake
    from protos.marketing.v1 import funnel_pb2
    from ray_apps.funnels.funnel import NO_SEGMENT, load_funnel_table
    from ray_apps.funnels.service import get_funnel

    settings = c.settings
    lake = open_lake(settings)
    segment_of = None
    if by == "segment":
        from ray_apps.registry import open_registry
        from ray_apps.segments.service import user_segments_of

        model, _ = open_registry(settings, lake).load("segments")
    table = load_funnel_table(lake)
    if by == "segment":
        segments = user_segments_of(lake, model, known_users=table.frame["user_id"].unique())
        segment_of = lambda ids: [segments.get(u, NO_SEGMENT) for u in ids]  # noqa: E731
    request = funnel_pb2.GetFunnelRequest(funnel=name, group_by=by, from_date=from_date, to_date=to_date)
    _print(get_funnel(request, table, segment_of))


@click.command("goal-gap")
@click.argument("campaign_id", required=False)
@click.option("--end-date", default="", help="The campaign's last day, YYYY-MM-DD (or --duration-days).")
@click.option("--duration-days", type=click.IntRange(1, 3660), default=None, help="The campaign's length in days.")
@click.option("--start-date", default="", help="First day (default: the first day with results).")
@click.option("--as-of", default="", help="Last day counted (default: the last day with results).")
@click.option("--target", "targets", multiple=True, metavar="METRIC=VALUE",
              help="A target, e.g. conversions=500, roi=3, budget=20000 (repeat; metrics: reach, impressions, "
                   "clicks, ctr, conversions, revenue, roi, budget).")
@click.pass_obj
def goal_gap_cmd(c, campaign_id: str | None, end_date: str, duration_days: int | None, start_date: str,
                 as_of: str, targets: tuple[str, ...]) -> None:
    """A campaign against its targets: attained, gap, trend and the projection to its last day,
    from the newest campaign_daily table (`pmkt features campaigns`).

    \b
    Without CAMPAIGN_ID every campaign of evaluation.goals (settings) is analysed, e.g.:
      pmkt goal-gap cmp001 --duration-days 240 --target conversions=150 --target budget=2000
      pmkt goal-gap
    """
    from cluster.core.errors import InvalidArgument
    from cluster.core.storage import open_lake
    from protos.marketing.v1 import experiment_pb2 as pb
    from ray_apps.evaluation.campaigns import CampaignDaily
    from ray_apps.evaluation.goals import METRICS
    from ray_apps.evaluation.service import goal_gap_of, goal_request

    settings = c.settings
    daily = CampaignDaily(open_lake(settings))
    if campaign_id is None:
        if not settings.evaluation.goals:
            raise InvalidArgument("give CAMPAIGN_ID and targets, or set evaluation.goals", field="campaign_id")
        for cid, goal in settings.evaluation.goals.items():
            _print(goal_gap_of(goal_request(cid, goal, as_of), daily))
        return
    parsed = {}
    for t in targets:
        metric, sep, value = t.partition("=")
        if not sep or metric not in METRICS:
            raise InvalidArgument(f"--target {t!r}: write METRIC=VALUE with METRIC one of {', '.join(METRICS)}",
                                  field="target")
        try:
            parsed[metric] = float(value)
        except ValueError:
            raise InvalidArgument(f"--target {t!r}: {value!r} is not a number", field=f"targets.{metric}") from None
    _print(goal_gap_of(pb.GoalGapRequest(campaign_id=campaign_id, targets=pb.GoalTargets(**parsed),
                                         start_date=start_date, end_date=end_date, as_of=as_of,
                                         duration_days=duration_days or 0), daily))


@click.group("pricing")
def pricing_group() -> None:
    """Demand forecast per weekday-hour slot and off-peak discounts (docs/pricing.md).

    \b
    From the current `demand` model (`pmkt features demand`, then `pmkt tune demand`):
      pmkt pricing forecast 食品
      pmkt pricing discounts 食品 --budget 3000 --max-discount 0.2
    """


def _advisor(settings):
    from cluster.core.storage import open_lake
    from ray_apps.pricing.service import PricingAdvisor
    from ray_apps.registry import open_registry

    model, version = open_registry(settings).load("demand")
    return PricingAdvisor(model, version, settings.pricing)


@pricing_group.command("forecast")
@click.argument("category")
@click.option("--price-ratio", type=float, default=0.0, help="Price / list price, (0, 1.5]; default 1.")
@click.pass_obj
def pricing_forecast(c, category: str, price_ratio: float) -> None:
    """Expected orders of CATEGORY in each of the 168 slots of a coming week."""
    from protos.marketing.v1 import pricing_pb2

    _print(_advisor(c.settings).forecast(pricing_pb2.ForecastDemandRequest(category=category,
                                                                           price_ratio=price_ratio)))


@pricing_group.command("discounts")
@click.argument("category")
@click.option("--budget", type=float, required=True, help="Most the discounts may give away in a week, CNY.")
@click.option("--max-discount", type=float, default=None, help="Highest discount (default pricing.max_discount).")
@click.option("--margin-rate", type=float, default=None, help="Gross margin share (default pricing.margin_rate).")
@click.option("--offpeak-quantile", type=float, default=None,
              help="Slots at or below this demand quantile may be discounted (default pricing.offpeak_quantile).")
@click.pass_obj
def pricing_discounts(c, category: str, budget: float, max_discount, margin_rate, offpeak_quantile) -> None:
    """The discount of each slot of CATEGORY that maximises the week's expected margin."""
    from protos.marketing.v1 import pricing_pb2

    request = pricing_pb2.ProposeDiscountsRequest(category=category, budget=budget)
    for name, value in (("max_discount", max_discount), ("margin_rate", margin_rate),
                        ("offpeak_quantile", offpeak_quantile)):
        if value is not None:
            setattr(request, name, value)
    _print(_advisor(c.settings).propose(request))


@click.command("report")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write (default: evaluation.report_dir/report.html).")
@pass_ctx
def report_cmd(c: CliContext, output: Path | None) -> None:
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
