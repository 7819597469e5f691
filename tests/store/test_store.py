"""The DuckDB store: idempotent writes, derived tables, migrations, one transaction per batch."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import duckdb
import pytest
from factories import T0_MS, call, ingest

from tokentrail.errors import StoreError
from tokentrail.store import Store
from tokentrail.store.migrations import LATEST, migrate


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "t.duckdb")


def rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    return store.conn.execute(sql).fetchall()


def test_an_event_id_is_stored_once_and_an_identical_retry_is_skipped(store: Store) -> None:
    event = call(event_id="retry-1")
    first, second = ingest(store, [event]), ingest(store, [event, event])
    assert [r.stored for r in first + second] == [1, 0]
    assert second[0].duplicates == 2
    assert rows(store, "SELECT count(*) FROM events") == [(1,)]
    assert rows(store, "SELECT count(*) FROM dead_letters") == [(0,)]


def test_a_conflicting_duplicate_is_dead_lettered_with_its_bytes(store: Store) -> None:
    ingest(store, [call(event_id="e-1", target="ledger-api")])
    [result] = ingest(store, [call(event_id="e-1", target="payments-db")])
    assert (result.stored, result.conflicts) == (0, 1)
    [(reason, raw)] = rows(store, "SELECT reason, raw FROM dead_letters")
    assert reason == (
        "conflicting duplicate: event_id 'e-1' was already stored with different content"
    )
    assert b"payments-db" in raw
    assert rows(store, "SELECT target FROM events") == [("ledger-api",)]


def test_duplicates_inside_one_batch_are_caught_too(store: Store) -> None:
    event = call(event_id="d")
    [result] = ingest(store, [event, event, {**event, "target": "elsewhere"}])
    assert (result.stored, result.duplicates, result.conflicts) == (1, 1, 1)
    assert rows(store, "SELECT position FROM dead_letters") == [(3,)]


def test_bad_records_are_dead_lettered_with_reason_and_origin(store: Store) -> None:
    ingest(store, [call(), b"{oops", call(identity=7)])
    assert rows(store, "SELECT origin_kind, origin_name, position, reason FROM dead_letters") == [
        (
            "file",
            "factory",
            2,
            "unparsable JSON: JSON is malformed: object keys must be strings (byte 1)",
        ),
        ("file", "factory", 3, "invalid event: Expected `str`, got `int` - at `$.identity`"),
    ]
    assert rows(store, "SELECT count(*) FROM events") == [(1,)]


def test_token_registry_merges_metadata_and_use(store: Store) -> None:
    meta = {"kind": "oauth", "scopes": ["ledger:read"], "expires_at": "2026-03-02T10:00:00Z"}
    ingest(
        store,
        [
            call(token_id="t1", ts=T0_MS + 2000, outcome="denied", token=meta),
            call(token_id="t1", ts=T0_MS + 1000, identity="first-user"),
            call(token_id="t1", ts=T0_MS + 3000),
        ],
    )
    [row] = rows(
        store,
        "SELECT identity, kind, scopes, expires_at::VARCHAR, calls, denied,"
        " epoch_ms(first_seen), epoch_ms(last_seen) FROM tokens",
    )
    assert row == (
        "first-user",
        "oauth",
        ["ledger:read"],
        "2026-03-02 10:00:00+00",
        3,
        1,
        T0_MS + 1000,
        T0_MS + 3000,
    )


def test_token_edges_aggregate_calls_per_token_and_route(store: Store) -> None:
    ingest(
        store,
        [
            call(token_id="t", target="db", bytes_out=10, environment="prod"),
            call(token_id="t", target="db", bytes_out=5, environment="staging", outcome="error"),
            call(token_id="t", target="db", scope=None),
        ],
    )
    got = rows(
        store,
        "SELECT target, scope, calls, errors, bytes_out, environments FROM token_edges"
        " ORDER BY scope",
    )
    assert got == [
        ("db", "", 1, 0, 0, ["prod"]),
        ("db", "ledger:read", 2, 1, 15, ["prod", "staging"]),
    ]


def derived_state(store: Store) -> list[list[tuple[Any, ...]]]:
    return [
        rows(store, "SELECT * FROM tokens ORDER BY token_id"),
        rows(
            store,
            "SELECT * FROM token_edges"
            " ORDER BY token_id, identity, source, target, operation, scope",
        ),
        rows(store, "SELECT * EXCLUDE (ingested_at) FROM events ORDER BY event_id"),
    ]


def varied_events(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        token = f"t{rng.randrange(5)}"
        events.append(
            call(
                event_id=f"v{rng.randrange(n)}",  # some ids repeat: retries
                ts=T0_MS + rng.randrange(100_000),
                token_id=token,
                identity=f"id-{token}-{rng.randrange(2)}",
                target=rng.choice(["db", "api", "vault"]),
                outcome=rng.choice(["success", "success", "denied"]),
                environment=rng.choice(["prod", "dev", None]),
                token={"kind": "k", "scopes": [f"s{i}"]} if rng.random() < 0.2 else None,
            )
        )
    # A retry repeats the event as it was: give every copy of an id the first copy's content.
    first: dict[str, dict[str, Any]] = {}
    return [first.setdefault(e["event_id"], e) for e in events]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_derived_tables_do_not_depend_on_batch_sizes_or_order(tmp_path: Path, seed: int) -> None:
    events = varied_events(seed, 400)
    whole = Store.open(tmp_path / "whole.duckdb")
    ingest(whole, events, batch_size=10_000)
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    pieces = Store.open(tmp_path / "pieces.duckdb")
    ingest(pieces, shuffled, batch_size=random.Random(seed).randrange(1, 50))
    assert derived_state(pieces) == derived_state(whole)


def test_an_older_schema_is_migrated_and_derived_tables_backfilled(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    current = Store.open(tmp_path / "current.duckdb")
    events = varied_events(9, 200)
    ingest(current, events)
    expected = derived_state(current)
    current.close()
    # Write a file as tokentrail's first schema did: events only, no derived tables.
    conn = duckdb.connect(str(path))
    migrate(conn, target=1)
    conn.execute("ATTACH ? AS cur (READ_ONLY)", [str(tmp_path / "current.duckdb")])
    conn.execute("INSERT INTO events SELECT * FROM cur.events")
    conn.execute("INSERT INTO meta SELECT * FROM cur.meta")
    conn.execute("DETACH cur")
    assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (1,)
    conn.close()

    reopened = Store.open(path)
    assert reopened.version == LATEST
    assert derived_state(reopened) == expected


def test_a_newer_schema_is_refused_rather_than_damaged(tmp_path: Path) -> None:
    path = tmp_path / "future.duckdb"
    Store.open(path).close()
    conn = duckdb.connect(str(path))
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', now())")
    conn.close()
    with pytest.raises(StoreError, match="schema version 999; this tokentrail knows"):
        Store.open(path)


def test_a_missing_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"folder .* does not exist"):
        Store.open(tmp_path / "nope" / "t.duckdb")


def test_a_file_that_is_not_duckdb_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 1000)
    with pytest.raises(StoreError, match="cannot open"):
        Store.open(path)


def test_a_database_opens_read_only_for_readers(tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    with Store.open(path) as writer:
        ingest(writer, [call()])
    with Store.open(path, read_only=True) as reader:
        assert reader.stats()["events"] == 1
        assert reader.version == LATEST


def test_a_failed_write_reports_its_cause_not_the_aborted_transaction(tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    Store.open(path).close()
    # Too little memory to stage 20,000 events: a statement fails inside the transaction.
    with Store.open(path, memory_limit="8MB") as store:
        with pytest.raises(StoreError) as failed:
            ingest(store, [call(event_id=f"e-{i}", resource="r" * 200) for i in range(20_000)])
        assert "Out of Memory Error" in str(failed.value)
        assert "duckdb.memory_limit" in str(failed.value)
        assert "aborted" not in str(failed.value)
        # Nothing half-written, and the connection is usable again.
        assert store.stats()["events"] == 0
    with Store.open(path, memory_limit="256MB") as store:
        [result] = ingest(store, [call(event_id="after")])
        assert result.stored == 1


def test_a_bad_memory_limit_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        Store.open(tmp_path / "t.duckdb", memory_limit="plenty")
