"""Peak resident memory of this process and all its descendants (Spark JVM, Ray), from /proc."""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["MemoryWatch"]


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # The command name may contain spaces; fields after the closing parenthesis are fixed.
        fields = text[text.rfind(")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return kids


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(root: int | None = None) -> float:
    """Resident memory of a process tree in MiB (0 where /proc is unavailable)."""
    if not Path("/proc/self/status").exists():
        return 0.0
    root = root or os.getpid()
    kids = _children_map()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _rss_kib(pid)
        stack.extend(kids.get(pid, []))
    return total / 1024


class MemoryWatch:
    """Sample :func:`tree_rss_mib` in a background thread and keep the peak.

    Ray's daemons are started by this process, so they are in the tree; a Ray cluster
    started elsewhere is not counted.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memwatch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, tree_rss_mib())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
