"""The Kafka mode produces the file's stream, keyed by identity, through a real broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from tokentrail.broker import EmbeddedBroker, free_port
from tokentrail.simulate import (
    SimulationError,
    World,
    WorldSpec,
    parse_attacks,
    stream_kafka,
    write_world,
)

pytestmark = pytest.mark.kafka

SPEC = WorldSpec(seed=9, days=0.5, scale=0.1, attacks=parse_attacks("token_replay,scope_drift"))


def consume_all(broker: EmbeddedBroker, topic: str, partitions: int, count: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    records: list[Any] = []
    deadline = time.monotonic() + 60
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500, max_records=50_000).values():
            records += batch
    consumer.close()
    return records


def test_kafka_stream_round_trips_the_file_stream(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=3)
    labels_dir = tmp_path / "labels"
    summary = stream_kafka(World(SPEC), broker.bootstrap, name, rate=50_000, out=labels_dir)
    write_world(World(SPEC), tmp_path / "file")
    lines = (tmp_path / "file" / "events.jsonl").read_bytes().splitlines()

    records = consume_all(broker, name, 3, summary.events)
    assert sorted(r.value for r in records) == sorted(lines)
    partition_of: dict[bytes, set[int]] = {}
    for record in records:
        event = json.loads(record.value)
        assert record.key == event["identity"].encode()
        partition_of.setdefault(record.key, set()).add(record.partition)
    assert all(len(parts) == 1 for parts in partition_of.values()), "keyed by identity"
    assert (labels_dir / "labels.json").read_bytes() == (
        tmp_path / "file" / "labels.json"
    ).read_bytes()
    assert (labels_dir / "catalog.toml").exists()
    assert not (labels_dir / "events.jsonl").exists()


def test_unreachable_broker_is_one_clear_error() -> None:
    with pytest.raises(SimulationError, match=r"no Kafka broker reachable at 127\.0\.0\.1:"):
        stream_kafka(World(SPEC), f"127.0.0.1:{free_port()}", "t", connect_timeout_s=1)
