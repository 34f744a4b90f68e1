"""Progress display for long CLI steps: a ``(step, fraction)`` callback on a rich bar."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

__all__ = ["progress_bar", "failed_step", "console", "err_console"]

# Off a terminal (CI logs, `make demo | tee`) rich assumes 80 columns and truncates tables.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def failed_step(exc: BaseException) -> str | None:
    """The title of the innermost progress bar ``exc`` escaped from (the step that failed), if any."""
    return getattr(exc, "_pmkt_step", None)


@contextlib.contextmanager
def progress_bar(title: str) -> Iterator[Callable[[str, float], None]]:
    """Yield a callback that moves one progress bar; plain lines when not on a terminal.

    An exception leaving the block is tagged with ``title`` (see :func:`failed_step`), so the
    CLI's error line can name the step of a command that runs several (``pmkt demo``).
    """
    try:
        with _bar(title) as update:
            yield update
    except Exception as exc:
        if failed_step(exc) is None:
            try:
                exc._pmkt_step = title  # type: ignore[attr-defined]
            except AttributeError:  # an exception type without instance attributes
                pass
        raise


@contextlib.contextmanager
def _bar(title: str) -> Iterator[Callable[[str, float], None]]:
    if not sys.stderr.isatty():
        last: list[str] = [""]

        def plain(step: str, fraction: float) -> None:
            if step != last[0]:
                err_console.print(f"[dim]{title}: {step} ({fraction:.0%})[/dim]", highlight=False)
                last[0] = step

        yield plain
        return
    with Progress(
        TextColumn("[bold]{task.fields[title]}[/bold]"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task("", total=1.0, title=title)

        def update(step: str, fraction: float) -> None:
            bar.update(task, completed=max(0.0, min(1.0, fraction)), description=step)

        yield update
        bar.update(task, completed=1.0)
