"""Settings: defaults, overridden by a TOML file, overridden by `TOKENTRAIL_*` environment vars.

>>> settings = load_settings(None)
>>> settings.max_event_bytes
1048576
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokentrail.errors import ConfigError

# Consumer settings that exactly-once and the command line decide; `kafka.client` may not.
_CONSUMER_OWNED: Final = frozenset(
    {"bootstrap_servers", "group_id", "enable_auto_commit", "auto_offset_reset", "client_id"}
)


class KafkaSettings(BaseModel):
    """Consumer tuning; the defaults suit a 2-core machine reading ~500-byte events."""

    # Records per poll (a fetch may bring fewer: ~9k of ~500 bytes from Tansu).
    max_poll_records: int = Field(default=40_000, ge=1)
    # Polls are gathered into one transaction of this many records, or of what came within
    # `batch_wait_ms` of its first record: a transaction costs ~60 ms however small, and a
    # batch is written while the next is read and validated.
    batch_records: int = Field(default=50_000, ge=1)
    batch_wait_ms: int = Field(default=1_000, ge=0)
    poll_timeout_ms: int = Field(default=500, ge=10)
    fetch_max_bytes: int = Field(default=64 << 20, ge=1 << 20)
    max_partition_fetch_bytes: int = Field(default=16 << 20, ge=1 << 20)
    # Short sessions make group joins and failover take seconds rather than half a minute.
    session_timeout_ms: int = Field(default=6_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=2_000, ge=100)
    # How long to keep trying an unreachable broker before giving up with an error.
    connect_timeout_s: float = Field(default=30.0, gt=0)
    # Once connected, a lost broker is retried for ever, backing off up to this (kafka-python's
    # 30 s default would leave a restarted broker unused for up to half a minute).
    reconnect_backoff_max_ms: int = Field(default=5_000, ge=100)
    # How long to wait for the group to assign a partition before calling the topic missing.
    join_timeout_s: float = Field(default=120.0, gt=0)
    # More kafka-python consumer settings, for a real cluster's TLS and SASL: security_protocol,
    # ssl_cafile, sasl_mechanism, sasl_plain_username, sasl_plain_password (better from the
    # environment: TOKENTRAIL_KAFKA__CLIENT__SASL_PLAIN_PASSWORD), ...
    client: dict[str, str | int | float | bool] = {}

    @field_validator("client")
    @classmethod
    def _not_ours(cls, client: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(client.keys() & _CONSUMER_OWNED)
        if taken:
            raise ValueError(f"{taken[0]} is set by tokentrail (exactly-once depends on it)")
        return client


SpanKind = Literal["unspecified", "internal", "server", "client", "producer", "consumer"]


class AdapterSettings(BaseModel):
    """Where the CloudTrail, OTLP and Zipkin adapters find what those formats do not name.

    Attribute (or Zipkin tag) names are tried in order; the first one present wins.
    """

    token_attributes: list[str] = ["tokentrail.token_id", "auth.token.id"]
    identity_attributes: list[str] = ["tokentrail.identity", "enduser.id"]
    scope_attributes: list[str] = ["tokentrail.scope", "enduser.scope"]
    # OTLP spans of other kinds are not stored; chains re-link across them within one request.
    otlp_span_kinds: list[SpanKind] = [
        "unspecified",
        "internal",
        "server",
        "client",
        "producer",
        "consumer",
    ]
    # AWS account id -> environment name; an account not listed is its own environment.
    aws_account_environments: dict[str, str] = {}


Level = Literal["info", "low", "medium", "high", "critical"]


class SinkBase(BaseModel):
    """What every sink shares (docs/SINKS.md): a unique name and which alerts it receives."""

    model_config = ConfigDict(extra="forbid")

    # Delivery state is kept under this name: renaming a sink re-sends every alert to it.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    enabled: bool = True
    min_severity: Level = "info"
    statuses: list[Literal["open", "acknowledged", "closed"]] = ["open", "acknowledged", "closed"]
    # Alerts per send (one HEC request, one Kafka flush, one syslog connection).
    batch_size: int = Field(default=100, ge=1, le=10_000)
    timeout_s: float = Field(default=10.0, gt=0)


class HttpSink(SinkBase):
    """A Splunk HEC endpoint, or any JSON collector (`envelope = "ndjson"`, another auth)."""

    type: Literal["http"]
    url: str = Field(pattern=r"^https?://")  # e.g. https://splunk:8088/services/collector/event
    token: str | None = None
    auth_scheme: str = "Splunk"  # the header is "Authorization: <scheme> <token>"
    envelope: Literal["hec", "ndjson"] = "hec"
    headers: dict[str, str] = {}
    index: str | None = None
    sourcetype: str = "ocsf:detection_finding"
    source: str = "tokentrail"
    host: str | None = None
    ca_file: str | None = None
    verify_tls: bool = True


class KafkaSink(SinkBase):
    """A Kafka topic of OCSF findings keyed by alert id."""

    type: Literal["kafka"]
    bootstrap_servers: str
    topic: str = "tokentrail.alerts"
    client_id: str = "tokentrail-sink"
    # Extra kafka-python producer settings (security_protocol, sasl_mechanism, ...).
    producer: dict[str, str | int | bool] = {}


class SyslogSink(SinkBase):
    """CEF lines in RFC 5424 syslog messages, over TCP (octet counting, optional TLS) or UDP."""

    type: Literal["syslog"]
    host: str
    port: int = Field(default=514, ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    tls: bool = False
    ca_file: str | None = None
    verify_tls: bool = True
    facility: int = Field(default=10, ge=0, le=23)  # 10: security/authorization (authpriv)
    app_name: str = "tokentrail"
    hostname: str | None = None  # default: this machine's name
    # A UDP datagram above this is cut (RFC 5426 advises staying under the path MTU).
    max_udp_bytes: int = Field(default=8192, ge=480, le=65_000)


SinkSettings = Annotated[HttpSink | KafkaSink | SyslogSink, Field(discriminator="type")]


class SinksSettings(BaseModel):
    """Delivery of alerts to SIEMs: the sinks, and the retry and backlog policy they share."""

    model_config = ConfigDict(extra="forbid")

    outputs: list[SinkSettings] = []
    # Retry after a failed send: initial * 2^(failures-1), capped.
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    # How often the delivery loop looks for new alert versions.
    poll_interval_s: float = Field(default=2.0, gt=0)
    # Backlog (alert versions a sink owes): warn above `backlog_warn`; above `backlog_max`
    # the oldest are recorded as dropped (counted in a metric) so the rest can flow.
    backlog_warn: int = Field(default=1_000, ge=1)
    backlog_max: int = Field(default=100_000, ge=1)


# A size as DuckDB's settings take it: "192MB", "1GB", "1.5GiB".
_DUCKDB_SIZE: Final = r"(?i)^\s*\d+(\.\d+)?\s*[KMGT]i?B\s*$"


class DuckDBSettings(BaseModel):
    """How much memory the DuckDB file may use, and where it spills the rest.

    DuckDB's own default is 80% of RAM, and it keeps what it once held: an ingest then grows
    with the data. Bounded, it spills sorts, joins and temp tables to `temp_directory`.
    """

    model_config = ConfigDict(extra="forbid")

    # A DuckDB size ("256MB", "1GB"), or None for DuckDB's default (80% of RAM). It bounds the
    # buffer pool only: an ingest process needs ~300 MB more. Bounded by default so an ingest
    # does not grow with the store: since `traces` lost its primary key (schema version 9) no
    # index that grows per event has to fit in it (docs/PERFORMANCE.md, issue #2). Not 128MB:
    # detection's pass over a simulated day (tests/incident.py) runs out of memory under it.
    memory_limit: str | None = Field(default="192MB", pattern=_DUCKDB_SIZE)
    # The same bound for `tokentrail serve`, whose API threads, consumer batch and detection
    # pass share one buffer pool at once: under 192MB, 50 API clients beside a consumer made
    # reads and detection passes run out of memory (bench/api_load.py, docs/PERFORMANCE.md).
    serve_memory_limit: str | None = Field(default="1GB", pattern=_DUCKDB_SIZE)
    # Where spilled data goes; by default `<db file>.tmp`, next to the database.
    temp_directory: str | None = None


class Settings(BaseSettings):
    """Everything an operator may tune. Detector tuning lives with each detector."""

    model_config = SettingsConfigDict(
        env_prefix="TOKENTRAIL_", env_nested_delimiter="__", extra="forbid"
    )

    max_event_bytes: int = Field(default=1 << 20, ge=1024)
    # Events per batch written from a file or stdin: one transaction each. A batch costs ~45 MB
    # in Python per 50k events while it is read, and as much again in DuckDB while it is stored.
    file_batch_size: int = Field(default=50_000, ge=1)
    kafka: KafkaSettings = KafkaSettings()
    duckdb: DuckDBSettings = DuckDBSettings()
    adapters: AdapterSettings = AdapterSettings()
    sinks: SinksSettings = SinksSettings()


def load_settings(path: Path | None) -> Settings:
    """Build settings from an optional TOML file; environment variables take precedence."""
    return _load(str(path) if path else None)


@lru_cache(maxsize=8)
def _load(path: str | None) -> Settings:
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from None
    try:
        # Environment wins over the file: init values are the lowest-priority source here.
        return Settings.model_validate(_deep_merge(values, _from_env()))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"bad setting {where}: {first['msg']}") from None


def _from_env() -> dict[str, Any]:
    try:
        return Settings().model_dump(exclude_unset=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"bad setting TOKENTRAIL_{where.upper()}: {first['msg']}") from None


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
