"""API settings: limits and defaults, from `TOKENTRAIL_API_*` variables, built by a function."""

from __future__ import annotations

import os

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
    # Seconds a valid key is trusted without reading `api_keys` again (0: read every time); a key
    # revoked through the API is refused at once whatever this is.
    key_cache_s: float = Field(default=5.0, ge=0)
    # Stored events kept in memory (tokentrail.api.cache; 0: none): evidence events of alerts
    # (~2 KB each), and the events of traces read as chains (~1 KB an event).
    evidence_cache: int = Field(default=10_000, ge=0)
    trace_cache: int = Field(default=5_000, ge=0)
    # Whole answers of chain, alert, alerts-list and blast-radius reads kept in memory until a
    # write changes what they were read from (tokentrail.api.reads), at most this many MiB of
    # JSON (0: none).
    read_cache_mb: float = Field(default=64.0, ge=0)
    # The request log is stored in one INSERT at most this many seconds apart.
    audit_flush_s: float = Field(default=1.0, gt=0)
    # Requests whose route code runs at once (threads); the rest wait their turn in order. With
    # more threads busy in Python the event loop waits for the GIL before it even reads new
    # requests, so some wait far longer than others: at 50 clients on 2 cores, 4 threads gave
    # p99 ~2x p50, 8 or 40 threads 4-6x (docs/PERFORMANCE.md, API under load).
    threads: int = Field(default_factory=lambda: 2 * (os.cpu_count() or 1), ge=1)
    # Threads of their own for the short reads an analyst waits on: an API key checked again
    # (every `key_cache_s`), a chain or alert not kept in memory. In the common queue they
    # waited behind blast radius and event pages (docs/PERFORMANCE.md, API under load).
    interactive_threads: int = Field(default=2, ge=1)
    # How many steps lower (nice value, Linux) the general request threads' scheduling priority
    # is than the rest of serve's: with the CPU short, the consumer and the interactive reads run
    # first (tokentrail.api.lanes). 0: all equal.
    general_nice: int = Field(default=10, ge=0, le=19)


def api_settings(**overrides: object) -> ApiSettings:
    """Settings from the environment, with explicit overrides (tests, command-line options)."""
    return ApiSettings.model_validate({**ApiSettings().model_dump(), **overrides})
