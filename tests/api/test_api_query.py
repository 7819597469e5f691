"""The read-only SQL endpoint: analysts' queries run, every escape attempt is refused."""

from __future__ import annotations

import duckdb
import pytest
from fastapi.testclient import TestClient

from tokentrail.store import Store

Auth = dict[str, dict[str, str]]


def query(
    client: TestClient, auth: Auth, sql: str, **extra: object
) -> tuple[int, dict[str, object]]:
    response = client.post("/v1/query", json={"sql": sql, **extra}, headers=auth["analyst"])
    return response.status_code, response.json()


def test_select_runs(client: TestClient, auth: Auth) -> None:
    status, body = query(
        client, auth, "WITH o AS (SELECT outcome FROM events) SELECT outcome, count(*) AS n"
        " FROM o GROUP BY ALL ORDER BY n DESC"
    )  # fmt: skip
    assert status == 200, body
    assert body["columns"] == ["outcome", "n"] and body["types"] == ["VARCHAR", "BIGINT"]
    assert body["rows"][0][0] == "success" and not body["truncated"]


def test_rows_are_limited(client: TestClient, auth: Auth) -> None:
    status, body = query(client, auth, "SELECT event_id, ts FROM events", max_rows=10_000)
    assert status == 200
    assert body["row_count"] == 50 and body["truncated"]  # the server's limit in conftest
    status, body = query(client, auth, "SELECT event_id FROM events", max_rows=3)
    assert body["row_count"] == 3


ESCAPES = {
    "copy out": "COPY events TO '/tmp/tt-leak.csv'",
    "copy in": "COPY events FROM '/etc/passwd'",
    "attach": "ATTACH '/tmp/tt-other.duckdb' AS other",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "file as table": "SELECT * FROM '/etc/passwd'",
    "nested read": "SELECT (SELECT count(*) FROM read_csv_auto('/etc/passwd')) AS n",
    "glob": "SELECT * FROM glob('/etc/*')",
    "http": "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "query()": "SELECT * FROM query('SELECT * FROM api_keys')",
    "set": "SET enable_external_access = true",
    "reset": "RESET lock_configuration",
    "pragma": "PRAGMA database_list",
    "pragma fn": "SELECT * FROM pragma_database_list()",
    "settings": "SELECT * FROM duckdb_settings()",
    "secrets": "SELECT * FROM duckdb_secrets()",
    "insert": "INSERT INTO alerts SELECT * FROM alerts",
    "delete": "DELETE FROM events",
    "update": "UPDATE alerts SET status = 'closed'",
    "create": "CREATE TABLE x AS SELECT 1",
    "drop": "DROP TABLE events",
    "two statements": "SELECT 1; DROP TABLE events",
    "call": "CALL pragma_version()",
    "checkpoint": "CHECKPOINT",
    "export": "EXPORT DATABASE '/tmp/tt-export'",
    "api keys": "SELECT key_hash FROM api_keys",
    "request log": "SELECT * FROM api_requests",
    "salt": "SELECT value FROM meta",
    "qualified": "SELECT * FROM main.api_keys",
    "other catalog": "SELECT * FROM system.main.duckdb_tables",
    "cte shadow": "SELECT * FROM (WITH api_keys AS (SELECT 1) SELECT * FROM api_keys), api_keys",
    "explain": "EXPLAIN ANALYZE SELECT 1",
    "not sql": "this is not sql",
}


@pytest.mark.parametrize("sql", ESCAPES.values(), ids=ESCAPES.keys())
def test_escape_attempts_are_refused(client: TestClient, auth: Auth, sql: str) -> None:
    status, body = query(client, auth, sql)
    assert status == 400, body
    assert isinstance(body["detail"], str) and "Traceback" not in body["detail"]


def test_long_queries_are_interrupted(client: TestClient, auth: Auth) -> None:
    status, body = query(client, auth, "SELECT count(*) FROM range(1000000000000) a")
    assert status == 400
    assert "time limit" in str(body["detail"]) or "longer than" in str(body["detail"])
    # The cursor pool is fine afterwards.
    assert query(client, auth, "SELECT 1 AS one")[1]["rows"] == [[1]]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "COPY events TO '/tmp/tt-leak.csv'",
        "ATTACH '/tmp/tt-other.duckdb' AS other",
        "SET enable_external_access = true",
    ],
)
def test_the_database_itself_refuses_past_the_checks(
    client: TestClient, api_store: Store, sql: str
) -> None:
    """Even a statement that skipped the endpoint's checks cannot reach files or settings."""
    with api_store.conn.cursor() as cursor, pytest.raises(duckdb.Error):
        cursor.execute(sql)
