"""A unit of ingest work: the events accepted from one source, its dead letters and offsets.

A batch comes from one origin (one Kafka topic, one file, stdin), so per-record provenance is
kept as two integer lists rather than an object per record: the hot path stays cheap.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Final

import pyarrow as pa

from tokentrail.events import Event

TS: Final = pa.timestamp("us", tz="UTC")
_FLAGS: Final = pa.list_(pa.string())

# What ingest derives from an event in Python (normalised time, redacted ids, flags). Every other
# column is parsed from the validated raw JSON by DuckDB itself, in C++, which is several times
# faster than building Arrow columns from Python objects (see docs/PERFORMANCE.md).
DERIVED_COLUMNS: Final = (
    ("ts", TS),
    ("token_id", pa.string()),
    ("parent_token_id", pa.string()),
    ("token_issued_at", TS),
    ("token_expires_at", TS),
    ("flags", _FLAGS),
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from: a Kafka offset, or a file's 1-based line (or array item)."""

    kind: str  # "kafka" | "file" | "stdin"
    name: str  # topic or path
    partition: int | None
    position: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that failed validation, kept whole with the reason."""

    origin: Origin
    reason: str
    raw: bytes


@dataclass
class Batch:
    """Events accepted from one origin in arrival order, plus what was rejected.

    Accepted events are kept as columns of what the store needs, not as decoded objects: a
    batch of 100k events then costs ~30 MB beside its raw bytes rather than ~140 MB.
    """

    kind: str
    name: str
    # The raw JSON of accepted events, back to back, and where each one ends: handed to Arrow as
    # one buffer rather than converted object by object.
    _raw: bytearray = field(default_factory=bytearray)
    _ends: array[int] = field(default_factory=lambda: array("q", [0]))
    partitions: list[int | None] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Kafka: partition -> next offset to read once this batch is stored.
    offsets: dict[int, int] = field(default_factory=dict)
    # Identical second copies within this batch (producer retries), dropped before the store.
    duplicates: int = 0
    # Second copies with other content (in this batch or against the store), dead-lettered.
    conflicts: int = 0
    _columns: tuple[list[object], ...] = field(
        default_factory=lambda: tuple([] for _ in DERIVED_COLUMNS)
    )
    # event_id -> hash of `Event.sameness()` of its first copy in this batch.
    _seen: dict[str, int] = field(default_factory=dict)
    # Set once the store has staged the accepted events and dropped their bytes (`release`).
    _released: bool = False
    # The traces and tokens (used, or named as a parent) of the accepted events: what a stored
    # batch may have changed, for readers that keep answers in memory (tokentrail.api.reads).
    # Kept after `release`.
    traces: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)

    def accept(self, event: Event, raw: bytes, partition: int | None, position: int) -> None:
        """Add a valid event; a second copy of an event_id is counted or dead-lettered here."""
        if event.redacted_raw is not None:
            # Neither the store nor a conflict's dead letter may see the secrets it held.
            raw = event.redacted_raw
        event_id = event.wire.event_id
        sameness = hash(event.sameness())
        first = self._seen.get(event_id)
        if first is not None:
            if first == sameness:
                self.duplicates += 1
            else:
                self.conflicts += 1
                self.reject(_conflict(event_id), raw, partition, position)
            return
        self._seen[event_id] = sameness
        if event.wire.trace_id is not None:
            self.traces.add(event.wire.trace_id)
        self.tokens.add(event.token_id)
        if event.parent_token_id is not None:
            self.tokens.add(event.parent_token_id)
        ts, token_id, parent, issued, expires, flags = self._columns
        ts.append(event.ts_us)
        token_id.append(event.token_id)
        parent.append(event.parent_token_id)
        issued.append(event.issued_at_us)
        expires.append(event.expires_at_us)
        flags.append(list(event.flags) if event.flags else None)
        self._raw += raw
        self._ends.append(len(self._raw))
        self.partitions.append(partition)
        self.positions.append(position)

    def reject_conflict(self, seq: int, event_id: str) -> None:
        """Dead-letter accepted event `seq`: its id was stored before with other content."""
        self.conflicts += 1
        self.reject_accepted(seq, _conflict(event_id))

    def reject_accepted(self, seq: int, reason: str) -> None:
        """Dead-letter accepted event `seq` for a reason found while storing it."""
        self._check_held()
        raw = bytes(self._raw[self._ends[seq] : self._ends[seq + 1]])
        self.reject(reason, raw, self.partitions[seq], self.positions[seq])

    def reject(self, reason: str, raw: bytes, partition: int | None, position: int) -> None:
        origin = Origin(self.kind, self.name, partition, position)
        self.dead_letters.append(DeadLetter(origin, reason, raw))

    @property
    def accepted(self) -> int:
        return len(self._ends) - 1

    def __len__(self) -> int:
        return len(self._ends) - 1 + len(self.dead_letters)

    def events_table(self) -> pa.Table:
        """Accepted events for the store: raw JSON, derived columns, and `seq` (batch order)."""
        self._check_held()
        n = self.accepted
        # Valid UTF-8 throughout: the decoder accepted every byte of it.
        raw = pa.LargeStringArray.from_buffers(n, pa.py_buffer(self._ends), pa.py_buffer(self._raw))
        arrays = [raw]
        arrays += [
            pa.array(column, type=kind)
            for column, (_, kind) in zip(self._columns, DERIVED_COLUMNS, strict=True)
        ]
        arrays.append(pa.array(range(n), type=pa.int64()))
        names = ["raw", *(name for name, _ in DERIVED_COLUMNS), "seq"]
        return pa.Table.from_arrays(arrays, names=names)

    def release(self) -> None:
        """Drop the accepted events' bytes and columns (~90 MB per 100k events) once the store
        has staged them; counts, dead letters and offsets stay."""
        self._raw = bytearray()
        self._columns = tuple([] for _ in DERIVED_COLUMNS)
        self._seen = {}
        self._released = True

    def _check_held(self) -> None:
        if self._released:
            # A second write of a released batch would store nothing and say so silently.
            raise RuntimeError("batch events were released after staging; build a new batch")

    def dead_letters_table(self) -> pa.Table:
        letters = self.dead_letters
        return pa.table(
            {
                "origin_kind": pa.array([d.origin.kind for d in letters], pa.string()),
                "origin_name": pa.array([d.origin.name for d in letters], pa.string()),
                "partition": pa.array([d.origin.partition for d in letters], pa.int32()),
                "position": pa.array([d.origin.position for d in letters], pa.int64()),
                "reason": pa.array([d.reason for d in letters], pa.string()),
                "raw": pa.array([d.raw for d in letters], pa.binary()),
            }
        )


def _conflict(event_id: str) -> str:
    return f"conflicting duplicate: event_id {event_id!r} was already stored with different content"
