"""What reads keep in memory: alerts' evidence events by id, and the events of a trace.

Both are stored events, and a stored event never changes while the API runs: a second copy of
an id is dropped (same content) or dead-lettered (other content) by the store, and
`tokentrail prune`, the only thing that deletes events, needs the DuckDB file to itself, so it
cannot run beside `serve`. So an evidence event read once is the answer for as long as the
process lives; a trace's events are the answer for as long as its row in `traces` (first seen,
last seen, number of events) is the same, and that row is read on every request: a trace that
took new events is read again. Not cached: ids not found (an event may still arrive), and what
does change (an alert's row, assignee and history; tokens, lineage and reach of a chain).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Generic, TypeVar

import duckdb

from tokentrail.api.models import EventPublic
from tokentrail.store import api as sql
from tokentrail.store.graph import HopRow, TraceSpan, trace_hops, trace_span

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """At most `size` entries, the least recently used dropped first; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, items: Sequence[tuple[K, V]]) -> None:
        if not self.size:
            return
        with self._lock:
            for key, value in items:
                self._entries[key] = value
                self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


class EventCache:
    """The last `size` evidence events read, by id."""

    def __init__(self, size: int) -> None:
        self._events: _Lru[str, EventPublic] = _Lru(size)

    def events(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        event_ids: Sequence[str],
        within: tuple[int, int] | None = None,
    ) -> list[EventPublic]:
        """The stored events among `event_ids`, in event time order (then by id), as
        `tokentrail.store.api.events_by_id` returns them; only the ones not kept are read."""
        wanted = list(dict.fromkeys(event_ids))
        kept = [e for e in map(self._events.get, wanted) if e is not None]
        have = {e.event_id for e in kept}
        missing = [e for e in wanted if e not in have]
        read = (
            [
                EventPublic.model_validate(e)
                for e in sql.events_by_id(conn, event_ids=missing, within=within)
            ]
            if missing
            else []
        )
        self._events.put([(e.event_id, e) for e in read])
        found = kept + read
        found.sort(key=lambda e: (e.ts, e.event_id))
        return found


class HopCache:
    """The events of the last `size` traces read, with the `traces` row they were read at."""

    def __init__(self, size: int) -> None:
        self._traces: _Lru[str, tuple[TraceSpan, tuple[HopRow, ...]]] = _Lru(size)

    def hops(self, conn: duckdb.DuckDBPyConnection, *, trace_id: str) -> list[HopRow]:
        """Every stored event of a trace, oldest first, as `chain_hops` returns them."""
        span = trace_span(conn, trace_id=trace_id)
        if span is None:
            return []
        kept = self._traces.get(trace_id)
        if kept is not None and kept[0] == span:
            return list(kept[1])
        hops = trace_hops(conn, trace_id=trace_id, span=span)
        # The two reads are two transactions: a batch stored between them can add an event
        # the row did not count yet. Then the events are not kept (the next read sees both).
        if len(hops) == span.events:
            self._traces.put([(trace_id, (span, tuple(hops)))])
        return hops
