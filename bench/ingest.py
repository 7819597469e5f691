"""Ingest throughput and memory, measured side by side with the practical limits in one run.

(a) file ingest (validate + dedupe + derived tables + one transaction per batch) against DuckDB's
    own `read_json` loading the same file with no validation at all;
(b) Kafka end to end (consume + the same pipeline) against a bare kafka-python consume loop
    reading the same topic;
(c) peak RSS of a whole `tokentrail ingest` process as the input grows;
(d) adapters: CloudTrail, Zipkin and OTLP files (the real fixtures repeated, ids rewritten per
    copy) against the same events given as native contract events;
(e) the cost floor: each step the pipeline must take, timed alone on the same events (validation;
    the store's writes at the default batch size and with the whole input as one batch; a bare
    kafka-python loop), and the best rate their CPU allows when spread perfectly over every core,
    next to the targets of (a) and (b).

    .venv/bin/python bench/ingest.py                  # 300k events, RSS at 100k and 1M
    .venv/bin/python bench/ingest.py --skip files,kafka,adapters --rss 100000,1000000,5000000
    .venv/bin/python bench/ingest.py --skip files,kafka,rss,adapters --floor   # (e) alone

Medians of --repeat runs are printed; the machine is shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import duckdb
import msgspec
from kafka import KafkaConsumer, KafkaProducer

from tokentrail.batch import Batch
from tokentrail.broker import FAST_GROUP_SETTINGS, EmbeddedBroker
from tokentrail.config import Settings
from tokentrail.ingest.adapters import Mapped
from tokentrail.ingest.files import RecordFile
from tokentrail.ingest.formats import adapt_file, adapt_records
from tokentrail.ingest.pipeline import Pipeline, Validator
from tokentrail.ingest.reader import KafkaReader
from tokentrail.ingest.replay import ingest_file
from tokentrail.store import Store

T0_MS = 1_772_442_000_000
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SERVICES = [f"svc-{i}" for i in range(60)]
OPERATIONS = ["GET /v1/items", "POST /v1/items", "GET /v1/items/{id}", "DELETE /v1/items/{id}"]


def events(n: int, seed: int = 1) -> Iterator[bytes]:
    """~570-byte events: 400 workloads, each with a handful of tokens and its own few targets."""
    rng = random.Random(seed)
    targets = [rng.sample(SERVICES, rng.randrange(2, 7)) for _ in range(400)]
    for i in range(n):
        identity = rng.randrange(400)
        source = SERVICES[identity % len(SERVICES)]
        event = {
            "event_id": f"bench-{seed}-{i:09d}",
            "ts": T0_MS + i * 7,
            # Tokens rotate: a new one per workload every ~50k events.
            "token_id": f"tok-{identity}-{i // 50_000}-{rng.randrange(2)}",
            "identity": f"spiffe://prod/ns/team-{identity % 20}/sa/workload-{identity}",
            "source": source,
            "target": rng.choice(targets[identity]),
            "operation": rng.choice(OPERATIONS),
            "scope": f"items:{rng.choice(['read', 'write'])}",
            "outcome": "denied" if rng.random() < 0.01 else "success",
            "status": 200,
            "trace_id": f"{rng.getrandbits(128):032x}",
            "span_id": f"{rng.getrandbits(64):016x}",
            "parent_span_id": f"{rng.getrandbits(64):016x}",
            "environment": "prod",
            "identity_kind": "service",
            "resource": f"items/{rng.randrange(100_000)}",
            "source_ip": f"10.0.{identity % 250}.{rng.randrange(250)}",
            "user_agent": "python-httpx/0.27.0",
            "bytes_out": rng.randrange(100, 50_000),
            "attributes": {"http.route": "/v1/items", "region": "eu-west-1"},
        }
        yield msgspec.json.encode(event)


def write_file(path: Path, n: int) -> float:
    with path.open("wb", buffering=1 << 20) as out:
        for raw in events(n):
            out.write(raw + b"\n")
    return path.stat().st_size / n


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` runs."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def tokentrail_file(path: Path, db: Path, fmt: str = "events") -> int:
    """Events stored from `path` read as `fmt`, by a fresh store and pipeline (no hooks)."""
    db.unlink(missing_ok=True)
    settings = Settings()
    duck = settings.duckdb
    store = Store.open(db, memory_limit=duck.memory_limit, temp_directory=duck.temp_directory)
    with store, Pipeline(store, settings) as pipeline:
        source = RecordFile(str(path))
        ingest_file(pipeline, source, fmt=fmt, batch_size=settings.file_batch_size)
        assert pipeline.totals.stored > 0
        return pipeline.totals.stored


def duckdb_read_json(path: Path, db: Path) -> None:
    db.unlink(missing_ok=True)
    with duckdb.connect(str(db)) as conn:
        conn.execute(
            "CREATE TABLE raw AS SELECT * FROM read_json(?, format = 'newline_delimited')",
            [str(path)],
        )


def bench_files(n: int, repeat: int, work: Path) -> None:
    path = work / "events.jsonl"
    size = write_file(path, n)
    ours = timed(lambda: tokentrail_file(path, work / "tt.duckdb"), repeat)
    theirs = timed(lambda: duckdb_read_json(path, work / "raw.duckdb"), repeat)
    print(f"(a) file ingest, {n:,} events of {size:.0f} bytes (median of {repeat})")
    print(f"    tokentrail ingest      {n / ours:>10,.0f} events/s")
    print(f"    duckdb read_json       {n / theirs:>10,.0f} events/s")
    print(f"    ratio                  {theirs / ours:>10.2f}x of DuckDB's raw load")


def produce(broker: EmbeddedBroker, topic: str, n: int, seed: int) -> None:
    """`n` bench events on a new 3-partition topic, keyed by workload."""
    broker.create_topic(topic, partitions=3)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=1 << 20)
    for i, raw in enumerate(events(n, seed=seed)):
        producer.send(topic, key=str(i % 400).encode(), value=raw)
    producer.flush()
    producer.close()


def bench_kafka(n: int, repeat: int, work: Path) -> None:
    with EmbeddedBroker() as broker:
        ours_runs, bare_runs = [], []
        for run in range(repeat):
            topic = f"bench-{run}"
            produce(broker, topic, n, seed=run + 10)
            bare_runs.append(bare_consume(broker.bootstrap, topic, n).rate)
            ours_runs.append(tokentrail_consume(broker.bootstrap, topic, n, work / f"k{run}.db"))
    ours, bare = statistics.median(ours_runs), statistics.median(bare_runs)
    print(f"(b) Kafka end to end, {n:,} events, 3 partitions (median of {repeat})")
    print(f"    tokentrail ingest      {ours:>10,.0f} events/s")
    print(f"    bare kafka-python loop {bare:>10,.0f} msgs/s")
    print(f"    ratio                  {ours / bare:>10.2f}x of the bare consume loop")


class Cost(NamedTuple):
    """What a step cost per item: wall clock and CPU (this process, every thread), in µs."""

    wall_us: float
    cpu_us: float

    @property
    def rate(self) -> float:
        return 1e6 / self.wall_us


class Clock:
    """Wall and CPU time of this process (all its threads, DuckDB's included) since start."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), _cpu()

    def cost(self, items: int) -> Cost:
        wall, cpu = time.perf_counter() - self.wall, _cpu() - self.cpu
        return Cost(wall / items * 1e6, cpu / items * 1e6)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_consume(bootstrap: str, topic: str, n: int) -> Cost:
    """Cost per record after the first poll, reading values and doing nothing else."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=20_000,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        **FAST_GROUP_SETTINGS,
    )
    seen, first, clock = 0, 0, None
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            seen += sum(len(r.value) > 0 for r in records)
        if seen and clock is None:
            # The clock starts once the group has joined and the first poll is in.
            first, clock = seen, Clock()
    assert clock is not None and seen == n, (seen, n)
    cost = clock.cost(n - first)
    consumer.close()
    return cost


def tokentrail_consume(bootstrap: str, topic: str, n: int, db: Path) -> float:
    """Events/s stored after the first batch, through the real pipeline."""
    settings = Settings()
    with Store.open(db) as store:
        pipeline = Pipeline(store, settings)
        # As `tokentrail ingest --kafka` reads: kafka-python in a process of its own.
        source = KafkaReader(pipeline, bootstrap=bootstrap, topic=topic, group=f"tt-{topic}")
        first, started = 0, 0.0

        def on_batch(batch: Batch) -> None:
            nonlocal first, started
            if not started:
                first, started = pipeline.totals.stored, time.perf_counter()
            if pipeline.totals.stored >= n:
                source.stop_requested.set()

        source.run(idle_exit=30, on_batch=on_batch)
        elapsed = time.perf_counter() - started
        assert store.stats()["events"] == n
    return (n - first) / elapsed


# Run in a fresh interpreter so that RUSAGE_CHILDREN sees only the ingest process.
_PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def bench_rss(sizes: list[int], work: Path) -> None:
    print("(c) peak RSS of a `tokentrail ingest FILE` process (as installed: no pandas)")
    tokentrail = [sys.executable, str(Path(__file__).parent / "as_installed.py")]
    for n in sizes:
        path = work / f"rss-{n}.jsonl"
        write_file(path, n)
        db = work / f"rss-{n}.duckdb"
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, *tokentrail, "ingest", str(path), "--db", str(db)],
            check=True,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - started
        peak_mb = int(out.stdout.split()[-1]) / 1024
        print(
            f"    {n:>10,} events  peak RSS {peak_mb:>6,.0f} MB"
            f"  ({n / elapsed:,.0f} events/s, process start included;"
            f" duckdb.memory_limit {Settings().duckdb.memory_limit})"
        )
        path.unlink()
        db.unlink()


def bench_floor(n: int, kafka_n: int, work: Path) -> None:
    """(e) Each step alone on the same events, then the best rates their costs allow."""
    settings = Settings()
    cores = os.cpu_count() or 1
    path = work / "floor.jsonl"
    size = write_file(path, n)
    clock = Clock()
    duckdb_read_json(path, work / "raw.duckdb")
    reference = clock.cost(n)
    batched = Store.open(
        work / "floor-batched.duckdb",
        memory_limit=settings.duckdb.memory_limit,
        temp_directory=settings.duckdb.temp_directory,
    )
    whole = Store.open(work / "floor-whole.duckdb")
    with batched, whole:
        batch_size = settings.file_batch_size
        clock = Clock()
        batches = validated(Validator(settings, salt=batched.salt()), path, batch_size)
        validation = clock.cost(n)
        stored = writes(batched, batches, n)
        [one] = validated(Validator(settings, salt=whole.salt()), path, n)
        stored_whole = writes(whole, [one], n)
    with EmbeddedBroker() as broker:
        produce(broker, "floor", kafka_n, seed=20)
        bare = bare_consume(broker.bootstrap, "floor", kafka_n)

    limit = settings.duckdb.memory_limit or "no limit"
    print(f"(e) cost floor: {n:,} events of {size:.0f} bytes, each step alone, µs per event")
    steps = [
        ("duckdb read_json (the reference)", reference),
        ("reading and validation (Python, one thread)", validation),
        (f"store writes, {batch_size:,}-event batches, {limit}", stored),
        (f"store writes, one {n:,}-event batch, no limit", stored_whole),
        (f"bare kafka-python loop ({kafka_n:,} records)", bare),
    ]
    for label, cost in steps:
        print(f"    {label:<52} wall {cost.wall_us:6.1f}  cpu {cost.cpu_us:6.1f}")
    print(f"  best rates: CPU spread perfectly over {cores} cores, one batch written at a time")
    file_runs = ((f"{batch_size:,}-event batches", stored), ("one batch", stored_whole))
    for label, store_cost in file_runs:
        best = min(cores / (validation.cpu_us + store_cost.cpu_us), 1 / store_cost.wall_us) * 1e6
        print(
            f"    file, {label:<24} {best:>9,.0f} events/s = {best / reference.rate:.2f}x"
            " of read_json (target: >= 100,000 events/s and >= 0.5x)"
        )
    # The Kafka reader polls and validates on one thread of its own process; its batches
    # (`kafka.batch_records`) are the file's size by default, so the writes above stand in.
    reader_us = bare.cpu_us + validation.cpu_us
    total_us = reader_us + stored.cpu_us
    best = min(cores / total_us, 1 / reader_us, 1 / stored.wall_us) * 1e6
    print(
        f"    Kafka, {batch_size:,}-event batches {best:>9,.0f} events/s = {best / bare.rate:.2f}x"
        " of the bare loop (target: >= 0.7x; the broker's own CPU left out)"
    )


def validated(validator: Validator, path: Path, batch_size: int) -> list[Batch]:
    """Every record of `path` validated into batches of `batch_size`, held for `writes`."""
    batches, batch = [], Batch("file", str(path))
    for position, raw in RecordFile(str(path)).records():
        validator.feed(batch, raw, None, position)
        if len(batch) >= batch_size:
            batches.append(batch)
            batch = Batch("file", str(path))
    if len(batch):
        batches.append(batch)
    return batches


def writes(store: Store, batches: list[Batch], n: int) -> Cost:
    """What storing `batches` (`n` events, validated already) costs per event."""
    clock = Clock()
    stored = sum(store.write_batch(batch).stored for batch in batches)
    cost = clock.cost(n)
    assert stored == n, (stored, n)
    return cost


def fixture_records(fmt: str) -> list[bytes]:
    """The real records of tests/fixtures/FMT: one CloudTrail record, Zipkin array, OTLP request."""
    records: list[bytes] = []
    for path in sorted((FIXTURES / fmt).iterdir()):
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        if fmt == "cloudtrail":
            records.extend(msgspec.json.encode(r) for r in msgspec.json.decode(raw))
        else:
            records.append(msgspec.json.encode(msgspec.json.decode(raw)))
    return records


def rewrite(node: object, key: str, new: Callable[[str], str]) -> None:
    """Replace, in place, every string value of `key` anywhere in `node` by `new(value)`."""
    if isinstance(node, dict):
        for k, value in node.items():
            if k == key and isinstance(value, str):
                node[k] = new(value)
            else:
                rewrite(value, key, new)
    elif isinstance(node, list):
        for value in node:
            rewrite(value, key, new)


def renamer(fmt: str, copy: int, numbers: Iterator[int]) -> tuple[str, Callable[[str], str]]:
    """The id key of `fmt` and how copy number `copy` rewrites it."""
    if fmt == "cloudtrail":
        return "eventID", lambda value: f"{value}-{copy:06d}"
    traces: dict[str, str] = {}  # one fresh id per trace of this copy, of the same length

    def new(value: str) -> str:
        if value.lower() not in traces:
            traces[value.lower()] = f"{next(numbers):0{len(value)}x}"
        return traces[value.lower()]

    return "traceId", new


def write_adapted_file(path: Path, fmt: str, n: int) -> int:
    """About `n` events of `fmt`: copies of the fixture records, each copy with ids of its own.

    CloudTrail: `eventID` gets the copy number; Zipkin and OTLP: each trace gets a fresh
    `traceId` (of the same length) per copy. Returns the number of copies.
    """
    base = fixture_records(fmt)
    per_copy = sum(isinstance(i, Mapped) for i in adapt_records(base, fmt, Settings().adapters))
    copies = math.ceil(n / per_copy)
    numbers = itertools.count(1)
    with path.open("wb", buffering=1 << 20) as out:
        for copy in range(copies):
            key, new = renamer(fmt, copy, numbers)
            for raw in base:
                record = msgspec.json.decode(raw)
                rewrite(record, key, new)
                out.write(msgspec.json.encode(record) + b"\n")
    return copies


def write_native_file(path: Path, adapted: Path, fmt: str) -> int:
    """The events the adapter makes of `adapted`, as native contract JSON lines; their number."""
    _, items = adapt_file(adapted, fmt, Settings().adapters)
    written = 0
    with path.open("wb", buffering=1 << 20) as out:
        for item in items:
            if isinstance(item, Mapped):
                out.write(item.event + b"\n")
                written += 1
    return written


def bench_adapters(n: int, repeat: int, work: Path) -> None:
    print(
        f"(d) adapters: ~{n:,} fixture events per format, --no-detect"
        f" (median of {repeat}, adapted and native runs alternating)"
    )
    for fmt in ("cloudtrail", "zipkin", "otlp"):
        bench_adapter(fmt, n, repeat, work)


def bench_adapter(fmt: str, n: int, repeat: int, work: Path) -> None:
    adapted, native = work / f"{fmt}.jsonl", work / f"{fmt}-native.jsonl"
    copies = write_adapted_file(adapted, fmt, n)
    count = write_native_file(native, adapted, fmt)
    db = work / f"{fmt}.duckdb"
    stored: dict[str, int] = {}

    def run(path: Path, as_fmt: str) -> None:
        stored[as_fmt] = tokentrail_file(path, db, as_fmt)

    def measured(path: Path, as_fmt: str) -> tuple[float, float]:
        """(wall, CPU) seconds of one run; CPU of every thread, DuckDB's included."""
        cpu = time.process_time()
        wall = timed(lambda: run(path, as_fmt), 1)
        return wall, time.process_time() - cpu

    # Adapted and native runs alternate, so that a change in the load of a shared machine hits
    # both sides rather than one; the ratio is the median of each pair's. CPU time, which
    # waiting for a core does not add to, is the steadier figure there.
    pairs = [(measured(adapted, fmt), measured(native, "events")) for _ in range(repeat)]
    ours = statistics.median(a for (a, _), _ in pairs)
    theirs = statistics.median(t for _, (t, _) in pairs)
    ratio = statistics.median(t / a for (a, _), (t, _) in pairs)
    cpu_ratio = statistics.median(t / a for (_, a), (_, t) in pairs)
    cpu_us = statistics.median(a for (_, a), _ in pairs) / count * 1e6
    native_cpu_us = statistics.median(t for _, (_, t) in pairs) / count * 1e6
    assert stored[fmt] == stored["events"], stored
    print(
        f"    {fmt:<10} {count:>8,} events ({copies:,} copies of the fixtures,"
        f" {adapted.stat().st_size / count:,.0f} bytes/event in, {stored[fmt]:,} stored)"
    )
    print(f"      adapted            {count / ours:>10,.0f} events/s")
    print(f"      native events      {count / theirs:>10,.0f} events/s")
    print(f"      ratio              {ratio:>10.2f}x of the native rate (adapted / native)")
    print(
        f"      CPU                {cpu_us:>10,.0f} µs/event adapted, {native_cpu_us:,.0f} native:"
        f" {cpu_ratio:.2f}x"
    )
    for path in (adapted, native, db):
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--kafka-events", type=int, default=200_000)
    parser.add_argument("--adapter-events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss", default="100000,1000000", help="sizes, comma-separated")
    parser.add_argument("--skip", default="", help="parts to skip: files,kafka,rss,adapters")
    parser.add_argument("--floor", action="store_true", help="run (e), the cost floor, too")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    batch_records = Settings().kafka.batch_records
    if "kafka" not in skip and args.kafka_events <= 2 * batch_records:
        # (b) is timed from the first stored batch: with fewer, it times one batch or none.
        parser.error(f"--kafka-events must be over {2 * batch_records:,} (two Kafka batches)")
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp:
        work = Path(tmp)
        if "files" not in skip:
            bench_files(args.events, args.repeat, work)
        if "kafka" not in skip:
            bench_kafka(args.kafka_events, args.repeat, work)
        if "rss" not in skip:
            bench_rss(sorted(int(s) for s in args.rss.split(",")), work)
        if "adapters" not in skip:
            bench_adapters(args.adapter_events, args.repeat, work)
        if args.floor:
            bench_floor(args.events, args.kafka_events, work)


if __name__ == "__main__":
    main()
