"""Retention and backup of the DuckDB file: what `tokentrail prune` and `tokentrail backup` run.

Raw rows age out; what was learned from them stays. `prune` deletes events (with their trace
index), dead letters and API audit records older than a cutoff, after optionally archiving them
to Parquet. Aggregates (`tokens`, `token_edges`, `chain_reach`, `token_links`), baselines and
alerts are kept: blast radius and lineage still count what the pruned events showed.

Because `event_id` deduplication needs the stored events, the cutoff becomes the database's
*retention floor*: events older than it are dead-lettered on ingest instead of being stored
again (a replayed old file must not count its calls twice in the aggregates).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import duckdb

from tokentrail.store.alerts import PROGRESS
from tokentrail.store.graph import sort_traces

FLOOR_KEY: Final = "retention_floor_us"

# Table -> the column whose time decides its age.
PRUNED: Final = {
    "events": "ts",
    "traces": "last_seen",
    "dead_letters": "received_at",
    "api_requests": "requested_at",
}


@dataclass(frozen=True)
class PruneResult:
    """Rows deleted (or that would be, on a dry run) per table, and the files archived."""

    cutoff: datetime
    rows: dict[str, int]
    archived: list[Path]


def retention_floor_us(conn: duckdb.DuckDBPyConnection) -> int | None:
    """Epoch µs below which events are no longer accepted, or None if never pruned."""
    rows = conn.execute("SELECT value FROM meta WHERE key = ?", [FLOOR_KEY]).fetchall()
    return int(rows[0][0]) if rows else None


def detected_through(conn: duckdb.DuckDBPyConnection) -> datetime | None:
    """Event time up to which detection has processed events (None: it never ran)."""
    rows = conn.execute("SELECT ts FROM detect_progress WHERE name = ?", [PROGRESS]).fetchall()
    return rows[0][0] if rows else None


def prune(
    conn: duckdb.DuckDBPyConnection,
    *,
    cutoff: datetime,
    archive: Path | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Delete rows older than `cutoff` (archived first as Parquet under `archive`), in one
    transaction, and raise the retention floor to it."""
    counts: dict[str, int] = {}
    for table, column in PRUNED.items():
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} < ?", [cutoff]).fetchall()
        counts[table] = int(row[0][0])
    archived: list[Path] = []
    if dry_run:
        return PruneResult(cutoff, counts, archived)
    stamp = f"{cutoff:%Y%m%dT%H%M%SZ}"
    conn.begin()
    try:
        for table, column in PRUNED.items():
            if not counts[table]:
                continue
            if archive is not None:
                # Written before the delete, inside its transaction: a failed write keeps the rows.
                target = archive / f"{table}-before-{stamp}.parquet"
                conn.execute(
                    f"COPY (SELECT * FROM {table} WHERE {column} < $cutoff)"
                    f" TO '{_quoted(target)}' (FORMAT parquet, COMPRESSION zstd)",
                    {"cutoff": cutoff},
                )
                archived.append(target)
            conn.execute(f"DELETE FROM {table} WHERE {column} < ?", [cutoff])
        conn.execute(
            "INSERT INTO meta VALUES (?, CAST(epoch_us(CAST(? AS TIMESTAMPTZ)) AS VARCHAR))"
            " ON CONFLICT DO UPDATE SET value = CAST(greatest(CAST(meta.value AS BIGINT),"
            " CAST(EXCLUDED.value AS BIGINT)) AS VARCHAR)",
            [FLOOR_KEY, cutoff],
        )
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    if counts["traces"]:
        # The count of rows kept in key order no longer says where the unsorted tail starts.
        sort_traces(conn, force=True)
    # Deleted row groups are given back to the file on checkpoint.
    conn.execute("CHECKPOINT")
    return PruneResult(cutoff, counts, archived)


def backup(conn: duckdb.DuckDBPyConnection, *, out: Path) -> None:
    """Copy the whole database into a new DuckDB file `out` (a consistent snapshot, compacted)."""
    rows = conn.execute("SELECT current_database()").fetchall()
    source = str(rows[0][0])
    conn.execute(f"ATTACH '{_quoted(out)}' AS tt_backup")
    try:
        conn.execute(f'COPY FROM DATABASE "{source}" TO tt_backup')
    finally:
        conn.execute("DETACH tt_backup")


def _quoted(path: Path) -> str:
    """A path as the body of a single-quoted SQL string literal."""
    return str(path).replace("'", "''")
