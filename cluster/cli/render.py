"""Console rendering shared by CLI commands."""

from __future__ import annotations

import time

from rich.markup import escape
from rich.table import Table

from cluster.cli.progress import console

__all__ = ["print_segments", "print_services", "print_tuned", "serve_until_interrupted"]


def print_segments(mv) -> None:
    """Print a segmentation model version: chosen k, elbow curve, segments."""
    m = mv.metrics
    console.print(f"model {mv.ref}: k={m['chosen_k']} silhouette={m['silhouette']:.3f} on {m['users']:,} users")
    spread = f" ({len(m['elbow'])} Tune trials on {m['trial_nodes']} Ray node(s))" if "trial_nodes" in m else ""
    elbow = Table("k", "inertia", "silhouette", title=f"elbow curve{spread}")
    for row in m["elbow"]:
        mark = " *" if row["k"] == m["chosen_k"] else ""
        elbow.add_row(f"{row['k']}{mark}", f"{row['inertia']:,.0f}", f"{row['silhouette']:.3f}")
    console.print(elbow)
    with_clv = any("clv_mean" in s for s in m["segments"])
    seg = Table("id", "segment", "名称", "users", "recency d", "orders", "monetary CNY",
                *(["CLV mean CNY"] if with_clv else []), title="segments (centroids)")
    for s in m["segments"]:
        seg.add_row(str(s["segment_id"]), s["name"], s["name_zh"], f"{s['size']:,}", f"{s['recency_days']:.1f}",
                    f"{s['frequency']:.2f}", f"{s['monetary']:,.2f}",
                    *([f"{s.get('clv_mean', float('nan')):,.2f}"] if with_clv else []))
    console.print(seg)
    t = m.get("clv_across_segments") or {}
    if t:
        console.print(f"CLV across segments: Kruskal-Wallis H={t['kruskal_h']:,.1f} (p={t['kruskal_p']:.2g}), "
                      f"one-way ANOVA F={t['anova_f']:,.1f} (p={t['anova_p']:.2g}); segments explain "
                      f"{100 * t['eta_squared']:.0f}% of CLV variance", highlight=False)


def print_tuned(outcomes: dict) -> None:
    """One row per tuned family: version, best configuration, test metrics, the search's compute."""
    table = Table("model", "version", "search", "best config", "validation", "held-out metrics",
                  title="models tuned with Ray Tune (pmkt models show MODEL for details)")
    for name, o in outcomes.items():
        if isinstance(o, str):  # skipped, with the reason
            table.add_row(name, "-", "skipped", o, "-", "-")
            continue
        mv = o.version
        headline = {k: v for k, v in mv.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and k.startswith(("test_", "holdout_", "val_", "concordance", "oracle"))}
        shown = ", ".join(f"{k}={v:.3f}" for k, v in list(headline.items())[:4])
        cu = o.compute
        table.add_row(name, mv.version, f"{cu['trials']} trials, {cu['iterations']} it, {cu['wall_seconds']:.0f}s, "
                      f"{cu['nodes']} node(s)", ", ".join(f"{k}={v}" for k, v in o.best_config.items()),
                      f"{o.best_score:.4f}", shown or "-")
    console.print(table)


def print_services(user_id: str, answers: dict) -> None:
    """One row per decision service called by the demo (gRPC = HTTP was checked)."""
    table = Table("service", "answer for " + user_id, title="decision services (gRPC = HTTP)")
    for name, r in answers.items():
        if isinstance(r, str):
            table.add_row(name, escape(f"not answered: {r}"))
            continue
        if name == "ctr":
            s = r.scores[0]
            text = f"p(click) {s.p_click:.4f} (user known: {s.user_known}) [{r.model_version}]"
        elif name == "recs":
            text = f"{', '.join(i.item_id for i in r.items)} ({r.reason}, {r.algorithm}) [{r.model_version}]"
        elif name == "churn":
            median = f"{r.median_days} d" if r.HasField("median_days") else "beyond horizon"
            contact = f"day {r.contact_day}" if r.HasField("contact_day") else "-"
            text = (f"{r.status}, P(churn) {r.churn_probability:.2f} within {r.horizon_days} d "
                    f"(relative risk {r.relative_risk:.2f}), median {median}, "
                    f"contact {contact} [{r.model_version}]")
        elif name == "offer":
            text = (f"{r.offer_type} {100 * r.discount:.0f}% off via {r.channel} until {r.valid_until}: "
                    f"{r.rationale}")
        elif name == "budget":
            alloc = ", ".join(f"{a.name} {a.placements:,.0f}" for a in r.allocations)
            binding = ", ".join(f"{b.name} ({b.shadow_price:g})" for b in r.binding)
            text = f"{alloc}: revenue {r.objective_value:,.0f} CNY; binding (shadow price): {binding}"
        elif name == "channel":
            arms = ", ".join(f"{a.channel} {a.conversions}/{a.trials}" for a in r.arms)
            text = f"{r.channel} for segment {r.segment_name} (conversions/trials: {arms})"
        elif name == "funnel":
            text = f"{r.funnel} within {r.window_hours:g} h: " + "; ".join(
                f"{g.name}: " + " > ".join(f"{s.action} {s.users:,}" for s in g.steps)
                for g in [r.overall, *r.groups])
        elif name == "goal_gap":
            text = f"{r.campaign_id} day {r.days_elapsed} of {r.days_elapsed + r.days_remaining}: " + ", ".join(
                f"{g.metric} {g.attained:,.4g}/{g.target:,.4g} -> {g.projected:,.4g} "
                f"({'on track' if g.on_track else 'off track'})" for g in r.goals)
        elif name == "pricing":
            cut = [s for s in r.slots if s.discount > 0]
            text = (f"{r.category}: {len(cut)} off-peak slots discounted (up to {100 * r.max_discount:.0f}%), margin "
                    f"{r.expected_margin:,.0f} vs {r.base_margin:,.0f} CNY/week, spend {r.discount_spend:,.0f} of "
                    f"{r.budget:,.0f} (elasticity {r.elasticity:.2f}) [{r.model_version}]")
        else:
            text = str(r)
        table.add_row(name, escape(text))  # "[feed]", "[ctr/v0001]" are not markup
    console.print(table)


def serve_until_interrupted(serve_settings, title: str = "serving") -> None:
    """Print where the API listens, then block until Ctrl-C (or SIGTERM within
    :func:`cluster.cli.context.sigterm_as_interrupt`); the caller shuts down."""
    sv = serve_settings
    grpc_at = (f"gRPC+TLS {sv.grpc_client_host}:{sv.tls.grpc_port} (plaintext {sv.grpc_port})"
               if sv.tls.grpc_port else f"gRPC {sv.grpc_client_host}:{sv.grpc_port}")
    scheme = "https" if sv.tls.enabled else "http"
    console.print(f"[bold]{title}[/bold]: {grpc_at}, "
                  f"HTTP {scheme}://{sv.http_client_host}:{sv.http_port} (OpenAPI at /docs); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
