"""The SQL of an investigation: one alert, the events behind it, and a token family's calls.

`tokentrail.investigate` turns these rows into the evidence, timeline and containment list of an
incident; reach and lineage come from `tokentrail.store.graph`. Times are epoch microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

import duckdb

from tokentrail.store.alerts import _ALERT_COLUMNS, CREDENTIAL_OPS, AlertRow, _alert
from tokentrail.store.graph import utc


def alert_row(conn: duckdb.DuckDBPyConnection, *, alert_id: str) -> AlertRow | None:
    """One stored alert, or None."""
    rows = conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE alert_id = ?", [alert_id]
    ).fetchall()
    return _alert(rows[0]) if rows else None


def top_alert_id(
    conn: duckdb.DuckDBPyConnection, *, statuses: Sequence[str] = ("open", "acknowledged")
) -> str | None:
    """The alert to start from: most severe, then highest score (most reached), then earliest."""
    rows = conn.execute(
        "SELECT alert_id FROM alerts WHERE list_contains($statuses, status)"
        " ORDER BY list_position(['critical', 'high', 'medium', 'low', 'info'], severity),"
        " score DESC, first_seen, alert_id LIMIT 1",
        {"statuses": list(statuses)},
    ).fetchall()
    return str(rows[0][0]) if rows else None


class CallRow(NamedTuple):
    """One stored event, as an investigation shows it."""

    event_id: str
    ts_us: int
    token_id: str
    identity: str
    source: str
    target: str
    operation: str
    scope: str | None
    outcome: str
    trace_id: str | None
    environment: str | None
    resource: str | None
    bytes_out: int | None


_CALL_COLUMNS: Final = (
    "event_id, epoch_us(ts), token_id, identity, source, target, operation, scope, outcome,"
    " trace_id, environment, resource, bytes_out"
)


def calls_by_id(conn: duckdb.DuckDBPyConnection, *, event_ids: Sequence[str]) -> list[CallRow]:
    """The stored events among `event_ids`, oldest first."""
    if not event_ids:
        return []
    rows = conn.execute(
        f"SELECT {_CALL_COLUMNS} FROM events WHERE list_contains(?, event_id)"
        " ORDER BY ts, event_id",
        [list(event_ids)],
    ).fetchall()
    return [CallRow(*row) for row in rows]


def token_calls(
    conn: duckdb.DuckDBPyConnection,
    *,
    token_ids: Sequence[str],
    since_us: int,
    until_us: int,
    limit: int,
) -> list[CallRow]:
    """Calls the given tokens made in `[since, until]`, oldest first, at most `limit`."""
    rows = conn.execute(
        f"SELECT {_CALL_COLUMNS} FROM events"
        " WHERE list_contains(?, token_id) AND ts BETWEEN ? AND ?"
        " ORDER BY ts, event_id LIMIT ?",
        [list(token_ids), utc(since_us), utc(until_us), limit],
    ).fetchall()
    return [CallRow(*row) for row in rows]


def credential_calls(
    conn: duckdb.DuckDBPyConnection, *, token_ids: Sequence[str], since_us: int, until_us: int
) -> list[CallRow]:
    """Successful credential-access calls (secret reads, role assumption, key and token minting:
    what the credential-pivot detector follows) the given tokens made in `[since, until]`."""
    rows = conn.execute(
        f"SELECT {_CALL_COLUMNS} FROM events"
        " WHERE list_contains($tokens, token_id) AND ts BETWEEN $since AND $until"
        " AND outcome = 'success'"
        " AND (regexp_matches(operation, $ops) OR coalesce(scope, '') IN"
        "      ('secrets:read', 'token:exchange', 'sts:assume-role'))"
        " ORDER BY ts, event_id",
        {
            "tokens": list(token_ids),
            "since": utc(since_us),
            "until": utc(until_us),
            "ops": CREDENTIAL_OPS,
        },
    ).fetchall()
    return [CallRow(*row) for row in rows]


def newest_event_us(conn: duckdb.DuckDBPyConnection) -> int | None:
    """The newest stored event time: the store's clock (event time, never the wall clock)."""
    rows = conn.execute("SELECT epoch_us(max(ts)) FROM events").fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def token_users(
    conn: duckdb.DuckDBPyConnection, *, token_ids: Sequence[str]
) -> list[tuple[str, str]]:
    """(token, identity) for every identity that used one of the tokens, oldest use first: a
    shared or stolen token has more users than its registered holder."""
    rows = conn.execute(
        "SELECT token_id, identity FROM token_edges"
        " WHERE token_id IN (SELECT unnest(CAST($tokens AS VARCHAR[])))"
        " GROUP BY token_id, identity ORDER BY min(first_seen), token_id, identity",
        {"tokens": list(token_ids)},
    ).fetchall()
    return [(str(t), str(i)) for t, i in rows]
