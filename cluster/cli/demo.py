"""``pmkt demo``: the whole chain once, on generated data or a given folder, with a summary.

An entry point, so it may import across spark_jobs and ray_apps.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import click
from rich.table import Table

from cluster.cli.context import CliContext, pass_ctx
from cluster.cli.demo_services import call_services
from cluster.cli.memwatch import MemoryWatch
from cluster.cli.progress import console, progress_bar
from cluster.cli.render import print_segments, print_services, print_tuned, serve_until_interrupted
from cluster.core.errors import FailedPrecondition, PlatformError
from cluster.core.settings import Settings

__all__ = ["demo_cmd", "run_demo", "call_api"]

log = logging.getLogger(__name__)


def _generate(settings: Settings, users: int, days: int, seed: int) -> Path:
    from cluster.datagen import generate

    out = settings.lake.root.parent / "demo-input"
    manifest = out / "_truth" / "manifest.json"
    if manifest.exists():
        params = json.loads(manifest.read_text(encoding="utf-8"))
        if (params.get("users"), params.get("days"), params.get("seed")) == (users, days, seed):
            console.print(f"[dim]reusing generated data in {out} (same users/days/seed)[/dim]")
            return out
    with progress_bar("generate") as progress:
        generate(out, users=users, days=days, seed=seed, progress=progress)
    return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def call_api(settings: Settings, user_ids: list[str], rounds: int = 50) -> dict:
    """Call GetSegment over gRPC and HTTP for known users and the error cases.

    Returns:
        ``answers`` (user -> segment over each transport), ``errors`` (case -> outcome),
        ``latency_ms`` per transport (p50/p99 over ``rounds`` x users calls).
    """
    from cluster.core.errors import InvalidArgument, NotFound
    from ray_apps.client import MarketingClient

    result: dict = {"answers": [], "errors": {}, "latency_ms": {}}
    with MarketingClient.from_settings(settings, timeout_s=10.0) as client:
        for uid in user_ids:
            g = client.get_segment(uid)
            h = client.get_segment_http(uid)
            if (g.segment_id, g.model_version) != (h.segment_id, h.model_version):
                raise FailedPrecondition(f"gRPC and HTTP disagree for {uid}: {g} vs {h}")
            result["answers"].append(g)
        too_long = "x" * (settings.serve.max_user_id_length + 1)
        cases = {"unknown user": "no-such-user", "empty id": "", "over-long id": too_long}
        for case, uid in cases.items():
            for transport, call in (("gRPC", client.get_segment), ("HTTP", client.get_segment_http)):
                try:
                    call(uid)
                    outcome = "answered (unexpected)"
                except (NotFound, InvalidArgument) as err:
                    outcome = type(err).__name__
                result["errors"][f"{case} ({transport})"] = outcome
        for transport, call in (("gRPC", client.get_segment), ("HTTP", client.get_segment_http)):
            times = []
            for _ in range(rounds):
                for uid in user_ids:
                    t0 = time.perf_counter()
                    call(uid)
                    times.append((time.perf_counter() - t0) * 1000)
            result["latency_ms"][transport] = {
                "calls": len(times),
                "p50": statistics.median(times),
                "p99": _percentile(times, 0.99),
            }
    expected = {"unknown user": "NotFound", "empty id": "InvalidArgument", "over-long id": "InvalidArgument"}
    wrong = {k: v for k, v in result["errors"].items() if v != expected[k.rsplit(" (", 1)[0]]}
    if wrong:
        raise FailedPrecondition(f"error cases answered wrongly: {wrong}")
    return result


@click.command("demo")
@click.option("--input", "input_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Run on this folder (in the data contract) instead of generated data.")
@click.option("--users", default=20_000, show_default=True, type=click.IntRange(100, 800_000), help="Generated users.")
@click.option("--days", default=180, show_default=True, type=click.IntRange(min=14), help="Generated days.")
@click.option("--seed", default=7, show_default=True, type=int, help="Generator seed.")
@click.option("--smoke-test", is_flag=True, help="Small Tune search (three values of k).")
@click.option("--keep-serving", is_flag=True, help="Leave the API up after the summary (Ctrl-C stops).")
@pass_ctx
def demo_cmd(c: CliContext, input_dir: Path | None, users: int, days: int, seed: int, smoke_test: bool,
             keep_serving: bool) -> None:
    """Run the whole chain once: generate, ingest, RFM, train segments, serve, call the API
    over gRPC and HTTP, print a summary, shut down. Exits non-zero on any failure."""
    if input_dir is not None:
        from spark_jobs.ingest import check_delivery

        # A broken folder fails here in seconds, before the chain loads every stage's code.
        with progress_bar("ingest") as progress:
            progress(f"checking {input_dir}", 0.0)
            check_delivery(c.settings, input_dir)
    run_demo(c.settings, input_dir=input_dir, users=users, days=days, seed=seed, smoke_test=smoke_test,
             keep_serving=keep_serving)


def run_demo(
    settings: Settings,
    *,
    input_dir: Path | None,
    users: int,
    days: int,
    seed: int,
    smoke_test: bool,
    keep_serving: bool,
) -> None:
    """Run generate -> ingest -> RFM -> train -> serve -> calls, print the summary."""
    from ray_apps.runtime import shutdown_ray

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - t0
        return out

    with MemoryWatch() as mem:
        try:
            summary = _run_chain(settings, input_dir, users, days, seed, smoke_test, timed)
            timings["total"] = time.perf_counter() - started
            _print_summary(summary, timings, mem.peak_mib)
            if keep_serving:
                serve_until_interrupted(settings.serve, "still serving")
        finally:
            shutdown_ray()
            from spark_jobs.session import stop_spark

            stop_spark()


#: The families the demo tunes after segments, each with the scheduler it uses.
DEMO_FAMILIES = (("ctr", "asha"), ("recs", "grid"), ("churn", "grid"), ("attributes", "grid"), ("demand", "grid"))


def _tune_families(settings: Settings, smoke_test: bool, timed) -> dict:
    """Tune CTR, recommendations and churn (each registered and promoted).

    Returns:
        Family -> its TuneOutcome, or the reason it was skipped: data too short for a family
        (90 days cannot show a 90-day churn) skips that family, not the demo.
    """
    from ray_apps.tuning import get_spec, run_tune

    out: dict = {}
    for name, scheduler in DEMO_FAMILIES:
        with progress_bar(f"tune {name}") as progress:
            try:
                out[name] = timed(f"tune {name}", run_tune, settings, get_spec(name), scheduler=scheduler,
                                  smoke_test=smoke_test, progress=progress)
            except FailedPrecondition as exc:
                log.warning("skipping %s: %s", name, exc.message)
                out[name] = exc.message
    return out


def _run_chain(settings, input_dir, users, days, seed, smoke_test, timed) -> dict:
    from ray_apps.attributes.service import predict_and_store
    from ray_apps.client import wait_for_model
    from ray_apps.evaluation.report import write_report
    from ray_apps.segments.train import train_segments
    from ray_apps.serve.launcher import deploy, start_serving
    from spark_jobs import attributes, campaigns, clv, demand, funnels, ingest, profiles, rfm, tags, training_tables
    from spark_jobs.session import stop_spark

    if input_dir is None:
        input_dir = timed("generate", _generate, settings, users, days, seed)
    with progress_bar("ingest") as progress:
        report = timed("ingest", ingest.main, settings, input_dir, progress=progress)
    with progress_bar("rfm") as progress:
        rfm_meta = timed("rfm", rfm.main, settings, progress=progress)
    with progress_bar("clv") as progress:
        clv_meta = timed("clv", clv.main, settings, progress=progress)
    t = settings.tags
    with progress_bar("tags") as progress:
        tags_meta = timed("tags", tags.main, settings, progress=progress, top_k=t.top_k, last_viewed=t.last_viewed,
                          abandon_window_hours=t.abandon_window_hours, tfidf_top_k=t.tfidf_top_k,
                          half_life_days=t.half_life_days, weights=t.action_weights)
    with progress_bar("training tables") as progress:
        tt = settings.training_tables
        tables_meta = timed("tables", training_tables.main, settings, progress=progress,
                            inactivity_days=tt.inactivity_days, hash_buckets=tt.hash_buckets, min_count=tt.min_count,
                            test_fraction=tt.test_fraction, lookback_days=tt.lookback_days, ctr_prior=tt.ctr_prior)
    with progress_bar("profiles") as progress:
        profiles_meta = timed("profiles", profiles.main, settings, progress=progress)
    with progress_bar("campaigns") as progress:
        timed("campaigns", campaigns.main, settings, progress=progress)
    with progress_bar("funnels") as progress:
        funnels_meta = timed("funnels", funnels.main, settings, progress=progress)
    with progress_bar("demand") as progress:
        demand_meta = timed("demand", demand.main, settings, progress=progress)
    with progress_bar("attribute features") as progress:
        timed("attribute features", attributes.main, settings, progress=progress)
    sample_users = _sample_users(settings, rfm_meta)
    stop_spark()  # frees the driver JVM before Ray starts
    with progress_bar("tune segments") as progress:
        model = timed("tune segments", train_segments, settings, smoke_test=smoke_test, progress=progress)
    tuned = _tune_families(settings, smoke_test, timed)
    predicted = None
    if not isinstance(tuned.get("attributes"), str):
        with progress_bar("predict attributes") as progress:
            predicted = timed("predict attributes", predict_and_store, settings, progress=progress)
    with progress_bar("serve") as progress:
        if settings.ray.address == "local":
            progress("starting Ray Serve (gRPC + HTTP)", 0.1)
            timed("serve start", start_serving, settings)
        else:
            # A cluster keeps its deployment (the platform role made it): deploy only if it is
            # missing, then wait for the application to pick the new model up from the registry.
            progress("checking the cluster's Serve application", 0.1)
            timed("serve deploy", deploy, settings)
            progress(f"waiting for the application to serve {model.ref}", 0.5)
            timed("model pickup", wait_for_model, settings, sample_users[0], model.ref)
        progress("application healthy", 1.0)
    calls = timed("api calls", call_api, settings, sample_users)
    calls["profile"], calls["events"] = timed("profile + events", _profile_and_events, settings, sample_users[0])
    calls["services"] = timed("decision services", call_services, settings, sample_users[0], _sample_ad(settings),
                              _top_category(settings))
    with progress_bar("report") as progress:
        html_path, sections = timed("report", write_report, settings, progress=progress)
    return {"report": report, "rfm": rfm_meta, "clv": clv_meta, "tags": tags_meta, "profiles": profiles_meta,
            "tables": tables_meta, "model": model, "tuned": tuned, "calls": calls, "funnels": funnels_meta,
            "demand": demand_meta, "predicted": predicted,
            "html": {"path": html_path, "sections": sections}}


def _top_category(settings: Settings) -> str | None:
    """The category with the most paid orders in the demand table (the pricing calls' example)."""
    from cluster.core.catalog import DEMAND
    from cluster.core.feature_io import load_latest
    from cluster.core.storage import open_lake

    table, _ = load_latest(open_lake(settings), DEMAND, ["category", "orders"])
    totals = table.groupby("category")["orders"].sum()
    return str(totals.idxmax()) if len(totals) else None


def _profile_and_events(settings: Settings, user_id: str):
    """GetProfile for one user, then a batch of events (one bad) and the counters it moved."""
    import secrets

    from ray_apps.client import MarketingClient

    tag = secrets.token_hex(3)
    with MarketingClient.from_settings(settings, timeout_s=10.0) as client:
        profile = client.get_profile(user_id)
        before = dict(profile.counters)
        result = client.track_events([
            {"event_id": f"demo-{tag}-1", "user_id": user_id, "ts": "2026-06-30 10:00:00", "action": "view",
             "category": "手机"},
            {"event_id": f"demo-{tag}-2", "user_id": user_id, "ts": "2026-06-30 10:00:05", "action": "cart",
             "category": "手机"},
            {"event_id": f"demo-{tag}-3", "user_id": user_id, "ts": "not a time", "action": "view"},
        ])
        after = dict(client.get_profile(user_id, ["counters"]).counters)
    moved = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    if result.accepted != 2 or moved.get("view") != 1 or moved.get("cart") != 1:
        raise FailedPrecondition(f"real-time intake misbehaved: {result} moved {moved}")
    return profile, {"result": result, "moved": moved}


def _sample_ad(settings: Settings) -> dict:
    """One impression's ad columns from the CTR table, as a ScoreBatch candidate."""
    from cluster.core.catalog import CTR_TRAIN
    from cluster.core.storage import open_lake

    cols = ["ad_id", "campaign_id", "channel", "ad_position", "device_type"]
    lake = open_lake(settings)
    try:
        meta = CTR_TRAIN.require_latest(lake)
        row = CTR_TRAIN.read_parquet(lake, meta["run_id"], "split=test", columns=cols).iloc[0]
    except (PlatformError, IndexError):
        return {"ad_id": "ad-demo", "channel": "feed", "ad_position": "1"}
    # every ad column is text in the contract and the API (ad_position may be "top_banner")
    return {c: str(row[c]) for c in cols if row[c] is not None}


def _sample_users(settings: Settings, rfm_meta: dict, n: int = 5) -> list[str]:
    from cluster.core.storage import open_lake

    frame = open_lake(settings).read_parquet(rfm_meta["path"], columns=["user_id"])
    if frame.empty:
        raise FailedPrecondition("no user has a paid order, so there is nothing to segment")
    return frame["user_id"].sample(n=min(n, len(frame)), random_state=0).tolist()


def _print_summary(summary: dict, timings: dict[str, float], peak_mib: float) -> None:
    from spark_jobs.ingest import format_report


    console.rule("[bold]demo summary")
    console.print(format_report(summary["report"]), highlight=False)
    print_segments(summary["model"])
    print_tuned(summary["tuned"])
    calls = summary["calls"]
    answers = Table("user", "segment", "名称", "R d", "F", "M CNY", "model", title="GetSegment answers (gRPC = HTTP)")
    for a in calls["answers"]:
        answers.add_row(a.user_id, a.segment_name, a.segment_name_zh, str(a.rfm.recency_days), str(a.rfm.frequency),
                        f"{a.rfm.monetary:,.2f}", a.model_version)
    console.print(answers)
    errors = Table("case", "answer", title="error cases")
    for case, outcome in calls["errors"].items():
        errors.add_row(case, outcome)
    console.print(errors)
    lat = Table("transport", "calls", "p50 ms", "p99 ms", title="call latency (sequential, one client)")
    for transport, row in calls["latency_ms"].items():
        lat.add_row(transport, str(row["calls"]), f"{row['p50']:.2f}", f"{row['p99']:.2f}")
    console.print(lat)
    p = calls["profile"]
    console.print(f"GetProfile {p.user_id}: {p.attributes.gender or '-'} {p.attributes.age_band or '-'} "
                  f"{p.attributes.city or '-'} phone {p.attributes.phone_masked or '-'}; consent sms={p.consent.sms} "
                  f"push={p.consent.push} email={p.consent.email}; segment {p.segment.segment_name or '-'}; "
                  f"CLV {p.scores.clv_predicted:,.2f} (P(alive) {p.scores.p_alive:.2f}); top tags "
                  + ", ".join(f"{t.tag} {t.weight:.2f}" for t in p.tags[:3]), highlight=False)
    ev = calls["events"]
    console.print(f"TrackEvents: {ev['result'].accepted} accepted, "
                  + ", ".join(f"#{r.index} rejected ({r.reason}, field {r.field})" for r in ev["result"].rejected)
                  + f"; counters moved {ev['moved']}", highlight=False)
    print_services(calls["profile"].user_id, calls["services"])
    clv_p = summary["clv"]["params"]
    console.print(f"CLV fit on {summary['clv']['users']:,} customers: BG/NBD r={clv_p['r']:.3f} alpha={clv_p['alpha']:.2f} "
                  f"a={clv_p['a']:.3f} b={clv_p['b']:.3f}; Gamma-Gamma p={clv_p['p']:.2f} q={clv_p['q']:.2f} "
                  f"v={clv_p['v']:.2f}; {summary['profiles']['profiles']:,} profiles built", highlight=False)
    from ray_apps.evaluation.report import plot_count

    html_report = summary["html"]
    missing = [f"{s.title}: {s.missing}" for s in html_report["sections"] if s.missing]
    console.print(f"report with {plot_count(html_report['sections'])} plots: {html_report['path']}"
                  + (f" (not available: {'; '.join(missing)})" if missing else ""), highlight=False)
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if k != "total")
    console.print(f"wall time {timings['total']:.1f}s ({steps}); peak memory of the demo's process tree "
                  f"{peak_mib:,.0f} MiB")
