"""The one path every input takes: decode and validate, batch, write in one transaction.

Files, stdin and Kafka differ only in how they read records and what origin they stamp on them,
so a file replay and a Kafka stream of the same events end in the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec

from tokentrail.batch import Batch
from tokentrail.config import Settings
from tokentrail.errors import ConfigError
from tokentrail.events import EventDecoder, InvalidEventError
from tokentrail.ingest.adapters import Adapter, Unmapped
from tokentrail.ingest.formats import AUTO, EVENTS, FORMATS, detect
from tokentrail.store import BatchResult, Store

log = logging.getLogger(__name__)

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
        self.stored += result.stored
        self.duplicates += result.duplicates
        self.conflicts += result.conflicts
        self.dead_letters += result.dead_letters
        self.batches += 1
        for letter in batch.dead_letters:
            kind = letter.reason.split(":", 1)[0]
            self.reasons[kind] = self.reasons.get(kind, 0) + 1


BatchHook = Callable[[Batch, BatchResult], None]
# Validates one record (bytes, Kafka partition or None, offset or line) into a batch.
Feed = Callable[[Batch, bytes, int | None, int], None]


class Validator:
    """Validates records into batches: accepted, or dead-lettered with the reason.

    `salt` is the store's secret salt (`Store.salt`): redacted token ids hash with it.
    """

    def __init__(self, settings: Settings, *, salt: bytes) -> None:
        self.settings = settings
        self.decoder = EventDecoder(salt=salt, max_bytes=settings.max_event_bytes)
        self.totals = Totals()
        self._adapters: dict[str, Adapter] = {}

    def feed(self, batch: Batch, raw: bytes, partition: int | None, position: int) -> None:
        """Validate one record into `batch`: accepted, or dead-lettered with its reason."""
        self.totals.read += 1
        try:
            event = self.decoder.decode(raw)
        except InvalidEventError as rejection:
            self._reject(batch, rejection.reason, raw, partition, position)
        else:
            batch.accept(event, raw, partition, position)

    def feeder(self, fmt: str = EVENTS) -> Feed:
        """The feed for records in format `fmt` (see `tokentrail.ingest.formats`).

        Native events take `feed` itself; `auto` tries each record as a native event first and
        detects the format of the others, so it costs native events nothing.
        """
        if fmt == EVENTS:
            return self.feed
        if fmt == AUTO:
            return self._feed_detected
        adapter = self._adapter(fmt)

        def feed(batch: Batch, raw: bytes, partition: int | None, position: int) -> None:
            self.totals.read += 1
            self._feed_adapted(adapter, fmt, batch, raw, partition, position)

        return feed

    def _adapter(self, fmt: str) -> Adapter:
        adapter = self._adapters.get(fmt)
        if adapter is None:
            if fmt not in FORMATS:
                raise ConfigError(f"unknown input format {fmt!r}; known: {', '.join(FORMATS)}")
            built = FORMATS[fmt].build(self.settings.adapters)
            if built is None:
                raise ConfigError(f"{fmt} is the native format and has no adapter")
            adapter = self._adapters[fmt] = built
        return adapter

    def _feed_detected(
        self, batch: Batch, raw: bytes, partition: int | None, position: int
    ) -> None:
        self.totals.read += 1
        try:
            event = self.decoder.decode(raw)
        except InvalidEventError as rejection:
            found = detect(raw)
            if found is None or found.adapter is None:
                self._reject(batch, rejection.reason, raw, partition, position)
            else:
                adapter = self._adapter(found.name)
                self._feed_adapted(adapter, found.name, batch, raw, partition, position)
        else:
            batch.accept(event, raw, partition, position)

    def _feed_adapted(
        self,
        adapter: Adapter,
        fmt: str,
        batch: Batch,
        raw: bytes,
        partition: int | None,
        position: int,
    ) -> None:
        """Map one record into events, each validated like a native one; every event of the
        record shares its origin, and a failure dead-letters the input it came from."""
        try:
            items = adapter(raw)
        except InvalidEventError as rejection:
            self._reject(batch, rejection.reason, raw, partition, position)
            return
        except Exception as exc:  # an adapter bug on odd input must not stop the stream
            log.warning("%s adapter failed on a record", fmt, exc_info=True)
            reason = f"{fmt}: adapter failed: {type(exc).__name__}: {exc}".splitlines()[0]
            self._reject(batch, reason, raw, partition, position)
            return
        decode = self.decoder.decode
        for item in items:
            if isinstance(item, Unmapped):
                self._reject(batch, item.reason, item.source, partition, position)
                continue
            try:
                event = decode(item.event)
            except InvalidEventError as rejection:
                reason = f"{fmt}: {rejection.reason}"
                self._reject(batch, reason, item.source, partition, position)
                continue
            if item.flags:
                event = msgspec.structs.replace(event, flags=event.flags + item.flags)
            # The store reads accepted events from their contract JSON, not from the input.
            batch.accept(event, item.event, partition, position)

    def _reject(
        self, batch: Batch, reason: str, raw: bytes, partition: int | None, position: int
    ) -> None:
        if len(raw) > MAX_DEAD_LETTER_BYTES:
            reason += f" (raw kept: first {MAX_DEAD_LETTER_BYTES} of {len(raw)} bytes)"
            raw = raw[:MAX_DEAD_LETTER_BYTES]
        scrubbed = self.decoder.scrub(raw)
        if scrubbed is not None:
            reason += " (secrets in raw hashed)"
            raw = scrubbed
        batch.reject(reason, raw, partition, position)


class Pipeline(Validator):
    """Validates records into batches and writes each batch to the store."""

    def __init__(self, store: Store, settings: Settings, *, hooks: list[BatchHook] | None = None):
        super().__init__(settings, salt=store.salt())
        self.store = store
        self._hooks = hooks or []
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[BatchResult] | None = None

    def stored_offsets(self, *, topic: str) -> dict[int, int]:
        """Partition -> next offset to read of `topic`, as stored with the data."""
        return self.store.stored_offsets(topic=topic)

    def write(self, batch: Batch) -> BatchResult:
        """Store `batch` in one transaction, then run the hooks (detection) on what was stored."""
        result = self.store.write_batch(batch)
        self.totals.add(result, batch)
        for hook in self._hooks:
            hook(batch, result)
        return result

    def submit(self, batch: Batch) -> None:
        """Write `batch` on the writer thread once the previous write is done.

        The caller validates the next batch meanwhile: DuckDB releases the GIL while it works,
        so parsing and storing overlap on two cores. At most one batch is in flight.
        """
        self.drain()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tt-writer")
        self._pending = self._writer.submit(self.write, batch)

    def drain(self) -> None:
        """Wait for the write in flight, if any; an error it met is raised here."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Finish the write in flight and stop the writer thread."""
        try:
            self.drain()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
