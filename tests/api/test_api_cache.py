"""Reads kept in memory (tokentrail.api.cache) answer as the store does, and a trace that took new
events is read again."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
from factories import T0_MS, call, ingest

from tokentrail.api.cache import EventCache, HopCache
from tokentrail.api.models import EventPublic
from tokentrail.graph.chains import load_chain
from tokentrail.store import Store
from tokentrail.store import api as sql
from tokentrail.store.graph import chain_hops


@pytest.fixture
def store() -> Iterator[Store]:
    with Store.open(":memory:") as opened:
        yield opened


def test_a_trace_that_took_new_events_is_read_again(store: Store) -> None:
    ingest(store, [call(event_id="a1", ts=T0_MS, trace_id="t1", span_id="s1")])
    cache = HopCache(10)
    first = cache.hops(store.conn, trace_id="t1")
    assert first == chain_hops(store.conn, trace_id="t1")
    assert cache.hops(store.conn, trace_id="t1") == first  # kept
    # A late child inside the span known so far, then one after it: both are seen at once.
    ingest(store, [call(event_id="a0", ts=T0_MS, trace_id="t1", span_id="s0", parent_span_id="s1")])
    assert cache.hops(store.conn, trace_id="t1") == chain_hops(store.conn, trace_id="t1")
    ingest(store, [call(event_id="a2", ts=T0_MS + 5, trace_id="t1", span_id="s2")])
    hops = cache.hops(store.conn, trace_id="t1")
    assert [h.event_id for h in hops] == ["a0", "a1", "a2"]
    assert hops == chain_hops(store.conn, trace_id="t1")
    assert cache.hops(store.conn, trace_id="nope") == []


def test_chain_hops_are_ordered_by_time_then_id(store: Store) -> None:
    ingest(store, [call(event_id=e, ts=T0_MS + t, trace_id="t", span_id=e)
                   for e, t in [("b", 1), ("c", 0), ("a", 1)]])  # fmt: skip
    assert [h.event_id for h in chain_hops(store.conn, trace_id="t")] == ["c", "a", "b"]
    chain = load_chain(store.conn, trace_id="t")
    assert msgspec.json.encode(chain)  # still a chain


def test_evidence_events_match_the_store_inside_and_outside_the_expected_span(
    store: Store,
) -> None:
    ingest(store, [call(event_id=f"e{i}", ts=T0_MS + i * 1000) for i in range(6)])
    ids = ["e4", "e1", "missing", "e1", "e5"]
    every = sql.events_by_id(store.conn, event_ids=ids)
    assert [e["event_id"] for e in every] == ["e1", "e4", "e5"]
    cache = EventCache(2)
    # e5 lies outside the span given: it is looked for everywhere.
    within = ((T0_MS + 1000) * 1000, (T0_MS + 4000) * 1000)
    assert sql.events_by_id(store.conn, event_ids=ids, within=within) == every
    expected = [EventPublic.model_validate(e) for e in every]
    assert cache.events(store.conn, event_ids=ids, within=within) == expected
    assert cache.events(store.conn, event_ids=ids, within=within) == expected  # some kept
    assert cache.events(store.conn, event_ids=[]) == []
    assert EventCache(0).events(store.conn, event_ids=ids) == expected
