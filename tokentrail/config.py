"""Settings: defaults, overridden by a TOML file, overridden by `TOKENTRAIL_*` environment vars.

>>> settings = load_settings(None)
>>> settings.max_event_bytes
1048576
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokentrail.errors import ConfigError


class KafkaSettings(BaseModel):
    """Consumer tuning; the defaults suit a 2-core machine reading ~500-byte events."""

    # Records handed to one batch write; larger batches amortise the transaction.
    max_poll_records: int = Field(default=20_000, ge=1)
    poll_timeout_ms: int = Field(default=500, ge=10)
    fetch_max_bytes: int = Field(default=64 << 20, ge=1 << 20)
    max_partition_fetch_bytes: int = Field(default=16 << 20, ge=1 << 20)
    # Short sessions make group joins and failover take seconds rather than half a minute.
    session_timeout_ms: int = Field(default=6_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=2_000, ge=100)
    # How long to keep trying an unreachable broker before giving up with an error.
    connect_timeout_s: float = Field(default=30.0, gt=0)
    # How long to wait for the group to assign a partition before calling the topic missing.
    join_timeout_s: float = Field(default=120.0, gt=0)


class Settings(BaseSettings):
    """Everything an operator may tune. Detector tuning lives with each detector."""

    model_config = SettingsConfigDict(
        env_prefix="TOKENTRAIL_", env_nested_delimiter="__", extra="forbid"
    )

    max_event_bytes: int = Field(default=1 << 20, ge=1024)
    # Events per batch written from a file or stdin.
    file_batch_size: int = Field(default=50_000, ge=1)
    kafka: KafkaSettings = KafkaSettings()


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
