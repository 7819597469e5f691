"""The demo: one process that owns an embedded broker, a simulated producer, the consumer with
detection, and the API, started in that order and stopped in reverse.

`tokentrail demo` (tokentrail/cli/demo.py) shows it live; this module holds no presentation.

Example::

    with Demo(DemoPlan(db=Path("demo.duckdb"), port=0), load_settings(None)) as demo:
        print(demo.url, demo.key)
        figures = demo.figures(latest=5)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

import duckdb

from tokentrail.broker import EmbeddedBroker
from tokentrail.config import Settings
from tokentrail.errors import StoreError, TokentrailError
from tokentrail.simulate import FAMILIES, AttackPlan, World, WorldSpec, stream_kafka
from tokentrail.simulate.core import DAY, DEFAULT_START_MS, HOUR, Item
from tokentrail.simulate.output import CATALOG_FILE
from tokentrail.simulate.world import MAX_DAYS
from tokentrail.store import Store
from tokentrail.store import alerts as alert_sql
from tokentrail.store import api as sql
from tokentrail.store.alerts import AlertRow

if TYPE_CHECKING:  # the server's stack loads when a demo starts, not with every command
    from fastapi import FastAPI

    from tokentrail.api.consumer import BackgroundConsumer

log = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
GROUP: Final = "tokentrail-demo"
SEVERITIES: Final = ("critical", "high", "medium", "low", "info")

# Day one: every family early, a few simulated hours apart (at 2,000 events/s a simulated hour
# passes in about a second at night and two by day). Policy rules need no warm-up, so each
# attack is caught as it happens, and the first alerts fire within seconds of the stream.
_EARLY_WAVE_HOURS: Final = {
    "token_replay": 2.0,
    "low_and_slow": 3.0,  # one new system every 1-2 h until about hour 14
    "credential_pivot": 4.0,
    "shared_token": 5.0,
    "expired_token": 6.0,  # stages its build job 3-4 h before
    "cross_environment": 7.0,
    "scope_drift": 9.0,  # agent tasks: office hours
    "confused_deputy": 10.0,
    "build_token_on_runtime": 11.0,
}
# Simulated events per day at scale 1 (about 37,000 on a weekday, fewer at weekends), with a
# margin: a bounded run's world must outlast it.
_EVENTS_PER_DAY_LOW: Final = 25_000
_DEFAULT_DAYS: Final = 7.0
_SERVER_START_S: Final = 30.0
_SERVER_STOP_S: Final = 90.0
_PRODUCER_STOP_S: Final = 30.0


@dataclass(frozen=True)
class DemoPlan:
    """What one demo run does; `port` 0 picks a free port, `days` None sizes the world."""

    db: Path
    port: int = 8000
    rate: float = 2000.0
    seed: int = 7
    days: float | None = None
    duration_s: float | None = None
    fresh: bool = False


@dataclass(frozen=True)
class Figures:
    """The demo at one moment: the producer's and the consumer's counters, and the store's."""

    produced: int  # events handed to the Kafka producer
    read: int  # records the consumer took off the topic
    events: int  # stored events (all runs, for a reused database)
    tokens: int
    dead_letters: int
    alerts: dict[str, int]  # severity -> alerts
    latest: list[AlertRow]  # newest first
    reached_ms: int  # event time the producer has reached
    streaming: bool  # the producer is still sending


def world_days(plan: DemoPlan) -> float:
    """The simulated span: as given, else a week, or enough to fill a bounded run."""
    if plan.days is not None:
        return plan.days
    if plan.duration_s is None:
        return _DEFAULT_DAYS
    needed = math.ceil(plan.duration_s * plan.rate / _EVENTS_PER_DAY_LOW) + 1
    return min(MAX_DAYS, max(_DEFAULT_DAYS, float(needed)))


def demo_attacks(start_ms: int, end_ms: int) -> tuple[AttackPlan, ...]:
    """Every family early on day one, then again at its usual slot after the warm-up day,
    where the novelty rules join in; attacks past the end of the world are left out.

    >>> len(demo_attacks(DEFAULT_START_MS, DEFAULT_START_MS + 3 * DAY))
    18
    """
    early = [AttackPlan(f, start_ms + int(h * HOUR)) for f, h in _EARLY_WAVE_HOURS.items()]
    usual = [
        AttackPlan(family, start_ms + DAY + int(cls.default_hour * HOUR))
        for family, cls in FAMILIES.items()
    ]
    return tuple(p for p in early + usual if p.at_ms is not None and p.at_ms < end_ms)


