"""Versioned schema migrations: a newer tokentrail opens and upgrades an older DuckDB file.

Each migration runs once, in its own transaction, and is recorded in `schema_migrations`.
Never edit a released migration: add the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

import duckdb

from tokentrail.store.alerts import DETECT_TABLES
from tokentrail.store.api import API_TABLES
from tokentrail.store.delivery import DELIVERY_TABLES
from tokentrail.store.derived import merge_derived
from tokentrail.store.graph import (
    GRAPH_TABLES,
    HOP_TABLES,
    TRACES_WITHOUT_KEY,
    UNKEYED_SCORES,
    V3_TRACES_BACKFILL,
    merge_graph,
    merge_service_hops,
)


class Migration(NamedTuple):
    version: int
    name: str
    sql: str
    # Fills what the new tables derive from data that is already stored.
    backfill: Callable[[duckdb.DuckDBPyConnection], None] | None = None


def _backfill_derived(conn: duckdb.DuckDBPyConnection) -> None:
    merge_derived(conn, new_events="events")


def _backfill_graph(conn: duckdb.DuckDBPyConnection) -> None:
    # `merge_graph` merges `traces` in its latest shape (version 9); version 3's is filled here.
    merge_graph(conn, new_events="events", hops=False, traces=False)
    conn.execute(V3_TRACES_BACKFILL)


def _backfill_service_hops(conn: duckdb.DuckDBPyConnection) -> None:
    merge_service_hops(conn, new_events=None)


_V1_EVENTS: Final = """
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);

-- Append-only; one row per accepted event. Column names follow the event contract.
CREATE TABLE events (
    event_id         VARCHAR NOT NULL,
    ts               TIMESTAMPTZ NOT NULL,
    token_id         VARCHAR NOT NULL,
    identity         VARCHAR NOT NULL,
    source           VARCHAR NOT NULL,
    target           VARCHAR NOT NULL,
    operation        VARCHAR NOT NULL,
    scope            VARCHAR,
    outcome          VARCHAR NOT NULL,
    status           INTEGER,
    trace_id         VARCHAR,
    span_id          VARCHAR,
    parent_span_id   VARCHAR,
    environment      VARCHAR,
    identity_kind    VARCHAR,
    resource         VARCHAR,
    source_ip        VARCHAR,
    user_agent       VARCHAR,
    bytes_out        BIGINT,
    task_id          VARCHAR,
    actor            VARCHAR,
    token_kind       VARCHAR,
    token_scopes     VARCHAR[],
    token_issued_at  TIMESTAMPTZ,
    token_expires_at TIMESTAMPTZ,
    parent_token_id  VARCHAR,
    token_audience   VARCHAR,
    attributes       JSON,
    flags            VARCHAR[],
    ingested_at      TIMESTAMPTZ NOT NULL
);

-- Whatever failed validation, with the raw bytes and where it came from.
CREATE TABLE dead_letters (
    received_at TIMESTAMPTZ NOT NULL,
    origin_kind VARCHAR NOT NULL,      -- kafka | file | stdin
    origin_name VARCHAR NOT NULL,      -- topic or file path
    partition   INTEGER,               -- Kafka partition
    position    BIGINT NOT NULL,       -- Kafka offset, or 1-based line / array item
    reason      VARCHAR NOT NULL,
    raw         BLOB NOT NULL
);

-- Next Kafka offset to read, written in the same transaction as the events it carried.
CREATE TABLE ingest_offsets (
    topic       VARCHAR NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""

_V2_DERIVED: Final = """
-- Token registry: metadata from the newest event (by event time) that carried a `token` object,
-- plus observed use. Merged per batch in an order-independent way, so replays agree.
CREATE TABLE tokens (
    token_id        VARCHAR PRIMARY KEY,
    identity        VARCHAR NOT NULL,   -- the identity of the token's first use
    identity_kind   VARCHAR,
    kind            VARCHAR,
    scopes          VARCHAR[],
    issued_at       TIMESTAMPTZ,
    expires_at      TIMESTAMPTZ,
    parent_token_id VARCHAR,
    audience        VARCHAR,
    meta_ts         TIMESTAMPTZ,        -- event time of the metadata kept above
    meta_event_id   VARCHAR,
    first_seen      TIMESTAMPTZ NOT NULL,
    first_event_id  VARCHAR NOT NULL,
    last_seen       TIMESTAMPTZ NOT NULL,
    calls           BIGINT NOT NULL,
    denied          BIGINT NOT NULL,
    errors          BIGINT NOT NULL,
    redacted        BOOLEAN NOT NULL    -- the producer sent a raw secret; we stored its hash
);

-- The calls a token made: token x identity x source -> target x operation x scope.
CREATE TABLE token_edges (
    token_id     VARCHAR NOT NULL,
    identity     VARCHAR NOT NULL,
    source       VARCHAR NOT NULL,
    target       VARCHAR NOT NULL,
    operation    VARCHAR NOT NULL,
    scope        VARCHAR NOT NULL,      -- '' when the call named none
    calls        BIGINT NOT NULL,
    denied       BIGINT NOT NULL,
    errors       BIGINT NOT NULL,
    bytes_out    BIGINT NOT NULL,
    environments VARCHAR[] NOT NULL,
    first_seen   TIMESTAMPTZ NOT NULL,
    last_seen    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (token_id, identity, source, target, operation, scope)
);
"""

MIGRATIONS: Final = (
    Migration(1, "events, dead letters, offsets", _V1_EVENTS),
    Migration(2, "derived tokens and token_edges", _V2_DERIVED, _backfill_derived),
    Migration(3, "graph: traces, chain_reach, token_links", GRAPH_TABLES, _backfill_graph),
    Migration(4, "detection: alerts, baselines, progress", DETECT_TABLES),
    Migration(5, "api: keys, request log, alert triage", API_TABLES),
    Migration(6, "sinks: delivery state per sink and alert", DELIVERY_TABLES),
    Migration(7, "graph: service_hops for path search", HOP_TABLES, _backfill_service_hops),
    Migration(8, "graph: blast_scores without a key", UNKEYED_SCORES),
    Migration(9, "graph: traces without a key", TRACES_WITHOUT_KEY),
)

LATEST: Final = MIGRATIONS[-1].version


def current_version(conn: duckdb.DuckDBPyConnection) -> int:
    """The schema version of an open database (0 for a new, empty file); reads only."""
    exists = conn.execute(
        "SELECT count(*) FROM duckdb_tables()"
        " WHERE database_name = current_database() AND table_name = 'schema_migrations'"
    ).fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: duckdb.DuckDBPyConnection, *, target: int = LATEST) -> list[int]:
    """Apply every migration above the file's version up to `target`; returns those applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
    )
    version = current_version(conn)
    applied = []
    for migration in MIGRATIONS:
        if version < migration.version <= target:
            conn.begin()
            try:
                conn.execute(migration.sql)
                if migration.backfill is not None:
                    migration.backfill(conn)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, now())",
                    [migration.version, migration.name],
                )
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            applied.append(migration.version)
    return applied
