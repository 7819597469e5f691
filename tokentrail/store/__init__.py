"""All SQL lives here: the DuckDB file, its migrations, batch writes and the queries on top.

One process owns a DuckDB file for writing. Each batch (its events, dead letters, derived rows and
Kafka offsets) is written in a single transaction, so a crash at any point loses nothing and
stores nothing twice.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import duckdb

from tokentrail.batch import Batch
from tokentrail.errors import StoreError
from tokentrail.events import SAMENESS_COLUMNS
from tokentrail.store.derived import merge_derived
from tokentrail.store.graph import merge_graph, sort_traces
from tokentrail.store.migrations import LATEST, current_version, migrate
from tokentrail.store.relations import registered, transaction
from tokentrail.store.retention import retention_floor_us

__all__ = ["BatchResult", "Store"]

log = logging.getLogger(__name__)

# How DuckDB reads the validated raw JSON (types were checked by the decoder already).
_JSON_SHAPE: Final = json.dumps(
    {
        **dict.fromkeys(
            (
                *("event_id", "identity", "source", "target", "operation", "scope", "outcome"),
                *("trace_id", "span_id", "parent_span_id", "environment", "identity_kind"),
                *("resource", "source_ip", "user_agent", "task_id", "actor"),
            ),
            "VARCHAR",
        ),
        "status": "INTEGER",
        "bytes_out": "BIGINT",
        "token": {"kind": "VARCHAR", "scopes": "VARCHAR[]", "audience": "JSON"},
        "attributes": "JSON",
    }
)

# The `events` row of each batch event, in table order (`ingested_at` is added on insert).
_EVENT_ROW: Final = """
    j.event_id, b.ts, b.token_id, j.identity, j.source, j.target, j.operation, j.scope,
    coalesce(j.outcome, 'success') AS outcome, j.status, j.trace_id, j.span_id,
    j.parent_span_id, j.environment, j.identity_kind, j.resource, j.source_ip, j.user_agent,
    j.bytes_out, j.task_id, j.actor,
    j.token.kind AS token_kind, j.token.scopes AS token_scopes,
    b.token_issued_at, b.token_expires_at, b.parent_token_id,
    CASE json_type(j.token.audience)
        WHEN 'ARRAY' THEN array_to_string(from_json(j.token.audience, '["VARCHAR"]'), ' ')
        ELSE j.token.audience ->> '$'
    END AS token_audience,
    CASE WHEN json_type(j.attributes) = 'OBJECT' THEN j.attributes END AS attributes,
    b.flags
"""

_EVENT_NAMES: Final = (
    "event_id, ts, token_id, identity, source, target, operation, scope, outcome, status,"
    " trace_id, span_id, parent_span_id, environment, identity_kind, resource, source_ip,"
    " user_agent, bytes_out, task_id, actor, token_kind, token_scopes, token_issued_at,"
    " token_expires_at, parent_token_id, token_audience, attributes, flags"
)

_STORED_KEY: Final = "(" + ", ".join(f"s.{c}" for c in SAMENESS_COLUMNS) + ")"
_BATCH_KEY: Final = "(" + ", ".join(f"b.{c}" for c in SAMENESS_COLUMNS) + ")"

# Incoming events (unique ids: the batch dropped its own repeats), parsed, each against a stored
# copy of its id if there is one. The stored copies are found in two steps: a scan of the
# `event_id` column alone for the batch's ids, then the other columns of the matching rows only
# (by row id; usually none). Joining the batch to all of `events` instead scanned eight columns
# of every stored event, and DuckDB keeps the blocks it read cached up to its memory limit: that
# cache grew with the store (18 MB after one batch at 1M events, 9 MB this way; peak RSS of a
# 5M-event ingest 595 -> 544 MB, docs/PERFORMANCE.md).
_STAGE: Final = f"""
CREATE OR REPLACE TEMP TABLE staged AS
WITH parsed AS (
    SELECT b.seq, {_EVENT_ROW}
    FROM (SELECT *, from_json(raw, '{_JSON_SHAPE}') AS j FROM batch_events) AS b
),
stored AS (
    SELECT event_id, {", ".join(SAMENESS_COLUMNS)} FROM events
    WHERE rowid IN (
        SELECT rowid FROM events
        WHERE event_id IN (SELECT event_id FROM parsed)
    )
)
SELECT b.*,
       s.event_id IS NOT NULL AS stored_before,
       s.event_id IS NOT NULL AND {_STORED_KEY} IS DISTINCT FROM {_BATCH_KEY} AS conflicting,
       coalesce(b.ts < make_timestamptz($floor), false) AS before_floor
