"""The lake: zones of Parquet and JSON files, on a local folder or on HDFS.

Spark reads and writes the lake through :meth:`Lake.uri` (``file://`` or ``hdfs://``);
the Python side (reports, the model registry, training data) goes through the methods
here, so nothing outside this module knows which back-end is in use.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from cluster.core.errors import ConfigError, NotFound, Unavailable
from cluster.core.settings import Settings

__all__ = ["Zone", "Lake", "LocalLake", "HdfsLake", "open_lake"]

log = logging.getLogger(__name__)


class Zone(str, Enum):
    """Top-level folders of the lake."""

    RAW = "raw"                 # accepted input rows, Parquet partitioned by dt
    QUARANTINE = "quarantine"   # rejected input rows with their reason
    FEATURES = "features"       # feature tables, one folder per run id
    REPORTS = "reports"         # JSON reports (ingest reconciliation ...)
    REGISTRY = "registry"       # model registry
    LANDING = "landing"         # input files as delivered, staged for Spark on a cluster
    PRIVACY = "privacy"         # tombstones of forgotten users


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
    def files(self, *parts: str | Zone) -> list[str]:
        """Every file below a folder, as sorted paths relative to it (``dt=2026-01-01/part-0.parquet``);
        ``[]`` if the folder does not exist."""

    @abstractmethod
    def read_bytes(self, *parts: str | Zone) -> bytes:
        """Raises NotFound if the file does not exist."""

    @abstractmethod
    def write_bytes(self, data: bytes, *parts: str | Zone) -> None:
        """Write a file atomically (readers see the old or the new file, never half)."""

    @abstractmethod
    def delete(self, *parts: str | Zone) -> None:
        """Delete a file or folder tree; no error if absent."""

    @abstractmethod
    def stage_input(self, local_file: Path, run_id: str) -> str:
        """Make a delivered input file readable by Spark; returns the URI to read.

        A local lake reads the file where it lies. A distributed lake copies it to
        ``landing/<run_id>/`` first, because executors on other hosts cannot see the
        client's disk.
        """

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

    def files(self, *parts: str | Zone) -> list[str]:
        top = self._path(*parts)
        if not top.is_dir():
            return []
        return sorted(str(p.relative_to(top).as_posix()) for p in top.rglob("*") if p.is_file())

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

    def stage_input(self, local_file: Path, run_id: str) -> str:
        return f"file://{Path(local_file).resolve()}"

    def delete(self, *parts: str | Zone) -> None:
        path = self._path(*parts)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


class HdfsLake(Lake):
    """The lake on HDFS: Spark uses ``hdfs://`` URIs, Python goes through WebHDFS.

    Files are written with the configured replication, to a temporary name first and
    renamed into place, so readers never see a half-written file.
    """

    #: DataNodes tried per read (each failed one is excluded from the next OPEN).
    READ_ATTEMPTS = 4
    #: (connect, read) seconds for WebHDFS requests.
    TIMEOUTS = (5, 120)

    def __init__(self, fs_uri: str, webhdfs_url: str, user: str, replication: int) -> None:
        from urllib.parse import urlparse

        parsed = urlparse(fs_uri)
        if parsed.scheme != "hdfs" or not parsed.netloc:
            raise ConfigError(f"lake.hdfs.fs_uri must look like hdfs://host:port/path, got {fs_uri!r}",
                              field="lake.hdfs.fs_uri")
        self.fs_uri = fs_uri.rstrip("/")
        self.root = PurePosixPath(parsed.path or "/")
        self.webhdfs_url = webhdfs_url
        self.user = user
        self.replication = replication
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from hdfs import InsecureClient

            self._client = InsecureClient(self.webhdfs_url, user=self.user)
        return self._client

    def _path(self, *parts: str | Zone) -> str:
        return str(self.root / _rel(*parts))

    def _call(self, what: str, fn, *args, **kwargs):
        from hdfs.util import HdfsError
        from requests.exceptions import RequestException

        try:
            return fn(*args, **kwargs)
        except HdfsError as exc:
            if "FileNotFoundException" in str(exc) or "not found" in str(exc) or "does not exist" in str(exc):
                raise NotFound(f"lake file {what} does not exist") from exc
            raise Unavailable(f"HDFS {what}: {exc}") from exc
        except RequestException as exc:
            raise Unavailable(f"WebHDFS at {self.webhdfs_url} is unreachable: {exc}") from exc

    def uri(self, *parts: str | Zone) -> str:
        return f"{self.fs_uri}/{_rel(*parts)}" if parts else self.fs_uri

    def exists(self, *parts: str | Zone) -> bool:
        return self._call(_rel(*parts), self.client.status, self._path(*parts), strict=False) is not None

    def list_dir(self, *parts: str | Zone) -> list[str]:
        path = self._path(*parts)
        status = self._call(path, self.client.status, path, strict=False)
        if status is None or status["type"] != "DIRECTORY":
            return []
        return sorted(self._call(path, self.client.list, path))

    def files(self, *parts: str | Zone) -> list[str]:
        top = self._path(*parts)
        status = self._call(top, self.client.status, top, strict=False)
        if status is None or status["type"] != "DIRECTORY":
            return []
        out = []
        for root, _dirs, names in self._call(top, self.client.walk, top):
            below = str(PurePosixPath(root).relative_to(top))
            out += [name if below == "." else f"{below}/{name}" for name in names]
        return sorted(out)

    def read_bytes(self, *parts: str | Zone) -> bytes:
        """The file's bytes, read around DataNodes that are down.

        WebHDFS answers OPEN with a redirect to one DataNode, and the NameNode keeps
        choosing a dead one until it has noticed the death (minutes, by default). So the
        redirect is followed here: when the chosen DataNode cannot be reached, the OPEN is
        asked again with that node in ``excludedatanodes``, as the Java WebHDFS client does.
        """
        import socket
        from urllib.parse import urlparse

        import requests

        path = self._path(*parts)
        what = _rel(*parts)
        url = f"{self.webhdfs_url.rstrip('/')}/webhdfs/v1{path}"
        excluded: list[str] = []
        for _ in range(self.READ_ATTEMPTS):
            params = {"op": "OPEN", "user.name": self.user}
            if excluded:
                params["excludedatanodes"] = ",".join(excluded)
            try:
                resp = requests.get(url, params=params, allow_redirects=False, timeout=self.TIMEOUTS)
            except requests.RequestException as exc:
                raise Unavailable(f"WebHDFS at {self.webhdfs_url} is unreachable: {exc}") from exc
            if resp.status_code == 404:
                raise NotFound(f"lake file {what} does not exist")
            if resp.status_code == 200:  # a NameNode configured to proxy the data itself
                return resp.content
            if resp.status_code != 307 or "Location" not in resp.headers:
                raise Unavailable(f"HDFS read {what}: WebHDFS answered {resp.status_code}: {resp.text[:300]}")
            location = resp.headers["Location"]
            try:
                data = requests.get(location, timeout=self.TIMEOUTS)
            except requests.RequestException as exc:
                node = urlparse(location).hostname or ""
                try:
                    address = socket.gethostbyname(node)
                except OSError:
                    address = node
                log.warning("DataNode %s failed reading %s (%s); retrying without it", node, what, exc)
                excluded.append(address)
                continue
            if data.status_code != 200:
                raise Unavailable(f"HDFS read {what}: DataNode answered {data.status_code}: {data.text[:300]}")
            return data.content
        raise Unavailable(f"HDFS read {what}: no reachable DataNode after excluding {', '.join(excluded)}")

    def write_bytes(self, data: bytes, *parts: str | Zone) -> None:
        path = PurePosixPath(self._path(*parts))
        tmp = str(path.parent / f".{path.name}.{os.getpid()}.tmp")
        self._call(str(path), self.client.write, tmp, data=data, overwrite=True, replication=self.replication)
        # RENAME with OVERWRITE (rename2 in the NameNode) replaces the old file in one step.
        self._call(str(path), self.client._rename, tmp, destination=str(path), renameoptions="OVERWRITE")
        if self._call(tmp, self.client.status, tmp, strict=False) is not None:
            # A NameNode that ignored the option kept both: replace the old way (briefly no file).
            log.warning("HDFS kept %s after RENAME with OVERWRITE; replacing by delete + rename", path)
            self._call(str(path), self.client.delete, str(path))
            self._call(str(path), self.client.rename, tmp, str(path))

    def delete(self, *parts: str | Zone) -> None:
        self._call(_rel(*parts), self.client.delete, self._path(*parts), recursive=True)

    def stage_input(self, local_file: Path, run_id: str) -> str:
        local_file = Path(local_file)
        target = self._path(Zone.LANDING, run_id, local_file.name)
        with local_file.open("rb") as fh:
            self._call(target, self.client.write, target, data=fh, overwrite=True, replication=self.replication)
        return self.uri(Zone.LANDING, run_id, local_file.name)


def open_lake(settings: Settings) -> Lake:
    """The lake back-end the settings name."""
    if settings.lake.backend == "local":
        return LocalLake(settings.lake.root)
    h = settings.lake.hdfs
    return HdfsLake(h.fs_uri, h.webhdfs_url, h.user, h.replication)
