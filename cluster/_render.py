"""Console rendering shared by CLI commands."""

from __future__ import annotations

import time

from rich.table import Table

from cluster._progress import console

__all__ = ["print_segments", "serve_until_interrupted"]


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
    seg = Table("id", "segment", "名称", "users", "recency d", "orders", "monetary CNY", title="segments (centroids)")
    for s in m["segments"]:
        seg.add_row(str(s["segment_id"]), s["name"], s["name_zh"], f"{s['size']:,}", f"{s['recency_days']:.1f}",
                    f"{s['frequency']:.2f}", f"{s['monetary']:,.2f}")
    console.print(seg)


def serve_until_interrupted(serve_settings, title: str = "serving") -> None:
    """Print where the API listens, then block until Ctrl-C (the caller shuts down)."""
    sv = serve_settings
    console.print(f"[bold]{title}[/bold]: gRPC {sv.grpc_client_host}:{sv.grpc_port}, "
                  f"HTTP http://{sv.http_client_host}:{sv.http_port} (OpenAPI at /docs); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
