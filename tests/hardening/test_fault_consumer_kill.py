"""Exactly-once under SIGKILL at seeded random points, with detection on, while traffic flows.

tests/integration kills a consumer four times in a pre-produced 3-partition backlog and counts
events. Here, beyond that: the producer is still sending while the consumer dies; the kill points
are drawn from a seed across the whole life of a consumer (while it joins the group, right after
its assignment, deep in the stream where most of the time goes to detection passes); the topic has
4 partitions; and not only the events but the alerts must come out exactly as a consumer that is
never killed gives them from the same topic, so no detection pass is lost or run twice by a kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from kafka import KafkaProducer

from tokentrail.broker import EmbeddedBroker
from tokentrail.simulate import World, WorldSpec, write_world
from tokentrail.store.alerts import superseded_alerts

pytestmark = pytest.mark.kafka

TOKENTRAIL = str(Path(sys.executable).parent / "tokentrail")
ROUNDS = 6
# Small polls: many small transactions and detection passes, so a kill lands inside one.
SMALL_POLLS = {
    "TOKENTRAIL_KAFKA__MAX_POLL_RECORDS": "800",
    "TOKENTRAIL_KAFKA__BATCH_RECORDS": "800",
}


class Consumer:
    """A `tokentrail -v ingest --kafka` subprocess; its log is watched for the assignment."""

    def __init__(self, command: list[str]) -> None:
        self.lines: list[str] = []
        self.assigned = threading.Event()
        self.batches_stored = 0
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | SMALL_POLLS,
        )
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "partitions assigned: [" in line and "partitions assigned: []" not in line:
                self.assigned.set()
            if "stored a batch of" in line:
                self.batches_stored += 1

    def wait_batches_stored(self, n: int, timeout: float = 180) -> None:
        """Kill points that follow the work done, not the clock: mid-stream on any machine."""
        deadline = time.monotonic() + timeout
        while self.batches_stored < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.batches_stored >= n, self.tail()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.wait(60)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._watcher.join(10)
        return code

    def tail(self) -> str:
        return "".join(self.lines[-30:])


def stored(db: Path) -> tuple[int, int]:
    if not db.exists():
        return 0, 0
    with duckdb.connect(str(db), read_only=True) as conn:
        # Killed while creating the file: its first migration was not committed yet.
        if not conn.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = 'events'").fetchall():
            return 0, 0
        row = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def alerts(db: Path) -> list[tuple[Any, ...]]:
    """The alerts as a detection pass writes them (not wall-clock columns, not the evidence
    JSON whose key order is not part of the contract)."""
    with duckdb.connect(str(db), read_only=True) as conn:
        superseded = superseded_alerts(conn)  # closed, in place of another
        rows = conn.execute(
            "SELECT alert_id, detector, dedupe_key, severity, token_id, identity, first_seen,"
            " last_seen, first_event_id, count, event_ids FROM alerts ORDER BY alert_id"
        ).fetchall()
    return [r for r in rows if r[0] not in superseded]


def test_sigkill_at_random_points_keeps_events_and_alerts_exactly_once(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    world = tmp_path / "world"
    write_world(World(WorldSpec(seed=23, days=1, scale=0.3)), world)
    lines = (world / "events.jsonl").read_bytes().splitlines()
    catalog = ["--catalog", str(world / "catalog.toml")]

    name = topic(partitions=4)
    rng = random.Random(20260302)
    # Keyed by identity (as producers do), so per-identity order holds across partitions.
    keyed = [(msgspec.json.decode(line)["identity"].encode(), line) for line in lines]
    chunks: list[list[tuple[bytes, bytes]]] = []
    while keyed:
        size = rng.randrange(500, 4000)
        chunks.append(keyed[:size])
        keyed = keyed[size:]
    produced = threading.Event()

    def produce() -> None:
        pauses = random.Random(7)  # its own generator: the kill points stay reproducible
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, acks="all")
        try:
            for chunk in chunks:
                for key, value in chunk:
                    producer.send(name, key=key, value=value)
                producer.flush(timeout=60)
                # Spread the traffic over the first rounds: kills land while it arrives.
                if produced.wait(pauses.uniform(0.1, 0.6)):
                    return
        finally:
            producer.close()
            produced.set()

    sender = threading.Thread(target=produce, daemon=True)
    sender.start()

    db = tmp_path / "killed.duckdb"
    command = [TOKENTRAIL, "-v", "ingest", "--kafka", broker.bootstrap, "--topic", name,
               "--group", f"g-{name}", "--db", str(db), *catalog]  # fmt: skip
    history: list[tuple[str, float, int]] = []
    try:
        for round_ in range(ROUNDS):
            consumer = Consumer(command)
            # Even rounds may die while still joining the group; odd ones after the assignment,
            # some at once, some after several seconds of consuming and detecting.
            if round_ % 2 == 0:
                point, delay = "joining", rng.uniform(0.0, 2.5)
            else:
                polls = rng.randint(1, 3)
                consumer.wait_batches_stored(polls)
                point = f"after {polls} stored batches"
                delay = rng.choice([0.0, rng.uniform(0.05, 0.5), 2.0])
            time.sleep(delay)
            consumer.kill()
            history.append((point, round(delay, 2), stored(db)[0]))
            assert stored(db)[0] == stored(db)[1], history
        assert produced.wait(300), "the producer did not finish"
        final = Consumer([*command, "--idle-exit", "5"])
        assert final.wait(timeout=600) == 0, final.tail()
    finally:
        produced.set()
        sender.join(60)

    assert stored(db) == (len(lines), len(lines)), history
    # The kills really fell at different points of the work, not all before or after it.
    counts = [n for _, _, n in history]
    assert any(0 < n < len(lines) for n in counts), history
    assert len(set(counts)) > 2, history
    # Kills must not change what detection concluded: the same topic read by a consumer that
    # is never killed gives the same alerts.
    clean = tmp_path / "clean.duckdb"
    run = [TOKENTRAIL, "-v", "ingest", "--kafka", broker.bootstrap, "--topic", name,
           "--group", f"clean-{name}", "--db", str(clean), *catalog,
           "--idle-exit", "5"]  # fmt: skip
    assert Consumer(run).wait(timeout=600) == 0
    assert stored(clean) == (len(lines), len(lines))
    expected = alerts(clean)
    assert expected, "the simulated world should raise alerts"
    got = alerts(db)
    # The topic is keyed by identity: a token used by several identities spans partitions, and
    # which of its uses a consumer reads first depends on how far each partition was read.
    # First-use findings are decided by event time (docs/RELIABILITY.md 7.1), so every alert,
    # those on such tokens too, must come out the same.
    assert got == expected, history
