"""The read-only SQL endpoint's guard: one SELECT over the audit tables, nothing else.

Defence in depth, each layer enough on its own for most escapes:
1. DuckDB's parser must find exactly one statement, of type SELECT (no COPY, ATTACH, INSTALL,
   LOAD, SET, PRAGMA, CALL, EXPLAIN, writes);
2. its syntax tree may name only the audit tables (not API keys, the request log or the secret
   salt in `meta`), a few table functions, and no function that reads files or settings;
3. the database instance has external access disabled and its configuration locked (see
   `tokentrail.api.state.harden`), so no query can reach files, the network or extensions;
4. it runs in a READ ONLY transaction on its own cursor, rolled back, interrupted after a time
   limit, and at most `max_rows` rows are fetched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

import duckdb

from tokentrail.errors import TokentrailError

READABLE_TABLES: Final = frozenset(
    {
        "events",
        "dead_letters",
        "ingest_offsets",
        "tokens",
        "token_edges",
        "traces",
        "chain_reach",
        "operation_scopes",
        "token_links",
        "reach_changes",
        "blast_scores",
        "blast_state",
        "alerts",
        "detect_progress",
        "detect_seen",
        "detect_subjects",
        "detect_tokens",
        "detect_errors",
        "detect_config",
        "alert_assignees",
        "alert_history",
        "schema_migrations",
    }
)
TABLE_FUNCTIONS: Final = frozenset({"range", "generate_series", "unnest"})
# Functions that read files, settings, other databases or run SQL given as a string.
DENIED_FUNCTIONS: Final = frozenset(
    {"query", "query_table", "getenv", "current_setting", "glob", "checkpoint", "setval"}
)
DENIED_PREFIXES: Final = ("read_", "duckdb_", "pragma_", "sniff_", "parquet_", "sqlite_",
                          "postgres_", "mysql_", "iceberg_", "delta_", "http", "load_")  # fmt: skip


class QueryRefusedError(TokentrailError):
    """The query is not allowed, failed, or ran out of time; the message says why."""


@dataclass(frozen=True)
class QueryOutput:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float


def check(conn: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise QueryRefusedError unless `sql` is one SELECT over readable tables."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefusedError(f"cannot parse the query: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise QueryRefusedError(f"exactly one statement is allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryRefusedError(f"only SELECT is allowed, not {kind.name}")
    row = conn.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True, "error_message": "no syntax tree"}
    if tree.get("error"):
        raise QueryRefusedError(f"cannot analyse the query: {tree.get('error_message', 'unknown')}")
    existing = {
        str(r[0]).lower() for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()
    }
    nodes = list(_nodes(tree["statements"]))
    ctes = {
        str(item["key"]).lower()
        for node in nodes
        if isinstance(node.get("cte_map"), dict)
        for item in node["cte_map"].get("map", [])
    }
    for node in nodes:
        _check_node(node, ctes, existing)


def _check_node(node: dict[str, Any], ctes: set[str], existing: set[str]) -> None:
    if node.get("type") == "TABLE_FUNCTION":
        name = str(node.get("function", {}).get("function_name", "")).lower()
        if name not in TABLE_FUNCTIONS:
            raise QueryRefusedError(f"table function {name}() is not allowed")
    if node.get("class") == "FUNCTION":
        name = str(node.get("function_name", "")).lower()
        if name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES):
            raise QueryRefusedError(f"function {name}() is not allowed")
        if node.get("catalog") or node.get("schema") not in ("", "main", None):
            raise QueryRefusedError(f"qualified function {name}() is not allowed")
    if "table_name" in node:
        name = str(node["table_name"]).lower()
        if node.get("catalog_name") or node.get("schema_name") not in ("", "main", None):
            raise QueryRefusedError(f"qualified table names are not allowed ({name})")
        if name in READABLE_TABLES:
            return
        # A CTE may not take the name of a table it would hide only in its own scope.
        if name in ctes and name not in existing:
            return
        raise QueryRefusedError(f"table {name!r} is not readable here")


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _nodes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _nodes(item)


def run(
    conn: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int, timeout_s: float
) -> QueryOutput:
    """Check `sql`, then run it on `conn` (a cursor of its own) read-only, within the limits."""
    check(conn, sql)
    timer = threading.Timer(timeout_s, conn.interrupt)
    started = time.perf_counter()
    conn.execute("BEGIN TRANSACTION READ ONLY")
    timer.start()
    try:
        result = conn.execute(sql)
        description = result.description or []
        rows = result.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        raise QueryRefusedError(f"the query ran longer than the limit of {timeout_s:g} s") from None
    except duckdb.Error as exc:
        raise QueryRefusedError(_first_line(exc)) from None
    finally:
        timer.cancel()
        with contextlib.suppress(duckdb.Error):
            conn.execute("ROLLBACK")
    elapsed = (time.perf_counter() - started) * 1000
    return QueryOutput(
        columns=[str(d[0]) for d in description],
        types=[str(d[1]) for d in description],
        rows=[[_plain(v) for v in row] for row in rows[:max_rows]],
        truncated=len(rows) > max_rows,
        elapsed_ms=round(elapsed, 3),
    )


def _plain(value: Any) -> Any:
    """A JSON-safe value."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
