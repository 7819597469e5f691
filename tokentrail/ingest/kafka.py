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

Polls are gathered into batches of `batch_records` records (or what `batch_wait_ms` brought), one
transaction each, and a batch is written while the next one is read and validated. Before
anything moves a position (an assignment, a log read again) every record read so far is stored,
so stored offsets always say where reading stands.

A broker that goes away is waited for: kafka-python reconnects by itself (backing off up to
`reconnect_backoff_max_ms`) while the loop notes the outage (`unreachable_since`, shown by
`readyz`). A broker that comes back without the log (restarted on memory storage, a recreated
topic, an unclean leader election) leaves a partition's position past its log end, where Kafka
would answer "offset out of range" but Tansu answers with nothing at all; either way the partition
is read again from its beginning with a warning, never skipped silently. Records are never
reset by kafka-python behind our back (`auto_offset_reset="none"`): every position is chosen here.
"""

from __future__ import annotations

import bisect
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    KafkaConfigurationError,
    KafkaError,
    KafkaTimeoutError,
    LogTruncationError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)
from kafka.structs import OffsetAndMetadata

from tokentrail.batch import Batch
from tokentrail.config import KafkaSettings
from tokentrail.errors import ConfigError, SourceError
from tokentrail.histogram import Histogram
from tokentrail.ingest.pipeline import Feed

log = logging.getLogger(__name__)

# How often an idle loop checks that the broker answers and that positions are inside the log.
_PROBE_INTERVAL_S: Final = 1.0
# A position past the high watermark for this long (several fetches, each of which refreshes the
# watermark) is a truncated log, not a watermark a fetch or two behind a seek.
_TRUNCATION_CONFIRM_S: Final = 3.0


class Intake(Protocol):
    """What the consumer needs of its pipeline (`Pipeline` in this process, or the link to the
    one in the writing process, `tokentrail.ingest.reader`)."""

    def feeder(self, fmt: str = ...) -> Feed:
        """Validates one record into a batch."""

    def submit(self, batch: Batch) -> None:
        """Write `batch` once the write in flight is done; returns before it is stored."""

    def drain(self) -> None:
        """Wait until the write in flight is stored."""

    def stored_offsets(self, *, topic: str) -> dict[int, int]:
        """Partition -> next offset to read, as stored with the data."""


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
    """Reads `topic` as a member of `group` and writes its records through the pipeline."""

    def __init__(
        self,
        pipeline: Intake,
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
        self.bootstrap = bootstrap
        # When the broker was first found unreachable in the current outage (monotonic), or None.
        self.unreachable_since: float | None = None
        # Partitions read again from their beginning because their log was lost or truncated.
        self.log_resets = 0
        # Partition -> (position, first seen) while its position is past its high watermark.
        self._past_end: dict[int, tuple[int, float]] = {}
        # The topic's id when first seen, and whether it has changed since (a recreated topic:
        # the stored offsets then belong to the old log, except for partitions in `_renewed`,
        # which have stored a batch of the new one).
        self._topic_id: object | None = None
        self._recreated = False
        self._renewed: set[int] = set()
        self._next_probe = 0.0
        # For metrics, read from other threads: partition -> records not yet stored (the
        # broker's high watermark less the stored offset), and the time each batch took to store.
        self.lag: dict[int, int] = {}
        self.write_seconds = Histogram()
        # The batch being filled from polls (and when its first record came), the batch being
        # written, and what to call once it is stored.
        self._open: Batch | None = None
        self._opened_at = 0.0
        self._in_flight: Batch | None = None
        self._submitted_at = 0.0
        self._on_batch: Callable[[Batch], None] | None = None
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
        self._on_batch = on_batch
        try:
            while not self.stop_requested.is_set():
                polled = self._poll(timeout_ms)
                self._check_topic_id()
                with self.lock:
                    assigned, self.newly_assigned = self.newly_assigned, set()
                if assigned:
                    self._resume(assigned)
                if time.monotonic() >= self._next_probe:
                    self._next_probe = time.monotonic() + _PROBE_INTERVAL_S
                    self._check_positions()
                    self._measure_lag()
                    if not polled:
                        self._probe_broker()
                if not polled:
                    # Nothing more for now: store what was read.
                    self._flush()
                    if not self.ever_assigned and time.monotonic() > join_deadline:
                        raise SourceError(
                            f"no partition of topic {self.topic!r} was assigned within"
                            f" {self.settings.join_timeout_s:g} s (does the topic exist?)"
                        )
                    idle = time.monotonic() - self.last_activity
                    if idle_exit is not None and self.ever_assigned and idle >= idle_exit:
                        if self.unreachable_since is not None:
                            # Not caught up, just cut off: say so rather than exit as if done.
                            raise SourceError(
                                f"no Kafka broker reachable at {self.bootstrap} for"
                                f" {time.monotonic() - self.unreachable_since:.0f} s"
                            )
                        return
                    continue
                self.last_activity = time.monotonic()
                self._reachable()
                self._fill(polled)
            # Stopping: what was read is stored with its offsets before the consumer closes.
            self._flush()
        except KafkaError as exc:
            raise SourceError(f"Kafka consumer failed: {exc}") from None
        finally:
            self.consumer.close(autocommit=False)

    def _poll(self, timeout_ms: int) -> dict[Any, list[Any]]:
        """One poll; a partition with no offset to start from starts at its beginning, and one
        whose offset the broker no longer has is read again from its beginning."""
        try:
            polled: dict[Any, list[Any]] = self.consumer.poll(
                timeout_ms=timeout_ms, max_records=self.settings.max_poll_records
            )
        except NoOffsetForPartitionError as exc:
            # Neither the store nor the group knows this partition: a new one, read it all.
            partitions = sorted(exc.args[0], key=lambda tp: tp.partition)
            log.info("partitions %s start at their beginning", [tp.partition for tp in partitions])
            self._flush()
            self.consumer.seek_to_beginning(*partitions)
            return {}
        except OffsetOutOfRangeError as exc:
            for tp, offset in sorted(exc.args[0].items(), key=lambda item: item[0].partition):
                self._restart_partition(
                    tp.partition, f"offset {offset}: the broker answered out of range"
                )
            return {}
        except LogTruncationError as exc:
            # KIP-320: the new leader's log diverges from what was read; read on from where
            # the two agree (or the beginning if unknown). Stored events stay stored.
            for tp, agreed in exc.divergent_offsets.items():
                since = agreed.offset if agreed is not None else None
                self._restart_partition(tp.partition, "the log was truncated", since=since)
            return {}
        except KafkaError as exc:
            if not exc.retriable:
                raise
            # The broker went away in the middle of the poll (seen once in a fresh-clone run
            # of tests/hardening/test_fault_broker_restart.py: KafkaConnectionError, and the
            # consumer stopped). kafka-python reconnects by itself; an empty poll lets the idle
            # path note the outage and wait for the broker.
            log.info("poll interrupted: %s", exc)
            return {}
        return polled

    def _resume(self, partitions: set[int]) -> None:
        """Start newly assigned partitions at the larger of the stored and the group offset."""
        self._flush()  # the stored offsets then include every record read before
        self.last_activity = time.monotonic()
        self.ever_assigned = True
        stored = self.pipeline.stored_offsets(topic=self.topic)
        for partition in sorted(partitions):
            self._past_end.pop(partition, None)
            if partition not in stored:
                continue
            tp = TopicPartition(self.topic, partition)
            if self._recreated and partition not in self._renewed:
                # Stored while the topic had another id: offsets of a log that is gone.
                self._restart_partition(partition, "the topic was recreated")
                continue
            self.floor[partition] = stored[partition]
            try:
                committed = self.consumer.committed(tp)
            except KafkaError:
                committed = None  # the broker is away: the store's offset is enough
            self.consumer.seek(tp, max(stored[partition], committed or 0))

    def _measure_lag(self) -> None:
        lag = {}
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            stored = self.floor.get(tp.partition)
            if highwater is not None and stored is not None:
                lag[tp.partition] = max(highwater - stored, 0)
        self.lag = lag  # replaced whole: readers on other threads see one consistent dict

    def _check_positions(self) -> None:
        """Read again from the beginning any partition that has stayed past its log end.

        Kafka answers a fetch past the log end with OFFSET_OUT_OF_RANGE (handled in `_poll`);
        Tansu answers it with no records and a lower high watermark, so a consumer that only
        waited would skip every record the new log holds below the old position.
        """
        now = time.monotonic()
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue  # no fetch answered yet since the assignment
            try:
                position = self.consumer.position(tp, timeout_ms=100)
            except KafkaError:
                continue  # being reset or the broker is away: look again later
            if position is None or position <= highwater:
                self._past_end.pop(tp.partition, None)
                continue
            seen = self._past_end.get(tp.partition)
            if seen is None or seen[0] != position:
                self._past_end[tp.partition] = (position, now)
            elif now - seen[1] >= _TRUNCATION_CONFIRM_S:
                self._restart_partition(
                    tp.partition, f"offset {position} is past the log's end at {highwater}"
                )

    def _restart_partition(self, partition: int, why: str, *, since: int | None = None) -> None:
        """Read a partition again from `since` or its beginning (duplicates are dropped by
        event id); if the broker cannot say where the log begins, try again later."""
        self._flush()  # a batch stored later would move the stored offset past the new position
        tp = TopicPartition(self.topic, partition)
        try:
            beginning = since if since is not None else self.consumer.beginning_offsets([tp])[tp]
        except KafkaError as exc:
            log.warning("partition %d: cannot find the log's beginning yet: %s", partition, exc)
            return
        log.warning(
            "partition %d: %s; the broker lost, truncated or recreated the log (restarted"
            " without its data, a new topic of the same name, an unclean election):"
            " reading it again from offset %d",
            partition, why, beginning,
        )  # fmt: skip
        self.consumer.seek(tp, beginning)
        self.floor[partition] = beginning
        self._past_end.pop(partition, None)
        self.log_resets += 1

    def _check_topic_id(self) -> None:
        """Restart every partition when the topic's id changes (it was deleted and created
        again, or the broker came back empty and it was recreated): offsets of the old log mean
        nothing in the new one, and the new log may already be longer than the old position,
        where the high-watermark check cannot see it. kafka-python 3.0 logs the change but
        exposes the ids only on its private cluster metadata; without it this check is off.
        """
        cluster = getattr(self.consumer, "_cluster", None)
        topic_id = cluster.topic_id(self.topic) if cluster is not None else None
        if topic_id is None or topic_id == self._topic_id:
            return
        if self._topic_id is not None:
            self._recreated, self._renewed = True, set()
            for tp in sorted(self.consumer.assignment(), key=lambda tp: tp.partition):
                self._restart_partition(tp.partition, "the topic was recreated")
        self._topic_id = topic_id

    def _probe_broker(self) -> None:
        """Note whether some bootstrap broker accepts connections (checked while idle)."""
        if _reachable_now(self.bootstrap):
            self._reachable()
        elif self.unreachable_since is None:
            self.unreachable_since = time.monotonic()
            log.warning(
                "Kafka broker at %s unreachable; waiting for it to come back", self.bootstrap
            )

    def _reachable(self) -> None:
        if self.unreachable_since is not None:
            log.warning(
                "Kafka broker at %s reachable again after %.0f s",
                self.bootstrap,
                time.monotonic() - self.unreachable_since,
            )
            self.unreachable_since = None

    def _fill(self, polled: dict[Any, list[Any]]) -> None:
        """Validate the polled records into the open batch, handing it to the writer when it
        holds `batch_records` records or its first came `batch_wait_ms` ago; records are
        validated while the batch before is written."""
        size = self.settings.batch_records
        feed = self.feed
        for tp, records in polled.items():
            partition = tp.partition
            floor = self.floor.get(partition)
            if floor is not None and records[0].offset < floor:
                # Already stored (fetched before the seek to the stored offset took effect).
                records = records[bisect.bisect_left(records, floor, key=lambda r: r.offset) :]
            for record in records:
                if self._open is None:
                    self._open, self._opened_at = Batch("kafka", self.topic), time.monotonic()
                feed(self._open, record.value or b"", partition, record.offset)
                self._open.offsets[partition] = record.offset + 1
                if len(self._open) >= size:
                    self._submit()
        waited_ms = (time.monotonic() - self._opened_at) * 1000
        if self._open is not None and waited_ms >= self.settings.batch_wait_ms:
            self._submit()

    def _submit(self) -> None:
        """Hand the open batch to the writer once the batch before it is stored."""
        batch, self._open = self._open, None
        if batch is None:
            return
        self.pipeline.submit(batch)  # waits for the write in flight first
        self._stored(self._in_flight)
        self._in_flight, self._submitted_at = batch, time.monotonic()

    def _flush(self) -> None:
        """Store every record read so far: the open batch and the one being written."""
        self._submit()
        self.pipeline.drain()
        self._stored(self._in_flight)
        self._in_flight = None

    def _stored(self, batch: Batch | None) -> None:
        """A batch is in the store: its offsets become the floor and go to the group."""
        if batch is None:
            return
        self.write_seconds.observe(time.monotonic() - self._submitted_at)
        log.info("stored a batch of %d records", len(batch))
        self.floor.update(batch.offsets)
        self._renewed.update(batch.offsets)
        self._commit_group(batch)
        if self._on_batch is not None:
            self._on_batch(batch)
        self._measure_lag()

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


def _addresses(bootstrap: str) -> list[tuple[str, int]]:
    addresses = []
    for part in bootstrap.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise SourceError(f"bad Kafka address {part.strip()!r}: expected HOST:PORT")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def _reachable_now(bootstrap: str) -> bool:
    """True if some bootstrap address accepts a TCP connection within a second."""
    for address in _addresses(bootstrap):
        try:
            socket.create_connection(address, timeout=1.0).close()
            return True
        except OSError:
            pass
    return False


def _await_reachable(bootstrap: str, timeout_s: float) -> None:
    """Wait until some bootstrap address accepts TCP connections, or fail with one line.

    Checked before kafka-python starts its IO thread, which it cannot stop again when its own
    bootstrap fails.
    """
    _addresses(bootstrap)  # a malformed address fails at once
    deadline = time.monotonic() + timeout_s
    while True:
        if _reachable_now(bootstrap):
            return
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
            # Positions are chosen in KafkaIngest: a silent reset could skip or repeat records.
            auto_offset_reset="none",
            reconnect_backoff_max_ms=settings.reconnect_backoff_max_ms,
            # The client retries an unreachable broker for this long, then gives up.
            bootstrap_timeout_ms=int(settings.connect_timeout_s * 1000),
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            fetch_max_bytes=settings.fetch_max_bytes,
            max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
            max_poll_records=settings.max_poll_records,
            # TLS and SASL for a real cluster (security_protocol, sasl_mechanism, ssl_cafile ...).
            **settings.client,
        )
    except KafkaTimeoutError:
        raise SourceError(
            f"no Kafka broker reachable at {bootstrap} after {settings.connect_timeout_s:g} s"
        ) from None
    except KafkaConfigurationError as exc:
        raise ConfigError(f"kafka.client: {exc}") from None
    except KafkaError as exc:
        raise SourceError(f"cannot connect to Kafka at {bootstrap}: {exc}") from None
