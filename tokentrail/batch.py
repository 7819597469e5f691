"""A unit of ingest work: the events accepted from one source, its dead letters and offsets.

A batch comes from one origin (one Kafka topic, one file, stdin), so per-record provenance is
kept as two integer lists rather than an object per record: the hot path stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import msgspec
import pyarrow as pa

from tokentrail.events import Event

TS: Final = pa.timestamp("us", tz="UTC")

# Stored column -> Arrow type, in table order (the `events` table adds `ingested_at`).
EVENT_COLUMNS: Final = (
    ("event_id", pa.string()),
    ("ts", TS),
    ("token_id", pa.string()),
    ("identity", pa.string()),
    ("source", pa.string()),
    ("target", pa.string()),
    ("operation", pa.string()),
    ("scope", pa.string()),
    ("outcome", pa.string()),
    ("status", pa.int32()),
    ("trace_id", pa.string()),
    ("span_id", pa.string()),
    ("parent_span_id", pa.string()),
    ("environment", pa.string()),
    ("identity_kind", pa.string()),
    ("resource", pa.string()),
    ("source_ip", pa.string()),
    ("user_agent", pa.string()),
    ("bytes_out", pa.int64()),
    ("task_id", pa.string()),
    ("actor", pa.string()),
    ("token_kind", pa.string()),
    ("token_scopes", pa.list_(pa.string())),
    ("token_issued_at", TS),
    ("token_expires_at", TS),
    ("parent_token_id", pa.string()),
    ("token_audience", pa.string()),
    ("attributes", pa.string()),
    ("flags", pa.list_(pa.string())),
)

# Fields copied as they are from the wire form.
_PLAIN: Final = (
    "event_id",
    "identity",
    "source",
    "target",
    "operation",
    "scope",
    "outcome",
    "status",
    "trace_id",
    "span_id",
    "parent_span_id",
    "environment",
    "identity_kind",
    "resource",
    "source_ip",
    "user_agent",
    "bytes_out",
    "task_id",
    "actor",
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
    """Events accepted from one origin in arrival order, plus what was rejected."""

    kind: str
    name: str
    events: list[Event] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    partitions: list[int | None] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Kafka: partition -> next offset to read once this batch is stored.
    offsets: dict[int, int] = field(default_factory=dict)

    def accept(self, event: Event, raw: bytes, partition: int | None, position: int) -> None:
        self.events.append(event)
        self.raws.append(raw)
        self.partitions.append(partition)
        self.positions.append(position)

    def reject(self, reason: str, raw: bytes, partition: int | None, position: int) -> None:
        origin = Origin(self.kind, self.name, partition, position)
        self.dead_letters.append(DeadLetter(origin, reason, raw))

    def origin(self, seq: int) -> Origin:
        """The origin of the `seq`-th accepted event."""
        return Origin(self.kind, self.name, self.partitions[seq], self.positions[seq])

    def __len__(self) -> int:
        return len(self.events) + len(self.dead_letters)

    def events_table(self) -> pa.Table:
        """The accepted events as Arrow columns (plus `seq`, their order in the batch)."""
        events = self.events
        wires = [e.wire for e in events]
        columns: dict[str, list[object]] = {
            name: [getattr(w, name) for w in wires] for name in _PLAIN
        }
        columns["ts"] = [e.ts_us for e in events]
        columns["token_id"] = [e.token_id for e in events]
        columns["parent_token_id"] = [e.parent_token_id for e in events]
        columns["token_issued_at"] = [e.issued_at_us for e in events]
        columns["token_expires_at"] = [e.expires_at_us for e in events]
        columns["flags"] = [list(e.flags) if e.flags else None for e in events]
        tokens = [w.token for w in wires]
        columns["token_kind"] = [t.kind if t else None for t in tokens]
        columns["token_scopes"] = [t.scopes if t else None for t in tokens]
        columns["token_audience"] = [_audience(t.audience) if t else None for t in tokens]
        columns["attributes"] = [_attributes(w.attributes) for w in wires]
        arrays = [pa.array(columns[name], type=kind) for name, kind in EVENT_COLUMNS]
        arrays.append(pa.array(range(len(events)), type=pa.int64()))
        names = [name for name, _ in EVENT_COLUMNS] + ["seq"]
        return pa.Table.from_arrays(arrays, names=names)

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


def _audience(value: str | list[str] | None) -> str | None:
    return " ".join(value) if isinstance(value, list) else value


def _attributes(raw: msgspec.Raw) -> str | None:
    data = bytes(raw)
    if not data or data == b"null":
        return None
    return data.decode()