def continue_after(last_us: int | None) -> int:
    """Where the world starts: the default start on an empty database, else the Monday after
    its last event, so event time only moves forward and office hours line up.

    >>> continue_after(None) == DEFAULT_START_MS
    True
    """
    if last_us is None:
        return DEFAULT_START_MS
    next_day = (last_us // 1000 // DAY + 1) * DAY
    weekday = datetime.fromtimestamp(next_day / 1000, UTC).weekday()
    return next_day + (7 - weekday) % 7 * DAY


def world_seed(seed: int, start_ms: int) -> int:
    """The seed itself at the default start; derived from it and the start otherwise.

    A world continued in a reused database needs other token ids: the same seed would replay
    the first run's tokens long after they expired (a flood of lifetime alerts).
    """
    if start_ms == DEFAULT_START_MS:
        return seed
    return zlib.crc32(f"{seed}@{start_ms}".encode())


class _StoppableWorld(World):
    """A world whose stream ends early on request, counting what the producer has sent."""

    def __init__(self, spec: WorldSpec) -> None:
        super().__init__(spec)
        self.stop = threading.Event()
        self.produced = 0
        self.reached_ms = self.start_ms

    def chunks(self) -> Iterator[list[Item]]:
        for chunk in super().chunks():
            if self.stop.is_set():
                return
            yield chunk
            # Resumed once the producer has sent (and paced) the chunk's events.
            self.produced += len(chunk)
            self.reached_ms = chunk[-1][0]


_simulate_log: Final = logging.getLogger("tokentrail.simulate.output")


class _QuietWhenStopped(logging.Filter):
    """A stream stopped early leaves its later attacks unplayed: expected, so not a warning."""

    def __init__(self, world: _StoppableWorld) -> None:
        super().__init__()
        self.world = world

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.world.stop.is_set() and "produced no event" in record.getMessage())


