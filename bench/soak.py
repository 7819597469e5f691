"""Sustained ingest through Kafka with detection on: is memory flat, is lag bounded, how fast
does the API answer meanwhile?

A real `tokentrail serve --kafka` process (consumer, detectors and API in one process, as in
production) reads a 3-partition topic of the embedded broker. First the consumer's ceiling is
measured: events are produced flat out for `--calibrate` seconds and the stored rate is taken.
The soak then produces at `--load` (default 80 %) of that ceiling for `--minutes`, and every
`--every` seconds samples

- the RSS of the serve process (from /proc),
- the lag: events produced and acknowledged by the broker but not yet read by the consumer
  (Tansu's ListOffsets under-reports the log end, so the lag is counted, not asked for),
- the API latency of `GET /v1/alerts` and `GET /v1/chains/{trace_id}`, queried in a loop by
  another thread (p50 and p99 per window).

It prints a table and a verdict: the RSS slope over the second half of the run (after DuckDB's
caches and the detectors' baselines have grown to their working size) and the largest lag.

    .venv/bin/python bench/soak.py                 # 10 minutes
    .venv/bin/python bench/soak.py --minutes 2 --rate 3000

The machine may be shared: the figures are what this machine held during the run.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
from kafka import KafkaProducer

from tokentrail.api.auth import Role, create_key
from tokentrail.broker import EmbeddedBroker, free_port
from tokentrail.store import Store

TOKENTRAIL = str(Path(sys.executable).parent / "tokentrail")
T0_MS = 1_772_442_000_000
SERVICES = [f"svc-{i}" for i in range(60)]
OPERATIONS = ["GET /v1/items", "POST /v1/items", "GET /v1/items/{id}", "DELETE /v1/items/{id}"]
WORKLOADS = 400


def events(seed: int = 1, spacing_ms: int = 50) -> Iterator[tuple[bytes, bytes, str]]:
    """An endless stream of (key, event, trace_id): 400 workloads with their own few targets and
    rotating tokens; one call in 2,000 reaches a target new to its workload, so the novelty
    detectors keep finding something once the baselines are warm. Calls are `spacing_ms` apart
    in event time: at 50 ms, a few million events span days, past the detectors' warm-up."""
    rng = random.Random(seed)
    targets = [rng.sample(SERVICES, rng.randrange(2, 7)) for _ in range(WORKLOADS)]
    encode = msgspec.json.Encoder().encode
    i = 0
    while True:
        w = rng.randrange(WORKLOADS)
        identity = f"spiffe://prod/ns/team-{w % 20}/sa/workload-{w}"
        target = rng.choice(SERVICES) if rng.random() < 0.0005 else rng.choice(targets[w])
        trace_id = f"{rng.getrandbits(128):032x}"
        event = {
            "event_id": f"soak-{seed}-{i:010d}",
            "ts": T0_MS + i * spacing_ms,
            "token_id": f"tok-{w}-{i // 200_000}",
            "identity": identity,
            "source": SERVICES[w % len(SERVICES)],
            "target": target,
            "operation": rng.choice(OPERATIONS),
            "scope": f"items:{rng.choice(['read', 'write'])}",
            "outcome": "denied" if rng.random() < 0.01 else "success",
            "status": 200,
            "trace_id": trace_id,
            "span_id": f"{rng.getrandbits(64):016x}",
            "environment": "prod",
            "identity_kind": "service",
            "resource": f"items/{rng.randrange(100_000)}",
            "bytes_out": rng.randrange(100, 50_000),
        }
        yield identity.encode(), encode(event), trace_id
        i += 1


@dataclass
class Producer:
    """Produces the stream at a target rate (None: flat out) on its own thread."""

    bootstrap: str
    topic: str
    rate: float | None = None
    acked: int = 0
    traces: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self, stream: Iterator[tuple[bytes, bytes, str]]) -> Producer:
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()
        return self

    def join(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def _ack(self, _: object) -> None:
        with self._lock:  # callbacks may run on the IO thread or in flush()
            self.acked += 1

    def _run(self, stream: Iterator[tuple[bytes, bytes, str]]) -> None:
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=20, batch_size=256 << 10, acks=1
        )
        started, sent = time.monotonic(), 0
        try:
            while not self.stop.is_set():
                for key, value, trace in _take(stream, 500):
                    producer.send(self.topic, key=key, value=value).add_callback(self._ack)
                    if sent % 5000 == 0:
                        self.traces.append(trace)
                    sent += 1
                if self.rate is not None:
                    ahead = sent / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        finally:
            producer.flush(timeout=60)
            producer.close()


