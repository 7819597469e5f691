"""The query API's own SQL: API keys, the request log, alert triage history and event pages.

Graph and alert reads reuse `tokentrail.store.graph` and `tokentrail.store.alerts`; what lives
here is only what the API adds. Keys are stored as SHA-256 hashes of the full key, never the key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

import duckdb
import pyarrow as pa

from tokentrail.store.alerts import _ALERT_COLUMNS, AlertRow, _alert
from tokentrail.store.graph import RankedToken, utc
from tokentrail.store.relations import registered

API_TABLES: Final = """
-- Bearer keys of the query API; `key_hash` is sha256(key), the key itself is shown once.
CREATE TABLE api_keys (
    key_id     VARCHAR PRIMARY KEY,
    name       VARCHAR NOT NULL,
    role       VARCHAR NOT NULL,        -- viewer | analyst | admin
    key_hash   VARCHAR NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);

-- Every API request: who (key), what (method, path, query), when, and how it ended.
CREATE TABLE api_requests (
    requested_at TIMESTAMPTZ NOT NULL,
    key_id      VARCHAR,                -- NULL: no valid key was presented
    role        VARCHAR,
    method      VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,
    query       VARCHAR,
    status      INTEGER NOT NULL,
    duration_ms DOUBLE NOT NULL,
    client      VARCHAR,
    detail      VARCHAR                 -- e.g. the SQL of /v1/query, or why it was refused
);

-- Triage: the current assignee of an alert (status stays in `alerts`) ...
CREATE TABLE alert_assignees (
    alert_id   VARCHAR PRIMARY KEY,
    assignee   VARCHAR,
    updated_at TIMESTAMPTZ NOT NULL
);

-- ... and every change made to an alert through the API, with its note.
CREATE TABLE alert_history (
    alert_id      VARCHAR NOT NULL,
    changed_at    TIMESTAMPTZ NOT NULL,
    key_id        VARCHAR,
    actor         VARCHAR,
    status_from   VARCHAR,
    status_to     VARCHAR,
    assignee_from VARCHAR,
    assignee_to   VARCHAR,
    note          VARCHAR
);
"""


# --- API keys ---------------------------------------------------------------------------------


class KeyRow(NamedTuple):
    key_id: str
    name: str
    role: str
    key_hash: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


_KEY_COLUMNS: Final = (
    "k.key_id, k.name, k.role, k.key_hash, k.created_at, k.revoked_at,"
    " (SELECT max(r.requested_at) FROM api_requests r WHERE r.key_id = k.key_id)"
)


def insert_key(
    conn: duckdb.DuckDBPyConnection, *, key_id: str, name: str, role: str, key_hash: str
) -> None:
    conn.execute(
        "INSERT INTO api_keys VALUES (?, ?, ?, ?, now(), NULL)", [key_id, name, role, key_hash]
    )


def key_by_id(conn: duckdb.DuckDBPyConnection, *, key_id: str) -> KeyRow | None:
    """One key, without its last use (looked up on every request, so kept to one row read)."""
    rows = conn.execute(
        "SELECT key_id, name, role, key_hash, created_at, revoked_at, NULL FROM api_keys"
        " WHERE key_id = ?",
        [key_id],
    ).fetchall()
    return KeyRow(*rows[0]) if rows else None


def list_keys(conn: duckdb.DuckDBPyConnection) -> list[KeyRow]:
    rows = conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys k ORDER BY k.created_at").fetchall()
    return [KeyRow(*r) for r in rows]


def revoke_key(conn: duckdb.DuckDBPyConnection, *, key_id: str) -> bool:
    """Revoke a key; False when there is no such key (revoking twice keeps the first time)."""
    rows = conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = ?"
        " RETURNING key_id",
        [key_id],
    ).fetchall()
    return bool(rows)


# --- request log ------------------------------------------------------------------------------


class RequestRow(NamedTuple):
    at: datetime
    key_id: str | None
    role: str | None
    method: str
    path: str
    query: str | None
    status: int
    duration_ms: float
    client: str | None
    detail: str | None


_REQUEST_SCHEMA: Final = pa.schema(
    [
        ("requested_at", pa.timestamp("us", tz="UTC")),
        ("key_id", pa.string()),
        ("role", pa.string()),
        ("method", pa.string()),
        ("path", pa.string()),
        ("query", pa.string()),
        ("status", pa.int32()),
        ("duration_ms", pa.float64()),
        ("client", pa.string()),
        ("detail", pa.string()),
    ]
)


def log_requests(conn: duckdb.DuckDBPyConnection, *, requests: Sequence[RequestRow]) -> None:
    """Append requests to the log in one INSERT, in the order given."""
    if not requests:
        return
    columns = list(zip(*requests, strict=True))
    table = pa.table(
        [pa.array(values, type=f.type) for values, f in zip(columns, _REQUEST_SCHEMA, strict=True)],
        schema=_REQUEST_SCHEMA,
    )
    with registered(conn, tt_api_requests=table):
        conn.execute("INSERT INTO api_requests SELECT * FROM tt_api_requests")


def recent_requests(
    conn: duckdb.DuckDBPyConnection, *, key_id: str | None = None, limit: int = 100
) -> list[RequestRow]:
    """The newest requests first (one key's, when given)."""
    rows = conn.execute(
        "SELECT * FROM api_requests WHERE ($key IS NULL OR key_id = $key)"
        " ORDER BY requested_at DESC LIMIT $limit",
        {"key": key_id, "limit": limit},
    ).fetchall()
    return [RequestRow(*r) for r in rows]


# --- alerts: one alert, triage ----------------------------------------------------------------


def alert_by_id(conn: duckdb.DuckDBPyConnection, *, alert_id: str) -> AlertRow | None:
    rows = conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE alert_id = ?", [alert_id]
    ).fetchall()
    return _alert(rows[0]) if rows else None


