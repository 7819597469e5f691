"""Chains rebuilt from stored events: span trees, paths, switches and every broken shape."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import call, ingest

from tokentrail.graph.chains import ChainPath, Duplicate, Orphan, build_chain, hop, load_chain
from tokentrail.store import Store
from tokentrail.store.graph import merge_graph


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "graph.duckdb") as opened:
        yield opened


def checkout(trace: str = "t1") -> list[dict[str, Any]]:
    """gateway -> orders (tok-gw), then orders -> payments-db and -> inventory -> inventory-db."""
    return [
        call(trace_id=trace, span_id="a", source="gateway", target="orders", token_id="tok-gw",
             operation="POST /orders"),
        call(trace_id=trace, span_id="b", parent_span_id="a", source="orders",
             target="payments-db", token_id="tok-orders", operation="POST /charges"),
        call(trace_id=trace, span_id="c", parent_span_id="a", source="orders", target="inventory",
             token_id="tok-orders", operation="PUT /reservations"),
        call(trace_id=trace, span_id="d", parent_span_id="c", source="inventory",
             target="inventory-db", token_id="tok-inventory", operation="UPDATE stock"),
    ]  # fmt: skip


def shape(store: Store, trace: str = "t1") -> list[tuple[Any, ...]]:
    chain = load_chain(store.conn, trace_id=trace)
    return [(s.span_id, s.parent_span_id, s.source, s.target, s.depth) for s in chain.spans]


def test_a_chain_is_the_span_tree_with_service_paths(store: Store) -> None:
    ingest(store, checkout())
    chain = load_chain(store.conn, trace_id="t1")
    assert shape(store) == [
        ("a", None, "gateway", "orders", 0),
        ("b", "a", "orders", "payments-db", 1),
        ("c", "a", "orders", "inventory", 1),
        ("d", "c", "inventory", "inventory-db", 2),
    ]
    assert chain.paths == [
        ChainPath(
            services=["gateway", "orders", "payments-db"],
            tokens=["tok-gw", "tok-orders"],
            span_ids=["a", "b"],
            count=1,
            gap=False,
        ),
        ChainPath(
            services=["gateway", "orders", "inventory", "inventory-db"],
            tokens=["tok-gw", "tok-orders", "tok-inventory"],
            span_ids=["a", "c", "d"],
            count=1,
            gap=False,
        ),
    ]
    assert (chain.orphans, chain.duplicates, chain.cycles) == ([], [], [])
    assert chain.tokens == ["tok-gw", "tok-inventory", "tok-orders"]


def test_an_unknown_trace_is_an_empty_chain(store: Store) -> None:
    assert load_chain(store.conn, trace_id="nope").spans == []


def test_arrival_order_and_batching_do_not_change_the_chain(store: Store, tmp_path: Path) -> None:
    events = checkout()
    ingest(store, events)
    expected = load_chain(store.conn, trace_id="t1")
    shuffled = events[::-1]
    with Store.open(tmp_path / "other.duckdb") as other:
        ingest(other, shuffled, batch_size=1)
        assert load_chain(other.conn, trace_id="t1") == expected


def test_a_missing_parent_is_an_orphan_under_a_gap(store: Store) -> None:
    events = checkout()
    ingest(store, [e for e in events if e["span_id"] != "c"])
    chain = load_chain(store.conn, trace_id="t1")
    assert chain.orphans == [
        Orphan(span_id="d", missing_parent_span_id="c", event_id=events[3]["event_id"])
    ]
    orphan = chain.spans[-1]
    assert (orphan.span_id, orphan.orphan, orphan.depth) == ("d", True, 1)
    assert chain.paths[-1].gap and chain.paths[-1].services == ["inventory", "inventory-db"]


def test_a_late_span_appears_the_next_time_the_chain_is_read(store: Store) -> None:
    events = checkout()
    late = next(e for e in events if e["span_id"] == "c")
    ingest(store, [e for e in events if e is not late])
    assert load_chain(store.conn, trace_id="t1").orphans
    ingest(store, [late])
    chain = load_chain(store.conn, trace_id="t1")
    assert chain.orphans == []
    assert shape(store)[-1] == ("d", "c", "inventory", "inventory-db", 2)
    # The late parent also links the hop below it into the gateway token's transitive reach.
    reached = store.conn.execute(
        "SELECT target FROM chain_reach WHERE token_id = 'tok-gw' ORDER BY target"
    ).fetchall()
    assert reached == [("inventory",), ("inventory-db",), ("payments-db",)]


def test_duplicate_spans_are_reported_not_doubled(store: Store) -> None:
    events = checkout()
    again = dict(events[1], event_id="retry-1")  # the same hop sent twice under new ids
    forged = dict(events[1], event_id="forged-1", target="vault")
    ingest(store, [*events, again, forged])
    chain = load_chain(store.conn, trace_id="t1")
    assert [s.span_id for s in chain.spans] == ["a", "b", "c", "d"]
    assert chain.duplicates == [
        Duplicate(
            span_id="b",
            kept_event_id=events[1]["event_id"],
            other_event_ids=["forged-1", "retry-1"],  # by (ts, event_id)
            conflicting=True,
        )
    ]


def test_cycles_are_cut_and_reported(store: Store) -> None:
    ingest(
        store,
        [
            call(trace_id="loop", span_id="x", parent_span_id="y", source="a", target="b"),
            call(trace_id="loop", span_id="y", parent_span_id="x", source="b", target="a"),
            call(trace_id="loop", span_id="z", parent_span_id="y", source="a", target="c"),
            call(trace_id="loop", span_id="s", parent_span_id="s", source="c", target="c"),
        ],
    )
    chain = load_chain(store.conn, trace_id="loop")
    assert chain.cycles == [["x", "y"], ["s"]]
    assert [(s.span_id, s.depth, s.cycle) for s in chain.spans] == [
        ("x", 0, True),
        ("y", 1, False),
        ("z", 2, False),
        ("s", 0, True),
    ]


def test_a_hop_without_span_id_hangs_under_its_parent(store: Store) -> None:
    ingest(
        store,
        [
            call(trace_id="t", span_id="a", source="gw", target="api"),
            call(trace_id="t", parent_span_id="a", source="api", target="db"),
        ],
    )
    assert shape(store, "t") == [("a", None, "gw", "api", 0), (None, "a", "api", "db", 1)]


def test_identical_leaf_paths_are_counted_once() -> None:
    chain = build_chain(
        "fan",
        [
            hop("r", None, "gw", "api", "t1"),
            *(hop(f"c{i}", "r", "api", "db", "t2") for i in range(3)),
        ],
    )
    assert [(p.services, p.count) for p in chain.paths] == [(["gw", "api", "db"], 3)]


def test_token_switches_compare_grants(store: Store) -> None:
    ingest(
        store,
        [
            call(trace_id="t", span_id="a", source="agent", target="tools", token_id="tok-agent",
                 token={"scopes": ["tools:read"]}),
            call(trace_id="t", span_id="b", parent_span_id="a", source="tools", target="crm",
                 token_id="tok-tools", token={"scopes": ["tools:read", "crm:write"]}),
            call(trace_id="t", span_id="c", parent_span_id="b", source="crm", target="crm-db",
                 token_id="tok-crm-ro", token={"scopes": ["crm:write"],
                                               "parent_token_id": "tok-tools"}),
        ],
    )  # fmt: skip
    switches = load_chain(store.conn, trace_id="t").token_switches
    assert [
        (s.at, s.from_token, s.to_token, s.relation, s.basis, s.gained, s.dropped, s.derived)
        for s in switches
    ] == [
        ("tools", "tok-agent", "tok-tools", "broader", "scopes", ["crm:write"], [], False),
        ("crm", "tok-tools", "tok-crm-ro", "narrower", "scopes", [], ["tools:read"], True),
    ]


def test_token_switches_fall_back_to_observed_reach(store: Store) -> None:
    ingest(
        store,
        [
            call(trace_id="t", span_id="a", source="gw", target="api", token_id="tok-gw"),
            call(trace_id="t", span_id="b", parent_span_id="a", source="api", target="db",
                 token_id="tok-api"),
            call(token_id="tok-api", source="api", target="api"),
        ],
    )  # fmt: skip
    [switch] = load_chain(store.conn, trace_id="t").token_switches
    assert (switch.relation, switch.basis, switch.gained) == ("broader", "reach", ["db"])


def _graph_tables(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: store.conn.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
        for table in ("traces", "chain_reach", "token_links", "operation_scopes")
    }


def test_graph_tables_agree_whatever_the_batches_and_the_backfill(
    store: Store, tmp_path: Path
) -> None:
    events = [*checkout("t1"), *checkout("t2")]
    events.append(call(token_id="tok-child", token={"parent_token_id": "tok-gw"}))
    ingest(store, events)
    expected = _graph_tables(store)
    assert expected["chain_reach"] and expected["token_links"]
    rng = random.Random(5)
    for size in (1, 2, 3):
        shuffled = events[:]
        rng.shuffle(shuffled)
        with Store.open(tmp_path / f"b{size}.duckdb") as other:
            ingest(other, shuffled, batch_size=size)
            assert _graph_tables(other) == expected
    # The migration backfill (all stored events at once) ends in the same rows.
    for table in expected:
        store.conn.execute(f"DELETE FROM {table}")
    merge_graph(store.conn, new_events="events")
    assert _graph_tables(store) == expected
