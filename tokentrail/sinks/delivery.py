"""At-least-once delivery of alert versions to every configured sink (docs/SINKS.md).

The outbox is the alerts table itself: a sink owes every alert version (`updated_at`) it has not
acknowledged (`store.delivery`). A pass takes, per sink, the oldest owed versions in batches,
sends them, and records the acknowledgement; a failure leaves them owed and sets the sink's next
attempt after an exponential backoff, so versions flow in order once the sink is back. Delivery
only reads alerts and writes its own tables: it runs beside ingestion (its own thread and DuckDB
cursor, or the `tokentrail deliver` command) and never makes it wait.

Example::

    deliverer = Deliverer.from_settings(settings.sinks)
    deliverer.run_once(store.conn)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import duckdb

from tokentrail.config import HttpSink as HttpSettings
from tokentrail.config import KafkaSink as KafkaSettings
from tokentrail.config import SinkSettings, SinksSettings
from tokentrail.config import SyslogSink as SyslogSettings
from tokentrail.detect.model import SEVERITIES
from tokentrail.errors import ConfigError
from tokentrail.sinks import Outgoing, Sink, SinkError
from tokentrail.sinks.ocsf import Activity
from tokentrail.store import delivery as sql

log = logging.getLogger(__name__)

# Batches one sink may send in one pass, so a long backlog does not starve the other sinks.
_MAX_BATCHES_PER_PASS: Final = 50


def build_sink(settings: SinkSettings) -> Sink:
    """The transport a sink's settings describe."""
    if isinstance(settings, HttpSettings):
        from tokentrail.sinks.http import HttpSink

        return HttpSink(settings)
    if isinstance(settings, KafkaSettings):
        from tokentrail.sinks.kafka import KafkaSink

        return KafkaSink(settings)
    if isinstance(settings, SyslogSettings):
        from tokentrail.sinks.syslog import SyslogSink

        return SyslogSink(settings)
    raise ConfigError(f"unknown sink type {type(settings).__name__}")


@dataclass
class Route:
    """A sink with the alerts it receives."""

    sink: Sink
    statuses: list[str]
    severities: list[str]
    batch_size: int
    warned_at: int = 0  # backlog size when we last warned


@dataclass(frozen=True)
class SinkReport:
    """What one pass did for one sink."""

    sink: str
    delivered: int = 0
    failed: bool = False
    waiting: bool = False  # in backoff: not tried this pass
    backlog: int = 0  # versions still owed after the pass
    dropped: int = 0
    error: str | None = None


