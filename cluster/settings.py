"""Typed platform settings: one object, loaded from one YAML file, overridable by environment.

Loading order (:func:`load_settings`):

1. the file: ``--settings PATH`` / ``PMKT_SETTINGS``, else the bundled profile named by
   ``--profile`` / ``PMKT_PROFILE`` (``embedded`` by default, or ``cluster``);
2. ``${VAR}`` and ``${VAR:-default}`` in the file are replaced from the environment;
3. ``PMKT_<SECTION>__<FIELD>=value`` variables override single fields
   (``PMKT_SERVE__GRPC_PORT=9100``; nested sections chain with ``__``);
4. the result is validated; any error names the file and the field.

Relative paths are resolved against the working directory at load time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.errors import ConfigError

__all__ = [
    "Settings",
    "LakeSettings",
    "ProfileStoreSettings",
    "SparkSettings",
    "RaySettings",
    "ServeSettings",
    "IngestSettings",
    "SegmentSettings",
    "ClusterSettings",
    "PROFILES_DIR",
    "load_settings",
    "profile_path",
]

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
ENV_PREFIX = "PMKT_"
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HdfsSettings(_Model):
    """HDFS endpoints of the ``cluster`` profile."""

    # -- Spark's view of the lake root, e.g. hdfs://pm-master:8020/lake
    fs_uri: str
    # -- WebHDFS base URL used by the Python side, e.g. http://pm-master:9870
    webhdfs_url: str
    # -- HDFS user that owns the lake
    user: str = "pmkt"
    # -- replication factor of files the platform writes
    replication: int = Field(2, ge=1)


class LakeSettings(_Model):
    """Where the lake lives: a local folder (embedded) or HDFS (cluster)."""

    backend: Literal["local", "hdfs"] = "local"
    # -- lake root folder for the local back-end
    root: Path = Path("var/lake")
    hdfs: HdfsSettings | None = None

    @model_validator(mode="after")
    def _hdfs_needs_endpoints(self) -> "LakeSettings":
        if self.backend == "hdfs" and self.hdfs is None:
            raise ValueError("lake.backend is 'hdfs' but lake.hdfs is not set")
        return self


class HBaseSettings(_Model):
    """HBase Thrift (v1) server used through happybase."""

    host: str
    port: int = Field(9090, ge=1, le=65535)
    # -- prefix of every table name, so several deployments can share one HBase
    table_prefix: str = "pmkt"
    # -- number of salt buckets in the row key (see docs/profile-store.md)
    salt_buckets: int = Field(16, ge=1, le=256)
    timeout_ms: int = Field(10_000, ge=100)


class ProfileStoreSettings(_Model):
    """The online profile store: SQLite (embedded) or HBase (cluster)."""

    backend: Literal["sqlite", "hbase"] = "sqlite"
    sqlite_path: Path = Path("var/profiles.sqlite")
    hbase: HBaseSettings | None = None
    # -- rows per batched write
    batch_size: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _hbase_needs_endpoint(self) -> "ProfileStoreSettings":
        if self.backend == "hbase" and self.hbase is None:
            raise ValueError("profile_store.backend is 'hbase' but profile_store.hbase is not set")
        return self


class SparkSettings(_Model):
    """How Spark jobs get their session."""

    # -- local[N] for the embedded default, spark://host:7077 on the cluster
    master: str = "local[2]"
    # -- address the driver binds and advertises (never the machine's external interface)
    driver_host: str = "127.0.0.1"
    driver_memory: str = "2g"
    executor_memory: str = "1g"
    shuffle_partitions: int = Field(4, ge=1)
    # -- Spark's log level for the driver
    log_level: str = "WARN"
    # -- further spark.* settings passed as they are
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_as_text(cls, value: Any) -> Any:
        # YAML and env overrides turn "true" / "4" into bool / int; Spark wants text.
        if isinstance(value, dict):
            return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}
        return value


class RaySettings(_Model):
    """How Ray Tune and Ray Serve reach Ray."""

    # -- "local" starts a private Ray on this machine; otherwise host:port of a running head
    address: str = "local"
    # -- node address of the local Ray; 127.0.0.1 is replaced by Ray with the external
    # -- interface, so another loopback address is the default
    node_ip: str = "127.0.0.2"
    num_cpus: int = Field(2, ge=1)
    # -- memory Ray may use for tasks and for its object store, MiB (0 = Ray's default)
    memory_mb: int = Field(4096, ge=0)
    object_store_mb: int = Field(1024, ge=0)
    # -- where Tune keeps trial results (must be a local or shared path)
    tune_storage: Path = Path("var/tune")
    include_dashboard: bool = False
    # -- RAY_AUTH_MODE for this process; must match what the cluster's nodes were started with
    auth_mode: Literal["token", "disabled"] | None = None


class AutoscalingSettings(_Model):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingSettings":
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class ServeSettings(_Model):
    """Ray Serve's HTTP and gRPC listeners."""

    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(9000, ge=1, le=65535)
    # -- address clients (the demo, tests, benchmarks) use to reach the gRPC port
    grpc_client_host: str = "127.0.0.1"
    # -- address clients use to reach the HTTP port (http_host may be 0.0.0.0)
    http_client_host: str = "127.0.0.1"
    # -- where Serve runs its proxies: HeadOnly when http_host is the head's own address
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"
    request_timeout_s: float = Field(10.0, gt=0)
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    # -- longest user id accepted by the API
    max_user_id_length: int = Field(64, ge=1)
    # -- seconds between a replica's checks of the model registry for a new current version
    model_refresh_s: float = Field(30.0, gt=0)


