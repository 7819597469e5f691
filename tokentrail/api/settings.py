"""API settings: limits and defaults, from `TOKENTRAIL_API_*` variables, built by a function."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """What an operator may tune about the query API."""

    model_config = SettingsConfigDict(env_prefix="TOKENTRAIL_API_", extra="forbid")

    # Events per page of /v1/events: the default and the hard ceiling.
    events_page: int = Field(default=100, ge=1)
    events_page_max: int = Field(default=1000, ge=1)
    # The read-only SQL endpoint: rows returned at most, seconds before the query is interrupted.
    query_rows_max: int = Field(default=1000, ge=1)
    query_timeout_s: float = Field(default=5.0, gt=0)
    query_length_max: int = Field(default=20_000, ge=100)
    # Request bodies (SQL, triage notes, key names) are small; anything larger is refused (413).
    body_max_bytes: int = Field(default=1 << 20, ge=1024)


def api_settings(**overrides: object) -> ApiSettings:
    """Settings from the environment, with explicit overrides (tests, command-line options)."""
    return ApiSettings.model_validate({**ApiSettings().model_dump(), **overrides})
