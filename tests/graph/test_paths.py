"""Paths between services (through hops, tokens and lineage) and the exposure of a service."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from factories import T0_MS, call, ingest

from tokentrail.graph.paths import find_paths, service_exposure
from tokentrail.store import Store
from tokentrail.store.graph import merge_service_hops

T0 = datetime.fromtimestamp(T0_MS / 1000, UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "graph.duckdb") as opened:
        yield opened


def at(minutes: int) -> int:
    return T0_MS + minutes * 60_000


def test_a_path_through_hops_with_the_events_that_prove_it(store: Store) -> None:
    ingest(
        store,
        [
            call(event_id="e1", token_id="tok-ci", source="ci-runner", target="deployer", ts=at(1)),
            call(event_id="e2", token_id="tok-deploy", source="deployer", target="payments-db",
                 ts=at(2)),
            call(event_id="e3", token_id="tok-ci", source="ci-runner", target="payments-db",
                 ts=at(3), outcome="denied"),
        ],
    )  # fmt: skip
    [path] = find_paths(store.conn, source="ci-runner", target="payments-db").paths
    assert (path.services, path.hops, path.time_ordered) == (
        ["ci-runner", "deployer", "payments-db"],
        2,
        True,
    )
    assert [(s.kind, s.token_id, s.proof.event_id) for s in path.steps] == [
        ("call", "tok-ci", "e1"),
        ("call", "tok-deploy", "e2"),
    ]  # the denied direct attempt is no path


def test_a_path_that_exists_only_through_a_derived_token(store: Store) -> None:
    ingest(
        store,
        [
            call(event_id="e1", token_id="tok-agent", source="agent", target="token-service",
                 ts=at(1)),
            call(event_id="e2", token_id="tok-worker", source="worker", target="payments-db",
                 ts=at(2), token={"parent_token_id": "tok-agent"}),
            call(event_id="e3", token_id="tok-unrelated", source="batch", target="payments-db",
                 ts=at(3)),
        ],
    )  # fmt: skip
    [path] = find_paths(store.conn, source="agent", target="payments-db").paths
    [step] = path.steps
    assert (step.kind, step.token_id, step.call_token_id, step.call_source) == (
        "derived",
        "tok-agent",
        "tok-worker",
        "worker",
    )
    assert step.proof.event_id == "e2"
    assert find_paths(store.conn, source="batch", target="token-service").paths == []


def test_a_reused_token_carries_access_to_where_it_was_used(store: Store) -> None:
    ingest(
        store,
        [
            call(token_id="tok-leaked", source="laptop", target="git", ts=at(1)),
            call(token_id="tok-leaked", source="unknown-host", target="vault", ts=at(2)),
        ],
    )
    [path] = find_paths(store.conn, source="laptop", target="vault").paths
    assert [(s.kind, s.call_source) for s in path.steps] == [("reused", "unknown-host")]


def test_shortest_first_and_time_order(store: Store) -> None:
    ingest(
        store,
        [
            call(token_id="t1", source="a", target="b", ts=at(5)),
            call(token_id="t2", source="b", target="c", ts=at(1)),  # before a reached b
            call(token_id="t1", source="a", target="x", ts=at(1)),
            call(token_id="t3", source="x", target="y", ts=at(2)),
            call(token_id="t4", source="y", target="c", ts=at(3)),
        ],
    )
    paths = find_paths(store.conn, source="a", target="c").paths
    assert [(p.services, p.time_ordered) for p in paths] == [
        (["a", "b", "c"], False),
        (["a", "x", "y", "c"], True),
    ]


def test_the_time_range_limits_the_evidence(store: Store) -> None:
    ingest(store, [call(token_id="t", source="a", target="b", ts=at(10))])
    assert find_paths(store.conn, source="a", target="b", until=T0).paths == []
    during = find_paths(
        store.conn,
        source="a",
        target="b",
        since=T0 + timedelta(minutes=9),
        until=T0 + timedelta(minutes=11),
    )
    assert len(during.paths) == 1


def test_exposure_lists_direct_chain_and_derived_reach(store: Store) -> None:
    ingest(
        store,
        [
            call(trace_id="t", span_id="a", token_id="tok-gw", identity="gw", source="gw",
                 target="orders"),
            call(trace_id="t", span_id="b", parent_span_id="a", token_id="tok-orders",
                 identity="orders", source="orders", target="payments-db",
                 operation="POST /charges", scope=None),
            call(token_id="tok-parent", identity="broker", target="sts"),
            call(token_id="tok-child", identity="broker", target="payments-db",
                 token={"parent_token_id": "tok-parent"}),
            call(token_id="tok-probe", identity="intruder", target="payments-db",
                 outcome="denied"),
        ],
    )  # fmt: skip
    exposure = service_exposure(store.conn, service="payments-db")
    assert [(t.token_id, t.identity, t.via, t.privilege, t.reached) for t in exposure.tokens] == [
        ("tok-orders", "orders", "direct", "write", True),
        ("tok-child", "broker", "direct", "read", True),
        ("tok-parent", "broker", "derived", "read", True),
        ("tok-gw", "gw", "chain", "write", True),
        ("tok-probe", "intruder", "direct", "read", False),
    ]
    assert [(i.identity, i.tokens, i.ways) for i in exposure.identities] == [
        ("orders", 1, ["direct"]),
        ("broker", 2, ["direct", "derived"]),
        ("gw", 1, ["chain"]),
    ]


# --- the stored service graph (`service_hops`) -----------------------------------------------


def estate(seed: int, n: int = 120) -> list[dict[str, Any]]:
    """Calls among a few services with shared, reused and derived tokens, some denied."""
    rng = random.Random(seed)
    services = [f"s{i}" for i in range(6)]
    events = []
    for i in range(n):
        token = f"t{rng.randrange(8)}"
        parent = f"t{rng.randrange(8)}" if rng.random() < 0.15 else None
        issued = f"t{rng.randrange(8)}" if rng.random() < 0.05 else None
        events.append(
            call(
                event_id=f"{seed}-{i}",
                ts=at(rng.randrange(600)),
                token_id=token,
                source=rng.choice(services),
                target=rng.choice(services),
                outcome=rng.choice(["success", "success", "denied"]),
                token={"parent_token_id": parent} if parent and parent != token else None,
                attributes={"issued_token": issued} if issued else None,
            )
        )
    return events


def hops(store: Store) -> list[tuple[Any, ...]]:
    return store.conn.execute("SELECT * FROM service_hops ORDER BY ALL").fetchall()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_service_hops_kept_per_batch_equal_a_recompute(tmp_path: Path, seed: int) -> None:
    events = estate(seed)
    random.Random(seed).shuffle(events)  # links and edges land in any order
    with Store.open(tmp_path / "pieces.duckdb") as store:
        ingest(store, events, batch_size=random.Random(seed).randrange(1, 15))
        kept = hops(store)
        store.conn.execute("DELETE FROM service_hops")
        merge_service_hops(store.conn, new_events=None)
        assert kept == hops(store)
        assert kept  # the estate has steps to compare


def test_a_late_lineage_link_adds_the_step_it_opens(store: Store) -> None:
    ingest(store, [call(token_id="tok-child", source="worker", target="payments-db", ts=at(2))])
    ingest(store, [call(token_id="tok-agent", source="agent", target="sts", ts=at(1))])
    assert ("agent", "payments-db") not in hops(store)
    ingest(
        store,
        [call(token_id="tok-child", source="worker", target="queue", ts=at(3),
              token={"parent_token_id": "tok-agent"})],
    )  # fmt: skip
    assert ("agent", "payments-db") in hops(store)


@pytest.mark.parametrize("seed", [5, 6])
def test_paths_over_the_service_graph_equal_a_search_level_by_level(
    store: Store, seed: int
) -> None:
    ingest(store, estate(seed, 200))
    services = [f"s{i}" for i in range(6)]
    # A range that holds every event takes the level-by-level search on the edges themselves.
    everything = datetime(2000, 1, 1, tzinfo=UTC)
    found = 0
    for a in services:
        for b in services:
            paths = find_paths(store.conn, source=a, target=b).paths
            assert paths == find_paths(store.conn, source=a, target=b, since=everything).paths
            found += len(paths)
    assert found


def test_a_database_from_before_service_hops_is_migrated_and_backfilled(tmp_path: Path) -> None:
    path = tmp_path / "graph.duckdb"
    with Store.open(path) as store:
        ingest(store, estate(7))
        expected = hops(store)
    conn = duckdb.connect(str(path))  # make it a file of schema 6
    conn.execute("DROP TABLE service_hops")
    conn.execute("DELETE FROM schema_migrations WHERE version >= 7")
    conn.close()
    everything = datetime(2000, 1, 1, tzinfo=UTC)
    with Store.open(path) as store:
        assert store.version >= 7
        assert hops(store) == expected
        paths = find_paths(store.conn, source="s0", target="s1").paths
        assert paths == find_paths(store.conn, source="s0", target="s1", since=everything).paths