class IngestSettings(_Model):
    """The data contract's tunables."""

    # -- time zone of timestamps written without an offset
    source_timezone: str = "Asia/Shanghai"

    @field_validator("source_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class SegmentSettings(_Model):
    """K-means segmentation search space."""

    k_min: int = Field(2, ge=2)
    k_max: int = Field(10, ge=2)
    # -- rows sampled to compute the silhouette (the full score is quadratic in rows)
    silhouette_sample: int = Field(5000, ge=100)
    seed: int = 42

    @model_validator(mode="after")
    def _ordered(self) -> "SegmentSettings":
        if self.k_max < self.k_min:
            raise ValueError("k_max must be >= k_min")
        return self


class ClusterSettings(_Model):
    """How `pmkt cluster up | down | status` reaches and judges the provisioned cluster."""

    # -- Ansible inventory for up/down, relative to the checkout's ansible/ folder
    inventory: str = "inventories/local"
    # -- HBase master web UI (its /jmx tells live RegionServers)
    hbase_master_http: str | None = None
    # -- Spark standalone master web UI (its /json/ lists workers)
    spark_master_http: str | None = None
    expected_datanodes: int = Field(2, ge=1)
    expected_regionservers: int = Field(2, ge=1)
    expected_spark_workers: int = Field(2, ge=1)
    expected_ray_nodes: int = Field(3, ge=1)


class Settings(_Model):
    """All platform settings. Build with :func:`load_settings`."""

    profile: str
    lake: LakeSettings = LakeSettings()
    profile_store: ProfileStoreSettings = ProfileStoreSettings()
    spark: SparkSettings = SparkSettings()
    ray: RaySettings = RaySettings()
    serve: ServeSettings = ServeSettings()
    ingest: IngestSettings = IngestSettings()
    segments: SegmentSettings = SegmentSettings()
    cluster: ClusterSettings = ClusterSettings()
    # -- the file these settings came from (set by load_settings)
    source: Path | None = None


def profile_path(profile: str) -> Path:
    """Path of a bundled settings profile (``embedded`` or ``cluster``)."""
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown settings profile {profile!r}; known profiles: {known}", field="profile")
    return path


def _expand(text: str, env: dict[str, str], source: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{source}: ${{{name}}} is used but the environment variable {name} is not set")

    return _VAR_RE.sub(replace, text)


def _apply_env_overrides(data: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    for key, value in sorted(env.items()):
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {'.'.join(path[:-1])} is not a section", field=".".join(path))
            node = child
        # YAML parsing gives ints, floats and booleans their types ("9100" -> 9100).
        node[path[-1]] = yaml.safe_load(value) if value != "" else ""
    return data


def _absolutise(settings: Settings, cwd: Path) -> Settings:
    def fix(p: Path) -> Path:
        return p if p.is_absolute() else (cwd / p).resolve()

    return settings.model_copy(
        update={
            "lake": settings.lake.model_copy(update={"root": fix(settings.lake.root)}),
            "profile_store": settings.profile_store.model_copy(
                update={"sqlite_path": fix(settings.profile_store.sqlite_path)}
            ),
            "ray": settings.ray.model_copy(update={"tune_storage": fix(settings.ray.tune_storage)}),
        }
    )


def load_settings(
    profile: str | None = None,
    path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Load, expand, override and validate the settings.

    Args:
        profile: Bundled profile name; default ``PMKT_PROFILE`` or ``embedded``.
        path: Settings file; default ``PMKT_SETTINGS``; wins over ``profile``.
        env: Environment to read (default ``os.environ``).

    Returns:
        The validated, frozen settings with absolute paths.

    Raises:
        ConfigError: the file is missing, not YAML, or a field is invalid; the message
            names the file and the field.
    """
    env = dict(os.environ if env is None else env)
    path = path or env.get("PMKT_SETTINGS")
    source = Path(path) if path else profile_path(profile or env.get("PMKT_PROFILE") or "embedded")
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {source}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(_expand(text, env, source)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    data = _apply_env_overrides(data, env)
    data.setdefault("profile", source.stem)
    try:
        settings = Settings.model_validate({**data, "source": source.resolve()})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{source}: invalid settings: {problems}", field=field) from exc
    return _absolutise(settings, Path.cwd())
