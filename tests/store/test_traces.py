"""`traces` without a primary key (migration 9): merged by anti-join and update, found by key."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import duckdb
import pytest
from factories import T0_MS, call, ingest

from tokentrail.graph.chains import load_chain
from tokentrail.store import Store
from tokentrail.store import graph as graph_store
from tokentrail.store.migrations import LATEST, migrate

# Graph and derived tables as `merge_graph` and `merge_derived` leave them.
_MERGED = (
    "tokens",
    "token_edges",
    "traces",
    "chain_reach",
    "token_links",
    "operation_scopes",
    "reach_changes",
    "service_hops",
)


def spans(seed: int, n: int) -> list[dict[str, Any]]:
    """Spans of a few dozen traces in random order, so most traces straddle batches; some event
    ids repeat (retries) and some events have no trace."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        trace = f"trace-{rng.randrange(n // 8)}" if rng.random() < 0.9 else None
        events.append(
            call(
                event_id=f"s{rng.randrange(n)}",
                ts=T0_MS + rng.randrange(1_000_000),
                token_id=f"tok-{rng.randrange(6)}",
                trace_id=trace,
                span_id=f"span-{i}" if trace else None,
                parent_span_id=f"span-{rng.randrange(i)}" if trace and i else None,
                target=rng.choice(["db", "api", "vault"]),
            )
        )
    first: dict[str, dict[str, Any]] = {}
    return [first.setdefault(e["event_id"], e) for e in events]


def traces_from_events(conn: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT trace_id, min(ts), max(ts), count(*) FROM events WHERE trace_id IS NOT NULL"
        " GROUP BY trace_id ORDER BY trace_id"
    ).fetchall()


def stored_traces(conn: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT trace_id, first_seen, last_seen, events FROM traces ORDER BY trace_id"
    ).fetchall()


def merged(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: store.conn.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
        for table in _MERGED
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_traces_hold_one_row_per_trace_whatever_the_batches(tmp_path: Path, seed: int) -> None:
    events = spans(seed, 300)
    with Store.open(tmp_path / "t.duckdb") as store:
        ingest(store, events, batch_size=random.Random(seed).randrange(5, 40))
        assert stored_traces(store.conn) == traces_from_events(store.conn)
        keys = store.conn.execute(
            "SELECT count(*) FROM traces WHERE trace_key <> md5_number_lower(trace_id)"
        ).fetchall()
        assert keys == [(0,)]
        # No index left to grow with the store.
        indexes = store.conn.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'traces'"
            " AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')"
        ).fetchall()
        assert indexes == [(0,)]
        [(trace, n)] = store.conn.execute(
            "SELECT trace_id, events FROM traces ORDER BY events DESC, trace_id LIMIT 1"
        ).fetchall()
        assert len(load_chain(store.conn, trace_id=trace).spans) == n


def test_a_version_8_file_keeps_its_traces_and_merges_on_alike(tmp_path: Path) -> None:
    events = spans(3, 400)
    first, second = events[:200], events[200:]
    with Store.open(tmp_path / "current.duckdb") as current:
        ingest(current, first, batch_size=50)
    # The same data in a file at version 8, where `traces` still has its primary key.
    old = tmp_path / "old.duckdb"
    conn = duckdb.connect(str(old))
    migrate(conn, target=8)
    conn.execute("ATTACH ? AS cur (READ_ONLY)", [str(tmp_path / "current.duckdb")])
    for table in ("events", "meta", *_MERGED):
        columns = "trace_id, first_seen, last_seen, events" if table == "traces" else "*"
        conn.execute(f"DELETE FROM {table}")
        conn.execute(f"INSERT INTO {table} SELECT {columns} FROM cur.{table}")
    conn.execute("DETACH cur")
    assert conn.execute(
        "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'traces'"
        " AND constraint_type = 'PRIMARY KEY'"
    ).fetchall() == [("PRIMARY KEY",)]
    before = stored_traces(conn)
    assert before
    conn.close()

    with Store.open(old) as migrated, Store.open(tmp_path / "current.duckdb") as current:
        assert migrated.version == LATEST
        assert stored_traces(migrated.conn) == before
        # Later batches extend the migrated traces exactly as they extend a new file's.
        ingest(migrated, second, batch_size=30)
        ingest(current, second, batch_size=30)
        assert merged(migrated) == merged(current)
        assert stored_traces(migrated.conn) == traces_from_events(migrated.conn)


def test_a_version_1_file_gets_its_traces_from_the_backfill(tmp_path: Path) -> None:
    events = spans(4, 200)
    with Store.open(tmp_path / "current.duckdb") as current:
        ingest(current, events)
        expected = merged(current)
    old = tmp_path / "old.duckdb"
    conn = duckdb.connect(str(old))
    migrate(conn, target=1)
    conn.execute("ATTACH ? AS cur (READ_ONLY)", [str(tmp_path / "current.duckdb")])
    conn.execute("INSERT INTO events SELECT * FROM cur.events")
    conn.execute("INSERT INTO meta SELECT * FROM cur.meta")
    conn.execute("DETACH cur")
    conn.close()
    with Store.open(old) as migrated:
        got = merged(migrated)
    # `reach_changes` counts batches, which a backfill does not share with the ingest.
    assert {t: r for t, r in got.items() if t != "reach_changes"} == {
        t: r for t, r in expected.items() if t != "reach_changes"
    }


def physical_keys(conn: duckdb.DuckDBPyConnection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT trace_key FROM traces ORDER BY rowid").fetchall()]


def test_traces_are_kept_in_key_order_once_the_unsorted_tail_is_large_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small threshold stands for the production one (250k rows): each batch appends new
    # traces after the sorted part, and the table is rewritten when the tail has grown.
    monkeypatch.setattr(graph_store, "SORT_MIN_TAIL", 10)
    events = spans(5, 600)
    with Store.open(tmp_path / "t.duckdb") as store, Store.open(tmp_path / "ref.duckdb") as ref:
        ingest(store, events[:300], batch_size=100)
        keys = physical_keys(store.conn)
        [(done,)] = store.conn.execute(
            "SELECT CAST(value AS BIGINT) FROM meta WHERE key = ?", [graph_store.SORTED_TRACES_KEY]
        ).fetchall()
        # The sorted part, then at most a quarter as many rows appended since.
        assert 10 <= done <= len(keys) < done * 1.25 + 10
        assert keys[:done] == sorted(keys[:done])
        # More batches: known traces are updated in place by row id, new ones appended, the
        # table sorted again now and then; the rows are those of an unsorted store's.
        ingest(store, events[300:], batch_size=7)
        ingest(ref, events[:300], batch_size=100)
        with monkeypatch.context() as m:
            m.setattr(graph_store, "SORT_MIN_TAIL", 10**9)
            ingest(ref, events[300:], batch_size=7)
        assert physical_keys(ref.conn) != sorted(physical_keys(ref.conn))
        assert merged(store) == merged(ref)
        assert stored_traces(store.conn) == traces_from_events(store.conn)
        for (trace,) in store.conn.execute("SELECT trace_id FROM traces").fetchall():
            assert load_chain(store.conn, trace_id=trace) == load_chain(ref.conn, trace_id=trace)


def test_sorting_waits_for_a_quarter_of_the_sorted_rows_and_can_be_forced(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "t.duckdb") as store:
        ingest(store, spans(6, 400), batch_size=400)
        conn = store.conn
        [(rows,)] = conn.execute("SELECT count(*) FROM traces").fetchall()
        assert graph_store.sort_traces(conn, min_tail=rows + 1) is False
        assert graph_store.sort_traces(conn, min_tail=1) is True
        # Nothing appended since: no rewrite, however small the threshold.
        assert graph_store.sort_traces(conn, min_tail=1) is False
        assert graph_store.sort_traces(conn, min_tail=1, force=True) is True
        assert physical_keys(conn) == sorted(physical_keys(conn))
        assert stored_traces(conn) == traces_from_events(conn)
