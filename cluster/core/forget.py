"""Forgetting a user (right to erasure): ``pmkt privacy forget USER_ID``."""

from __future__ import annotations

import logging

from cluster.core.contract import validate_user_id
from cluster.core.settings import Settings
from cluster.core.storage import open_lake, open_profile_store
from cluster.core.storage.tombstones import Tombstones

__all__ = ["forget"]

log = logging.getLogger(__name__)


def forget(settings: Settings, user_id: str, reason: str = "data subject request") -> bool:
    """Tombstone the user, then delete their profile and counters.

    The tombstone goes first: a build running meanwhile may still write the profile back,
    but the next build reads the tombstone and leaves the user out, and a rerun of this
    command deletes again. Idempotent.

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
    log.info("forgot a user (%s)", "new tombstone" if new else "already tombstoned")
    return new
