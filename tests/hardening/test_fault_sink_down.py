"""A SIEM collector down while a simulated day of traffic is ingested and detected.

tests/sinks/test_delivery.py checks the outbox with a fake sink and a fake clock. Here the
transport is real (the HEC sink over HTTP to a receiver on loopback that answers 503 while
"down"), the alerts come from real detection over simulated traffic ingested hour by hour, and
the delivery clock follows event time, so the backoff (capped at 300 s) is retried each hour the
way a `serve` delivery thread would. While the collector is down the backlog is exactly what is
owed and never above `backlog_max`; above it the oldest versions are dropped, logged and counted,
never silently. Once the collector answers, everything still owed arrives exactly once
(`metadata.uid` is unique per alert version: the idempotency key a SIEM can dedupe on).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from tokentrail.batch import Batch
from tokentrail.config import Settings, SinksSettings
from tokentrail.detect.setup import detection_for
from tokentrail.ingest.pipeline import Pipeline
from tokentrail.simulate import World, WorldSpec, write_world
from tokentrail.sinks.delivery import Deliverer, SinkReport, prometheus
from tokentrail.store import Store
from tokentrail.store import delivery as sql

US_PER_HOUR = 3_600_000_000
DOWN_HOURS = 12


class Receiver(ThreadingHTTPServer):
    """An HEC-like collector: 503 while `down`, else 200 and every finding's uid kept."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.down = True
        self.refused = 0
        self.uids: list[tuple[str, str]] = []  # (sink's path, finding uid)
        self.lock = threading.Lock()

    def url(self, sink: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{sink}/services/collector/event"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            if self.server.down:
                self.server.refused += 1
                self.send_response(503)
            else:
                for line in raw.decode().splitlines():
                    uid = json.loads(line)["event"]["metadata"]["uid"]
                    self.server.uids.append((self.path, uid))
                self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reads the receiver's state, not its log


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def hours_of_traffic(tmp_path: Path) -> tuple[list[list[bytes]], Path]:
    """A simulated day, cut into hours of event time."""
    world = tmp_path / "world"
    write_world(World(WorldSpec(seed=5, days=1, scale=0.3)), world)
    lines = (world / "events.jsonl").read_bytes().splitlines()
    times = [_epoch_s(msgspec.json.decode(line)["ts"]) for line in lines]
    first = min(times)
    hours: list[list[bytes]] = [[] for _ in range(25)]
    for line, ts in zip(lines, times, strict=True):
        hours[min(int(ts - first) // 3600, 24)].append(line)
    return [h for h in hours if h], world / "catalog.toml"


def _epoch_s(ts: int | str) -> float:
    return ts / 1000 if isinstance(ts, int) else datetime.fromisoformat(ts).timestamp()


def deliverer(receiver: Receiver, name: str, **policy: object) -> Deliverer:
    outputs = [{"type": "http", "name": name, "url": receiver.url(name), "batch_size": 5}]
    return Deliverer.from_settings(SinksSettings.model_validate({"outputs": outputs, **policy}))


def owed_versions(store: Store, name: str) -> set[str]:
    """The alert versions a sink has not acknowledged, as OCSF `metadata.uid`s."""
    pending = sql.pending(
        store.conn, sink=name, statuses=["open", "acknowledged", "closed"],
        severities=["info", "low", "medium", "high", "critical"], limit=1_000_000,
    )  # fmt: skip
    return {f"{p.alert.alert_id}:{p.version_us}" for p in pending}


def test_a_collector_down_for_hours_gets_every_alert_once_when_back(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hours, catalog = hours_of_traffic(tmp_path)
    store = Store.open(tmp_path / "t.duckdb")
    engine = detection_for(store, catalog_path=catalog)
    pipeline = Pipeline(store, Settings(), hooks=[engine.on_batch])
    roomy = deliverer(receiver, "siem")
    tight = deliverer(receiver, "siem-small", backlog_max=3, backlog_warn=2)
    reports: list[tuple[SinkReport, SinkReport]] = []
    owed_while_down: set[str] = set()
    backlog_matches_owed: list[bool] = []
    caplog.set_level(logging.WARNING, logger="tokentrail.sinks.delivery")
    try:
        for hour, lines in enumerate(hours):
            batch = Batch("file", "sim")
            for n, line in enumerate(lines, start=1):
                pipeline.feed(batch, line, None, n)
            pipeline.write(batch)
            # Delivery runs on event time: an hour later every backoff (<= 300 s) is over.
            now_s = (hour + 1) * 3600.0 + 1_800_000_000
            roomy.clock = tight.clock = lambda now_s=now_s: now_s
            receiver.down = hour < DOWN_HOURS
            if hour == DOWN_HOURS:
                owed_while_down = owed_versions(store, "siem")
            reports.append((roomy.run_once(store.conn)[0], tight.run_once(store.conn)[0]))
            if receiver.down:
                backlog_matches_owed.append(
                    reports[-1][0].backlog == len(owed_versions(store, "siem"))
                )
        engine.finish()
        roomy.clock = tight.clock = lambda: 1_800_000_000 + 30 * 3600.0
        done = roomy.run_once(store.conn)[0], tight.run_once(store.conn)[0]

        down = reports[:DOWN_HOURS]
        # Down: every pass failed and delivered nothing; the backlog was all that was owed.
        assert all(r.failed and not r.delivered for pair in down for r in pair)
        assert receiver.refused >= 2 * DOWN_HOURS
        assert owed_while_down, "the first hours should raise alerts"
        assert all(backlog_matches_owed)
        assert all(r.dropped == 0 for r, _ in reports)
        # The tight sink never owed more than its bound; what it dropped was logged and counted.
        assert all(t.backlog <= 3 for _, t in reports)
        dropped = sum(t.dropped for _, t in reports) + done[1].dropped
        assert dropped > 0
        assert "backlog above 3, dropped the" in caplog.text
        # Back: nothing owed any more, and no version arrived twice.
        assert done[0].backlog == done[1].backlog == 0
        assert owed_versions(store, "siem") == set()
        assert len(receiver.uids) == len(set(receiver.uids))
        siem = sql.sink_state(store.conn, sink="siem")
        small = sql.sink_state(store.conn, sink="siem-small")
        assert owed_while_down <= {uid for path, uid in receiver.uids if path.startswith("/siem/")}
        assert siem.delivered_total + small.delivered_total == len(receiver.uids)
        assert small.dropped_total == dropped
        text = prometheus(store.conn, tight)
        assert f'tokentrail_sink_dropped_total{{sink="siem-small"}} {dropped}' in text
        assert f'tokentrail_sink_failed_total{{sink="siem-small"}} {DOWN_HOURS}' in text
    finally:
        pipeline.close()
        roomy.close()
        tight.close()
        store.close()
