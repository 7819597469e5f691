"""The HEC sink against a local collector that refuses, then drops a connection: nothing is lost."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import AddAlerts, ocsf_errors
from typer.testing import CliRunner

from tokentrail.cli import app
from tokentrail.config import SinksSettings
from tokentrail.sinks.delivery import Deliverer
from tokentrail.sinks.ocsf import Activity
from tokentrail.store import Store

TOKEN = "11111111-2222-3333-4444-555555555555"


@dataclass
class Collector:
    """A Splunk-HEC-shaped collector on 127.0.0.1: answers 503 to the first `refuse`
    requests, then drops the connection of the next one without answering."""

    refuse: int = 0
    drop: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def collector() -> Iterator[Collector]:
    state = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.requests += 1
                if self.path != "/services/collector/event" or (
                    self.headers["Authorization"] != f"Splunk {TOKEN}"
                ):
                    self._answer(401, {"text": "Invalid token", "code": 4})
                    return
                if state.refuse:
                    state.refuse -= 1
                    self._answer(503, {"text": "Server is busy", "code": 9})
                    return
                if state.drop:
                    state.drop -= 1
                    self.close_connection = True
                    self.connection.close()  # read, stored nothing, no answer
                    return
                decoder = json.JSONDecoder()
                text, at = body.decode(), 0
                while at < len(text.rstrip()):
                    item, end = decoder.raw_decode(text, at)
                    state.events.append(item)
                    at = end + 1
            self._answer(200, {"text": "Success", "code": 0})

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/services/collector/event"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _settings(url: str, **extra: Any) -> SinksSettings:
    output = {"type": "http", "name": "splunk", "url": url, "token": TOKEN, "batch_size": 2}
    return SinksSettings.model_validate({"outputs": [output | extra], "backoff_initial_s": 0.01})


def test_every_alert_arrives_despite_refusals_and_a_drop(
    store: Store, add_alerts: AddAlerts, collector: Collector
) -> None:
    rows = add_alerts(5)
    collector.refuse, collector.drop = 3, 1
    deliverer = Deliverer.from_settings(_settings(collector.url, timeout_s=5))
    ticks = itertools.count(start=1_000_000, step=1000)  # backoff always elapsed
    deliverer.clock = lambda: float(next(ticks))
    for _ in range(20):
        if deliverer.run_once(store.conn)[0].backlog == 0:
            break
    add_alerts(1, occurrences=7)  # a new version of al-0
    deliverer.run_once(store.conn)
    assert collector.requests == 3 + 1 + 3 + 1  # refused, dropped, 3 batches, the update
    findings = [e["event"] for e in collector.events]
    assert {f["finding_info"]["uid"] for f in findings} == {r.alert_id for r in rows}
    assert [f["finding_info"]["uid"] for f in findings] == ["al-0", "al-1", "al-2", "al-3",
                                                            "al-4", "al-0"]  # fmt: skip
    assert findings[-1]["activity_id"] == Activity.update and findings[-1]["count"] == 7
    assert all(ocsf_errors(f) == [] for f in findings)
    envelope = collector.events[0]
    assert envelope["sourcetype"] == "ocsf:detection_finding"
    assert envelope["fields"] == {"alert_id": "al-0", "detector": "credential_pivot",
                                  "severity": "critical"}  # fmt: skip
    assert envelope["time"] == 1_772_442_060.0


def test_deliver_command_once(tmp_path: Path, store: Store, add_alerts: AddAlerts,
                              collector: Collector) -> None:  # fmt: skip
    add_alerts(3)
    db = store.path
    store.close()
    config = tmp_path / "tokentrail.toml"
    config.write_text(
        f'[sinks]\nbackoff_initial_s = 0.01\n[[sinks.outputs]]\ntype = "http"\nname = "splunk"\n'
        f'url = "{collector.url}"\ntoken = "{TOKEN}"\n'
    )
    runner = CliRunner()
    done = runner.invoke(app, ["--config", str(config), "deliver", "--db", db, "--once"])
    assert done.exit_code == 0, done.output
    assert "sink splunk: ok, 3 delivered" in done.output
    assert len(collector.events) == 3
    again = runner.invoke(app, ["--config", str(config), "deliver", "--db", db, "--once"])
    assert again.exit_code == 0 and len(collector.events) == 3  # nothing owed, nothing sent