@dataclass
class Deliverer:
    """Delivers owed alert versions to its routes; one pass at a time."""

    routes: list[Route]
    policy: SinksSettings
    clock: Callable[[], float] = time.time
    reports: list[SinkReport] = field(default_factory=list)

    @classmethod
    def from_settings(
        cls, policy: SinksSettings, *, sinks: Sequence[Sink] | None = None
    ) -> Deliverer:
        """Routes for the enabled outputs; `sinks` replaces the transports (same order)."""
        outputs = [o for o in policy.outputs if o.enabled]
        names = [o.name for o in outputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"sink names must be unique: {', '.join(dupes)}")
        transports = list(sinks) if sinks is not None else [build_sink(o) for o in outputs]
        routes = [
            Route(
                sink=t,
                statuses=list(o.statuses),
                severities=list(SEVERITIES[SEVERITIES.index(o.min_severity) :]),
                batch_size=o.batch_size,
            )
            for o, t in zip(outputs, transports, strict=True)
        ]
        return cls(routes=routes, policy=policy)

    def run_once(self, conn: duckdb.DuckDBPyConnection) -> list[SinkReport]:
        """One pass over every sink; returns what it did."""
        self.reports = [self._deliver(conn, route) for route in self.routes]
        return self.reports

    def run(
        self, conn: duckdb.DuckDBPyConnection, stop: threading.Event, *, drain: bool = False
    ) -> None:
        """Pass after pass until `stop` is set (or, with `drain`, until nothing is owed or every
        sink is failing)."""
        while not stop.is_set():
            reports = self.run_once(conn)
            if drain and all(r.backlog == 0 or r.failed or r.waiting for r in reports):
                return
            busy = any(r.delivered and r.backlog for r in reports)
            stop.wait(0 if busy else self.policy.poll_interval_s)

    def close(self) -> None:
        for route in self.routes:
            route.sink.close()

    def _deliver(self, conn: duckdb.DuckDBPyConnection, route: Route) -> SinkReport:
        name = route.sink.name
        state = sql.sink_state(conn, sink=name)
        now_us = int(self.clock() * 1_000_000)
        owed = sql.backlog(conn, sink=name, statuses=route.statuses, severities=route.severities)
        dropped = self._bound(conn, route, owed)
        owed -= dropped
        if state.next_attempt_us is not None and state.next_attempt_us > now_us:
            return SinkReport(name, waiting=True, backlog=owed, dropped=dropped)
        delivered = 0
        for _ in range(_MAX_BATCHES_PER_PASS):
            batch = sql.pending(
                conn,
                sink=name,
                statuses=route.statuses,
                severities=route.severities,
                limit=route.batch_size,
            )
            if not batch:
                break
            outgoing = [
                Outgoing(p.alert, p.version_us, _activity(p.alert.status, p.deliveries))
                for p in batch
            ]
            try:
                route.sink.send(outgoing)
            except SinkError as exc:
                failures = sql.sink_state(conn, sink=name).failures + 1
                delay = min(
                    self.policy.backoff_max_s,
                    self.policy.backoff_initial_s * 2 ** (failures - 1),
                )
                sql.record_failure(
                    conn,
                    sink=name,
                    error=str(exc),
                    next_attempt_us=int((self.clock() + delay) * 1_000_000),
                )
                log.warning(
                    "sink %s: %s; %d alert versions wait, retry in %.1f s",
                    name,
                    exc,
                    owed - delivered,
                    delay,
                )
                return SinkReport(name, delivered, True, False, owed - delivered, dropped, str(exc))
            sql.mark_delivered(
                conn, sink=name, versions=[(p.alert.alert_id, p.version_us) for p in batch]
            )
            delivered += len(batch)
        return SinkReport(name, delivered, backlog=max(owed - delivered, 0), dropped=dropped)

    def _bound(self, conn: duckdb.DuckDBPyConnection, route: Route, owed: int) -> int:
        """Warn when the backlog grows past `backlog_warn` (again at each doubling); above
        `backlog_max` record the oldest as dropped so the newest still flow."""
        name = route.sink.name
        if owed >= self.policy.backlog_warn and owed >= 2 * route.warned_at:
            log.warning("sink %s: backlog of %d alert versions", name, owed)
            route.warned_at = owed
        elif owed < self.policy.backlog_warn:
            route.warned_at = 0
        excess = owed - self.policy.backlog_max
        if excess <= 0:
            return 0
        oldest = sql.pending(
            conn,
            sink=name,
            statuses=route.statuses,
            severities=route.severities,
            limit=excess,
        )
        sql.mark_delivered(
            conn,
            sink=name,
            versions=[(p.alert.alert_id, p.version_us) for p in oldest],
            outcome="dropped",
        )
        log.error("sink %s: backlog above %d, dropped the %d oldest alert versions",
                  name, self.policy.backlog_max, len(oldest))  # fmt: skip
        return len(oldest)


def _activity(status: str, deliveries: int) -> Activity:
    if status == "closed":
        return Activity.close
    return Activity.update if deliveries else Activity.create


class DeliveryThread:
    """Runs a Deliverer in a daemon thread on its own cursor of the writer's connection, so an
    ingesting process (`serve`) delivers alongside without waiting for any sink."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, deliverer: Deliverer) -> None:
        self._cursor = conn.cursor()
        self._deliverer = deliverer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokentrail-delivery", daemon=True)

    def start(self) -> DeliveryThread:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._deliverer.close()
        self._cursor.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._deliverer.run(self._cursor, self._stop)
            except duckdb.Error as exc:
                # A write conflict or a busy file: try again at the next poll, never crash.
                log.warning("delivery pass failed: %s", exc)
                self._stop.wait(self._deliverer.policy.poll_interval_s)


def prometheus(conn: duckdb.DuckDBPyConnection, deliverer: Deliverer) -> str:
    """Delivery metrics in the Prometheus text format, per sink: backlog (gauge) and delivered,
    failed and dropped totals (counters)."""
    lines = [
        "# HELP tokentrail_sink_backlog Alert versions a sink has not acknowledged.",
        "# TYPE tokentrail_sink_backlog gauge",
    ]
    states = []
    for route in deliverer.routes:
        name = route.sink.name
        owed = sql.backlog(conn, sink=name, statuses=route.statuses, severities=route.severities)
        lines.append(f'tokentrail_sink_backlog{{sink="{name}"}} {owed}')
        states.append(sql.sink_state(conn, sink=name))
    for metric, attr in (
        ("delivered", "delivered_total"),
        ("failed", "failed_total"),
        ("dropped", "dropped_total"),
    ):
        lines += [
            f"# HELP tokentrail_sink_{metric}_total Alert versions {metric} (failed: attempts).",
            f"# TYPE tokentrail_sink_{metric}_total counter",
        ]
        lines += [f'tokentrail_sink_{metric}_total{{sink="{s.sink}"}} {getattr(s, attr)}'
                  for s in states]  # fmt: skip
    return "\n".join(lines) + "\n"
