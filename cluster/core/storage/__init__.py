"""Storage back-ends: the lake (local folder or HDFS) and the profile store (SQLite or HBase).

Use :func:`open_lake` and :func:`open_profile_store`; they pick the back-end from settings.
"""

from cluster.core.storage.keys import (
    COUNTER_FAMILY,
    FAMILIES,
    decode_counter,
    decode_flag,
    decode_float,
    decode_ranked,
    decode_str,
    encode_counter,
    encode_value,
    row_key,
)
from cluster.core.storage.lake import HdfsLake, Lake, LocalLake, Zone, open_lake
from cluster.core.storage.profile_store import HBaseProfileStore, ProfileStore, SqliteProfileStore, open_profile_store

__all__ = [
    "COUNTER_FAMILY",
    "FAMILIES",
    "HBaseProfileStore",
    "HdfsLake",
    "Lake",
    "LocalLake",
    "ProfileStore",
    "SqliteProfileStore",
    "Zone",
    "decode_counter",
    "decode_flag",
    "decode_float",
    "decode_ranked",
    "decode_str",
    "encode_counter",
    "encode_value",
    "open_lake",
    "open_profile_store",
    "row_key",
]