def assignees(conn: duckdb.DuckDBPyConnection, *, alert_ids: Sequence[str]) -> dict[str, str]:
    if not alert_ids:
        return {}
    rows = conn.execute(
        "SELECT alert_id, assignee FROM alert_assignees"
        " WHERE list_contains($ids, alert_id) AND assignee IS NOT NULL",
        {"ids": list(alert_ids)},
    ).fetchall()
    return {str(a): str(b) for a, b in rows}


class HistoryRow(NamedTuple):
    at: datetime
    key_id: str | None
    actor: str | None
    status_from: str | None
    status_to: str | None
    assignee_from: str | None
    assignee_to: str | None
    note: str | None


def alert_history(conn: duckdb.DuckDBPyConnection, *, alert_id: str) -> list[HistoryRow]:
    rows = conn.execute(
        "SELECT changed_at, key_id, actor, status_from, status_to, assignee_from, assignee_to, note"
        " FROM alert_history WHERE alert_id = ? ORDER BY changed_at",
        [alert_id],
    ).fetchall()
    return [HistoryRow(*r) for r in rows]


_UNSET: Final = object()


def triage_alert(
    conn: duckdb.DuckDBPyConnection,
    *,
    alert_id: str,
    key_id: str | None,
    actor: str | None,
    status: str | None,
    assignee: object = _UNSET,
    note: str | None,
) -> bool:
    """Change an alert's status and/or assignee and record the change with its note, in one
    transaction. `assignee=None` unassigns; leaving it out keeps the assignee. False: no alert."""
    conn.begin()
    try:
        found = conn.execute(
            "SELECT a.status, t.assignee FROM alerts a"
            " LEFT JOIN alert_assignees t USING (alert_id) WHERE a.alert_id = ?",
            [alert_id],
        ).fetchall()
        if not found:
            conn.rollback()
            return False
        old_status, old_assignee = found[0]
        if status is not None and status != old_status:
            conn.execute(
                "UPDATE alerts SET status = ?, updated_at = now() WHERE alert_id = ?",
                [status, alert_id],
            )
        new_assignee = old_assignee if assignee is _UNSET else assignee
        if new_assignee != old_assignee:
            conn.execute(
                "INSERT INTO alert_assignees VALUES (?, ?, now())"
                " ON CONFLICT DO UPDATE SET assignee = EXCLUDED.assignee,"
                " updated_at = EXCLUDED.updated_at",
                [alert_id, new_assignee],
            )
        conn.execute(
            "INSERT INTO alert_history VALUES (?, now(), ?, ?, ?, ?, ?, ?, ?)",
            [
                alert_id,
                key_id,
                actor,
                old_status,
                status if status is not None else old_status,
                old_assignee,
                new_assignee,
                note,
            ],
        )
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return True


