"""``pmkt privacy init-key | forget | purge | reveal-id``: the encryption keys and lawful access to
personal data (docs/privacy.md)."""

from __future__ import annotations

import click

from cluster.cli.context import CliContext, pass_ctx
from cluster.cli.progress import console, err_console, progress_bar
from cluster.core.errors import NotFound

__all__ = ["privacy_group"]


@click.group("privacy")
def privacy_group() -> None:
    """Personal data: the encryption keys and lawful access (docs/privacy.md)."""


@privacy_group.command("init-key", short_help="Create the key file (a random key, mode 0600) unless it exists.")
@click.option("--key-id", default="k1", show_default=True, help="Id of the new key (letters, digits, _ or -).")
@pass_ctx
def privacy_init_key(c: CliContext, key_id: str) -> None:
    """Create privacy.key_file with one random AES-256 key (mode 0600), unless it exists.

    Running it again changes nothing. The key itself is never printed.
    """
    import os

    from cluster.core.errors import ConfigError, InvalidArgument
    from cluster.core.privacy import init_key_file, load_key_file

    privacy = c.settings.privacy
    if privacy.key_file is None:
        raise ConfigError("privacy.key_file is not set: name the file to create in the settings",
                          field="privacy.key_file")
    try:
        created = init_key_file(privacy.key_file, key_id=key_id)
    except ValueError as exc:
        raise InvalidArgument(str(exc), field="key_id") from None
    ring = load_key_file(privacy.key_file, privacy.active_key_id)  # read back as ingest will
    what = "created" if created else "exists, left unchanged"
    console.print(f"key file {privacy.key_file}: {what} (keys: {', '.join(ring.key_ids)}; "
                  f"active: {ring.active_key_id})", highlight=False)
    if os.environ.get(privacy.key_env, "").strip():
        err_console.print(f"note: {privacy.key_env} is set, and its keys are used instead of this file")


@privacy_group.command("forget")
@click.argument("user_id")
@click.option("--reason", default="data subject request", show_default=True,
              help="Recorded in the tombstone (a ticket reference, never personal data).")
@pass_ctx
def privacy_forget(c: CliContext, user_id: str, reason: str) -> None:
    """Forget USER_ID (right to erasure): delete the profile and counters and record a tombstone,
    so every later build leaves the user out and real-time events for them are rejected.
    Idempotent. Files written before keep the user's rows until `pmkt privacy purge`; builds skip them."""
    from cluster.core.forget import forget

    new = forget(c.settings, user_id, reason)
    console.print(f"{user_id}: {'forgotten' if new else 'already forgotten; profile deleted again'}", highlight=False)


@privacy_group.command("reveal-id", short_help="Print a user's ID number: DSAR and legal requests only.")
@click.argument("user_id")
@click.option("--reason", required=True,
              help="The DSAR or legal request this answers (its reference); kept in the audit record.")
@pass_ctx
def privacy_reveal_id(c: CliContext, user_id: str, reason: str) -> None:
    """Print USER_ID's ID number, decrypted: only for data-subject access and legal requests.

    Needs the keys (privacy settings). Every call leaves an audit record in the lake
    (reports/privacy/reveal/), the ID number excepted.
    """
    from cluster.core.privacy import reveal_id_numbers

    for value in reveal_id_numbers(c.settings, user_id, reason):
        click.echo(value)


@privacy_group.command("purge", short_help="Rewrite the lake's personal tables without forgotten users' rows.")
@pass_ctx
def privacy_purge(c: CliContext) -> None:
    """Rewrite every file of the lake's personal tables without the rows of forgotten users
    (`pmkt privacy forget`): the raw zone (delivered and real-time rows), the quarantine, every
    feature run (not only the newest), the landing zone and the attribute reports.

    Each file is replaced atomically (a reader sees the old or the new file); files without a
    forgotten user are left as they are, so running it again rewrites nothing. Prints the files
    rewritten and rows removed per table (counts only, no user) and keeps that report under
    reports/privacy/purge/. Lists the models trained before the newest tombstone: they keep what
    they learnt from those users until the next training run (serving already ignores them).
    """
    from rich.table import Table as RichTable

    from cluster.core.purge import purge
    from ray_apps.registry import open_registry

    with progress_bar("purge") as progress:
        report = purge(c.settings, step=progress)
    if not report["forgotten_users"]:
        console.print("no forgotten users: nothing to purge", highlight=False)
        return
    out = RichTable(title=f"purge {report['run_id']}: {report['forgotten_users']} forgotten users")
    for col in ("table", "files", "rewritten", "rows removed"):
        out.add_column(col, justify="left" if col == "table" else "right")
    empty = 0
    for name, t in report["tables"].items():
        if not t["files_scanned"]:
            empty += 1
            continue
        out.add_row(name, f"{t['files_scanned']:,}", f"{t['files_rewritten']:,}", f"{t['rows_removed']:,}")
    console.print(out)
    if empty:
        console.print(f"{empty} personal tables have no files yet", highlight=False)
    console.print(f"{report['rows_removed']:,} rows removed from {report['files_rewritten']:,} files", highlight=False)
    newest = report["newest_tombstone_at"]
    registry = open_registry(c.settings)
    stale = []
    for name in registry.models():
        try:
            mv = registry.get(name, verify=False)
        except NotFound:
            continue
        if mv.created_at < newest:
            stale.append(mv.ref)
    if stale:
        console.print(f"trained before the newest tombstone (retrain to drop what they learnt): {', '.join(stale)}",
                      highlight=False)
