"""`serve` with sinks configured: alerts flow to a local collector and `/metrics` reports it."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tokentrail.api import api_settings, create_app
from tokentrail.config import SinksSettings
from tokentrail.sinks.delivery import Deliverer
from tokentrail.store import Store


@pytest.fixture
def collector_url() -> Iterator[str]:
    """A JSON collector on 127.0.0.1 that accepts every POST."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/services/collector/event"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_serve_delivers_and_reports_sink_metrics(
    api_store: Store, auth: dict[str, dict[str, str]], collector_url: str
) -> None:
    sinks = SinksSettings.model_validate(
        {
            "outputs": [{"type": "http", "name": "local", "url": collector_url, "token": "t"}],
            "poll_interval_s": 0.05,
        }
    )
    api = create_app(api_store, api_settings(), deliverer=Deliverer.from_settings(sinks))
    with TestClient(api) as client:
        deadline = time.monotonic() + 30
        while True:
            text = client.get("/metrics", headers=auth["viewer"]).text
            backlog = re.search(r'^tokentrail_sink_backlog\{sink="local"\} (\d+)$', text, re.M)
            delivered = re.search(
                r'^tokentrail_sink_delivered_total\{sink="local"\} (\d+)$', text, re.M
            )
            assert backlog and delivered, text
            if int(backlog.group(1)) == 0 and int(delivered.group(1)) > 0:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
    assert "# TYPE tokentrail_sink_backlog gauge" in text
    assert 'tokentrail_sink_failed_total{sink="local"} 0' in text
    assert 'tokentrail_sink_dropped_total{sink="local"} 0' in text