# --- events -----------------------------------------------------------------------------------

EVENT_COLUMNS: Final = (
    "event_id",
    "ts",
    "token_id",
    "identity",
    "source",
    "target",
    "operation",
    "scope",
    "outcome",
    "status",
    "trace_id",
    "span_id",
    "parent_span_id",
    "environment",
    "identity_kind",
    "resource",
    "source_ip",
    "user_agent",
    "bytes_out",
    "task_id",
    "actor",
    "token_kind",
    "flags",
    "attributes",
)

# Filters of `events_page`: query parameter -> column (all equality).
EVENT_FILTERS: Final = (
    "token_id",
    "identity",
    "source",
    "target",
    "operation",
    "scope",
    "outcome",
    "trace_id",
    "environment",
    "task_id",
)


def _event_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    values = dict(zip(EVENT_COLUMNS, row, strict=True))
    if values["attributes"] is not None:
        values["attributes"] = json.loads(values["attributes"])
    return values


def events_page(
    conn: duckdb.DuckDBPyConnection,
    *,
    filters: dict[str, str],
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Events newest first (by ts, then event_id), strictly below the cursor `after`; at most
    `limit`. Unknown filter names raise KeyError: callers pass names from EVENT_FILTERS."""
    where = ["($since IS NULL OR ts >= $since)", "($until IS NULL OR ts < $until)"]
    params: dict[str, Any] = {"since": since, "until": until, "limit": limit}
    for name, value in filters.items():
        if name not in EVENT_FILTERS:
            raise KeyError(name)
        where.append(f"{name} = ${name}")
        params[name] = value
    if after is not None:
        where.append("(ts, event_id) < ($after_ts, $after_id)")
        params["after_ts"], params["after_id"] = after
    matching = " AND ".join(where)
    span = conn.execute(
        f"SELECT count(*), min(ts), max(ts) FROM events WHERE {matching}",
        {k: v for k, v in params.items() if k != "limit"},
    ).fetchone()
    assert span is not None
    found, oldest, newest = span
    if not found:
        return []
    # A Top-N over every matching row costs ~40 ms on 70k events (rows arrive in time order,
    # so each one enters the heap); the same Top-N over the rows of a window reaching back
    # from the newest match costs ~2 ms. The window is sized for twice the page at the
    # average density of matches and widened (counting is cheap) until it holds a page.
    if found > limit:
        window = (newest - oldest) * (2 * limit / found)
        for _ in range(_WIDENINGS):
            if newest - window <= oldest:
                break  # the window is everything
            lower = {"lower": newest - window}
            counted = conn.execute(
                f"SELECT count(*) FROM events WHERE {matching} AND ts >= $lower",
                {k: v for k, v in params.items() if k != "limit"} | lower,
            ).fetchone()
            if counted is not None and counted[0] >= limit:
                # Few rows in the window: ordering them with all their columns is cheaper
                # than finding them first and fetching them again by rowid (~1.5x).
                rows = conn.execute(
                    f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
                    f" WHERE {matching} AND ts >= $lower"
                    " ORDER BY ts DESC, event_id DESC LIMIT $limit",
                    params | lower,
                ).fetchall()
                return [_event_dict(r) for r in rows]
            window *= 8
    return _events_from(conn, matching=matching, params=params)


# Windows tried by `events_page` before it orders every matching event.
_WIDENINGS: Final = 4


def _events_from(
    conn: duckdb.DuckDBPyConnection, *, matching: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    # The page's rows are found on (ts, event_id) alone, then fetched by rowid: a Top-N that
    # carries all ~30 columns of every candidate row was 5x slower (bench/api_load.py).
    rows = conn.execute(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE rowid IN ("
        f" SELECT rowid FROM events WHERE {matching}"
        " ORDER BY ts DESC, event_id DESC LIMIT $limit"
        ") ORDER BY ts DESC, event_id DESC",
        params,
    ).fetchall()
    return [_event_dict(r) for r in rows]


def events_by_id(
    conn: duckdb.DuckDBPyConnection,
    *,
    event_ids: Sequence[str],
    within: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """The stored events among `event_ids`, in event time order (then by id).

    `within` (epoch micros, both ends included) is where the events are expected, e.g. an
    alert's first and last seen: they are looked for there first, which lets DuckDB skip the
    row groups outside it (constant bounds, zone maps) instead of comparing every stored
    event_id; any id not found there is then looked for everywhere, so the answer is the same.
    """
    wanted = list(dict.fromkeys(event_ids))
    if not wanted:
        return []
    rows: list[tuple[Any, ...]] = []
    if within is not None:
        rows = conn.execute(
            f"SELECT {_EVENT_SELECT} FROM events"
            " WHERE list_contains($ids, event_id) AND ts BETWEEN $lo AND $hi",
            {"ids": wanted, "lo": utc(within[0]), "hi": utc(within[1])},
        ).fetchall()
        found = {r[0] for r in rows}
        wanted = [e for e in wanted if e not in found]
    if wanted:
        rows += conn.execute(
            f"SELECT {_EVENT_SELECT} FROM events WHERE list_contains($ids, event_id)",
            {"ids": wanted},
        ).fetchall()
    # Ordered here: an ORDER BY costs DuckDB ~1 ms of set-up however few the rows.
    rows.sort(key=lambda r: (r[1], r[0]))
    return [_event_dict(r) for r in rows]


_EVENT_SELECT: Final = ", ".join(EVENT_COLUMNS)


# --- tokens ranked by their stored scores ----------------------------------------------------


def stored_ranking(
    conn: duckdb.DuckDBPyConnection, *, fingerprint: str, top: int
) -> list[RankedToken]:
    """Tokens by their stored blast radius score under the catalog `fingerprint`, as last
    refreshed (`tokentrail.store.graph.refresh_scores`): a read, never a write."""
    rows = conn.execute(
        "SELECT t.token_id, t.identity, t.calls, s.score, s.direct_targets, s.transitive_targets,"
        " s.environments FROM blast_scores s JOIN tokens t USING (token_id)"
        " WHERE s.catalog = ? ORDER BY s.score DESC, t.calls DESC, t.token_id LIMIT ?",
        [fingerprint, top],
    ).fetchall()
    return [RankedToken(*row) for row in rows]


# --- readiness and metrics --------------------------------------------------------------------


def schema_version(conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


class Counts(NamedTuple):
    events: int
    dead_letters: int
    tokens: int
    alerts: dict[tuple[str, str], int]  # (severity, status) -> alerts


def counts(conn: duckdb.DuckDBPyConnection) -> Counts:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM dead_letters),"
        " (SELECT count(*) FROM tokens)"
    ).fetchone()
    assert row is not None
    alerts = conn.execute(
        "SELECT severity, status, count(*) FROM alerts GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    return Counts(
        int(row[0]), int(row[1]), int(row[2]), {(str(s), str(t)): int(n) for s, t, n in alerts}
    )