class _Server:
    """uvicorn on a socket bound beforehand, in a thread: the main thread keeps the signals."""

    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        import uvicorn

        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="tt-api", daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + _SERVER_START_S
        while not self.server.started:
            if not self.thread.is_alive():
                raise TokentrailError("the API server stopped while starting (see the log above)")
            if time.monotonic() > deadline:
                raise TokentrailError(f"the API server did not start within {_SERVER_START_S:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop serving; the app's shutdown stops the consumer after the batch in hand."""
        self.server.should_exit = True
        if self.thread.ident is None:
            return  # never started
        self.thread.join(_SERVER_STOP_S)
        if self.thread.is_alive():
            log.warning("the API server did not stop within %g s", _SERVER_STOP_S)


def bind_port(port: int) -> socket.socket:
    """A listening-ready socket on 127.0.0.1:`port` (0: any free port), or one clear error."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As uvicorn binds: a port left in TIME_WAIT by the last run is free again.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise TokentrailError(
                f"port {port} on {HOST} is in use: choose another with --port, or --port 0 for"
                " any free port"
            ) from None
        raise TokentrailError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}") from None
    return sock


class Demo:
    """The running demo. `start` brings everything up (cleaning up what it started if a step
    fails); `close` stops it all in reverse order and is safe to repeat."""

    def __init__(self, plan: DemoPlan, settings: Settings) -> None:
        if plan.rate <= 0:
            raise TokentrailError(f"--rate must be positive, got {plan.rate:g}")
        if plan.duration_s is not None and plan.duration_s <= 0:
            raise TokentrailError(f"--duration must be positive, got {plan.duration_s:g}")
        if plan.days is not None and not 1 <= plan.days <= MAX_DAYS:
            raise TokentrailError(f"--days must be in [1, {MAX_DAYS:g}], got {plan.days:g}")
        self.plan = plan
        self.settings = settings
        self.world_dir = plan.db.with_name(plan.db.stem + "-world")
        # A new topic per run: offsets stored by an earlier run into a reused database belong
        # to that run's (long gone) broker.
        self.topic = f"api-calls-{uuid.uuid4().hex[:8]}"
        self.port = plan.port
        self.key = ""
        self.world: _StoppableWorld | None = None
        self.consumer: BackgroundConsumer | None = None
        self.reused_events = 0
        self.final: Figures | None = None  # the figures once everything has stopped
        self._stack = contextlib.ExitStack()
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._producer: threading.Thread | None = None
        self._producer_error: str | None = None
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Port, broker and topic, database and world, key, consumer and API, then the stream."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        plan = self.plan
        # The port first: the likeliest failure, and the cheapest to find out.
        sock = bind_port(plan.port)
        self._stack.callback(sock.close)
        self.port = sock.getsockname()[1]
        # The broker before the database, so that a broker that cannot start leaves no file.
        broker = EmbeddedBroker()
        broker.start()
        self._stack.callback(broker.stop)
        broker.create_topic(self.topic)

        if plan.fresh:
            _remove_database(plan.db)
        store = Store.open(plan.db)
        self._stack.callback(store.close)
        cursor = store.conn.cursor()
        self._stack.callback(cursor.close)
        self._cursor = cursor
        # Runs once the consumer has finished (callbacks run in reverse), before the cursor closes.
        self._stack.callback(self._keep_final)
        self.reused_events = sql.counts(cursor).events
        start_ms = continue_after(alert_sql.time_span(cursor)[1])
        days = world_days(plan)
        spec = WorldSpec(
            seed=world_seed(plan.seed, start_ms),
            days=days,
            start_ms=start_ms,
            attacks=demo_attacks(start_ms, start_ms + int(days * DAY)),
        )
        self.world = world = _StoppableWorld(spec)
        catalog = self.world_dir / CATALOG_FILE
        try:
            self.world_dir.mkdir(parents=True, exist_ok=True)
            catalog.write_text(world.catalog_toml())
        except OSError as exc:
            raise StoreError(f"cannot write {catalog}: {exc.strerror or exc}") from None

        from tokentrail.api import api_settings, create_app
        from tokentrail.api.auth import Role, create_key
        from tokentrail.api.consumer import BackgroundConsumer

        self.key = create_key(store.conn, name="demo", role=Role.analyst).key
        # Built before the app: the app locks the database's settings (see create_app).
        self.consumer = BackgroundConsumer(
            store,
            self.settings,
            bootstrap=broker.bootstrap,
            topic=self.topic,
            group=GROUP,
            catalog_path=catalog,
        )
        server = _Server(create_app(store, api_settings(), consumer=self.consumer), sock)
        self._stack.callback(server.stop)
        server.start()
        self._server = server

        self._producer = threading.Thread(
            target=self._produce, args=(world, broker.bootstrap), name="tt-producer", daemon=True
        )
        self._stack.callback(self.stop_stream)
        self._producer.start()

    def _keep_final(self) -> None:
        if self.world is None or self.consumer is None:
            return  # stopped before it streamed
        try:
            self.final = self.figures(latest=0)
        except duckdb.Error as exc:
            log.warning("cannot read the final figures: %s", exc)

    def _produce(self, world: _StoppableWorld, bootstrap: str) -> None:
        quiet = _QuietWhenStopped(world)
        _simulate_log.addFilter(quiet)
        try:
            stream_kafka(world, bootstrap, self.topic, rate=self.plan.rate, out=self.world_dir)
        except TokentrailError as exc:
            self._producer_error = str(exc)
        except Exception as exc:  # a bug: reported in one line, the rest stops cleanly
            log.exception("the producer failed")
            self._producer_error = f"internal error in the producer: {type(exc).__name__}: {exc}"
        finally:
            _simulate_log.removeFilter(quiet)

    @property
    def streaming(self) -> bool:
        return self._producer is not None and self._producer.is_alive()

    def failure(self) -> str | None:
        """Why the demo cannot go on (the producer or the consumer failed), else None."""
        if self._producer_error is not None:
            return f"simulated traffic stopped: {self._producer_error}"
        if self.consumer is not None and self.consumer.state == "failed":
            return f"the consumer stopped: {self.consumer.error}"
        if self._server is not None and not self._server.thread.is_alive():
            return "the API server stopped (see the log above)"
        return None

    def figures(self, *, latest: int) -> Figures:
        """The counters now, read through the demo's own cursor (never the writer's)."""
        world, consumer = self.world, self.consumer
        assert world is not None and consumer is not None, "start() first"
        cursor = self._cursor
        assert cursor is not None
        counts = sql.counts(cursor)
        alerts = dict.fromkeys(SEVERITIES, 0)
        for (severity, _), n in counts.alerts.items():
            alerts[severity] = alerts.get(severity, 0) + n
        return Figures(
            produced=world.produced,
            read=consumer.totals()["read"],
            events=counts.events,
            tokens=counts.tokens,
            dead_letters=counts.dead_letters,
            alerts=alerts,
            latest=alert_sql.latest_alerts(cursor, limit=latest),
            reached_ms=world.reached_ms,
            streaming=self.streaming,
        )

    def stop_stream(self) -> None:
        """Stop the producer after the chunk in hand (it flushes what it sent); idempotent."""
        if self.world is not None:
            self.world.stop.set()
        if self._producer is not None:
            self._producer.join(_PRODUCER_STOP_S)
            if self._producer.is_alive():
                log.warning("the producer did not stop within %g s", _PRODUCER_STOP_S)

    def wait_ingested(self, *, timeout_s: float, interrupted: threading.Event) -> bool:
        """Wait until the consumer has read all that was produced (after `stop_stream`)."""
        deadline = time.monotonic() + timeout_s
        while not interrupted.is_set() and time.monotonic() < deadline:
            if self.world is None or self.consumer is None or self.failure() is not None:
                return False
            if self.consumer.totals()["read"] >= self.world.produced:
                return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        """Stop the stream, then the API (the consumer finishes its batch and detection), the
        broker, and close the database; safe to call twice."""
        self._stack.close()


def _remove_database(db: Path) -> None:
    for path in (db, db.with_name(db.name + ".wal")):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot remove {path} for --fresh: {exc.strerror or exc}") from None
