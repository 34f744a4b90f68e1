"""`pmkt report`: one self-contained HTML file with the platform's results as pictures.

Every figure is an inline SVG drawn by matplotlib, so the file opens offline, from an e-mail
or a shared drive, with nothing else beside it. Sections:

1. segments: sizes, centroids, and the elbow and silhouette of the k search;
2. the CTR model: ROC on the test split and calibration;
3. churn: mean survival curves by segment (active users without a paid order as ``no_purchases``);
4. recommendations: the served model against the popularity baselines;
5. campaigns: ROI and CTR lift by channel and by segment (impressed users without a paid order
   as ``no_purchases``; last-click attribution), campaign CTR differences
   with 95 % intervals (A/B-style comparisons against the other campaigns; significance after
   Holm's correction), and the budget allocation of the article's example;
6. campaign goals: each campaign of ``evaluation.goals`` against its targets, attained and
   projected to its end;
7. funnels: users per step of the default funnel, by device and by segment, with conversion
   and the median time between steps;
8. consumption level: users per level of average monthly spend;
9. predicted attributes: held-out accuracy against the majority class and calibration;
10. demand and time-slot discounts: the weekly demand forecast by slot, its held-out error, the
   elasticity per category, and a discount plan for the most price-elastic category.

A section whose inputs do not exist yet (no churn model, no campaign table) says what to run
instead of failing the report. Each figure is a ``<figure data-plot="<id>">``; a small script
marks each one with its rendered size (``data-rendered``), which the headless-Chromium test
reads back.
"""

from __future__ import annotations

import functools
import html
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.errors import FailedPrecondition, NotFound
from cluster.core.settings import Settings
from ray_apps.segments.service import NO_PURCHASES_NAME, user_segments_of

__all__ = ["PLOT_IDS", "Section", "build_report", "mean_survival", "plot_count", "render_html", "write_report"]

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]

#: Every figure a complete report holds, in order.
PLOT_IDS = ("segment-sizes", "segment-centroids", "segment-elbow", "ctr-roc", "ctr-calibration",
            "churn-survival", "recs-metrics", "roi-by-channel", "campaign-ab", "budget-allocation", "goal-gap",
            "funnel-steps", "consumption-levels", "attribute-calibration", "demand-forecast", "discount-plan")
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf"]


@dataclass
class Figure:
    plot_id: str
    caption: str
    svg: str


@dataclass
class Section:
    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # HTML fragments
    missing: str = ""  # why the section is empty, and what to run


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float = 6.4, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt.subplots(figsize=(width, height))


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, classes="data", na_rep="–", float_format=lambda v: f"{v:,.4g}")


# -- sections ------------------------------------------------------------------------------------

def _segments(registry) -> tuple[Section, Any]:
    section = Section("Customer segments", "K-means on log RFM and predicted CLV; k chosen by silhouette.")
    model, version = registry.load("segments")
    rows = model.describe()
    names = [r["name"] for r in rows]
    fig, ax = _figure()
    ax.bar(names, [r["size"] for r in rows], color=_PALETTE[: len(rows)])
    ax.set_ylabel("users")
    ax.set_title(f"Segment sizes (segments {version.version})")
    ax.tick_params(axis="x", rotation=20)
    section.figures.append(Figure("segment-sizes", "Users per segment in the training data.", _svg(fig)))

    cols = [c for c in ("recency_days", "frequency", "monetary", "clv_predicted") if c in rows[0]]
    values = np.array([[r[c] for c in cols] for r in rows], float)
    scaled = (values - values.mean(axis=0)) / np.where(values.std(axis=0) > 0, values.std(axis=0), 1)
    fig, ax = _figure(6.4, 0.6 + 0.5 * len(rows))
    ax.imshow(scaled, cmap="RdBu_r", aspect="auto", vmin=-2, vmax=2)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), names)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{values[i, j]:,.1f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(scaled[i, j]) > 1.2 else "black")
    ax.set_title("Segment centroids (colour: above / below the average segment)")
    section.figures.append(Figure("segment-centroids", "Centroids in original units.", _svg(fig)))

    elbow = sorted(version.metrics.get("elbow", []), key=lambda r: r["k"])
    if elbow:
        fig, ax = _figure()
        ks = [r["k"] for r in elbow]
        ax.plot(ks, [r["inertia"] for r in elbow], "o-", color=_PALETTE[0], label="inertia")
        ax.set_xlabel("k")
        ax.set_ylabel("inertia", color=_PALETTE[0])
        ax2 = ax.twinx()
        ax2.plot(ks, [r["silhouette"] for r in elbow], "s--", color=_PALETTE[1], label="silhouette")
        ax2.set_ylabel("silhouette", color=_PALETTE[1])
        chosen = version.metrics.get("chosen_k")
        if chosen:
            ax.axvline(chosen, color="grey", lw=0.8, ls=":")
        ax.set_title(f"Elbow and silhouette of the k search (chosen k = {chosen})")
        section.figures.append(Figure("segment-elbow", "Inertia falls with every k; the silhouette peaks at the "
                                      "chosen k.", _svg(fig)))
    anova = version.metrics.get("clv_across_segments")
    if anova:
        section.tables.append(_table(pd.DataFrame([{
            "metric": "predicted CLV across segments", "ANOVA F": anova["anova_f"], "p": anova["anova_p"],
            "eta squared": anova["eta_squared"], "Kruskal-Wallis H": anova["kruskal_h"],
            "p (KW)": anova["kruskal_p"]}])))
    # Chinese names stay out of the table: a machine without CJK fonts would draw boxes.
    section.tables.append(_table(pd.DataFrame(rows).drop(columns=["name_zh"], errors="ignore")))
    return section, model


