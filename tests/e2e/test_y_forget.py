"""Forget means forgotten, end to end on the embedded default: after `forget`, every service
answers the user exactly as it answers a stranger, and after `purge` no file of the lake's
personal tables holds a row of theirs (an independent scan: bytes and decoded Parquet values).

Runs late in the session (it forgets a user of the shared chain and rewrites its lake)."""

from __future__ import annotations

import time

import pytest

from tests.forget_check import STRANGER, answers, differences, sample_ad

pytestmark = pytest.mark.e2e


def _victim(chain) -> str:
    """A well-known buyer: many orders, in the recommender's matrix and the churn table, not the
    user other e2e modules use (the first RFM row)."""
    from cluster.core.feature_io import load_interactions
    from cluster.core.storage import open_lake

    lake = open_lake(chain["settings"])
    rfm = lake.read_parquet(chain["rfm"]["path"], columns=["user_id", "frequency"])
    first = str(rfm["user_id"].iloc[0])
    inter = load_interactions(lake)
    in_matrix = set(inter.user_ids)
    ranked = rfm.sort_values(["frequency", "user_id"], ascending=[False, True])["user_id"].astype(str)
    return next(u for u in ranked if u != first and u in in_matrix)


def test_a_forgotten_user_is_answered_as_a_stranger_and_purge_leaves_no_row(chain):
    from cluster.core.catalog import TOMBSTONES, personal_tables
    from cluster.core.forget import forget
    from cluster.core.purge import purge
    from cluster.core.storage import open_lake
    from ray_apps.client import MarketingClient
    from tests.pii_scan import PiiScanner

    settings = chain["settings"]
    lake = open_lake(settings)
    uid = _victim(chain)
    ad = sample_ad(lake)
    scanner = PiiScanner([uid])
    personal = [t for t in personal_tables() if t is not TOMBSTONES]

    def rows_of_user() -> list:
        return [h for t in personal for h in scanner.scan_lake(lake, t.rel())]

    assert rows_of_user(), "the victim must have rows in the lake to begin with"
    with MarketingClient.from_settings(settings, timeout_s=20.0) as client:
        before, stranger = answers(client, uid, ad), answers(client, STRANGER, ad)
        # Personalised before: these answers differ from a stranger's.
        personalised = {k for k in before if before[k] != stranger[k]}
        assert {"profile", "segment", "ctr", "recs", "churn", "offer"} <= personalised, (before, stranger)

        assert forget(settings, uid) is True
        time.sleep(settings.events.tombstone_ttl_s + 1)  # replicas re-read the tombstones
        after, stranger = answers(client, uid, ad), answers(client, STRANGER, ad)
        assert after == stranger, differences(after, stranger)
        report = purge(settings)
        assert report["rows_removed"] > 0 and report["forgotten_users"] >= 1
        assert rows_of_user() == []
        # Purged files still serve everybody else (the recommender reads the rewritten lake).
        assert client.get_profile(str(lake.read_parquet(chain["rfm"]["path"], columns=["user_id"])["user_id"].iloc[0]))
    again = purge(settings)
    assert again["files_rewritten"] == 0
