"""Exactly-once ingest from a real Kafka-protocol broker, through the real `tokentrail` command.

The consumer runs as a subprocess, as in production, so that it can be killed with SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from factories import call, encode
from kafka import KafkaProducer
from kafka.errors import KafkaConnectionError

from tokentrail.broker import EmbeddedBroker, free_port
from tokentrail.config import Settings
from tokentrail.ingest.kafka import KafkaIngest
from tokentrail.ingest.pipeline import Pipeline
from tokentrail.store import Store

pytestmark = pytest.mark.kafka

TOKENTRAIL = str(Path(sys.executable).parent / "tokentrail")


def produce(broker: EmbeddedBroker, topic: str, values: Iterable[tuple[bytes, bytes]]) -> int:
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, linger_ms=5, acks="all", max_request_size=4 << 20
    )
    sent = 0
    for key, value in values:
        producer.send(topic, key=key, value=value)
        sent += 1
    producer.flush(timeout=60)
    producer.close()
    return sent


def events(n: int, prefix: str = "k") -> Iterator[tuple[bytes, bytes]]:
    for i in range(n):
        identity = f"svc-{i % 7}"
        event = call(event_id=f"{prefix}-{i}", identity=identity, token_id=f"tok-{i % 13}")
        yield identity.encode(), encode(event)


class Consumer:
    """A `tokentrail ingest --kafka` subprocess whose log is watched for group assignment."""

    def __init__(self, broker: EmbeddedBroker, topic: str, db: Path, *args: str, **env: str):
        self.lines: list[str] = []
        self.assigned = threading.Event()
        self.batches_stored = 0
        command = [
            TOKENTRAIL, "-v", "ingest", "--kafka", broker.bootstrap, "--topic", topic,
            # One group per topic: members SIGKILLed by another test must not slow this join.
            "--group", f"g-{topic}", "--db", str(db), *args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=os.environ | env,
        )
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "partitions assigned: [" in line and "partitions assigned: []" not in line:
                self.assigned.set()
            if "stored a batch of" in line:
                self.batches_stored += 1

    def wait_assigned(self, timeout: float = 60) -> None:
        assert self.assigned.wait(timeout), "".join(self.lines[-20:])

    def wait_batches_stored(self, n: int, timeout: float = 120) -> None:
        """Until the consumer has logged `n` stored batches: kill points follow the work done,
        not the clock, so they fall mid-stream however loaded the machine is."""
        deadline = time.monotonic() + timeout
        while self.batches_stored < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.batches_stored >= n, "".join(self.lines[-20:])

    def wait(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout)
        time.sleep(0.1)  # let the watcher drain the last lines
        return code


def count(db: Path) -> tuple[int, int]:
    with duckdb.connect(str(db), read_only=True) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_every_produced_event_is_stored(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=3)
    n = produce(broker, name, events(3000))
    consumer = Consumer(broker, name, tmp_path / "t.duckdb", "--idle-exit", "3")
    assert consumer.wait() == 0, "".join(consumer.lines)
    assert count(tmp_path / "t.duckdb") == (n, n)


def test_sigkill_mid_stream_loses_nothing_and_stores_nothing_twice(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=3)
    n = produce(broker, name, events(40_000))
    db = tmp_path / "t.duckdb"
    rng = random.Random(5)
    seen = []
    # Small polls make many small transactions, so each kill lands between or inside one.
    small = {
        "TOKENTRAIL_KAFKA__MAX_POLL_RECORDS": "1200",
        "TOKENTRAIL_KAFKA__BATCH_RECORDS": "1200",
    }
    for _ in range(4):
        consumer = Consumer(broker, name, db, **small)
        consumer.wait_batches_stored(rng.randint(1, 4))
        time.sleep(rng.uniform(0.0, 0.3))  # between polls, or inside the next one
        consumer.process.send_signal(signal.SIGKILL)
        consumer.wait()
        seen.append(count(db)[0])
    final = Consumer(broker, name, db, "--idle-exit", "4", **small)
    assert final.wait(timeout=300) == 0, "".join(final.lines[-20:])
    assert count(db) == (n, n)
    # The kills really happened mid-stream (not all before or after the work).
    assert any(0 < stored < n for stored in seen), seen


def test_sigterm_finishes_the_batch_and_exits_cleanly(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=2)
    n = produce(broker, name, events(2000))
    db = tmp_path / "t.duckdb"
    consumer = Consumer(broker, name, db)
    consumer.wait_assigned()
    time.sleep(2)
    consumer.process.send_signal(signal.SIGTERM)
    assert consumer.wait() == 0, "".join(consumer.lines)
    assert count(db) == (n, n)
    assert "ingested 2,000 records" in "".join(consumer.lines)


def test_two_consumers_in_one_group_split_the_partitions(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=4)
    dbs = [tmp_path / "w1.duckdb", tmp_path / "w2.duckdb"]
    workers = [Consumer(broker, name, db, "--idle-exit", "12") for db in dbs]
    for worker in workers:
        worker.wait_assigned()
    time.sleep(6)  # the second join triggers a rebalance; let it settle
    n = produce(broker, name, events(8000))
    for worker in workers:
        assert worker.wait(timeout=180) == 0, "".join(worker.lines[-20:])
    counts = [count(db) for db in dbs]
    assert all(stored > 0 for stored, _ in counts), counts
    ids: set[str] = set()
    for db in dbs:
        with duckdb.connect(str(db), read_only=True) as conn:
            ids |= {r[0] for r in conn.execute("SELECT event_id FROM events").fetchall()}
    assert sum(stored for stored, _ in counts) == n
    assert len(ids) == n


def test_bad_messages_are_dead_lettered_with_topic_partition_offset(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=1)
    good = list(events(5, prefix="good"))
    oversize = encode(call(attributes={"pad": "x" * (1 << 20)}))
    bad: list[tuple[bytes, bytes]] = [
        (b"a", b""),
        (b"a", b"{truncated"),
        (b"a", b"\xff\xfe\x00binary"),
        (b"a", encode(call(ts="not a time"))),
        (b"a", oversize),
        (b"a", good[0][1]),  # a producer retry: skipped, not stored twice
    ]
    produce(broker, name, good[:3] + bad + good[3:])
    db = tmp_path / "t.duckdb"
    consumer = Consumer(broker, name, db, "--idle-exit", "3")
    assert consumer.wait() == 0
    assert count(db) == (5, 5)
    with duckdb.connect(str(db), read_only=True) as conn:
        letters: list[Any] = conn.execute(
            "SELECT origin_kind, origin_name, partition, position, reason FROM dead_letters"
            " ORDER BY position"
        ).fetchall()
    assert [(k, t, p, o) for k, t, p, o, _ in letters] == [
        ("kafka", name, 0, offset) for offset in (3, 4, 5, 6, 7)
    ]
    expected = [
        "empty message",
        "unparsable JSON",
        "unparsable JSON",
        "invalid event",
        f"event is {len(oversize)} bytes, over the 1048576-byte limit (raw kept: first 1048576",
    ]
    assert len(letters) == len(expected)
    for (*_, reason), start in zip(letters, expected, strict=True):
        assert reason.startswith(start)


def test_an_unreachable_broker_is_one_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [TOKENTRAIL, "ingest", "--kafka", f"127.0.0.1:{free_port()}", "--topic", "t",
         "--db", str(tmp_path / "t.duckdb")],
        capture_output=True, text=True, timeout=60, check=False,
        env=os.environ | {"TOKENTRAIL_KAFKA__CONNECT_TIMEOUT_S": "2"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("tokentrail: error: no Kafka broker reachable at 127.0.0.1:")
    assert result.stderr.count("\n") == 1


def test_a_poll_the_broker_interrupts_is_waited_out_not_fatal(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    # kafka-python can raise a retriable error out of `poll` when the broker drops the
    # connection mid-call (seen in tests/hardening/test_fault_broker_restart.py): the consumer
    # must wait for the broker, as it does when polls come back empty, not stop.
    name = topic(partitions=2)
    n = produce(broker, name, events(500))
    settings = Settings()
    with Store.open(tmp_path / "t.duckdb") as store, Pipeline(store, settings) as pipeline:
        source = KafkaIngest(
            pipeline, bootstrap=broker.bootstrap, topic=name, group=f"g-{name}",
            settings=settings.kafka,
        )  # fmt: skip
        real_poll = source.consumer.poll
        interrupted = []

        def poll(**kwargs: Any) -> Any:
            if len(interrupted) < 2:
                interrupted.append(kwargs)
                raise KafkaConnectionError("socket disconnected (injected)")
            return real_poll(**kwargs)

        source.consumer.poll = poll  # type: ignore[method-assign]
        source.run(idle_exit=3)
        assert len(interrupted) == 2
        assert store.stats()["events"] == n