def _ctr(registry, lake) -> Section:
    from sklearn.metrics import roc_auc_score, roc_curve

    from cluster.core.feature_io import load_ctr_matrix

    section = Section("Click-through rate model", "Logistic regression; metrics on the time-ordered test split.")
    model, version = registry.load("ctr")
    test = load_ctr_matrix(lake, "test", run_id=version.feature_run_id)
    p = model.predict_proba(test.X)
    fpr, tpr, _ = roc_curve(test.y, p)
    auc = roc_auc_score(test.y, p)
    fig, ax = _figure(4.8, 4.2)
    ax.plot(fpr, tpr, color=_PALETTE[0], label=f"ctr {version.version} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    ax.set_title("ROC on the test split")
    section.figures.append(Figure("ctr-roc", f"{len(test.y):,} test impressions, click rate "
                                  f"{test.y.mean():.2%}.", _svg(fig)))
    cal = version.metrics.get("calibration") or []
    if cal:
        fig, ax = _figure(4.8, 4.2)
        pred = [c["mean_predicted"] for c in cal]
        obs = [c["observed_rate"] for c in cal]
        top = max(pred + obs) * 1.1
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--", label="perfect")
        ax.plot(pred, obs, "o-", color=_PALETTE[1], label="deciles of predicted CTR")
        ax.set_xlabel("mean predicted CTR")
        ax.set_ylabel("observed CTR")
        ax.legend(loc="upper left")
        ax.set_title("Calibration")
        section.figures.append(Figure("ctr-calibration", "Observed against predicted click rate by decile.",
                                      _svg(fig)))
    return section


def mean_survival(curves: list[list[list[float]]], step: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """The mean of survival curves ``[[day, S(day)], ...]`` on a common grid of days.

    Curves end at different days (each user's horizon depends on their tenure), so the mean
    is taken where every curve is defined: from day 0 to the shortest curve's last day, each
    curve interpolated between its own points.
    """
    if not curves or any(not c for c in curves):
        raise FailedPrecondition("no survival curves to average")
    last = min(c[-1][0] for c in curves)
    days = np.unique(np.append(np.arange(0, last + 1, step), last)).astype(float)
    values = [np.interp(days, [d for d, _ in c], [s for _, s in c]) for c in curves]
    return days, np.mean(values, axis=0)


#: user_id -> segment name; users passed in without RFM features come back as no_purchases.
UserSegments = Callable[..., pd.Series]


def _churn(registry, lake, user_segments: UserSegments, per_segment: int = 200) -> Section:
    from cluster.core.feature_io import load_churn_frame

    section = Section("Churn", "Survival: the probability that a customer is still active, by segment.")
    model, version = registry.load("churn")
    frame, _ = load_churn_frame(lake)
    active = frame[frame["churned"] == 0] if "churned" in frame else frame
    # Active users include some who never paid (behaviour only): they are no_purchases, not dropped.
    segments = user_segments(active["user_id"])
    active = active.assign(segment=active["user_id"].map(segments)).dropna(subset=["segment"])
    fig, ax = _figure()
    for i, (name, group) in enumerate(sorted(active.groupby("segment"), key=lambda kv: kv[0])):
        sample = group.sample(n=min(per_segment, len(group)), random_state=1)
        days, mean = mean_survival([c["survival"] for c in model.predict_users(sample, curve_step_days=7)])
        reserved = name == NO_PURCHASES_NAME  # not a K-means segment: drawn apart
        ax.plot(days, mean, color="grey" if reserved else _PALETTE[i % len(_PALETTE)],
                linestyle="--" if reserved else "-", label=f"{name} (n={len(sample)})")
    ax.set_xlabel("days from today")
    ax.set_ylabel("P(still active)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"Mean survival by segment (churn {version.version}, "
                 f"concordance {version.metrics.get('concordance', float('nan')):.3f})")
    section.figures.append(Figure("churn-survival", "Active customers only; a sample per segment. Dashed: "
                                  f"{NO_PURCHASES_NAME}, active users without a paid order.", _svg(fig)))
    return section


def _recs(registry) -> Section:
    section = Section("Recommendations", "Validation metrics at 10 against the popularity baselines.")
    version = registry.get("recs")
    m = version.metrics
    metrics = ("precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10")
    models = [("served", "val_"), ("popularity", "popularity_val_"), ("category popularity", "category_popularity_val_")]
    fig, ax = _figure()
    width = 0.8 / len(models)
    for i, (label, prefix) in enumerate(models):
        ax.bar(np.arange(len(metrics)) + i * width, [m.get(prefix + k, 0.0) for k in metrics], width,
               label=label, color=_PALETTE[i])
    ax.set_xticks(np.arange(len(metrics)) + width, [k.replace("_at_10", "@10") for k in metrics])
    ax.legend()
    ax.set_title(f"Recommendation quality (recs {version.version})")
    section.figures.append(Figure("recs-metrics", "Per-user 75/25 split of the interactions.", _svg(fig)))
    return section


def _campaigns(settings: Settings, lake, user_segments: UserSegments | None) -> Section:
    from cluster.core.catalog import CAMPAIGNS
    from cluster.core.feature_io import load_latest
    from ray_apps.budget import Channel, optimize_budget
    from ray_apps.evaluation.abtest import adjust_pvalues, two_proportion_ztest
    from ray_apps.evaluation.campaigns import campaign_metrics

    section = Section("Campaigns and budget",
                      "Last-click attribution: an order counts for the user's latest click within "
                      f"{settings.evaluation.attribution_window_days} days. ROI is revenue per unit spent; "
                      "attribution credits clicks with orders that might have happened anyway, so read ROI as "
                      "an upper bound and compare channels with each other.")
    table, meta = load_latest(lake, CAMPAIGNS)
    channels = [g for g in campaign_metrics(table, "channel") if g.impressions > 0]
    fig, ax = _figure()
    names = [g.group for g in channels]
    roi = [g.roi if g.roi is not None else 0.0 for g in channels]
    bars = ax.bar(names, roi, color=_PALETTE[: len(names)])
    for bar, g in zip(bars, channels):
        label = "no cost" if g.roi is None else (f"{g.roi:,.0f}" if g.roi >= 100 else f"{g.roi:,.2f}")
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylabel("revenue per unit spent")
    ax.set_title("ROI by channel")
    section.figures.append(Figure("roi-by-channel", "Channels with no recorded cost have no ROI.", _svg(fig)))
    def metrics_table(groups, label: str) -> str:
        return _table(pd.DataFrame([{
            label: g.group, "impressions": g.impressions, "clicks": g.clicks, "CTR": g.ctr, "CTR lift": g.ctr_lift,
            "conversions": g.conversions, "conversion / click": g.conversion_rate, "revenue": g.revenue,
            "cost": g.cost, "CPA": g.cpa, "ROI": g.roi} for g in groups]))

    section.tables.append(metrics_table(channels, "channel"))
    if user_segments is not None:
        # Impressed users without a paid order are no_purchases; (none) is left for buyers the model
        # cannot place yet (no CLV).
        section.tables.append(metrics_table(campaign_metrics(table, "segment", user_segments(table["user_id"])),
                                            "segment"))

    # Each campaign's CTR against all other campaigns: a z-test per campaign, Holm over all.
    sums = table.groupby("campaign_id")[["impressions", "clicks"]].sum()
    total = sums.sum()
    sums = sums[sums["impressions"] >= 100].sort_values("impressions", ascending=False).head(20)
    if len(sums) < 2:
        section.missing = (f"campaign comparisons need two or more campaigns with 100+ impressions; the campaign "
                           f"table has {len(sums)}")
    else:
        tests = [two_proportion_ztest(int(total.clicks - r.clicks), int(total.impressions - r.impressions),
                                      int(r.clicks), int(r.impressions)) for r in sums.itertuples()]
        adjusted = adjust_pvalues([t.p_value for t in tests], "holm")
        order = np.argsort([t.difference for t in tests])
        fig, ax = _figure(6.4, 0.8 + 0.28 * len(tests))
        for row, i in enumerate(order):
            t = tests[i]
            colour = _PALETTE[3] if adjusted[i] < 0.05 else "grey"
            err = [[(t.difference - t.ci_low) * 100], [(t.ci_high - t.difference) * 100]]
            ax.errorbar(t.difference * 100, row, xerr=err, fmt="o", color=colour, capsize=2)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(order)), [sums.index[i] for i in order])
        ax.set_xlabel("CTR minus the other campaigns' CTR (percentage points, unadjusted 95% interval)")
        ax.set_title("Campaign CTR comparisons (red: significant after Holm)")
        section.figures.append(Figure(
            "campaign-ab", f"Two-proportion z-tests of the {len(sums)} largest campaigns, each against all others; "
            "impressions are treated as independent, though one user sees several, so the intervals are somewhat "
            "narrow.", _svg(fig)))

    # The article's budget example, solved (docs/budget.md).
    article = [Channel(name=n, cost=c, roi=r, max_placements=hi, min_placements=lo) for n, c, r, hi, lo in (
        ("feed", 50, 3.2, 10_000, 2_000), ("search", 80, 4.5, 6_000, 1_500), ("short_video", 30, 2.8, 15_000, 3_000))]
    plan = optimize_budget(article, 1_130_000)
    fig, ax = _figure()
    spend = [plan.spend[c.name] for c in article]
    ax.bar([c.name for c in article], spend, color=_PALETTE[:3])
    for i, c in enumerate(article):
        ax.annotate(f"{plan.placements[c.name]:,.0f} placements", (i, spend[i]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("spend (CNY)")
    ax.set_title(f"Budget allocation, the article's example: revenue {plan.revenue:,.0f} CNY")
    section.figures.append(Figure("budget-allocation", "Linear programme (PuLP): revenue maximised under the "
                                  "budget and each channel's placement bounds.", _svg(fig)))
    return section


def _funnels(settings: Settings, lake, user_segments: UserSegments | None) -> Section:
    from ray_apps.funnels.funnel import NO_SEGMENT, funnel_stats, load_funnel_table

    table = load_funnel_table(lake)
    name = "default" if "default" in table.definitions else next(iter(table.definitions))
    definition = table.definitions[name]
    overall, by_device = funnel_stats(table, name, "device")
    section = Section("Funnels",
                      f"Funnel {name}: {' > '.join(definition['steps'])} within {definition['window_hours']:g} hours "
                      "of the first step (windowFunnel semantics, docs/funnels.md), from the behaviour events.")
    fig, ax = _figure()
    steps = [s.action for s in overall.steps]
    x = np.arange(len(steps))
    ax.bar(x, [s.users for s in overall.steps], color=_PALETTE[0], alpha=0.35, label="all users")
    for i, g in enumerate(sorted(by_device, key=lambda g: -g.users)[:5]):
        first = max(g.users, 1)
        ax.plot(x, [overall.users * s.users / first for s in g.steps], "o-", color=_PALETTE[i + 1],
                label=f"{g.group} (scaled)")
    for xi, s in zip(x, overall.steps):
        ax.annotate(f"{s.users:,}", (xi, s.users), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, steps)
    ax.set_ylabel("users reaching the step")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"Funnel {name}: users per step, and per device scaled to the same start")
    section.figures.append(Figure("funnel-steps", "Bars: users who reached each step; lines: each device's "
                                  "conversion from the first step, scaled to all users.", _svg(fig)))

    def rows(groups, label):
        out = []
        for g in groups:
            row = {label: g.group, "entered": g.users}
            for s in g.steps[1:]:
                row[f"{s.action} / previous"] = s.conversion_from_previous
                row[f"median s to {s.action}"] = s.median_s_from_previous
            row["converted (last / first)"] = g.steps[-1].conversion_from_first
            out.append(row)
        return pd.DataFrame(out)

    section.tables.append(_table(rows([overall, *by_device], "device")))
    if user_segments is not None:
        segments = user_segments(table.frame["user_id"].unique())  # non-buyers are no_purchases
        _, by_segment = funnel_stats(table, name, "segment",
                                     segment_of=lambda ids: [segments.get(u, NO_SEGMENT) for u in ids])
        section.tables.append(_table(rows(by_segment, "segment")))
    return section


def _attributes(registry, lake) -> Section:
    from cluster.core.catalog import ATTRIBUTES
    from cluster.core.feature_io import load_latest

    model, version = registry.load("attributes")
    m = version.metrics
    target = m.get("target", "gender")
    section = Section(f"Predicted {target}",
                      f"A classifier of {target} from behaviour (category, device and hour shares), trained on users "
                      "who declared it and measured on held-out declared users. A prediction is stored only at "
                      f"probability {m.get('min_probability', 0):.2f} or more, marked as predicted, and never "
                      "replaces a declared value.")
    rows = [r for r in m.get("reliability", []) if r.get("count")]
    fig, ax = _figure(5.0, 3.6)
    ax.plot([0.5, 1], [0.5, 1], ls=":", color="grey", lw=0.8, label="perfectly calibrated")
    ax.plot([r["mean_predicted"] for r in rows], [r["observed_rate"] for r in rows], "o-", color=_PALETTE[0],
            label=f"model {version.version}")
    for r in rows:
        ax.annotate(f"{r['count']}", (r["mean_predicted"], r["observed_rate"]), fontsize=7, xytext=(3, -9),
                    textcoords="offset points")
    ax.set_xlabel("predicted probability of the chosen value")
    ax.set_ylabel("observed share correct")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"Calibration on {m.get('test_users', 0):,} held-out users (ECE {m.get('test_ece', float('nan')):.3f})")
    section.figures.append(Figure("attribute-calibration", "Numbers: held-out users per bin.", _svg(fig)))
    table = {"held-out accuracy": m.get("test_accuracy"),
             f"majority class ({m.get('majority_class')}) accuracy": m.get("majority_accuracy"),
             "log loss": m.get("test_log_loss"), "log loss of the class prior": m.get("prior_log_loss"),
             "Brier score": m.get("test_brier"), "stored share (coverage)": m.get("test_coverage"),
             "accuracy of stored predictions": m.get("test_stored_accuracy")}
    features, _ = load_latest(lake, ATTRIBUTES, ["user_id", "declared"])
    table["users without a declared value"] = int(features["declared"].fillna("").eq("").sum())
    section.tables.append(_table(pd.DataFrame([{"metric": k, "value": v} for k, v in table.items()])))
    return section


def _consumption(settings: Settings, lake) -> Section:
    from cluster.core.catalog import RFM
    from cluster.core.feature_io import load_latest

    table, meta = load_latest(lake, RFM)
    if "consumption_level" not in table.columns:
        raise FailedPrecondition("the RFM table predates consumption levels: run `pmkt features rfm` again")
    bands = sorted(settings.tags.consumption_bands.items(), key=lambda kv: kv[1])
    section = Section("Consumption level",
                      f"Average monthly spend over the last {settings.tags.consumption_months} months (a new customer "
                      "is averaged over the months since their first order), in the bands of tags.consumption_bands. "
                      "Use the levels in audiences: `pmkt audience --level high --level premium`.")
    counts = table["consumption_level"].value_counts()
    names = [n for n, _ in bands]
    fig, ax = _figure()
    bars = ax.bar(names, [int(counts.get(n, 0)) for n in names], color=_PALETTE[: len(names)])
    for bar, n in zip(bars, names):
        ax.annotate(f"{int(counts.get(n, 0)):,}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("users with a paid order")
    ax.set_title(f"Users per consumption level (RFM run {meta['run_id']})")
    section.figures.append(Figure("consumption-levels", "Lower bound of each level: " + ", ".join(
        f"{n} {b:,.0f} CNY/month" for n, b in bands) + ".", _svg(fig)))
    grouped = table.groupby("consumption_level").agg(
        users=("user_id", "count"), mean_monthly_spend=("avg_monthly_spend", "mean"),
        median_frequency=("frequency", "median"), median_recency_days=("recency_days", "median"))
    section.tables.append(_table(grouped.reindex([n for n in names if n in grouped.index]).reset_index()
                                 .rename(columns={"consumption_level": "level"})))
    return section


def _goals(settings: Settings, lake) -> Section:
    from ray_apps.evaluation.campaigns import CampaignDaily
    from ray_apps.evaluation.service import goal_gap_of, goal_request

    goals = settings.evaluation.goals
    if not goals:
        raise FailedPrecondition("no campaign targets in settings (evaluation.goals)")
    section = Section("Campaign goals",
                      "Each campaign of evaluation.goals against its targets: attained so far and projected to its "
                      "last day along the linear trend of the last 14 days (budget: spend, a cap).")
    daily = CampaignDaily(lake)
    rows, answers = [], []
    for campaign, goal in list(goals.items())[:6]:
        answer = goal_gap_of(goal_request(campaign, goal), daily)
        answers.append(answer)
        for g in answer.goals:
            rows.append({"campaign": campaign, "as of": answer.as_of, "end": answer.end_date, "metric": g.metric,
                         "target": g.target, "attained": g.attained, "gap": g.gap,
                         "trend / day": g.trend_per_day, "projected": g.projected if g.HasField("projected") else None,
                         "on track": ("yes" if g.on_track else "no") if g.HasField("on_track") else "–",
                         "needed / day": g.required_per_day if g.HasField("required_per_day") else None})
    labels = [f"{r['campaign']} {r['metric']}" for r in rows]
    attained = [100 * r["attained"] / r["target"] if r["target"] else 0.0 for r in rows]
    projected = [100 * (r["projected"] or 0.0) / r["target"] if r["target"] else 0.0 for r in rows]
    fig, ax = _figure(6.4, 0.9 + 0.35 * len(rows))
    y = np.arange(len(rows))
    ax.barh(y + 0.2, attained, height=0.4, color=_PALETTE[0], label="attained")
    ax.barh(y - 0.2, projected, height=0.4, color=_PALETTE[1], label="projected at the end")
    ax.axvline(100, color="grey", lw=0.8, ls=":")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("% of target")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("Campaign goals: attained and projected, % of target")
    section.figures.append(Figure("goal-gap", "Budget is a cap: on track while the projected spend stays under "
                                  "100 %. " + "; ".join(f"{a.campaign_id}: day {a.days_elapsed} of "
                                                        f"{a.days_elapsed + a.days_remaining}" for a in answers) + ".",
                                  _svg(fig)))
    section.tables.append(_table(pd.DataFrame(rows)))
    return section


def _pricing(settings: Settings, registry) -> Section:
    from ray_apps.pricing.discounts import propose_discounts

    model, version = registry.load("demand")
    m = version.metrics
    p = settings.pricing
    section = Section(
        "Demand and time-slot discounts",
        "A Poisson model of paid orders per category, date and hour (hour-of-day, weekday, trend and the "
        "log price index per category) gives each category's weekly demand by slot and its own-price elasticity. "
        f"Held-out error over the last {m.get('holdout_days', '?')} days, per category x weekday x hour: "
        f"MAPE {m.get('holdout_mape_slot', float('nan')):.1%}, R² {m.get('holdout_r2_slot', float('nan')):.3f}; "
        f"per category x day: MAPE {m.get('holdout_mape_day', float('nan')):.1%}, "
        f"R² {m.get('holdout_r2_day', float('nan')):.3f}. The discounts assume a discount moves no demand "
        "from other slots or categories (docs/pricing.md).")
    cats = list(model.categories_)
    # The category with the most demand leads the figures.
    weekly = {c: model.weekly_demand(c) for c in cats}
    lead = max(cats, key=lambda c: weekly[c].sum())
    fig, ax = _figure(6.4, 2.6)
    image = ax.imshow(weekly[lead], aspect="auto", cmap="viridis")
    ax.set_yticks(range(7), ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
    ax.set_xticks(range(0, 24, 3), [f"{h}:00" for h in range(0, 24, 3)])
    fig.colorbar(image, ax=ax, label="orders / week")
    ax.set_title(f"Forecast orders per slot, the largest category (demand {version.version})")
    section.figures.append(Figure("demand-forecast", f"Category {lead}: expected paid orders in each hour of a coming "
                                  "week at list price.", _svg(fig)))
    elastic = max(cats, key=lambda c: model.elasticity_[c])
    base = weekly[elastic]
    budget = p.report_budget_share * float(base.sum()) * model.order_value_[elastic]
    plan = propose_discounts(base, elasticity=model.elasticity_[elastic], order_value=model.order_value_[elastic],
                             margin_rate=p.margin_rate, budget=budget, levels=p.discount_levels,
                             max_discount=p.max_discount, offpeak_quantile=p.offpeak_quantile)
    grid = np.array([s.discount for s in plan.slots]).reshape(7, 24) * 100
    fig, ax = _figure(6.4, 2.6)
    image = ax.imshow(grid, aspect="auto", cmap="Oranges", vmin=0, vmax=max(100 * p.max_discount, 1))
    ax.set_yticks(range(7), ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
    ax.set_xticks(range(0, 24, 3), [f"{h}:00" for h in range(0, 24, 3)])
    fig.colorbar(image, ax=ax, label="discount %")
    ax.set_title("Proposed off-peak discounts, the most price-elastic category")
    section.figures.append(Figure(
        "discount-plan", f"Category {elastic} (elasticity {model.elasticity_[elastic]:.2f}), margin rate "
        f"{p.margin_rate:.0%}, budget {budget:,.0f} CNY a week ({p.report_budget_share:.0%} of list revenue): "
        f"expected margin {plan.expected_margin:,.0f} CNY against {plan.base_margin:,.0f} without discounts, "
        f"{plan.discount_spend:,.0f} CNY spent ({plan.status}).", _svg(fig)))
    section.tables.append(_table(pd.DataFrame([{
        "category": c, "elasticity": model.elasticity_[c], "standard error": model.elasticity_se_[c],
        "orders / week": weekly[c].sum(), "order value (CNY)": model.order_value_[c],
        "discount pays (e x margin > 1)": "yes" if model.elasticity_[c] * p.margin_rate > 1 else "no"}
        for c in cats])))
    return section


def build_report(settings: Settings, progress: Progress | None = None) -> list[Section]:
    """Compute every section; a missing input leaves its section with a note, not an error."""
    from cluster.core.storage import open_lake
    from ray_apps.registry import open_registry

    step = progress or (lambda _s, _f: None)
    lake = open_lake(settings)
    registry = open_registry(settings, lake)
    sections: list[Section] = []

    def attempt(title: str, hint: str, fn: Callable[[], Section | tuple[Section, Any]]) -> Any:
        try:
            got = fn()
        except (FailedPrecondition, NotFound) as err:
            sections.append(Section(title, missing=f"{err.message} ({hint})"))
            return None
        section, extra = got if isinstance(got, tuple) else (got, None)
        sections.append(section)
        return extra

    step("segments", 0.0)
    segment_model = attempt("Customer segments", "run `pmkt tune segments`", lambda: _segments(registry))
    # Users' segments for the sections that group by them; a section passes the users it covers,
    # and those of them without RFM features (no paid order) come back as no_purchases.
    user_segments = None if segment_model is None else functools.partial(user_segments_of, lake, segment_model)
    step("ctr", 0.2)
    attempt("Click-through rate model", "run `pmkt features tables` and `pmkt tune ctr`", lambda: _ctr(registry, lake))
    step("churn", 0.4)
    if user_segments is None:
        sections.append(Section("Churn", missing="survival by segment needs a segments model (run `pmkt tune segments`)"))
    else:
        attempt("Churn", "run `pmkt features tables` and `pmkt tune churn`",
                lambda: _churn(registry, lake, user_segments))
    step("recommendations", 0.6)
    attempt("Recommendations", "run `pmkt tune recs`", lambda: _recs(registry))
    step("campaigns", 0.7)
    attempt("Campaigns and budget", "run `pmkt features campaigns`", lambda: _campaigns(settings, lake, user_segments))
    attempt("Campaign goals", "set evaluation.goals and run `pmkt features campaigns`", lambda: _goals(settings, lake))
    attempt("Funnels", "run `pmkt features funnels`", lambda: _funnels(settings, lake, user_segments))
    step("profiles and pricing", 0.85)
    attempt("Consumption level", "run `pmkt features rfm`", lambda: _consumption(settings, lake))
    attempt("Predicted attributes", "run `pmkt features attributes` and `pmkt tune attributes`",
            lambda: _attributes(registry, lake))
    attempt("Demand and time-slot discounts", "run `pmkt features demand` and `pmkt tune demand`",
            lambda: _pricing(settings, registry))
    step("done", 1.0)
    return sections


_STYLE = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:2rem auto;max-width:62rem;
color:#222;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2.2rem}
.meta{color:#666;font-size:.85rem}.missing{background:#fff6e0;border-left:4px solid #f0b400;padding:.6rem .8rem}
figure{margin:1.2rem 0;display:inline-block;vertical-align:top;max-width:100%}
figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:.85rem}
table.data{border-collapse:collapse;font-size:.8rem;margin:.8rem 0}
table.data th,table.data td{padding:.25rem .5rem;border-bottom:1px solid #eee;text-align:right}
table.data th:first-child,table.data td:first-child{text-align:left}
nav a{margin-right:.8rem;font-size:.9rem}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var figures = document.querySelectorAll('figure[data-plot]'), drawn = 0;
  figures.forEach(function (f) {
    var svg = f.querySelector('svg'), box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    var marks = svg ? svg.querySelectorAll('path, line, rect, use, text').length : 0;
    f.setAttribute('data-rendered', Math.round(box.width) + 'x' + Math.round(box.height) + ':' + marks);
    if (box.width > 0 && box.height > 0 && marks > 0) drawn++;
  });
  document.body.setAttribute('data-plots-drawn', String(drawn));
});
"""


def render_html(sections: list[Section], settings: Settings, generated: datetime | None = None) -> str:
    """The report as one HTML document (inline SVG, CSS and script; nothing fetched)."""
    when = (generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(sections))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Precision-marketing report</title>", f"<style>{_STYLE}</style>", "</head><body>",
        "<h1>Precision-marketing report</h1>",
        f'<p class="meta">Generated {when} from the <code>{html.escape(settings.profile)}</code> settings profile. '
        "Every number comes from the lake and the model registry at that time.</p>",
        f"<nav>{nav}</nav>",
    ]
    for i, s in enumerate(sections):
        parts.append(f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>')
        if s.intro:
            parts.append(f"<p>{html.escape(s.intro)}</p>")
        if s.missing:
            parts.append(f'<p class="missing">Not available: {html.escape(s.missing)}</p>')
        for f in s.figures:
            parts.append(f'<figure data-plot="{f.plot_id}">{f.svg}<figcaption>{html.escape(f.caption)}</figcaption>'
                         "</figure>")
        parts.extend(s.tables)
        parts.append("</section>")
    parts += [f"<script>{_SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts)


def write_report(settings: Settings, output: Path | None = None, progress: Progress | None = None) -> tuple[Path, list[Section]]:
    """Build and write the report; returns its path and the sections (for a summary)."""
    sections = build_report(settings, progress)
    path = output or settings.evaluation.report_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_html(sections, settings), encoding="utf-8")
    tmp.replace(path)
    return path, sections


def plot_count(sections: list[Section]) -> int:
    return sum(len(s.figures) for s in sections)
