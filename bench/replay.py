"""Replay a JSON-lines file of events to a Kafka topic at a steady rate: a benchmark's producer.

Keyed by `identity`, as `tokentrail simulate --kafka` produces. Sent with librdkafka
(confluent-kafka), which spends ~5 µs of CPU per record here where kafka-python's producer
spends ~50: at 10k events/s that is 0.05 of a core instead of 0.5-0.7, so on this 2-core machine
the load generator no longer takes a third of the machine from the pipeline it loads (in
production the producers are other hosts). Prints one line at the end: records sent and rate.
SIGTERM stops it after the records already handed to librdkafka are delivered.

    .venv/bin/python bench/replay.py sim/events.jsonl --bootstrap 127.0.0.1:9092 \\
        --topic api-calls --rate 10000
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import msgspec
from confluent_kafka import KafkaError, Message, Producer

from tokentrail.simulate.output import Pacer


class _Keyed(msgspec.Struct):
    identity: str = ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("events", type=Path, help="JSON lines, one event each")
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, default=10_000.0, help="events/s")
    args = parser.parse_args()
    if args.rate <= 0:
        raise SystemExit(f"--rate must be positive, got {args.rate:g}")

    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "client.id": "tokentrail-bench-replay",
            "acks": "1",
            "linger.ms": 20,
            # Small batches: Tansu reports a partition's end offset as its last batch's base,
            # and the benchmark counts what was produced by end offsets.
            "batch.size": 64 * 1024,
            "enable.idempotence": False,
        }
    )
    key_of = msgspec.json.Decoder(_Keyed).decode
    pacer = Pacer(args.rate)
    sent = 0
    started = time.monotonic()
    with args.events.open("rb") as lines:
        for line in lines:
            if stopping or failures:
                break
            value = line.rstrip(b"\n")
            if not value:
                continue
            while True:
                try:
                    producer.produce(
                        args.topic, value, key_of(value).identity.encode(), on_delivery=delivered
                    )
                    break
                except BufferError:  # librdkafka's queue is full: let it send
                    producer.poll(0.05)
            sent += 1
            producer.poll(0)  # delivery reports
            pacer.tick()
    left = producer.flush(30)
    elapsed = time.monotonic() - started
    print(f"replayed {sent - left:,} events in {elapsed:.1f} s ({(sent - left) / elapsed:,.0f}/s)")
    if failures or left:
        print(f"error: {len(failures):,} refused, {left:,} undelivered: {failures[:1]}")
        sys.exit(1)


if __name__ == "__main__":
    main()
