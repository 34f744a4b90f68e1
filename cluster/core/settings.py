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
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.core.contract import MAX_USER_ID_LENGTH
from cluster.core.errors import ConfigError

__all__ = [
    "Settings",
    "LakeSettings",
    "ProfileStoreSettings",
    "SparkSettings",
    "RaySettings",
    "ServeSettings",
    "IngestSettings",
    "PrivacySettings",
    "SegmentSettings",
    "EventSettings",
    "ClvSettings",
    "TagSettings",
    "CleaningSettings",
    "TrainingTableSettings",
    "ClusterSettings",
    "PROFILES_DIR",
    "load_settings",
    "profile_path",
]

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
ENV_PREFIX = "PMKT_"
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _empty_is_unset(value: Any) -> Any:
    return None if value == "" else value


#: An optional setting for which "" means unset: ``key_file: ${PMKT_PII_KEY_FILE:-}`` with the
#: variable unset is "no key file", not the current folder.
EMPTY_IS_UNSET = BeforeValidator(_empty_is_unset)
#: An optional file whose empty value means unset.
OptionalPath = Annotated[Path | None, EMPTY_IS_UNSET]


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
    # -- file holding the cluster's spark.authenticate.secret (mode 0600; the Ansible spark role
    #    generates it). Read when the session starts, so the secret is in no settings file.
    auth_secret_file: OptionalPath = None

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
    # -- the cluster's Ray token file (RAY_AUTH_TOKEN_PATH) when auth_mode is token; mode 0600
    auth_token_file: OptionalPath = None

    # -- tries for a ray:// (Ray Client) connection before giving up with UNAVAILABLE
    connect_attempts: int = Field(3, ge=1)
    # -- where the local Ray serves Prometheus metrics (/metrics: Serve's and the API's);
    #    0 lets Ray pick a free port (printed by `pmkt serve`). A cluster's nodes use the
    #    Ansible inventory's ray_metrics_export_port.
    metrics_export_port: int = Field(0, ge=0, le=65535)


