"""Whole answers of the common reads (a chain, an alert, the alerts list, a token's blast
radius) kept in memory until a write changes what they were read from.

Everything that writes while `serve` runs is in its process: the consumer's batches (each names
the traces and tokens it touched, `tokentrail.batch.Batch`, and the tokens whose reach it
changed), detection passes (the alerts they wrote) and triage (`PATCH /v1/alerts/{id}`). Each
reports to `ReadModel.changed` after its commit, and the answers read from anything it names
are dropped. An answer whose read was in flight when a change was reported is not kept (it may
have read from before the commit), so a kept answer is never older than the changes reported
before it was read.

A hit is answered on the event loop: no request thread, no cursor, no SQL. Under load that keeps
these reads out of the queue for request threads (docs/PERFORMANCE.md, API).

>>> reads = ReadModel(max_bytes=1 << 20)
>>> ticket = reads.ticket()
>>> reads.put(("chain", "t1"), Entry(b"{}", traces=frozenset({"t1"})), ticket)
>>> reads.get(("chain", "t1"))
b'{}'
>>> reads.changed(Changes(traces=frozenset({"t1"})))
>>> reads.get(("chain", "t1")) is None
True
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tokentrail.batch import Batch

Key = tuple[str, str]  # (kind of read, its id or query)
_NONE: frozenset[str] = frozenset()


def fresh_asked(headers: list[tuple[bytes, bytes]]) -> bool:
    """The request says `Cache-Control: no-cache`: answer from the store, not from memory."""
    return any(
        k == b"cache-control" and b"no-cache" in v.lower().replace(b" ", b"").split(b",")
        for k, v in headers
    )


@dataclass(frozen=True, slots=True)
class Changes:
    """What one committed write may have changed."""

    traces: frozenset[str] = _NONE
    tokens: frozenset[str] = _NONE
    alerts: frozenset[str] = _NONE

    @classmethod
    def of_batch(cls, batch: Batch, *, reach: set[str] | None = None) -> Changes:
        """What a stored batch may have changed; `reach`: the tokens whose reach it changed
        (tokentrail.store.graph.last_reach_changes), beyond those it used or named."""
        tokens = batch.tokens | (reach or set())
        return cls(traces=frozenset(batch.traces), tokens=frozenset(tokens))


@dataclass(frozen=True, slots=True)
class Entry:
    """An answer and what it was read from; `every_alert`: any alert change makes it stale."""

    body: bytes
    traces: frozenset[str] = _NONE
    tokens: frozenset[str] = _NONE
    alerts: frozenset[str] = _NONE
    every_alert: bool = False

    def stale_after(self, changes: Changes) -> bool:
        return (
            not self.traces.isdisjoint(changes.traces)
            or not self.tokens.isdisjoint(changes.tokens)
            or not self.alerts.isdisjoint(changes.alerts)
            or (self.every_alert and bool(changes.alerts))
        )


class ReadModel:
    """Answers by key, the least recently used dropped first beyond `max_bytes` of bodies
    (0 keeps nothing); thread-safe: requests read and fill it, writers report changes."""

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._bytes = 0
        # Changes reported so far: a read takes the count when it starts (`ticket`), and its
        # answer is kept only if no change came before it ended.
        self._changes = 0
        self._lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}

    def ticket(self) -> int:
        with self._lock:
            return self._changes

    def get(self, key: Key, *, count_miss: bool = True) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                if count_miss:
                    self.misses[key[0]] = self.misses.get(key[0], 0) + 1
                return None
            self.hits[key[0]] = self.hits.get(key[0], 0) + 1
            self._entries.move_to_end(key)
            return entry.body

    def put(self, key: Key, entry: Entry, ticket: int) -> None:
        """Keep `entry` unless a change was reported since `ticket` was taken."""
        size = len(entry.body)
        with self._lock:
            if ticket != self._changes or size > self.max_bytes:
                return
            self._drop(key)
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def changed(self, changes: Changes) -> None:
        """A write committed: drop every answer read from something it names."""
        with self._lock:
            self._changes += 1
            for key in [k for k, e in self._entries.items() if e.stale_after(changes)]:
                self._drop(key)

    def size(self) -> tuple[int, int]:
        """(answers kept, bytes of their bodies)."""
        with self._lock:
            return len(self._entries), self._bytes

    async def read(
        self,
        key: Key,
        fill: Callable[[], Entry],
        run: Callable[[Callable[[], Entry]], Awaitable[Entry]],
        *,
        fresh: bool = False,
    ) -> bytes:
        """The kept answer for `key`, or `fill()` run on a request thread by `run` (and kept);
        `fresh`: read the store whatever is kept (`Cache-Control: no-cache`)."""
        body = None if fresh else self.get(key)
        if body is not None:
            return body
        ticket = self.ticket()
        entry = await run(fill)
        self.put(key, entry, ticket)
        return entry.body

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body)
