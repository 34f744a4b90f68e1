"""``pmkt settings show``: the effective settings."""

from __future__ import annotations

import click

from cluster.cli.context import CliContext, pass_ctx
from cluster.cli.progress import console

__all__ = ["settings_group"]


@click.group("settings")
def settings_group() -> None:
    """Inspect the effective settings."""


@settings_group.command("show")
@pass_ctx
def settings_show(c: CliContext) -> None:
    """Print the effective settings (after environment overrides) as JSON."""
    console.print_json(c.settings.model_dump_json())
