"""Forgetting a user (right to erasure): ``pmkt privacy forget USER_ID``."""

from __future__ import annotations

import logging

from cluster.core.catalog import LANDING, QUARANTINE, TOMBSTONES, Layout, Table, personal_tables
from cluster.core.contract import validate_user_id
from cluster.core.settings import Settings
from cluster.core.storage import open_lake, open_profile_store
from cluster.core.tombstones import Tombstones

__all__ = ["forget", "erasure_notes"]

log = logging.getLogger(__name__)

#: How a forgotten user leaves the personal tables that no build rewrites.
_FILES = {
    QUARANTINE.name: "rejected rows with their reason; no build reads them; `pmkt privacy purge` drops theirs",
    LANDING.name: "delivered files staged for one ingest run, deleted after it (purge rewrites any left over)",
    TOMBSTONES.name: "the tombstone itself (the user id, no personal data)",
}


def _note(table: Table) -> str:
    if table.layout is Layout.PARTITIONED:
        how = "every build reads it without tombstoned users; `pmkt privacy purge` rewrites it without them"
    elif table.layout is Layout.RUNS:
        how = (f"the next `{table.built_by}` writes a run without the user; "
               "`pmkt privacy purge` rewrites the earlier runs")
    elif table.layout is Layout.REPORTS:
        how = f"the next `{table.built_by}` rewrites it without the user"
    else:
        how = _FILES.get(table.name, f"files managed by `{table.built_by}`")
    return f"{table.name} ({table.rel()}): {how}"


def erasure_notes() -> list[str]:
    """Where the lake holds personal data (:func:`cluster.core.catalog.personal_tables`) and how a
    forgotten user leaves each table: :func:`forget` deletes the profile and counters at once, the
    lake tables drop the user on their next build."""
    return [_note(t) for t in personal_tables()]


def forget(settings: Settings, user_id: str, reason: str = "data subject request") -> bool:
    """Tombstone the user, then delete their profile and counters.

    The tombstone goes first: a build running meanwhile may still write the profile back,
    but the next build reads the tombstone and leaves the user out, and a rerun of this
    command deletes again. Idempotent. The lake's personal tables (:func:`erasure_notes`) keep
    the user's rows until :func:`cluster.core.purge.purge` (``pmkt privacy purge``) rewrites them.

    Returns:
        True if the user was not forgotten before.
    """
    validate_user_id(user_id, settings.serve.max_user_id_length)
    new = Tombstones(open_lake(settings)).add(user_id, reason)
    store = open_profile_store(settings)
    try:
        store.delete(user_id)
    finally:
        store.close()
    log.info("forgot a user (%s); builds leave them out, `pmkt privacy purge` removes their rows:\n  %s",
             "new tombstone" if new else "already tombstoned", "\n  ".join(erasure_notes()))
    return new