FROM parsed b LEFT JOIN stored s ON s.event_id = b.event_id
"""


@dataclass(frozen=True)
class BatchResult:
    """What a batch write did: events stored, identical retries skipped, dead letters written
    (among them `conflicts`: ids stored before with other content)."""

    stored: int
    duplicates: int
    conflicts: int
    dead_letters: int


class Store:
    """A tokentrail DuckDB file, migrated to the current schema on open."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, path: str) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        read_only: bool = False,
        memory_limit: str | None = None,
        temp_directory: str | None = None,
    ) -> Store:
        """Open (creating and migrating if needed) the DuckDB file at `path`.

        `memory_limit` bounds DuckDB's buffer pool (e.g. "160MB"; DuckDB's default is 80% of
        RAM); what does not fit spills to `temp_directory` (by default `<path>.tmp`).

        >>> store = Store.open(":memory:", memory_limit="64MB")
        >>> store.stats()["events"]
        0
        """
        target = str(path)
        if target != ":memory:":
            parent = Path(target).parent
            if not parent.is_dir():
                raise StoreError(f"cannot open {target}: folder {parent} does not exist")
        try:
            conn = duckdb.connect(target, read_only=read_only)
        except duckdb.Error as exc:
            raise StoreError(f"cannot open {target}: {_first_line(exc)}") from None
        store = cls(conn, target)
        try:
            _limit_memory(conn, memory_limit=memory_limit, temp_directory=temp_directory)
        except duckdb.Error as exc:
            conn.close()
            raise StoreError(f"cannot open {target}: {_first_line(exc)}") from None
        # Rows need no physical order (queries sort); unordered inserts run ~30% faster.
        conn.execute("SET preserve_insertion_order = false")
        if read_only:
            if current_version(conn) > LATEST:
                raise StoreError(f"{target} was written by a newer tokentrail")
            return store
        try:
            version = current_version(conn)
            if version > LATEST:
                raise StoreError(
                    f"{target} has schema version {version}; this tokentrail knows {LATEST}"
                )
            migrate(conn)
            conn.execute(
                "INSERT INTO meta VALUES ('secret_salt', ?) ON CONFLICT DO NOTHING",
                [secrets.token_hex(32)],
            )
        except duckdb.Error as exc:
            conn.close()
            raise StoreError(f"cannot prepare {target}: {_first_line(exc)}") from None
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def version(self) -> int:
        return current_version(self.conn)

    def salt(self) -> bytes:
        """The per-database key that hashes raw secrets found in `token_id`."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'secret_salt'").fetchone()
        if row is None:
            raise StoreError(f"{self.path} has no secret salt; it was not created by tokentrail")
        return bytes.fromhex(row[0])

    def write_batch(self, batch: Batch) -> BatchResult:
        """Store a batch: events (deduplicated by `event_id`), derived rows, dead letters, offsets.

        A second copy of an event is dropped when it matches the stored one (a producer retry)
        and dead-lettered when it does not (same id, different content: a bug or tampering).
        """
        try:
            with transaction(self.conn):
                result = self._write_batch(batch)
        except duckdb.OutOfMemoryException as exc:
            [(limit,)] = self.conn.execute("SELECT current_setting('memory_limit')").fetchall()
            raise StoreError(
                f"cannot write to {self.path}: {_first_line(exc)}"
                f" (DuckDB may use {limit}: raise the setting duckdb.memory_limit,"
                " or duckdb.serve_memory_limit in serve)"
            ) from None
        except duckdb.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {_first_line(exc)}") from None
        # Between batches, in a transaction of its own: the batch is stored whatever happens
        # here, and an unsorted `traces` only makes lookups by trace id slower.
        try:
            sort_traces(self.conn)
        except duckdb.Error as exc:
            log.warning("traces not sorted by key (lookups scan them): %s", _first_line(exc))
        return result

    def _write_batch(self, batch: Batch) -> BatchResult:
        conn = self.conn
        stored, duplicates = 0, batch.duplicates
        if batch.accepted:
            with registered(conn, batch_events=batch.events_table()):
                # Events older than the retention floor were pruned: their ids can no longer
                # be deduplicated, so storing them again would count their calls twice.
                conn.execute(_STAGE, {"floor": retention_floor_us(conn)})
            for seq, event_id in conn.execute(
                "SELECT seq, event_id FROM staged WHERE conflicting ORDER BY seq"
            ).fetchall():
                batch.reject_conflict(seq, event_id)
            late = conn.execute(
                "SELECT seq FROM staged WHERE before_floor AND NOT stored_before ORDER BY seq"
            ).fetchall()
            if late:
                reason = _before_floor(conn)
                for (seq,) in late:
                    batch.reject_accepted(seq, reason)
            # DuckDB holds the events now: their bytes (~90 MB per 100k) need not wait for the
            # merges and detection while the next batch is read.
            batch.release()
            conn.execute(
                "CREATE OR REPLACE TEMP VIEW new_events AS"
                " SELECT * EXCLUDE (seq, stored_before, conflicting, before_floor) FROM staged"
                " WHERE NOT stored_before AND NOT before_floor"
            )
            conn.execute(
                f"INSERT INTO events ({_EVENT_NAMES}, ingested_at)"
                f" SELECT {_EVENT_NAMES}, now() FROM new_events"
            )
            merge_derived(conn, new_events="new_events")
            merge_graph(conn, new_events="new_events")
            counts = conn.execute(
                "SELECT count(*) FILTER (WHERE NOT stored_before AND NOT before_floor),"
                " count(*) FILTER (WHERE stored_before AND NOT conflicting) FROM staged"
            ).fetchone()
            assert counts is not None
            stored, duplicates = int(counts[0]), duplicates + int(counts[1])
            conn.execute("DROP VIEW new_events")
            conn.execute("DROP TABLE staged")
        if batch.dead_letters:
            with registered(conn, batch_dead=batch.dead_letters_table()):
                conn.execute(
                    "INSERT INTO dead_letters SELECT now(), origin_kind, origin_name, partition,"
                    " position, reason, raw FROM batch_dead"
                )
        if batch.offsets:
            conn.executemany(
                "INSERT INTO ingest_offsets VALUES (?, ?, ?, now())"
                " ON CONFLICT DO UPDATE SET next_offset = EXCLUDED.next_offset,"
                " updated_at = EXCLUDED.updated_at",
                [[batch.name, p, o] for p, o in sorted(batch.offsets.items())],
            )
        return BatchResult(stored, duplicates, batch.conflicts, len(batch.dead_letters))

    def stored_offsets(self, *, topic: str) -> dict[int, int]:
        """Partition -> next offset to read, as last committed with the data it carried."""
        rows = self.conn.execute(
            "SELECT partition, next_offset FROM ingest_offsets WHERE topic = ?", [topic]
        ).fetchall()
        return {int(p): int(o) for p, o in rows}

    def stats(self) -> dict[str, int]:
        """Row counts of the main tables (`alerts` is 0 until a detector has written any)."""
        tables = {
            row[0]
            for row in self.conn.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
            ).fetchall()
        }
        counts: dict[str, int] = {}
        for table in ("events", "dead_letters", "tokens", "token_edges", "alerts"):
            if table in tables:
                row = self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                counts[table] = int(row[0]) if row else 0
            else:
                counts[table] = 0
        return counts

    def dead_letter_reasons(self) -> list[tuple[str, int]]:
        """Dead letters grouped by reason, most frequent first."""
        rows = self.conn.execute(
            "SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason ORDER BY n DESC, reason"
        ).fetchall()
        return [(str(r), int(n)) for r, n in rows]


def _before_floor(conn: duckdb.DuckDBPyConnection) -> str:
    floor = datetime.fromtimestamp((retention_floor_us(conn) or 0) / 1e6, UTC)
    return f"event time before the retention floor {floor:%Y-%m-%dT%H:%M:%SZ}: it was pruned"


# DuckDB checkpoints its WAL into the file past this size. Data committed but not checkpointed
# stays in memory (~60 MB per 100k events): a larger threshold grows the process by that much
# per batch until the checkpoint, or spills it to the temp directory under a memory limit.
_CHECKPOINT_THRESHOLD: Final = "16MB"

# A statement whose peak allocation passed this hands the freed memory back to the system when
# it ends (DuckDB's default, 128 MB, keeps more than a bounded process can spare).
_ALLOCATOR_FLUSH_THRESHOLD: Final = "32MB"


def _limit_memory(
    conn: duckdb.DuckDBPyConnection, *, memory_limit: str | None, temp_directory: str | None
) -> None:
    conn.execute(f"SET checkpoint_threshold = {_literal(_CHECKPOINT_THRESHOLD)}")
    if memory_limit is not None:
        conn.execute(f"SET memory_limit = {_literal(memory_limit)}")
        conn.execute(f"SET allocator_flush_threshold = {_literal(_ALLOCATOR_FLUSH_THRESHOLD)}")
    if temp_directory is not None:
        conn.execute(f"SET temp_directory = {_literal(temp_directory)}")


def _literal(value: str) -> str:
    """A SQL string literal (SET takes no parameters)."""
    return "'" + value.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
