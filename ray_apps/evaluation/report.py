"""`pmkt report`: one self-contained HTML file with the platform's results as pictures.

Every figure is an inline SVG drawn by matplotlib, so the file opens offline, from an e-mail
or a shared drive, with nothing else beside it. Sections:

1. segments: sizes, centroids, and the elbow and silhouette of the k search;
2. the CTR model: ROC on the test split and calibration;
3. churn: mean survival curves by segment;
4. recommendations: the served model against the popularity baselines;
5. campaigns: ROI and CTR lift by channel (last-click attribution), campaign CTR differences
   with 95 % intervals (A/B-style comparisons against the other campaigns; significance after
   Holm's correction), and the budget allocation of the article's example.

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

from cluster.errors import FailedPrecondition, NotFound
from cluster.settings import Settings

__all__ = ["PLOT_IDS", "Section", "build_report", "mean_survival", "plot_count", "render_html", "write_report"]

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]

#: Every figure a complete report holds, in order.
PLOT_IDS = ("segment-sizes", "segment-centroids", "segment-elbow", "ctr-roc", "ctr-calibration",
            "churn-survival", "recs-metrics", "roi-by-channel", "campaign-ab", "budget-allocation")
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

    from cluster.feature_io import load_ctr_matrix

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


def _user_segments(lake, segment_model) -> pd.Series:
    """user_id -> segment name, by the segments model on the newest RFM (and CLV) features."""
    from cluster.feature_io import load_latest

    features, _ = load_latest(lake, "rfm")
    if "clv_predicted" in getattr(segment_model, "features_", ()):
        clv, _ = load_latest(lake, "clv", ["user_id", "clv_predicted"])
        features = features.merge(clv, on="user_id", how="inner")
        features["clv_predicted"] = features["clv_predicted"].fillna(0.0).clip(lower=0.0)
    names = np.array(segment_model.names_)[segment_model.predict(features)]
    return pd.Series(names, index=features["user_id"].to_numpy())


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


def _churn(registry, lake, user_segments: Callable[[], pd.Series], per_segment: int = 200) -> Section:
    from cluster.feature_io import load_churn_frame

    section = Section("Churn", "Survival: the probability that a customer is still active, by segment.")
    model, version = registry.load("churn")
    frame, _ = load_churn_frame(lake)
    active = frame[frame["churned"] == 0] if "churned" in frame else frame
    segments = user_segments()
    active = active.assign(segment=active["user_id"].map(segments)).dropna(subset=["segment"])
    fig, ax = _figure()
    for i, (name, group) in enumerate(sorted(active.groupby("segment"), key=lambda kv: kv[0])):
        sample = group.sample(n=min(per_segment, len(group)), random_state=1)
        days, mean = mean_survival([c["survival"] for c in model.predict_users(sample, curve_step_days=7)])
        ax.plot(days, mean, color=_PALETTE[i % len(_PALETTE)], label=f"{name} (n={len(sample)})")
    ax.set_xlabel("days from today")
    ax.set_ylabel("P(still active)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"Mean survival by segment (churn {version.version}, "
                 f"concordance {version.metrics.get('concordance', float('nan')):.3f})")
    section.figures.append(Figure("churn-survival", "Active customers only; a sample per segment.", _svg(fig)))
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


def _campaigns(settings: Settings, lake, user_segments: Callable[[], pd.Series] | None) -> Section:
    from cluster.feature_io import load_latest
    from ray_apps.budget import Channel, optimize_budget
    from ray_apps.evaluation.abtest import adjust_pvalues, two_proportion_ztest
    from ray_apps.evaluation.campaigns import campaign_metrics

    section = Section("Campaigns and budget",
                      "Last-click attribution: an order counts for the user's latest click within "
                      f"{settings.evaluation.attribution_window_days} days. ROI is revenue per unit spent; "
                      "attribution credits clicks with orders that might have happened anyway, so read ROI as "
                      "an upper bound and compare channels with each other.")
    table, meta = load_latest(lake, "campaigns")
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
        section.tables.append(metrics_table(campaign_metrics(table, "segment", user_segments()), "segment"))

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


def build_report(settings: Settings, progress: Progress | None = None) -> list[Section]:
    """Compute every section; a missing input leaves its section with a note, not an error."""
    from cluster.storage import open_lake
    from ray_apps.registry import ModelRegistry

    step = progress or (lambda _s, _f: None)
    lake = open_lake(settings)
    registry = ModelRegistry(lake)
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
    # Every user's segment, computed once for the sections that group by it.
    user_segments = None if segment_model is None else functools.cache(lambda: _user_segments(lake, segment_model))
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
    step("campaigns", 0.8)
    attempt("Campaigns and budget", "run `pmkt features campaigns`", lambda: _campaigns(settings, lake, user_segments))
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
