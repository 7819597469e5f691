"""Consuming a Kafka topic in a consumer group with exactly-once storage.

The DuckDB file, not Kafka, is the source of truth for progress: each batch's next offsets are
written in the same transaction as its events. The group offset is committed to Kafka only after
the data is stored, so it never runs ahead of it, and it tells other workers (each with its own
file) where a partition they take over stands.

On every assignment the consumer resumes each partition from the larger of the two: Kafka starts
it at the group offset, and where the store is further ahead (a crash between the DuckDB commit
and the group commit) the consumer seeks forward and drops any record below the stored offset.
kafka-python runs rebalance listeners on its IO thread, where blocking calls are not allowed, so
the listener only notes the partitions and the main loop does the rest.

Each poll's records are written before the next poll, so no records are held in memory when a
rebalance revokes their partition.
"""

from __future__ import annotations

import bisect
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from tokentrail.batch import Batch
from tokentrail.config import KafkaSettings
from tokentrail.errors import SourceError
from tokentrail.ingest.pipeline import Pipeline

log = logging.getLogger(__name__)


class _NoteAssignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands newly assigned partitions to the main loop (runs on kafka-python's IO thread)."""

    def __init__(self, source: KafkaIngest) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        partitions = {tp.partition for tp in assigned}
        with self._source.lock:
            self._source.newly_assigned |= partitions
        log.info("partitions assigned: %s", sorted(partitions))


class KafkaIngest:
    """Reads `topic` as a member of `group` and writes every poll through the pipeline."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        settings: KafkaSettings,
        fmt: str = "events",
    ) -> None:
        self.pipeline = pipeline
        self.topic = topic
        # The topic's input format (tokentrail.ingest.formats); `auto` detects each message.
        self.feed = pipeline.feeder(fmt)
        self.settings = settings
        self.stop_requested = threading.Event()
        # The idle clock runs from the last message or assignment: joining a group takes time.
        self.last_activity = time.monotonic()
        self.ever_assigned = False
        self.lock = threading.Lock()
        self.newly_assigned: set[int] = set()
        # Partition -> next offset known to be stored; records below it are skipped.
        self.floor: dict[int, int] = {}
        self.consumer = _connect(bootstrap, group, settings)
        self.consumer.subscribe(topics=[topic], listener=_NoteAssignments(self))

    def run(
        self,
        *,
        idle_exit: float | None = None,
        on_batch: Callable[[Batch], None] | None = None,
    ) -> None:
        """Consume until `stop_requested` is set, or `idle_exit` seconds pass with no message."""
        timeout_ms = self.settings.poll_timeout_ms
        join_deadline = time.monotonic() + self.settings.join_timeout_s
        try:
            while not self.stop_requested.is_set():
                polled = self.consumer.poll(
                    timeout_ms=timeout_ms, max_records=self.settings.max_poll_records
                )
                with self.lock:
                    assigned, self.newly_assigned = self.newly_assigned, set()
                if assigned:
                    self._resume(assigned)
                if not polled:
                    if not self.ever_assigned and time.monotonic() > join_deadline:
                        raise SourceError(
                            f"no partition of topic {self.topic!r} was assigned within"
                            f" {self.settings.join_timeout_s:g} s (does the topic exist?)"
                        )
                    idle = time.monotonic() - self.last_activity
                    if idle_exit is not None and self.ever_assigned and idle >= idle_exit:
                        return
                    continue
                self.last_activity = time.monotonic()
                # Each chunk is validated while the one before it is written; all are stored
                # before the next poll, so a rebalance never finds records in flight.
                written = []
                for batch in self._batches(polled):
                    self.pipeline.submit(batch)
                    written.append(batch)
                self.pipeline.drain()
                for batch in written:
                    self.floor.update(batch.offsets)
                    self._commit_group(batch)
                    if on_batch is not None:
                        on_batch(batch)
        except KafkaError as exc:
            raise SourceError(f"Kafka consumer failed: {exc}") from None
        finally:
            self.consumer.close(autocommit=False)

    def _resume(self, partitions: set[int]) -> None:
        """Start newly assigned partitions where the store says, when it is ahead of the group."""
        self.last_activity = time.monotonic()
        self.ever_assigned = True
        stored = self.pipeline.store.stored_offsets(topic=self.topic)
        for partition in partitions:
            if partition not in stored:
                continue
            self.floor[partition] = stored[partition]
            tp = TopicPartition(self.topic, partition)
            if self.consumer.position(tp) < stored[partition]:
                self.consumer.seek(tp, stored[partition])

    def _batches(self, polled: dict[Any, list[Any]]) -> Iterator[Batch]:
        """The polled records as batches of at most a quarter poll, validated lazily."""
        size = max(1, self.settings.max_poll_records // 4)
        batch = Batch("kafka", self.topic)
        feed = self.feed
        for tp, records in polled.items():
            partition = tp.partition
            floor = self.floor.get(partition)
            if floor is not None and records[0].offset < floor:
                # Already stored (fetched before the seek to the stored offset took effect).
                records = records[bisect.bisect_left(records, floor, key=lambda r: r.offset) :]
            for record in records:
                feed(batch, record.value or b"", partition, record.offset)
                batch.offsets[partition] = record.offset + 1
                if len(batch) >= size:
                    yield batch
                    batch = Batch("kafka", self.topic)
        if len(batch):
            yield batch

    def _commit_group(self, batch: Batch) -> None:
        """Tell the group what is stored (for lag monitoring and other workers); best effort."""
        offsets = {
            TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
            for p, o in batch.offsets.items()
        }
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:
            # The store holds the truth; a failed group commit only delays monitoring.
            log.warning("group offset commit failed (data is stored): %s", exc)


def _await_reachable(bootstrap: str, timeout_s: float) -> None:
    """Wait until some bootstrap address accepts TCP connections, or fail with one line.

    Checked before kafka-python starts its IO thread, which it cannot stop again when its own
    bootstrap fails.
    """
    addresses = []
    for part in bootstrap.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise SourceError(f"bad Kafka address {part.strip()!r}: expected HOST:PORT")
        addresses.append((host.strip("[]"), int(port)))
    deadline = time.monotonic() + timeout_s
    while True:
        for address in addresses:
            try:
                socket.create_connection(address, timeout=1.0).close()
                return
            except OSError:
                pass
        if time.monotonic() >= deadline:
            raise SourceError(f"no Kafka broker reachable at {bootstrap} after {timeout_s:g} s")
        time.sleep(0.5)


def _connect(bootstrap: str, group: str, settings: KafkaSettings) -> KafkaConsumer:
    _await_reachable(bootstrap, settings.connect_timeout_s)
    try:
        return KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id="tokentrail",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The client retries an unreachable broker for this long, then gives up.
            bootstrap_timeout_ms=int(settings.connect_timeout_s * 1000),
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            fetch_max_bytes=settings.fetch_max_bytes,
            max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
            max_poll_records=settings.max_poll_records,
        )
    except KafkaTimeoutError:
        raise SourceError(
            f"no Kafka broker reachable at {bootstrap} after {settings.connect_timeout_s:g} s"
        ) from None
    except KafkaError as exc:
        raise SourceError(f"cannot connect to Kafka at {bootstrap}: {exc}") from None
