"""The lake: zones of Parquet and JSON files, on a local folder or on HDFS.

Spark reads and writes the lake through :meth:`Lake.uri` (``file://`` or ``hdfs://``);
the Python side (reports, the model registry, training data) goes through the methods
here, so nothing outside this module knows which back-end is in use.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from cluster.errors import ConfigError, NotFound
from cluster.settings import Settings

__all__ = ["Zone", "Lake", "LocalLake", "open_lake"]


class Zone(str, Enum):
    """Top-level folders of the lake."""

    RAW = "raw"                 # accepted input rows, Parquet partitioned by dt
    QUARANTINE = "quarantine"   # rejected input rows with their reason
    FEATURES = "features"       # feature tables, one folder per run id
    REPORTS = "reports"         # JSON reports (ingest reconciliation ...)
    REGISTRY = "registry"       # model registry


def _rel(*parts: str | Zone) -> str:
    cleaned = [p.value if isinstance(p, Zone) else str(p) for p in parts]
    path = PurePosixPath(*cleaned) if cleaned else PurePosixPath(".")
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"lake paths are relative and stay inside the lake: {path}")
    return str(path)


class Lake(ABC):
    """A small file-system interface over the lake root. Paths are lake-relative POSIX paths."""

    @abstractmethod
    def uri(self, *parts: str | Zone) -> str:
        """The URI Spark uses for a lake path (``file:///...`` or ``hdfs://.../...``)."""

    @abstractmethod
    def exists(self, *parts: str | Zone) -> bool: ...

    @abstractmethod
    def list_dir(self, *parts: str | Zone) -> list[str]:
        """Names directly under a folder, sorted; ``[]`` if the folder does not exist."""

    @abstractmethod
    def read_bytes(self, *parts: str | Zone) -> bytes:
        """Raises NotFound if the file does not exist."""

    @abstractmethod
    def write_bytes(self, data: bytes, *parts: str | Zone) -> None:
        """Write a file atomically (readers see the old or the new file, never half)."""

    @abstractmethod
    def delete(self, *parts: str | Zone) -> None:
        """Delete a file or folder tree; no error if absent."""

    def read_json(self, *parts: str | Zone) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_json(self, obj: Any, *parts: str | Zone) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8"), *parts)

    def read_parquet(self, *parts: str | Zone, columns: list[str] | None = None):
        """Read a Parquet file or a folder of part files (as Spark writes them) into pandas."""
        import pandas as pd
        import pyarrow.parquet as pq

        rel = _rel(*parts)
        names = [n for n in self.list_dir(rel) if n.endswith(".parquet")] if not rel.endswith(".parquet") else []
        files = [f"{rel}/{n}" for n in names] if names else [rel]
        frames = [pq.read_table(io.BytesIO(self.read_bytes(f)), columns=columns).to_pandas() for f in files]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


class LocalLake(Lake):
    """The lake as a folder on local disk (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, *parts: str | Zone) -> Path:
        return self.root / _rel(*parts)

    def uri(self, *parts: str | Zone) -> str:
        # Not Path.as_uri(): Hadoop does not percent-decode, and partition folders
        # such as ``run=...`` would be written as ``run%3D...``.
        return f"file://{self._path(*parts)}"

    def exists(self, *parts: str | Zone) -> bool:
        return self._path(*parts).exists()

    def list_dir(self, *parts: str | Zone) -> list[str]:
        path = self._path(*parts)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def read_bytes(self, *parts: str | Zone) -> bytes:
        path = self._path(*parts)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"lake file {_rel(*parts)} does not exist") from exc

    def write_bytes(self, data: bytes, *parts: str | Zone) -> None:
        path = self._path(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, *parts: str | Zone) -> None:
        path = self._path(*parts)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def open_lake(settings: Settings) -> Lake:
    """The lake back-end the settings name.

    Raises:
        ConfigError: the back-end is not available in this build.
    """
    if settings.lake.backend == "local":
        return LocalLake(settings.lake.root)
    raise ConfigError(
        "lake.backend 'hdfs' is not implemented yet in this build (see docs/roadmap.md)",
        field="lake.backend",
    )
