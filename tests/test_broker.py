"""The embedded broker starts, carries messages through a consumer group, and always goes away."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tokentrail.broker import FAST_GROUP_SETTINGS, EmbeddedBroker, free_port
from tokentrail.errors import BrokerError

ROOT = Path(__file__).resolve().parents[1]


def is_running(pid: int) -> bool:
    """True if a process with this id exists (a reaped child no longer does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def consume(consumer: KafkaConsumer, count: int, timeout_s: float = 30.0) -> list[tuple[str, str]]:
    """Poll until *count* records arrived or the time is up; return them as (key, value)."""
    records: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records += [(r.key.decode(), r.value.decode()) for r in batch]
    return records


@pytest.mark.kafka
def test_start_answers_and_stop_leaves_no_process(tmp_path: Path) -> None:
    log = tmp_path / "tansu.log"
    broker = EmbeddedBroker(log_path=log)
    broker.start()
    pid = broker.pid
    assert pid is not None and is_running(pid)
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"

    broker.stop()
    broker.stop()

    assert broker.pid is None
    assert not is_running(pid)
    assert "listening on: tcp://127.0.0.1" in log.read_text()


@pytest.mark.kafka
def test_broker_is_stopped_when_the_interpreter_exits() -> None:
    script = (
        "from tokentrail.broker import EmbeddedBroker\n"
        "broker = EmbeddedBroker()\n"
        "broker.start()\n"
        "print(broker.pid)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert not is_running(int(done.stdout))


@pytest.mark.kafka
def test_keyed_messages_come_back_through_a_consumer_group(
    broker: EmbeddedBroker, topic: Callable[..., str]
) -> None:
    name = topic(partitions=3)
    sent = [(f"agent-{i % 7}", f"call-{i}") for i in range(100)]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for key, value in sent:
        producer.send(name, key=key.encode(), value=value.encode())
    producer.flush(timeout=10)
    producer.close()

    consumer = KafkaConsumer(
        name,
        bootstrap_servers=broker.bootstrap,
        group_id=f"{name}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **FAST_GROUP_SETTINGS,
    )
    try:
        received = consume(consumer, len(sent))
        consumer.commit()
        committed = {p: consumer.committed(TopicPartition(name, p)) for p in range(3)}
    finally:
        consumer.close()

    assert sorted(received) == sorted(sent)
    assert sum(offset or 0 for offset in committed.values()) == len(sent)


@pytest.mark.kafka
def test_a_new_group_member_resumes_from_committed_offsets(
    broker: EmbeddedBroker, topic: Callable[..., str]
) -> None:
    name = topic()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(10):
        producer.send(name, key=b"k", value=str(i).encode())
    producer.flush(timeout=10)
    settings = {
        "bootstrap_servers": broker.bootstrap,
        "group_id": f"{name}-group",
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        **FAST_GROUP_SETTINGS,
    }
    first = KafkaConsumer(name, **settings)
    try:
        assert len(consume(first, 10)) == 10
        first.commit()
    finally:
        first.close()
    for i in range(10, 15):
        producer.send(name, key=b"k", value=str(i).encode())
    producer.flush(timeout=10)
    producer.close()

    second = KafkaConsumer(name, **settings)
    try:
        received = consume(second, 5)
    finally:
        second.close()

    assert [value for _, value in received] == [str(i) for i in range(10, 15)]


@pytest.mark.kafka
def test_create_topic_twice_is_fine(broker: EmbeddedBroker, topic: Callable[..., str]) -> None:
    name = topic(partitions=2)

    broker.create_topic(name, partitions=2)


@pytest.mark.kafka
def test_a_port_in_use_is_one_clear_line(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match=f"port {broker.port} .* in use") as caught:
        EmbeddedBroker(port=broker.port).start()

    assert "\n" not in str(caught.value)


def test_a_missing_binary_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")

    with pytest.raises(BrokerError, match="not found") as caught:
        EmbeddedBroker(port=free_port()).start()

    assert "\n" not in str(caught.value)
