"""The broker stops under a running `tokentrail serve --kafka` and comes back on the same port.

The embedded Tansu keeps its log in memory (its file-less builds offer only memory and S3), so a
restarted broker is empty: the topic is recreated and the second half of the traffic produced
into it, with offsets starting again at 0, below the ones the store holds. That is the
production case of a log lost or truncated under a consumer. Meanwhile `readyz` must say the
consumer is disconnected (503) without the process crashing or spinning; afterwards the consumer
must reconnect by itself, notice that its offsets belong to a log that is gone, and store the
second half too: every event once, none skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import httpx
import pytest
from factories import call, encode
from kafka import KafkaProducer

from tokentrail.api.auth import Role, create_key
from tokentrail.broker import EmbeddedBroker, free_port
from tokentrail.store import Store

pytestmark = pytest.mark.kafka

TOKENTRAIL = str(Path(sys.executable).parent / "tokentrail")
TOPIC = "calls"
PARTITIONS = 3


def produce(bootstrap: str, prefix: str, n: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    for i in range(n):
        identity = f"svc-{i % 11}"
        event = call(event_id=f"{prefix}-{i}", identity=identity, token_id=f"tok-{i % 5}")
        producer.send(TOPIC, key=identity.encode(), value=encode(event))
    producer.flush(timeout=60)
    producer.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Serve:
    """`tokentrail serve --kafka` as a subprocess, polled over HTTP."""

    def __init__(self, db: Path, bootstrap: str) -> None:
        with Store.open(db) as store:
            self.key = create_key(store.conn, name="test", role=Role.viewer).key
        self.base = f"http://127.0.0.1:{free_port()}"
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [TOKENTRAIL, "-v", "serve", "--db", str(db), "--port", self.base.rsplit(":", 1)[1],
             "--kafka", bootstrap, "--topic", TOPIC, "--group", "restart"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            # A restarted broker is tried again within a second, not after kafka-python's 30 s.
            env=os.environ | {"TOKENTRAIL_KAFKA__RECONNECT_BACKOFF_MAX_MS": "1000"},
        )  # fmt: skip
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def ready(self) -> tuple[int, dict[str, object]]:
        answer = httpx.get(f"{self.base}/readyz", timeout=10)
        body: dict[str, object] = answer.json()
        return answer.status_code, body

    def stored(self) -> int:
        metrics = httpx.get(
            f"{self.base}/metrics", headers={"Authorization": f"Bearer {self.key}"}, timeout=10
        ).text
        for line in metrics.splitlines():
            if line.startswith("tokentrail_events_stored "):
                return int(float(line.split()[1]))
        raise AssertionError(metrics)

    def until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "serve died:\n" + self.tail()
            try:
                if check():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{what} within {timeout:g} s:\n{self.tail()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._watcher.join(10)
        return code

    def tail(self) -> str:
        return "".join(self.lines[-40:])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def broker(port: int) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own (it is stopped and started again), on a fixed port."""
    with EmbeddedBroker(port=port) as running:
        running.create_topic(TOPIC, partitions=PARTITIONS)
        yield running


def events(db: Path) -> tuple[int, int, int]:
    with duckdb.connect(str(db), read_only=True) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT event_id),"
            " count(*) FILTER (WHERE event_id LIKE 'second-%') FROM events"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_the_consumer_waits_for_a_restarted_broker_and_reads_its_new_log(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    first, second = 3000, 1200  # fewer than the first: new offsets stay below the stored ones
    db = tmp_path / "t.duckdb"
    produce(broker.bootstrap, "first", first)
    serve = Serve(db, broker.bootstrap)
    try:
        serve.until(lambda: serve.stored() == first, 180, "the first half was not stored")
        assert serve.ready()[0] == 200

        broker.stop()
        serve.until(lambda: serve.ready()[0] == 503, 60, "readyz did not notice the broker")
        _, body = serve.ready()
        assert body["consumer"] == "disconnected", body
        assert f"no Kafka broker reachable at {broker.bootstrap}" in str(body["detail"])
        # Waiting is not spinning: over a few seconds of outage, well under a core's worth.
        before, since = cpu_seconds(serve.process.pid), time.monotonic()
        time.sleep(4)
        busy = (cpu_seconds(serve.process.pid) - before) / (time.monotonic() - since)
        assert busy < 0.5, f"{busy:.0%} of a core while waiting for the broker"
        assert serve.stored() == first  # the API still answers from the store

        broker.start()  # same port, empty: the memory log is gone
        broker.create_topic(TOPIC, partitions=PARTITIONS)
        produce(broker.bootstrap, "second", second)
        serve.until(lambda: serve.ready()[0] == 200, 120, "readyz did not recover")
        serve.until(lambda: serve.stored() == first + second, 180, "the second half was lost")
        assert "the topic was recreated" in "".join(serve.lines) or "past the log" in "".join(
            serve.lines
        ), serve.tail()
    finally:
        code = serve.stop()
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for its caller.
    assert code in (0, -signal.SIGTERM), serve.tail()
    assert "IO loop exited cleanly" in "".join(serve.lines), serve.tail()
    assert events(db) == (first + second, first + second, second)


def test_stored_offsets_past_a_lost_log_restart_the_partition(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A consumer started after the loss finds offsets in its store beyond the new log's end:
    it reads the partitions again from the beginning, with a warning, instead of waiting for
    the log to grow past the stored offsets and skipping everything below them."""
    db = tmp_path / "t.duckdb"
    produce(broker.bootstrap, "first", 2000)
    ingest = [TOKENTRAIL, "-v", "ingest", "--kafka", broker.bootstrap, "--topic", TOPIC,
              "--group", "restart", "--db", str(db), "--idle-exit", "8", "--no-detect"]  # fmt: skip
    done = subprocess.run(ingest, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    broker.stop()
    broker.start()
    broker.create_topic(TOPIC, partitions=PARTITIONS)
    produce(broker.bootstrap, "second", 600)
    done = subprocess.run(ingest, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "past the log's end" in done.stderr, done.stderr[-3000:]
    assert events(db) == (2600, 2600, 600)
