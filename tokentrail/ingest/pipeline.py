"""The one path every input takes: decode and validate, batch, write in one transaction.

Files, stdin and Kafka differ only in how they read records and what origin they stamp on them,
so a file replay and a Kafka stream of the same events end in the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tokentrail.batch import Batch
from tokentrail.config import Settings
from tokentrail.events import EventDecoder, InvalidEventError
from tokentrail.store import BatchResult, Store

# Dead letters keep the raw bytes, but a hostile 1 GiB message must not move into the store whole.
MAX_DEAD_LETTER_BYTES = 1 << 20


@dataclass
class Totals:
    """Running counts of one ingest run, for the summary line and progress display."""

    read: int = 0
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead_letters: int = 0
    batches: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, result: BatchResult, batch: Batch) -> None:
        self.read += len(batch.events) + len(batch.dead_letters) - result.conflicts
        self.stored += result.stored
        self.duplicates += result.duplicates
        self.conflicts += result.conflicts
        self.dead_letters += result.dead_letters
        self.batches += 1
        for letter in batch.dead_letters:
            kind = letter.reason.split(":", 1)[0]
            self.reasons[kind] = self.reasons.get(kind, 0) + 1


BatchHook = Callable[[Batch, BatchResult], None]


class Pipeline:
    """Validates records into batches and writes each batch to the store."""

    def __init__(self, store: Store, settings: Settings, *, hooks: list[BatchHook] | None = None):
        self.store = store
        self.settings = settings
        self.decoder = EventDecoder(salt=store.salt(), max_bytes=settings.max_event_bytes)
        self.totals = Totals()
        self._hooks = hooks or []

    def feed(self, batch: Batch, raw: bytes, partition: int | None, position: int) -> None:
        """Validate one record into `batch`: accepted, or dead-lettered with its reason."""
        try:
            event = self.decoder.decode(raw)
        except InvalidEventError as rejection:
            reason = rejection.reason
            if len(raw) > MAX_DEAD_LETTER_BYTES:
                reason += f" (raw kept: first {MAX_DEAD_LETTER_BYTES} of {len(raw)} bytes)"
                raw = raw[:MAX_DEAD_LETTER_BYTES]
            batch.reject(reason, raw, partition, position)
        else:
            batch.accept(event, raw, partition, position)

    def write(self, batch: Batch) -> BatchResult:
        """Store `batch` in one transaction, then run the hooks (detection) on what was stored."""
        result = self.store.write_batch(batch)
        self.totals.add(result, batch)
        for hook in self._hooks:
            hook(batch, result)
        return result
