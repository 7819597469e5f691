"""Delivery state of alerts to SIEM sinks (docs/SINKS.md): an outbox read off the alerts table.

An alert's version is its `updated_at` (every merge or triage change bumps it). A sink owes an
alert when it has not acknowledged that version yet; nothing is copied at detection time, so
detection and ingestion never wait for a sink. `sink_deliveries` keeps, per sink and alert, the
last version the sink acknowledged; `sink_state` keeps each sink's retry clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import duckdb

from tokentrail.store.alerts import _ALERT_COLUMNS, AlertRow, _alert

DELIVERY_TABLES: Final = """
-- Per sink and alert: the newest alert version (alerts.updated_at) the sink acknowledged.
CREATE TABLE sink_deliveries (
    sink         VARCHAR NOT NULL,
    alert_id     VARCHAR NOT NULL,
    version      TIMESTAMPTZ NOT NULL,
    deliveries   BIGINT NOT NULL,       -- versions of this alert delivered to this sink
    outcome      VARCHAR NOT NULL,      -- delivered | dropped (backlog over its bound)
    delivered_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (sink, alert_id)
);

-- Per sink: the retry clock after failures, and totals for metrics.
CREATE TABLE sink_state (
    sink            VARCHAR PRIMARY KEY,
    failures        BIGINT NOT NULL,    -- consecutive failed attempts (0 when healthy)
    next_attempt_at TIMESTAMPTZ,
    last_error      VARCHAR,
    last_success_at TIMESTAMPTZ,
    delivered_total BIGINT NOT NULL,
    failed_total    BIGINT NOT NULL,
    dropped_total   BIGINT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
"""

# What a sink owes: alerts of the delivered statuses whose current version it has not
# acknowledged, oldest change first.
_PENDING: Final = """
FROM (
    SELECT a.*, coalesce(d.deliveries, 0) AS deliveries
    FROM alerts a
    LEFT JOIN sink_deliveries d ON d.sink = $sink AND d.alert_id = a.alert_id
    WHERE list_contains($statuses, a.status)
      AND list_contains($severities, a.severity)
      AND (d.alert_id IS NULL OR d.version < a.updated_at)
)
"""


class Pending(NamedTuple):
    """An alert version a sink has not acknowledged; `deliveries` of earlier versions (0: new)."""

    alert: AlertRow
    version_us: int
    deliveries: int


class SinkState(NamedTuple):
    sink: str
    failures: int
    next_attempt_us: int | None
    last_error: str | None
    last_success_us: int | None
    delivered_total: int
    failed_total: int
    dropped_total: int


def pending(
    conn: duckdb.DuckDBPyConnection,
    *,
    sink: str,
    statuses: Sequence[str],
    severities: Sequence[str],
    limit: int,
) -> list[Pending]:
    """The oldest `limit` alert versions `sink` owes, in (updated_at, alert_id) order."""
    rows = conn.execute(
        f"SELECT {_ALERT_COLUMNS}, epoch_us(updated_at), deliveries {_PENDING}"
        # fetchmany, not LIMIT: DuckDB 2.0.0 drops the LIMIT of this query when it has
        # parameters (`LIMIT $n` and an inlined number alike).
        " ORDER BY updated_at, alert_id",
        _params(sink, statuses, severities),
    ).fetchmany(limit)
    return [Pending(_alert(r[:-2]), int(r[-2]), int(r[-1])) for r in rows]


def backlog(
    conn: duckdb.DuckDBPyConnection,
    *,
    sink: str,
    statuses: Sequence[str],
    severities: Sequence[str],
) -> int:
    """How many alert versions `sink` owes."""
    row = conn.execute(
        f"SELECT count(*) {_PENDING}", _params(sink, statuses, severities)
    ).fetchall()
    return int(row[0][0])


def mark_delivered(
    conn: duckdb.DuckDBPyConnection,
    *,
    sink: str,
    versions: Sequence[tuple[str, int]],
    outcome: str = "delivered",
) -> None:
    """Record that `sink` acknowledged (or, outcome 'dropped', gave up on) these
    (alert_id, version_us); resets the sink's retry clock when delivered."""
    if not versions:
        return
    conn.begin()
    try:
        conn.executemany(
            "INSERT INTO sink_deliveries VALUES (?, ?, make_timestamptz(?), 1, ?, now())"
            " ON CONFLICT (sink, alert_id) DO UPDATE SET version = EXCLUDED.version,"
            " deliveries = sink_deliveries.deliveries + 1, outcome = EXCLUDED.outcome,"
            " delivered_at = EXCLUDED.delivered_at",
            [[sink, alert_id, version, outcome] for alert_id, version in versions],
        )
        delivered = len(versions) if outcome == "delivered" else 0
        _ensure_state(conn, sink)
        conn.execute(
            "UPDATE sink_state SET delivered_total = delivered_total + $n,"
            " dropped_total = dropped_total + $dropped, updated_at = now(),"
            " failures = CASE WHEN $n > 0 THEN 0 ELSE failures END,"
            " next_attempt_at = CASE WHEN $n > 0 THEN NULL ELSE next_attempt_at END,"
            " last_success_at = CASE WHEN $n > 0 THEN now() ELSE last_success_at END"
            " WHERE sink = $sink",
            {"sink": sink, "n": delivered, "dropped": len(versions) - delivered},
        )
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def record_failure(
    conn: duckdb.DuckDBPyConnection, *, sink: str, error: str, next_attempt_us: int
) -> int:
    """Count a failed attempt and set when to try again; returns consecutive failures."""
    _ensure_state(conn, sink)
    row = conn.execute(
        "UPDATE sink_state SET failures = failures + 1, failed_total = failed_total + 1,"
        " last_error = $error, next_attempt_at = make_timestamptz($next), updated_at = now()"
        " WHERE sink = $sink RETURNING failures",
        {"sink": sink, "error": error[:1000], "next": next_attempt_us},
    ).fetchall()
    return int(row[0][0])


def sink_state(conn: duckdb.DuckDBPyConnection, *, sink: str) -> SinkState:
    """A sink's retry clock and totals (zeros for a sink that never ran)."""
    rows = conn.execute(
        "SELECT sink, failures, epoch_us(next_attempt_at), last_error,"
        " epoch_us(last_success_at), delivered_total, failed_total, dropped_total"
        " FROM sink_state WHERE sink = ?",
        [sink],
    ).fetchall()
    if not rows:
        return SinkState(sink, 0, None, None, None, 0, 0, 0)
    return SinkState(*rows[0])


def delivered_versions(conn: duckdb.DuckDBPyConnection, *, sink: str) -> dict[str, int]:
    """alert_id -> the version (epoch micros) `sink` last acknowledged."""
    rows = conn.execute(
        "SELECT alert_id, epoch_us(version) FROM sink_deliveries WHERE sink = ?", [sink]
    ).fetchall()
    return {str(a): int(v) for a, v in rows}


def _ensure_state(conn: duckdb.DuckDBPyConnection, sink: str) -> None:
    conn.execute(
        "INSERT INTO sink_state VALUES (?, 0, NULL, NULL, NULL, 0, 0, 0, now())"
        " ON CONFLICT DO NOTHING",
        [sink],
    )


def _params(sink: str, statuses: Sequence[str], severities: Sequence[str]) -> dict[str, Any]:
    return {"sink": sink, "statuses": list(statuses), "severities": list(severities)}


__all__ = [
    "DELIVERY_TABLES",
    "Pending",
    "SinkState",
    "backlog",
    "delivered_versions",
    "mark_delivered",
    "pending",
    "record_failure",
    "sink_state",
]
