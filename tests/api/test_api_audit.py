"""The request log is written in batches (tokentrail.api.audit) and valid keys are cached
(tokentrail.api.auth.KeyCache): every request is still recorded, in order, nothing is lost on
shutdown, and a key revoked through the API is refused at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from fastapi.testclient import TestClient

from tokentrail.api import api_settings, create_app
from tokentrail.api.audit import AuditLog
from tokentrail.api.auth import KeyCache, Principal, Role, create_key
from tokentrail.store import Store
from tokentrail.store import api as sql


def request(n: int) -> sql.RequestRow:
    return sql.RequestRow(
        at=datetime(2026, 11, 28, tzinfo=UTC),
        key_id=None,
        role=None,
        method="GET",
        path=f"/probe/{n}",
        query=None,
        status=200,
        duration_ms=1.0,
        client="127.0.0.1",
        detail=None,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "audit.duckdb") as opened:
        yield opened


def logged_paths(store: Store) -> list[str]:
    """The request log in the order rows were stored."""
    return [
        p for (p,) in store.conn.execute("SELECT path FROM api_requests ORDER BY rowid").fetchall()
    ]


def test_queued_rows_are_stored_in_order_by_flush(store: Store) -> None:
    # A flush interval no test waits for: only explicit flushes and stop write.
    audit = AuditLog(store.conn.cursor, every_s=3600).start()
    for n in range(5):
        audit.record(request(n))
    assert logged_paths(store) == []
    audit.flush()
    assert logged_paths(store) == [f"/probe/{n}" for n in range(5)]
    audit.stop()


def test_stop_stores_what_is_queued_and_later_rows_at_once(store: Store) -> None:
    audit = AuditLog(store.conn.cursor, every_s=3600).start()
    for n in range(3):
        audit.record(request(n))
    audit.stop()
    assert logged_paths(store) == ["/probe/0", "/probe/1", "/probe/2"]
    audit.record(request(3))
    assert logged_paths(store)[-1] == "/probe/3"


def test_a_full_batch_wakes_the_writer(store: Store) -> None:
    audit = AuditLog(store.conn.cursor, every_s=3600, batch=4).start()
    for n in range(4):
        audit.record(request(n))
    # Only the full batch can wake the thread within the hour: wait for it, bounded.
    for _ in range(300):
        if audit.written == 4:
            break
        time.sleep(0.1)
    assert logged_paths(store) == [f"/probe/{n}" for n in range(4)]
    audit.stop()


def test_rows_a_failed_flush_could_not_store_are_kept_in_order(store: Store) -> None:
    refuse = True

    def cursor() -> duckdb.DuckDBPyConnection:
        if refuse:
            raise duckdb.IOException("disk full")
        return store.conn.cursor()

    audit = AuditLog(cursor, every_s=3600)
    audit.record(request(0))  # no thread: stored at once, which fails and keeps the row
    audit.record(request(1))
    assert logged_paths(store) == []
    refuse = False
    audit.flush()
    assert logged_paths(store) == ["/probe/0", "/probe/1"] and audit.dropped == 0


def test_every_request_is_stored_by_shutdown_in_order(store: Store) -> None:
    key = create_key(store.conn, name="audit", role=Role.viewer).key
    app = create_app(store, api_settings(audit_flush_s=3600))
    paths = [f"/v1/tokens/probe-{n}" for n in range(20)]
    with TestClient(app) as client:
        for path in paths:
            client.get(path, headers={"Authorization": f"Bearer {key}"})
        client.get("/v1/alerts")  # no key: recorded too
    rows = store.conn.execute(
        "SELECT path, role, status FROM api_requests ORDER BY rowid"
    ).fetchall()
    assert rows == [*((p, "viewer", 404) for p in paths), ("/v1/alerts", None, 401)]


def test_the_request_log_endpoint_shows_queued_rows(store: Store) -> None:
    key = create_key(store.conn, name="admin", role=Role.admin).key
    app = create_app(store, api_settings(audit_flush_s=3600))
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(app) as client:
        client.get("/v1/tokens/probe-queued", headers=headers)
        log = client.get("/v1/requests", headers=headers).json()["data"]
    assert log[0]["path"] == "/v1/tokens/probe-queued"


def test_a_key_revoked_through_the_api_is_refused_at_once(store: Store) -> None:
    admin = {"Authorization": f"Bearer {create_key(store.conn, name='a', role=Role.admin).key}"}
    made = create_key(store.conn, name="soon-revoked", role=Role.viewer)
    viewer = {"Authorization": f"Bearer {made.key}"}
    # A cache that would trust the key for an hour: only the revocation can end it.
    app = create_app(store, api_settings(key_cache_s=3600))
    with TestClient(app) as client:
        assert client.get("/v1/alerts", headers=viewer).status_code == 200
        assert client.delete(f"/v1/keys/{made.key_id}", headers=admin).status_code == 200
        assert client.get("/v1/alerts", headers=viewer).status_code == 401


class Cursors:
    """A cursor factory that counts how often the cache reads the store."""

    def __init__(self, store: Store) -> None:
        self.store, self.opened = store, 0

    def __call__(self) -> duckdb.DuckDBPyConnection:
        self.opened += 1
        return self.store.conn.cursor()


def test_the_cache_answers_a_known_key_without_the_store_until_it_expires(store: Store) -> None:
    made = create_key(store.conn, name="cached", role=Role.analyst)
    now = [0.0]
    cache, cursors = KeyCache(ttl_s=5.0, clock=lambda: now[0]), Cursors(store)
    expected = Principal(made.key_id, "cached", Role.analyst)
    assert cache.authenticate(cursors, made.key) == expected
    assert cache.authenticate(cursors, made.key) == expected
    assert cursors.opened == 1
    now[0] = 5.0
    assert cache.authenticate(cursors, made.key) == expected
    assert cursors.opened == 2


def test_the_cache_never_keeps_a_wrong_or_revoked_key(store: Store) -> None:
    made = create_key(store.conn, name="revoked", role=Role.viewer)
    cache, cursors = KeyCache(ttl_s=3600), Cursors(store)
    assert cache.authenticate(cursors, made.key[:-2] + "xx") is None
    assert cache.authenticate(cursors, made.key) is not None
    assert sql.revoke_key(store.conn, key_id=made.key_id)
    cache.forget(made.key_id)
    assert cache.authenticate(cursors, made.key) is None
    assert cache.authenticate(cursors, made.key) is None
    assert cursors.opened == 4