class AutoscalingSettings(_Model):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)
    #: How long load must stay above / below target before Serve adds / removes replicas.
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingSettings":
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class AuthSettings(_Model):
    """Where the API keys come from (docs/api.md#authentication); the settings never hold a key."""

    # -- environment variable holding "client:key,client:key"
    keys_env: str = Field("PMKT_API_KEYS", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # -- file with one client:key per line, mode 0600
    keys_file: OptionalPath = None
    # -- refuse to serve without any key (an open API); true on the cluster profile. An open API
    #    logs a warning at every start.
    required: bool = False


class TlsSettings(_Model):
    """TLS for the API (docs/api.md#tls): HTTPS on Serve's HTTP proxy, and a TLS front for gRPC
    (Serve's gRPC proxy has no TLS). Unset certfile/keyfile = plaintext."""

    # -- PEM certificate chain and private key (mode 0600) of the server
    certfile: OptionalPath = None
    keyfile: OptionalPath = None
    # -- port of the gRPC TLS front (forwards to serve.grpc_port); unset = no gRPC TLS
    grpc_port: Annotated[int | None, EMPTY_IS_UNSET] = Field(None, ge=1, le=65535)
    # -- for clients: CA bundle that signed the server's certificate (unset = system store)
    ca_file: OptionalPath = None

    @model_validator(mode="after")
    def _pair(self) -> "TlsSettings":
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("serve.tls needs both certfile and keyfile, or neither")
        if self.grpc_port is not None and self.certfile is None:
            raise ValueError("serve.tls.grpc_port needs serve.tls.certfile and keyfile")
        return self

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


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
    # -- how gRPC requests reach the replicas: "proxy" (Serve's gRPC proxy on grpc_port, one
    #    address for every client) or "direct" (each replica serves gRPC itself, on a port Serve
    #    allocates from 40000; clients balance over the replicas: `pmkt serve status` lists
    #    them). Direct needs Ray started with it (docs/serving-performance.md).
    ingress: Literal["proxy", "direct"] = "proxy"
    # -- one log line per request in Serve's proxy and replica logs; off by default: at a
    #    thousand calls a second it costs CPU and disk, and the metrics count every call
    access_log: bool = False
    request_timeout_s: float = Field(10.0, gt=0)
    # -- seconds `pmkt serve` waits, on SIGTERM or Ctrl-C, for the calls each replica already
    #    accepted (new ones are refused UNAVAILABLE / 503 meanwhile) before the buffered events
    #    are flushed and Serve stops; a call still running then is cut
    drain_s: float = Field(10.0, gt=0, le=300)
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    # -- longest user id accepted by the API: the data contract's limit (cluster.core.contract), so every
    #    user the lake holds can be asked about; lower it only knowing ingest accepts up to 128
    max_user_id_length: int = Field(MAX_USER_ID_LENGTH, ge=1)
    # -- seconds between a replica's checks of the model registry for a new current version
    model_refresh_s: float = Field(30.0, gt=0)
    # -- most candidates in one ScoreBatch, items excluded in one Recommend
    max_batch: int = Field(500, ge=1)
    # -- largest HTTP request body and gRPC request message accepted, bytes; a bigger one is
    #    refused (413 / RESOURCE_EXHAUSTED) without being read
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    auth: AuthSettings = AuthSettings()
    tls: TlsSettings = TlsSettings()


class CampaignSettings(_Model):
    """One campaign's offer caps (docs/offers.md)."""

    # -- largest discount the campaign may give, a fraction of the price
    max_discount: float = Field(0.2, ge=0, le=0.9)
    # -- offers the campaign may issue in total (a counter in the profile store); 0 = no cap
    max_offers: int = Field(0, ge=0)
    # -- days an offer stays valid
    validity_days: int = Field(7, ge=1, le=365)
    # -- channels the campaign may use (a subset of channels.names); empty = all
    channels: list[str] = []


class OfferSettings(_Model):
    """The offer rules' thresholds and the campaigns (docs/offers.md)."""

    # -- churn risk at or above which an offer is about keeping the customer
    churn_risk_high: float = Field(0.5, gt=0, lt=1)
    # -- predicted CLV (CNY) at or above which a customer at risk gets the full discount
    clv_high: float = Field(800.0, ge=0)
    # -- purchase propensity at or above which no price discount is given (loyalty points)
    propensity_high: float = Field(0.6, gt=0, le=1)
    campaigns: dict[str, CampaignSettings] = {"default": CampaignSettings()}


class ChannelSettings(_Model):
    """Contact channels and the bandit's prior (docs/channels.md)."""

    # -- channels the bandit chooses among; each needs an a:opt_in_<name> consent cell
    names: list[str] = Field(["sms", "push", "email"], min_length=1)
    # -- Beta prior of every channel's conversion rate
    prior_alpha: float = Field(1.0, gt=0)
    prior_beta: float = Field(1.0, gt=0)

    @field_validator("names")
    @classmethod
    def _plain_names(cls, value: list[str]) -> list[str]:
        bad = [n for n in value if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", n)]
        if bad or len(set(value)) != len(value):
            raise ValueError(f"channel names must be unique, lower-case [a-z0-9_], 1-32 characters: {value}")
        return value


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


class PrivacySettings(_Model):
    """Where the keys that encrypt personal data come from (docs/privacy.md).

    The settings name the key sources, never hold a key: ``pmkt settings show`` prints them.
    """

    # -- environment variable holding the keys, "key_id:base64,key_id:base64" (wins over key_file)
    key_env: str = Field("PMKT_PII_KEYS", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # -- key file, one "key_id:base64" per line; must not be readable by group or others
    key_file: OptionalPath = None
    # -- key that encrypts; default the first key listed (every listed key decrypts)
    active_key_id: Annotated[str | None, EMPTY_IS_UNSET] = Field(None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    # -- create key_file with one random key when it is absent (embedded profile; never on a cluster)
    create_key_file: bool = False

    @model_validator(mode="after")
    def _creation_needs_a_file(self) -> "PrivacySettings":
        if self.create_key_file and self.key_file is None:
            raise ValueError("privacy.create_key_file is true but privacy.key_file is not set")
        return self


class RegistrySettings(_Model):
    """The key that signs model artifacts (docs/security.md#signed-model-artifacts).

    The registry records each artifact's SHA-256 and an HMAC-SHA256 over the version's metadata with
    this key; serving, `pmkt models` and promote refuse a version whose signature does not verify.
    A separate key from the PII keys: whoever may publish models need not decrypt ids.
    """

    # -- environment variable holding the signing key (base64 or hex, at least 32 bytes; wins over key_file)
    key_env: str = Field("PMKT_REGISTRY_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # -- file holding the signing key; must not be readable by group or others
    key_file: OptionalPath = None
    # -- create key_file with a random key when absent (embedded profile; never on a cluster)
    create_key_file: bool = False

    @model_validator(mode="after")
    def _creation_needs_a_file(self) -> "RegistrySettings":
        if self.create_key_file and self.key_file is None:
            raise ValueError("registry.create_key_file is true but registry.key_file is not set")
        return self


class SegmentSettings(_Model):
    """K-means segmentation search space."""

    k_min: int = Field(2, ge=2)
    k_max: int = Field(10, ge=2)
    # -- rows sampled to compute the silhouette (the full score is quadratic in rows)
    silhouette_sample: int = Field(5000, ge=100)
    seed: int = 42
    # -- cluster on log RFM plus predicted CLV (needs `pmkt features clv`); false: RFM alone
    with_clv: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> "SegmentSettings":
        if self.k_max < self.k_min:
            raise ValueError("k_max must be >= k_min")
        return self


class ClvSettings(_Model):
    """Customer lifetime value: BG/NBD + Gamma-Gamma (docs/features-clv.md)."""

    # -- time unit of recency/T and of the fit
    unit: Literal["days", "weeks"] = "days"
    # -- horizon of clv_predicted and expected_purchases
    horizon_days: int = Field(365, ge=1)
    # -- discount rate per 30 days (lifetimes' convention)
    monthly_discount_rate: float = Field(0.01, ge=0, lt=1)
    # -- L2 penalty of both fits; 0 = maximum likelihood (small values move Gamma-Gamma a lot)
    penalizer: float = Field(0.0, ge=0)


class TagSettings(_Model):
    """Behaviour tags, TF-IDF weights and the interaction matrix (docs/features-tags.md)."""

    # -- categories and brands kept per user
    top_k: int = Field(3, ge=1)
    # -- most recent distinct viewed categories kept per user
    last_viewed: int = Field(5, ge=1)
    # -- hours a cart has to be bought in before it counts as abandoned (7-day look-back)
    abandon_window_hours: float = Field(24.0, gt=0, lt=168)
    # -- tags kept per user in t:tfidf_top
    tfidf_top_k: int = Field(10, ge=1)
    # -- half-life in days of TF-IDF time decay; null = no decay (the article's formula)
    half_life_days: float | None = Field(None, gt=0)
    # -- weight of each action in the top-category/brand score (contract actions or "order")
    action_weights: dict[str, float] = Field(default_factory=lambda: {
        "view": 1.0, "click": 2.0, "favorite": 3.0, "cart": 3.0, "order": 5.0})
    # -- consumption level: months of paid orders the average monthly spend is taken over
    consumption_months: int = Field(6, ge=1, le=60)
    # -- consumption level name -> lowest average monthly spend (CNY) of the level; one bound is 0
    consumption_bands: dict[str, float] = Field(default_factory=lambda: {
        "low": 0.0, "medium": 200.0, "high": 1000.0, "premium": 3000.0})

    @field_validator("consumption_bands")
    @classmethod
    def _bands_start_at_zero(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or min(value.values()) != 0 or any(b < 0 for b in value.values()):
            raise ValueError("consumption_bands needs one band starting at 0 and no negative bound")
        if len(set(value.values())) != len(value):
            raise ValueError("consumption_bands: two levels share a lower bound")
        return value

    @field_validator("action_weights")
    @classmethod
    def _known_actions(cls, value: dict[str, float]) -> dict[str, float]:
        from cluster.core.contract import ACTIONS

        unknown = sorted(set(value) - set(ACTIONS) - {"order"})
        if unknown:
            raise ValueError(f"unknown action(s) {unknown}; use contract actions or 'order'")
        if any(w < 0 for w in value.values()):
            raise ValueError("weights must be >= 0")
        return value


class CleaningRuleSettings(_Model):
    """How one numeric column is cleaned (spark_jobs/clean.py ColumnRule)."""

    impute: Literal["none", "mean", "median", "knn", "max", "zero"] = "none"
    knn_k: int = Field(5, ge=1)
    outlier: Literal["none", "flag", "cap"] = "none"
    iqr_k: float = Field(1.5, ge=0)
    log_scale: bool = False


class CleaningSettings(_Model):
    """The cleaning job after ingest (docs/cleaning.md)."""

    # -- 0 = exact quartiles/medians; e.g. 0.001 -> percentile_approx
    relative_error: float = Field(0.0, ge=0, lt=1)
    # -- KNN donors: a deterministic sample of at most this many complete rows
    knn_fit_rows: int = Field(5000, ge=1)
    # -- rows to fill by KNN on the driver; more fails clearly
    knn_max_rows: int = Field(50_000, ge=1)
    seed: int = 42
    # -- table -> column -> rule; a table given here replaces that table's defaults
    rules: dict[Literal["orders", "users", "user_features"], dict[str, CleaningRuleSettings]] = Field(
        default_factory=dict)


class TrainingTableSettings(_Model):
    """CTR and churn training tables (docs/features-training-tables.md)."""

    # -- churn window W: no activity for more than W days before the observation end = churned
    inactivity_days: int = Field(90, ge=1)
    # -- size of the hashed block of the CTR feature vector
    hash_buckets: int = Field(16384, ge=1)
    # -- train occurrences a category needs for a one-hot slot of its own
    min_count: int = Field(5, ge=1)
    # -- share of the latest impressions (by time) held out for testing
    test_fraction: float = Field(0.2, gt=0, lt=1)
    # -- window of the recent-events features, days
    lookback_days: int = Field(30, ge=1)
    # -- pseudo-impressions shrinking the churn table's per-user ad CTR
    ctr_prior: float = Field(20.0, ge=0)


class EventSettings(_Model):
    """Real-time event intake (EventService / POST /v1/events)."""

    # -- most events in one request
    max_batch: int = Field(1000, ge=1)
    # -- buffered events are appended to the lake once this many wait ...
    flush_rows: int = Field(5000, ge=1)
    # -- ... or the oldest has waited this long (seconds)
    flush_s: float = Field(10.0, gt=0)
    # -- events stamped further than this in the future are rejected (clock skew allowance)
    max_future_s: float = Field(300.0, ge=0)
    # -- event ids a replica remembers to drop re-sent events without asking the store
    dedup_window: int = Field(100_000, ge=0)
    # -- seconds an event id stays claimed in the profile store, so that an event re-sent to
    #    any replica within this time is counted once (HBase: the claims table's TTL, fixed
    #    when the table is created)
    dedup_ttl_s: float = Field(86_400.0, ge=1)
    # -- seconds a replica caches the list of forgotten users
    tombstone_ttl_s: float = Field(30.0, gt=0)


class CampaignGoal(_Model):
    """One campaign's targets (docs/experiments.md, goal-gap); give at least one target."""

    # -- users reached at least once
    reach: float | None = Field(None, ge=0)
    impressions: float | None = Field(None, ge=0)
    clicks: float | None = Field(None, ge=0)
    # -- clicks / impressions
    ctr: float | None = Field(None, ge=0, le=1)
    # -- paid orders attributed to the campaign's clicks
    conversions: float | None = Field(None, ge=0)
    # -- CNY of those orders
    revenue: float | None = Field(None, ge=0)
    # -- revenue per CNY spent
    roi: float | None = Field(None, ge=0)
    # -- most the campaign may spend, CNY
    budget: float | None = Field(None, ge=0)
    # -- first day; null = the campaign's first day with results
    start_date: date | None = None
    # -- last day; or give duration_days (counted from the first day)
    end_date: date | None = None
    duration_days: int | None = Field(None, ge=1, le=3660)

    @model_validator(mode="after")
    def _complete(self) -> "CampaignGoal":
        if (self.end_date is None) == (self.duration_days is None):
            raise ValueError("give exactly one of end_date and duration_days")
        if not self.targets():
            raise ValueError("give at least one target (reach, impressions, clicks, ctr, conversions, revenue, "
                             "roi, budget)")
        return self

    def targets(self) -> dict[str, float]:
        names = ("reach", "impressions", "clicks", "ctr", "conversions", "revenue", "roi", "budget")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class EvaluationSettings(_Model):
    """Campaign evaluation and the report (docs/experiments.md, docs/report.md)."""

    # -- an order counts for the user's last click at most this many days before it
    attribution_window_days: int = Field(7, ge=1, le=90)
    # -- where `pmkt report` writes its HTML file by default
    report_dir: Path = Path("var/reports")
    # -- campaign id -> its targets: the goal-gap section of `pmkt report` and `pmkt goals`
    goals: dict[str, CampaignGoal] = {}


class FunnelDefinition(_Model):
    """One conversion funnel: an ordered list of actions and the time to go through them."""

    # -- the actions in order (contract actions, at least 2; an action may repeat)
    steps: list[str] = Field(min_length=2)
    # -- the last step reached must be at most this many hours after the first
    window_hours: float = Field(gt=0)

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, value: list[str]) -> list[str]:
        from cluster.core.contract import ACTIONS

        unknown = sorted(set(value) - set(ACTIONS))
        if unknown:
            raise ValueError(f"unknown action(s) {unknown}; use contract actions {list(ACTIONS)}")
        return value


class FunnelSettings(_Model):
    """Conversion funnels over behaviour events (docs/funnels.md)."""

    # -- funnel name -> steps and window; `pmkt features funnels` builds every one, and
    #    GetFunnel / GET /v1/funnels answer for these names ("default" when none is asked for)
    definitions: dict[str, FunnelDefinition] = Field(default_factory=lambda: {
        "default": FunnelDefinition(steps=["view", "click", "cart", "purchase"], window_hours=24.0)})

    @field_validator("definitions")
    @classmethod
    def _names(cls, value: dict[str, FunnelDefinition]) -> dict[str, FunnelDefinition]:
        # Names travel in URLs (?funnel=...) and in the table's funnel column.
        bad = sorted(n for n in value if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", n))
        if bad:
            raise ValueError(f"funnel names must be 1 to 64 letters, digits, '_' or '-': {bad}")
        return value


class AttributeSettings(_Model):
    """Predicted static attributes (docs/models-attributes.md)."""

    # -- the users column predicted from behaviour (its declared value is never overwritten)
    target: Literal["gender", "city"] = "gender"
    # -- a prediction is stored only when its probability is at least this (else the user abstains)
    min_probability: float = Field(0.7, ge=0, lt=1)
    # -- share (percent, by hash of the user id) of the declared users held out for the metrics
    test_percent: int = Field(20, ge=5, le=50)
    # -- share (percent, by the same hash) of the declared users that scores the search's trials
    valid_percent: int = Field(20, ge=5, le=50)
    # -- bins of the reliability table and of the expected calibration error (equal width)
    calibration_bins: int = Field(10, ge=2, le=50)

    @model_validator(mode="after")
    def _training_users_left(self) -> "AttributeSettings":
        if self.test_percent + self.valid_percent > 60:
            raise ValueError("test_percent + valid_percent must leave at least 40 % of the users to train on")
        return self


class PricingSettings(_Model):
    """Demand forecast, price response and time-slot discounts (docs/pricing.md)."""

    # -- days at the end of the demand table held out to measure the forecast error (MAPE, R^2)
    holdout_days: int = Field(28, ge=7, le=180)
    # -- gross margin as a share of the list price (the discount optimiser's economics)
    margin_rate: float = Field(0.35, gt=0, lt=1)
    # -- discount levels a slot may get (0 is always allowed)
    discount_levels: list[float] = Field(default_factory=lambda: [0.05, 0.10, 0.15, 0.20, 0.30])
    # -- highest discount any slot may get, a fraction of the price
    max_discount: float = Field(0.30, ge=0, le=0.9)
    # -- slots at or below this quantile of the week's demand are off-peak (only they get discounts)
    offpeak_quantile: float = Field(0.5, ge=0, le=1)
    # -- the report's example plan: weekly discount budget as a share of the category's list revenue
    report_budget_share: float = Field(0.02, ge=0, le=1)

    @field_validator("discount_levels")
    @classmethod
    def _levels(cls, value: list[float]) -> list[float]:
        if not value or len(value) > 20 or any(not 0 < x <= 0.9 for x in value):
            raise ValueError("discount_levels needs 1 to 20 levels, each in (0, 0.9]")
        return sorted(set(value))


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
    privacy: PrivacySettings = PrivacySettings()
    registry: RegistrySettings = RegistrySettings()
    segments: SegmentSettings = SegmentSettings()
    events: EventSettings = EventSettings()
    clv: ClvSettings = ClvSettings()
    tags: TagSettings = TagSettings()
    cleaning: CleaningSettings = CleaningSettings()
    training_tables: TrainingTableSettings = TrainingTableSettings()
    offers: OfferSettings = OfferSettings()
    channels: ChannelSettings = ChannelSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    funnels: FunnelSettings = FunnelSettings()
    attributes: AttributeSettings = AttributeSettings()
    pricing: PricingSettings = PricingSettings()
    cluster: ClusterSettings = ClusterSettings()
    # -- the file these settings came from (set by load_settings)
    source: Path | None = None

    @model_validator(mode="after")
    def _campaign_channels_known(self) -> "Settings":
        for name, campaign in self.offers.campaigns.items():
            unknown = sorted(set(campaign.channels) - set(self.channels.names))
            if unknown:
                raise ValueError(f"offers.campaigns.{name}.channels names unknown channels {unknown}; "
                                 f"channels.names is {self.channels.names}")
        return self


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
            "evaluation": settings.evaluation.model_copy(update={"report_dir": fix(settings.evaluation.report_dir)}),
            "privacy": settings.privacy.model_copy(
                update={"key_file": None if settings.privacy.key_file is None else fix(settings.privacy.key_file)}
            ),
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
