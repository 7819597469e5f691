"""The Kafka consumer in a process of its own (`tokentrail.ingest.reader`), against the real
broker: what it reads is stored once, a stop stores what was read, and a reader that dies or
fails is one clear error, never a hang."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_kafka_ingest import TOKENTRAIL, events, produce

from tokentrail.batch import Batch
from tokentrail.broker import EmbeddedBroker, free_port
from tokentrail.config import Settings
from tokentrail.errors import SourceError
from tokentrail.ingest.pipeline import Pipeline
from tokentrail.ingest.reader import KafkaReader
from tokentrail.store import Store

pytestmark = pytest.mark.kafka


SMALL_BATCHES = Settings.model_validate({"kafka": {"batch_records": 100, "max_poll_records": 100}})


@contextlib.contextmanager
def reading(
    broker: EmbeddedBroker, topic: str, db: Path, settings: Settings
) -> Iterator[tuple[Store, Pipeline, KafkaReader]]:
    """A store, its pipeline and a reader of `topic` feeding it."""
    with Store.open(db) as store, Pipeline(store, settings) as pipeline:
        yield (
            store,
            pipeline,
            KafkaReader(pipeline, bootstrap=broker.bootstrap, topic=topic, group=f"g-{topic}"),
        )


def test_every_record_is_stored_once_and_counted(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=2)
    n = produce(broker, name, events(700))
    batches: list[int] = []
    with reading(broker, name, tmp_path / "t.duckdb", SMALL_BATCHES) as (store, pipeline, reader):
        reader.run(idle_exit=3, on_batch=lambda batch: batches.append(len(batch)))
        assert store.stats()["events"] == n
        assert sum(store.stored_offsets(topic=name).values()) == n
        assert pipeline.totals.read == pipeline.totals.stored == n
        assert len(batches) >= 7 and sum(batches) == n  # batches of at most 100 records
        assert reader.write_seconds.lines("w", "w")[-1] == f"w_count {len(batches)}"


def test_a_stop_stores_what_was_read_with_its_offsets(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=3)
    produce(broker, name, events(3000))
    with reading(broker, name, tmp_path / "t.duckdb", SMALL_BATCHES) as (store, _, reader):

        def stop_after_first(batch: Batch) -> None:
            reader.stop_requested.set()

        reader.run(on_batch=stop_after_first)  # no idle exit: only the stop ends it
        stored = store.stats()["events"]
        assert 0 < stored < 3000
        assert sum(store.stored_offsets(topic=name).values()) == stored


def test_a_reader_that_dies_is_one_clear_error(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=1)
    produce(broker, name, events(10))
    with reading(broker, name, tmp_path / "t.duckdb", Settings()) as (_, _, reader):

        def kill_the_child() -> None:
            while reader.pid is None:
                time.sleep(0.01)
            os.kill(reader.pid, signal.SIGKILL)

        threading.Thread(target=kill_the_child, daemon=True).start()
        with pytest.raises(
            SourceError, match=r"reader process exited unexpectedly \(exit code -9\)"
        ):
            reader.run()  # no idle exit: without the error this would never return


def test_the_childs_error_comes_back_as_its_own(tmp_path: Path) -> None:
    settings = Settings.model_validate({"kafka": {"connect_timeout_s": 1}})
    nobody = f"127.0.0.1:{free_port()}"
    with Store.open(tmp_path / "t.duckdb") as store, Pipeline(store, settings) as pipeline:
        reader = KafkaReader(pipeline, bootstrap=nobody, topic="t", group="g")
        with pytest.raises(SourceError, match=f"^no Kafka broker reachable at {nobody} after 1 s$"):
            reader.run(idle_exit=1)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_the_reader_dies_with_its_parent(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=1)
    command = [TOKENTRAIL, "-v", "ingest", "--kafka", broker.bootstrap, "--topic", name,
               "--group", f"g-{name}", "--db", str(tmp_path / "t.duckdb")]  # fmt: skip
    parent = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert parent.stderr is not None
        for line in parent.stderr:  # the child logs to the same stderr
            if "partitions assigned: [0]" in line:
                break
        # Drained, so logging never blocks; then past the start, where the child asks the
        # parent for offsets (and would find it gone): idle, it only polls the broker.
        threading.Thread(target=parent.stderr.read, daemon=True).start()
        time.sleep(3)
        [child] = children(parent.pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # Gone, or a zombie until the test process (its new parent's descendant) reaps it.
        alive = Path(f"/proc/{child}/stat")
        assert not alive.exists() or alive.read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    finally:
        parent.kill()
