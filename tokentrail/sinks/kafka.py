"""OCSF findings to a Kafka topic, keyed by alert id (every version of an alert lands in one
partition, in order); headers carry the OCSF version and the alert version.

A batch is sent, flushed and each send confirmed (acks=all); any error fails the batch and it
is sent again later, so consumers may see a version twice (dedupe on `metadata.uid`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from tokentrail.config import KafkaSink as KafkaSettings
from tokentrail.sinks import Outgoing, SinkError
from tokentrail.sinks.ocsf import OCSF_VERSION


class KafkaSink:
    """One producer, created on first use and rebuilt after an error."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._producer: Any = None

    def _connect(self) -> Any:
        if self._producer is None:
            s = self.settings
            timeout_ms = int(s.timeout_s * 1000)
            self._producer = KafkaProducer(
                bootstrap_servers=s.bootstrap_servers.split(","),
                client_id=s.client_id,
                acks="all",
                # One request in flight: retries cannot reorder versions of an alert.
                max_in_flight_requests_per_connection=1,
                request_timeout_ms=timeout_ms,
                max_block_ms=timeout_ms,
                bootstrap_timeout_ms=timeout_ms,
                **s.producer,
            )
        return self._producer

    def send(self, batch: Sequence[Outgoing]) -> None:
        s = self.settings
        try:
            producer = self._connect()
            futures = [
                producer.send(
                    s.topic,
                    key=item.alert.alert_id.encode(),
                    value=json.dumps(item.finding(), separators=(",", ":")).encode(),
                    headers=[
                        ("ocsf.version", OCSF_VERSION.encode()),
                        ("tokentrail.alert_version", str(item.version_us).encode()),
                    ],
                )
                for item in batch
            ]
            producer.flush(timeout=s.timeout_s)
            for future in futures:
                future.get(timeout=s.timeout_s)
        except KafkaError as exc:
            self.close()
            raise SinkError(f"kafka {s.bootstrap_servers} topic {s.topic}: {exc}") from None

    def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(KafkaError):
                producer.close(timeout=self.settings.timeout_s)