def _take(stream: Iterator[tuple[bytes, bytes, str]], n: int) -> list[tuple[bytes, bytes, str]]:
    return [next(stream) for _ in range(n)]


@dataclass
class Prober:
    """Queries two read endpoints in a loop and keeps each request's latency (ms)."""

    base: str
    key: str
    producer: Producer
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"alerts": [], "chain": []})
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base, headers=headers, timeout=30) as client:
            while not self.stop.wait(0.25):
                traces = self.producer.traces
                paths = {"alerts": "/v1/alerts?limit=50"}
                if traces:
                    paths["chain"] = f"/v1/chains/{random.choice(traces[-50:])}"
                for name, path in paths.items():
                    began = time.perf_counter()
                    try:
                        status = client.get(path).status_code
                    except httpx.HTTPError:
                        status = 0
                    # A chain not stored yet is a 404 answered as fast as any other.
                    if status not in (200, 404):
                        self.errors += 1
                        continue
                    self.latencies[name].append((time.perf_counter() - began) * 1000)


def metric(base: str, key: str, name: str) -> int:
    """The sum of a metric's samples: `name` exactly (labels included), or `name{...}`."""
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    total = 0
    for line in text.text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name or sample.startswith(name + "{"):
            total += int(float(value))
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"soak: {what} within {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--rate", type=float, help="events/s (default: measured, see --load)")
    parser.add_argument("--calibrate", type=float, default=45.0, help="seconds flat out")
    parser.add_argument("--load", type=float, default=0.8, help="fraction of the ceiling")
    parser.add_argument(
        "--spacing-ms", type=int, default=50, help="event time between two calls (ms)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tokentrail-soak-") as work:
        db = Path(work) / "soak.duckdb"
        with Store.open(db) as store:
            key = create_key(store.conn, name="soak", role=Role.viewer).key
        with EmbeddedBroker() as broker:
            broker.create_topic("soak", partitions=3)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log = (Path(work) / "serve.log").open("w")
            serve = subprocess.Popen(
                [TOKENTRAIL, "serve", "--db", str(db), "--port", str(port), "--kafka",
                 broker.bootstrap, "--topic", "soak", "--group", "soak"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                run(args, broker, serve, base, key)
            finally:
                serve.send_signal(signal.SIGTERM)
                try:
                    serve.wait(120)
                except subprocess.TimeoutExpired:
                    serve.kill()
                    serve.wait()
                log.close()


def run(
    args: argparse.Namespace,
    broker: EmbeddedBroker,
    serve: subprocess.Popen[bytes],
    base: str,
    key: str,
) -> None:
    ready = lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200  # noqa: E731
    wait_until(ready, 120, "the consumer did not get ready")
    stream = events(spacing_ms=args.spacing_ms)
    rate = args.rate
    if rate is None:
        producer = Producer(broker.bootstrap, "soak").start(stream)
        wait_until(lambda: metric(base, key, "tokentrail_consumer_records{outcome=\"read\"}") > 0,
                   120, "nothing was read")  # fmt: skip
        read0, t0 = metric(base, key, 'tokentrail_consumer_records{outcome="read"}'), time.time()
        time.sleep(args.calibrate)
        read1, t1 = metric(base, key, 'tokentrail_consumer_records{outcome="read"}'), time.time()
        producer.join()
        ceiling = (read1 - read0) / (t1 - t0)
        rate = ceiling * args.load
        print(f"ceiling: {ceiling:,.0f} events/s stored with detection on; soak at {rate:,.0f}/s")
        # Let the consumer catch up with the calibration backlog before the clock starts.
        acked = producer.acked
        wait_until(
            lambda: metric(base, key, 'tokentrail_consumer_records{outcome="read"}') >= acked,
            600, "the consumer did not catch up after calibration",
        )  # fmt: skip
        already = acked
    else:
        already = 0
    producer = Producer(broker.bootstrap, "soak", rate=rate).start(stream)
    prober = Prober(base, key, producer)
    probing = threading.Thread(target=prober.run, daemon=True)
    probing.start()
    print(f"{'t (s)':>6} {'RSS MB':>8} {'CPU %':>6} {'produced':>10} {'read':>10} {'lag':>8}"
          f" {'alerts':>7} {'alerts p50/p99 ms':>18} {'chain p50/p99 ms':>17}")  # fmt: skip
    started = time.monotonic()
    samples: list[dict[str, float]] = []
    seen = {"alerts": 0, "chain": 0}
    last_cpu, last_t = cpu_s(serve.pid), time.monotonic()
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.every)
            if serve.poll() is not None:
                raise SystemExit(f"soak: serve exited with {serve.returncode}")
            now = time.monotonic()
            read = metric(base, key, 'tokentrail_consumer_records{outcome="read"}')
            produced = already + producer.acked
            cpu = cpu_s(serve.pid)
            window = {n: prober.latencies[n][seen[n] :] for n in seen}
            seen = {n: len(prober.latencies[n]) for n in seen}
            sample = {
                "t": now - started,
                "rss": rss_mb(serve.pid),
                "cpu": 100 * (cpu - last_cpu) / (now - last_t),
                "produced": produced,
                "read": read,
                "lag": max(produced - read, 0),
                "alerts": metric(base, key, "tokentrail_alerts"),
            }
            last_cpu, last_t = cpu, now
            samples.append(sample)
            a, c = window["alerts"], window["chain"]
            print(
                f"{sample['t']:6.0f} {sample['rss']:8.0f} {sample['cpu']:6.0f}"
                f" {produced:10,} {read:10,} {sample['lag']:8,.0f} {sample['alerts']:7,.0f}"
                f" {percentile(a, 0.5):8.0f}/{percentile(a, 0.99):<9.0f}"
                f" {percentile(c, 0.5):7.0f}/{percentile(c, 0.99):<9.0f}",
                flush=True,
            )
    finally:
        prober.stop.set()
        producer.join()
        probing.join(60)
    verdict(samples, prober, rate)


def verdict(samples: list[dict[str, float]], prober: Prober, rate: float) -> None:
    half = samples[len(samples) // 2 :]
    slope = slope_per_min([(s["t"], s["rss"]) for s in half])
    mean_rss = statistics.fmean(s["rss"] for s in half)
    max_lag = max(s["lag"] for s in samples)
    late_lag = max(s["lag"] for s in half)
    elapsed = samples[-1]["t"] - samples[0]["t"] if len(samples) > 1 else 1.0
    achieved = (samples[-1]["read"] - samples[0]["read"]) / elapsed
    everything = prober.latencies["alerts"] + prober.latencies["chain"]
    print()
    print(f"rate: {rate:,.0f}/s offered, {achieved:,.0f}/s read")
    print(f"RSS: {samples[0]['rss']:.0f} MB at the first sample, {samples[-1]['rss']:.0f} MB at"
          f" the last; slope over the second half {slope:+.1f} MB/min"
          f" ({100 * slope / mean_rss:+.2f} %/min)")  # fmt: skip
    print(f"lag: max {max_lag:,.0f} events ({max_lag / rate:.1f} s of traffic),"
          f" max over the second half {late_lag:,.0f}")  # fmt: skip
    for name, values in prober.latencies.items():
        print(f"API {name}: {len(values):,} requests, p50 {percentile(values, 0.5):.0f} ms,"
              f" p99 {percentile(values, 0.99):.0f} ms")  # fmt: skip
    print(f"API all: p99 {percentile(everything, 0.99):.0f} ms; {prober.errors} errors")
    # Flat: under 1 % of the RSS per minute once warm. Bounded: never more than 30 s of traffic.
    flat = abs(slope) < 0.01 * mean_rss
    bounded = max_lag < 30 * rate
    memory, lag = ("flat" if flat else "GROWING"), ("bounded" if bounded else "UNBOUNDED")
    print(f"verdict: memory {memory}, lag {lag}")


if __name__ == "__main__":
    main()
