"""Consuming a Kafka topic in a consumer group with exactly-once storage.

The DuckDB file, not Kafka, is the source of truth for progress: each batch's next offsets are
written in the same transaction as its events. On every partition assignment the consumer seeks
to the larger of the stored offset and the group's committed offset (the latter covers a
partition that another worker, with its own file, advanced meanwhile). The group offset is
committed only after the data is stored, so it never runs ahead of it.

Each poll's records are written before the next poll, so no records are held in memory when a
rebalance revokes their partition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
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


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, resume each partition from what the store says was stored."""

    def __init__(self, source: KafkaIngest) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        source = self._source
        stored = source.pipeline.store.stored_offsets(topic=source.topic)
        for tp in assigned:
            if tp.partition not in stored:
                continue  # nothing stored here: the group offset (or earliest) applies
            committed = source.consumer.committed(tp) or 0
            source.consumer.seek(tp, max(stored[tp.partition], committed))
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))


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
    ) -> None:
        self.pipeline = pipeline
        self.topic = topic
        self.settings = settings
        self.stop_requested = threading.Event()
        self.consumer = _connect(bootstrap, group, settings)
        self.consumer.subscribe(topics=[topic], listener=_SeekToStored(self))

    def run(
        self,
        *,
        idle_exit: float | None = None,
        on_batch: Callable[[Batch], None] | None = None,
    ) -> None:
        """Consume until `stop_requested` is set, or `idle_exit` seconds pass with no message."""
        timeout_ms = self.settings.poll_timeout_ms
        last_message = time.monotonic()
        try:
            while not self.stop_requested.is_set():
                polled = self.consumer.poll(
                    timeout_ms=timeout_ms, max_records=self.settings.max_poll_records
                )
                if not polled:
                    if idle_exit is not None and time.monotonic() - last_message >= idle_exit:
                        return
                    continue
                last_message = time.monotonic()
                batch = self._batch(polled)
                self.pipeline.write(batch)
                self._commit_group(batch)
                if on_batch is not None:
                    on_batch(batch)
        except KafkaError as exc:
            raise SourceError(f"Kafka consumer failed: {exc}") from None
        finally:
            self.consumer.close(autocommit=False)

    def _batch(self, polled: dict[Any, list[Any]]) -> Batch:
        batch = Batch("kafka", self.topic)
        feed = self.pipeline.feed
        for tp, records in polled.items():
            partition = tp.partition
            for record in records:
                feed(batch, record.value or b"", partition, record.offset)
            batch.offsets[partition] = records[-1].offset + 1
        return batch

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


def _connect(bootstrap: str, group: str, settings: KafkaSettings) -> KafkaConsumer:
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
