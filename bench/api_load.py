"""Query API latency under load, with ingestion idle and while ingestion runs (issue #7).

Set-up, as in production: one `tokentrail serve --kafka` process both serves the API and
consumes the topic (ingest + detection) into one DuckDB file. The base file is a simulated
estate; more of it is produced at `--rate` events/s (a simulated file replayed by
bench/replay.py, or `--producer simulate`: `tokentrail simulate --kafka`) while the API is driven by
`--clients` concurrent clients for `--duration` seconds per phase, with ids sampled from the
file: chain by trace id, alerts list, alert by id, token blast radius, tokens top list, events.

    .venv/bin/python -u bench/api_load.py                       # 50 clients, 60 s, 10k events/s
    .venv/bin/python -u bench/api_load.py --duration 20 --clients 10 --rate 2000

Prints first each read alone (median latency and the server's CPU time per request, which
compares builds even on a shared machine); then per endpoint and phase: requests, p50, p99,
errors and what they were; the ingest rate achieved during the loaded phase (from the server's
/metrics) and what the producer managed; the CPU each process used meanwhile; and the ratio
of loaded to idle latency. The machine is shared, so read medians and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import duckdb
import httpx
from kafka import KafkaConsumer, TopicPartition

from tokentrail.broker import EmbeddedBroker, free_port
from tokentrail.simulate import World, WorldSpec, write_world

CLI = [sys.executable, "-m", "tokentrail"]
TOPIC = "api-calls"
ENDPOINTS = ("chain", "alerts", "alert", "blast-radius", "tokens-top", "events")
# The target: p99 under 250 ms for chain and alert reads.
TARGET_MS = 250.0


@dataclass
class Ids:
    traces: list[str]
    alerts: list[str]
    tokens: list[str]


@dataclass
class Timings:
    by_endpoint: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDPOINTS, 0))
    # What the errors were: (endpoint, status code or exception name) -> how many.
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    # When the phase ran (UTC), to find its requests in the server's own log afterwards.
    window: tuple[datetime, datetime] | None = None
    # CPU time the load process itself used in the phase (all threads).
    client_cpu_s: float = 0.0
    # Latencies of the reads started in the phase's first `--warmup` seconds (not in the above).
    warmup: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run(args: list[str], **kwargs: object) -> str:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{done.stderr[-2000:]}")
    return str(done.stdout)


def build_base(folder: Path, *, days: float, scale: float) -> tuple[Path, Path]:
    """A simulated estate ingested (with detection) into a fresh file; its catalog."""
    write_world(World(WorldSpec(seed=7, days=days, scale=scale)), folder)
    db, catalog = folder / "audit.duckdb", folder / "catalog.toml"
    run(["ingest", str(folder / "events.jsonl"), "--db", str(db), "--catalog", str(catalog)])
    return db, catalog


def sample_ids(db: Path, n: int = 200) -> Ids:
    with duckdb.connect(str(db), read_only=True) as conn:

        def column(sql: str) -> list[str]:
            return [str(v) for (v,) in conn.execute(sql).fetchall()]

        return Ids(
            traces=column(
                "SELECT trace_id FROM (SELECT DISTINCT trace_id FROM events"
                f" WHERE trace_id IS NOT NULL) USING SAMPLE reservoir({n} ROWS) REPEATABLE (1)"
            ),
            alerts=column(
                f"SELECT alert_id FROM alerts USING SAMPLE reservoir({n} ROWS) REPEATABLE (1)"
            ),
            tokens=column(
                f"SELECT token_id FROM tokens USING SAMPLE reservoir({n} ROWS) REPEATABLE (1)"
            ),
        )


def request_for(endpoint: str, ids: Ids, rng: random.Random) -> str:
    if endpoint == "chain":
        return f"/v1/chains/{rng.choice(ids.traces)}"
    if endpoint == "alerts":
        return "/v1/alerts?limit=50"
    if endpoint == "alert":
        return f"/v1/alerts/{rng.choice(ids.alerts)}"
    if endpoint == "blast-radius":
        return f"/v1/tokens/{rng.choice(ids.tokens)}/blast-radius"
    if endpoint == "tokens-top":
        return "/v1/tokens?limit=20"
    return "/v1/events?limit=100"


async def drive(
    url: str, key: str, ids: Ids, *, clients: int, duration_s: float, seed: int, warmup_s: float
) -> Timings:
    """`clients` concurrent clients, each a closed loop of random reads on its own connection,
    for `duration_s`, of which the first `warmup_s` are timed apart: all clients start at once,
    and every read of a cold start is a first read (printed as the warm-up). aiohttp rather than
    httpx: it costs the load process ~1/3 of the CPU per request, CPU the server on the same 2
    cores would otherwise lose (`client CPU` below)."""
    timings = Timings()
    began = datetime.now(UTC)
    cpu0 = time.process_time()
    deadline = time.perf_counter() + duration_s
    warm = time.perf_counter() + warmup_s
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        base_url=url, headers=headers, connector=connector, timeout=timeout
    ) as client:

        async def one_client(seed: int) -> None:
            rng = random.Random(seed)
            while time.perf_counter() < deadline:
                endpoint = rng.choice(ENDPOINTS)
                started = time.perf_counter()
                try:
                    async with client.get(request_for(endpoint, ids, rng)) as response:
                        await response.read()
                        outcome = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    outcome = type(exc).__name__
                if outcome == "200":
                    kept = timings.warmup if started < warm else timings.by_endpoint
                    kept[endpoint].append(time.perf_counter() - started)
                else:
                    timings.errors[endpoint] += 1
                    timings.failures[(endpoint, outcome)] += 1

        # Each phase draws its own reads (`seed`): the same draws again would find every
        # chain and alert the previous phase read kept in memory.
        await asyncio.gather(*(one_client(seed * 1000 + i) for i in range(clients)))
    timings.window = (began + timedelta(seconds=warmup_s), datetime.now(UTC))
    timings.client_cpu_s = time.process_time() - cpu0
    return timings


# The endpoint of a logged request path (as `request_for` builds them).
_SERVER_ENDPOINT = """CASE
    WHEN path LIKE '/v1/chains/%' THEN 'chain'
    WHEN path = '/v1/alerts' THEN 'alerts'
    WHEN path LIKE '/v1/alerts/%' THEN 'alert'
    WHEN path LIKE '/v1/tokens/%/blast-radius' THEN 'blast-radius'
    WHEN path = '/v1/tokens' THEN 'tokens-top'
    WHEN path = '/v1/events' THEN 'events' END"""


def server_side(db: Path, phases: dict[str, Timings]) -> None:
    """p50 / p99 of the same requests as the server timed them (`api_requests.duration_ms`:
    from the request reaching the app to its response sent), beside the clients' figures: a
    tail the server does not see was spent before the app (accept, read, event loop)."""
    print("server-side (api_requests), p50 / p99 ms:")
    with duckdb.connect(str(db), read_only=True) as conn:
        for name, timings in phases.items():
            if timings.window is None:
                continue
            rows = conn.execute(
                f"SELECT {_SERVER_ENDPOINT} AS endpoint, quantile_cont(duration_ms, 0.5),"
                " quantile_cont(duration_ms, 0.99), count(*) FROM api_requests"
                " WHERE requested_at BETWEEN ? AND ? AND status = 200 GROUP BY endpoint"
                " ORDER BY endpoint",
                list(timings.window),
            ).fetchall()
            cells = ", ".join(f"{e} {p50:,.0f} / {p99:,.0f}" for e, p50, p99, _ in rows if e)
            print(f"  {name}: {cells}")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_of(pid: int) -> int | None:
    """The one child process of `pid` (serve's Kafka reader), if there is one (Linux /proc)."""
    try:
        found = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


def one_at_a_time(url: str, key: str, ids: Ids, pid: int, n: int) -> None:
    """Each read alone, `n` times: median latency and the server's CPU per request. CPU time
    hardly depends on what else the machine runs, so it compares builds on a shared machine.

    The server keeps the events of chains and alerts it has read (tokentrail.api.cache), so
    those two are measured on distinct ids read a first time, then the same ids again."""
    rng = random.Random(2)
    print(f"one request at a time ({n} each): median ms, server CPU ms per request")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:

        def measure(label: str, paths: list[str]) -> None:
            if not paths:
                print(f"{label:<14}  (no ids left to read)")
                return
            took, before = [], cpu_seconds(pid)
            for path in paths:
                started = time.perf_counter()
                client.get(path).raise_for_status()
                took.append(time.perf_counter() - started)
            after = cpu_seconds(pid)
            cpu = (
                f"{(after - before) * 1000 / len(paths):8.1f}"
                if before is not None and after
                else "     n/a"
            )
            print(f"{label:<14}{percentile(took, 50) * 1000:10.1f}{cpu}")

        for endpoint in ENDPOINTS:
            if endpoint in ("chain", "alert"):
                pool = ids.traces if endpoint == "chain" else ids.alerts
                paths = [request_for(endpoint, Ids([i], [i], []), rng) for i in dict.fromkeys(pool)]
                rng.shuffle(paths)
                for path in paths[:3]:  # warm the key cache on ids not measured
                    client.get(path)
                measure(f"{endpoint} first", paths[3 : 3 + n])
                measure(f"{endpoint} again", paths[3 : 3 + n])
            else:
                for _ in range(3):  # warm the key cache and the pages first
                    client.get(request_for(endpoint, ids, rng))
                measure(endpoint, [request_for(endpoint, ids, rng) for _ in range(n)])


def caught_up(url: str, key: str, timeout_s: float = 180) -> bool:
    """Wait until the consumer has stored everything on the topic (lag 0 on every partition)."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {key}"}
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", headers=headers, timeout=60).text
        lags = re.findall(r"^tokentrail_consumer_lag\{[^}]*\} (\d+)", text, re.M)
        if lags and all(n == "0" for n in lags):
            return True
        time.sleep(1)
    return False


def kept_answers_check(url: str, key: str, ids: Ids) -> None:
    """After the loaded phase, with the topic drained: every chain, alert and blast radius the
    clients could read, answered from memory, must be the answer read from the store
    (`Cache-Control: no-cache`). A pair that differs is read again once: a change reported
    between the two reads (a late detection pass) drops the kept answer, and the second pair
    then agrees."""
    paths = [request_for("chain", Ids([t], [], []), random.Random(0)) for t in ids.traces]
    paths += [request_for("alert", Ids([], [a], []), random.Random(0)) for a in ids.alerts]
    paths += [request_for("blast-radius", Ids([], [], [t]), random.Random(0)) for t in ids.tokens]
    paths.append(request_for("alerts", ids, random.Random(0)))
    headers = {"Authorization": f"Bearer {key}"}
    fresh = {**headers, "Cache-Control": "no-cache"}
    before = cache_reads(url, key)
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:

        def differs(path: str) -> bool:
            return client.get(path).content != client.get(path, headers=fresh).content

        suspects = [p for p in paths if differs(p)]
        kept = sum(
            n for (_, outcome), n in (cache_reads(url, key) - before).items() if outcome == "hit"
        )
        wrong = [p for p in suspects if differs(p)]
    print(
        f"answers after the loaded phase, from memory ({kept} of {len(paths)} were kept) against"
        f" the store: {len(paths) - len(wrong)} identical"
        + (f"; DIFFERENT: {', '.join(wrong[:5])}" if wrong else "")
    )


def stored_events(url: str, key: str) -> int:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=60).text
    found = re.search(r'^tokentrail_consumer_records\{outcome="stored"\} (\d+)', text, re.M)
    return int(found.group(1)) if found else 0


def cache_reads(url: str, key: str) -> Counter[tuple[str, str]]:
    """(read, hit|miss) -> reads so far, from the server's /metrics (tokentrail.api.reads)."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=60).text
    pattern = r'^tokentrail_api_read_cache_reads\{read="([\w-]+)",outcome="(\w+)"\} (\d+)'
    return Counter({(r, o): int(n) for r, o, n in re.findall(pattern, text, re.M)})


def print_hits(
    phase: str, before: Counter[tuple[str, str]], after: Counter[tuple[str, str]]
) -> None:
    """How many of the phase's chain, alert and alerts-list reads the kept answers served."""
    done = after - before
    cells = []
    for read in sorted({r for r, _ in done}):
        hits, misses = done[(read, "hit")], done[(read, "miss")]
        cells.append(f"{read} {hits / max(1, hits + misses):.0%} of {hits + misses:,}")
    print(f"  {phase}: answered from memory: {', '.join(cells) or 'none'}")


def produced(bootstrap: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = [TopicPartition(TOPIC, p) for p in consumer.partitions_for_topic(TOPIC) or ()]
        return sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve exited with {server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"serve was not ready within {timeout_s:g} s")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """SIGTERM (serve finishes its batch), then SIGKILL if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def started(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            stop(process)


def producer_command(
    args: argparse.Namespace, folder: Path, stream: list[str], days: float, bootstrap: str
) -> list[str]:
    """The loaded phase's producer: a replay of a simulated file, or `simulate --kafka` itself.

    The replay (librdkafka, ~5 µs of CPU per record) leaves the 2 cores to what is measured;
    `simulate --kafka` generates as it goes and sends with kafka-python (0.5-0.7 of a core at
    10k events/s), as a shared machine with its producer on it would.
    """
    pace = ["--rate", f"{args.rate:g}"]
    if args.producer == "simulate":
        return [*CLI, "simulate", "--kafka", bootstrap, "--topic", TOPIC, *stream, *pace,
                "--days", f"{days:g}"]  # fmt: skip
    t = time.perf_counter()
    out = folder / "stream"
    run(["simulate", "--out", str(out), *stream, "--days", f"{days:g}"])
    print(f"stream to replay: simulated in {time.perf_counter() - t:.0f} s", flush=True)
    replay = Path(__file__).with_name("replay.py")
    return [sys.executable, str(replay), str(out / "events.jsonl"), "--bootstrap", bootstrap,
            "--topic", TOPIC, *pace]  # fmt: skip


def both_ms(timings: Timings, endpoint: str) -> list[float]:
    """An endpoint's latencies over the whole phase, warm-up included, in ms."""
    return [v * 1000 for v in timings.warmup[endpoint] + timings.by_endpoint[endpoint]]


def report(phases: dict[str, Timings], duration_s: float, warmup_s: float) -> None:
    names = list(phases)
    head = f"{'endpoint':<14}" + "".join(
        f"{f'{n} n':>10}{f'{n} p50':>12}{f'{n} p99':>12}{f'{n} err':>9}" for n in names
    )
    print(head + ("   p99 ratio" if len(names) == 2 else ""))
    for endpoint in ENDPOINTS:
        line = f"{endpoint:<14}"
        p99s = []
        for name in names:
            values = [v * 1000 for v in phases[name].by_endpoint[endpoint]]
            p50, p99 = percentile(values, 50), percentile(values, 99)
            p99s.append(p99)
            line += (
                f"{len(values):>10}{p50:>10.1f}ms{p99:>10.1f}ms{phases[name].errors[endpoint]:>9}"
            )
        if len(p99s) == 2:
            line += f"{p99s[1] / p99s[0]:>11.2f}x"
        print(line)
    for name in names:
        total = sum(len(v) for v in phases[name].by_endpoint.values())
        cpu_ms = phases[name].client_cpu_s * 1000 / max(1, total)
        print(
            f"{name}: {total / (duration_s - warmup_s):,.0f} requests/s over all endpoints;"
            f" client CPU {cpu_ms:.2f} ms per request"
        )
        warm = [
            f"{e} {len(v)} p99 {percentile([x * 1000 for x in v], 99):,.0f} ms"
            f" (with the rest of the phase: {percentile(both_ms(phases[name], e), 99):,.0f} ms)"
            for e, v in phases[name].warmup.items()
            if v and e in ("chain", "alert")
        ]
        if warm:
            print(f"  {name} warm-up, not in the figures above: {', '.join(warm)}")
        for (endpoint, outcome), n in sorted(phases[name].failures.items()):
            print(f"  {name} error: {endpoint} answered {outcome} x{n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="first seconds of each phase timed apart"
    )
    parser.add_argument("--rate", type=float, default=10_000.0, help="events/s produced")
    parser.add_argument("--base-days", type=float, default=1.0)
    parser.add_argument("--base-scale", type=float, default=2.0)
    parser.add_argument("--no-detect", action="store_true", help="serve --no-detect")
    parser.add_argument(
        "--ids", type=int, default=200, help="traces, alerts and tokens the clients pick from"
    )
    parser.add_argument("--skip-idle", action="store_true", help="only the loaded phase")
    parser.add_argument(
        "--producer",
        choices=("replay", "simulate"),
        default="replay",
        help="replay a simulated file with librdkafka (default), or `simulate --kafka`",
    )
    parser.add_argument(
        "--continuing",
        action="store_true",
        help="produce the base's own estate from where it ends (default: another estate)",
    )
    parser.add_argument(
        "--sequential", type=int, default=30, help="requests per endpoint one at a time (0: skip)"
    )
    args = parser.parse_args()
    # Enough simulated traffic for the whole loaded phase at the asked rate (~35k events a day
    # per unit of scale, less taken for margin), so the producer never runs dry.
    scale = args.base_scale if args.continuing else 4.0
    stream_days = max(1.0, args.rate * (args.duration + 30) / (25_000 * scale))

    with tempfile.TemporaryDirectory(prefix="tt-api-load-") as tmp, EmbeddedBroker() as broker:
        folder = Path(tmp)
        t = time.perf_counter()
        db, catalog = build_base(folder, days=args.base_days, scale=args.base_scale)
        with duckdb.connect(str(db), read_only=True) as conn:
            (events,) = conn.execute("SELECT count(*) FROM events").fetchone() or (0,)
        print(f"base: {events:,} events in {time.perf_counter() - t:.0f} s", flush=True)
        key = run(["keys", "create", "--db", str(db), "--role", "viewer", "--name", "bench"])
        key = key.strip().splitlines()[-1]
        ids = sample_ids(db, args.ids)
        broker.create_topic(TOPIC, partitions=3)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # Another estate a week later (no token in common with the base), or with
        # --continuing the base's own estate from where the base ends (its tokens go on).
        base_end = datetime(2026, 3, 2, tzinfo=UTC) + timedelta(days=args.base_days)
        stream = (
            ["--scale", f"{args.base_scale:g}", "--seed", "7",
             "--start", base_end.strftime("%Y-%m-%dT%H:%M:%SZ")]
            if args.continuing
            else ["--scale", "4", "--seed", "8", "--start", "2026-03-09T00:00:00Z"]
        )  # fmt: skip
        producer = producer_command(args, folder, stream, stream_days, broker.bootstrap)
        serve = ["serve", "--db", str(db), "--port", str(port), "--kafka", broker.bootstrap,
                 "--topic", TOPIC, "--group", "bench", "--catalog", str(catalog),
                 *(["--no-detect"] if args.no_detect else [])]  # fmt: skip
        env_note = f"{os.cpu_count()} cpus"
        with started([*CLI, *serve], folder / "serve.log") as server:
            wait_ready(url, server)
            if args.sequential:
                one_at_a_time(url, key, ids, server.pid, args.sequential)
            load = functools.partial(
                drive, url, key, ids, clients=args.clients, duration_s=args.duration,
                warmup_s=args.warmup,
            )  # fmt: skip
            phases: dict[str, Timings] = {}
            hits: list[tuple[str, Counter[tuple[str, str]], Counter[tuple[str, str]]]] = []
            if not args.skip_idle:
                print(f"idle: {args.clients} clients for {args.duration:g} s", flush=True)
                before = cache_reads(url, key)
                phases["idle"] = asyncio.run(load(seed=1))
                hits.append(("idle", before, cache_reads(url, key)))
            with started(producer, folder / "producer.log") as producing:
                time.sleep(8)  # the consumer joins its group (~3 s) and catches up
                stored0, produced0, t0 = (
                    stored_events(url, key),
                    produced(broker.bootstrap),
                    time.perf_counter(),
                )
                roles = {"serve": server.pid, "serve's Kafka reader": child_of(server.pid),
                         "producer": producing.pid, "broker": broker.pid,
                         "bench clients": os.getpid()}  # fmt: skip
                cpu0 = {role: cpu_seconds(pid) for role, pid in roles.items() if pid}
                print(f"ingesting: {args.clients} clients for {args.duration:g} s", flush=True)
                before = cache_reads(url, key)
                phases["ingesting"] = asyncio.run(load(seed=2))
                hits.append(("ingesting", before, cache_reads(url, key)))
                elapsed = time.perf_counter() - t0
                cpu1 = {role: cpu_seconds(pid) for role, pid in roles.items() if pid}
                stored1, produced1 = stored_events(url, key), produced(broker.bootstrap)
                if producing.poll() is not None:
                    print(f"note: the producer exited early ({producing.returncode})")
            if caught_up(url, key):
                time.sleep(5)  # detection's last pass after the topic went quiet
                kept_answers_check(url, key, ids)
            else:
                print("note: the consumer did not catch up; kept answers not checked")
            report(phases, args.duration, args.warmup)
            for phase, before, after in hits:
                print_hits(phase, before, after)
            print(
                f"ingest during the loaded phase: {(stored1 - stored0) / elapsed:,.0f} events/s"
                f" stored, {(produced1 - produced0) / elapsed:,.0f} events/s produced"
                f" (asked {args.rate:,.0f}); {env_note}, shared machine"
            )
            print(
                "CPU during the loaded phase, cores:",
                ", ".join(
                    f"{role} {(cpu1[role] - before) / elapsed:.2f}"
                    for role, before in cpu0.items()
                    if before is not None and cpu1.get(role) is not None
                ),
            )
            logged = (folder / "serve.log").read_text()
            if server.poll() is not None:
                print(logged[-3000:])
            elif any(p.failures for p in phases.values()):
                print(
                    "serve log, errors:",
                    *[ln for ln in logged.splitlines() if "ERROR" in ln][-10:],
                    sep="\n",
                )
        # After serve stopped (it stores its request log then): one process per DuckDB file.
        server_side(db, phases)


if __name__ == "__main__":
    main()
