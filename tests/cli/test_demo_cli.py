"""`tokentrail demo` as an operator runs it: a subprocess with its own broker, producer,
consumer and API, watched through its output and its API, then through the database it leaves."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tokentrail.cli.app import app
from tokentrail.store import Store
from tokentrail.store import api as sql

TOKENTRAIL = str(Path(sys.executable).parent / "tokentrail")
URL = re.compile(r"web view\s+(http://127\.0\.0\.1:\d+)/ui")
KEY = re.compile(r"API key\s+(tt_\S+)")
STORED = re.compile(r"stored ([\d,]+) events")


@dataclass
class Running:
    """A `tokentrail demo` subprocess whose stdout is read line by line as it comes."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    fresh: queue.Queue[str | None] = field(default_factory=queue.Queue)
    errors: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    def start_reading(self) -> None:
        # One reader per pipe, each the pipe's only reader: a second one (communicate) would
        # take lines, such as the final summary, away from `lines`.
        for target in (self.read, self.read_errors):
            reader = threading.Thread(target=target, daemon=True)
            reader.start()
            self.readers.append(reader)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            self.fresh.put(line)
        self.fresh.put(None)

    def read_errors(self) -> None:
        assert self.process.stderr is not None
        self.errors.extend(self.process.stderr)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 120) -> re.Match[str]:
        """The first line from now on that matches, or fail with the output so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.fresh.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            found = pattern.search(line)
            if found:
                return found
        pytest.fail(f"no line matching {pattern.pattern!r}:\n{self.output}")

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start `tokentrail demo ARGS` (stdout piped: plain lines); killed at the end if alive."""
    started: list[Running] = []

    def start(*args: str, **env: str) -> Running:
        process = subprocess.Popen(
            [TOKENTRAIL, "demo", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | env,
            cwd=tmp_path,
        )
        running = Running(process)
        running.start_reading()
        started.append(running)
        return running

    yield start
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(30)


def stderr_of(running: Running, timeout: float = 180) -> str:
    """Wait for the process to end and both pipes to be read to their end; its stderr."""
    running.process.wait(timeout=timeout)
    for reader in running.readers:
        reader.join(30)
    return "".join(running.errors)


def counts(db: Path) -> sql.Counts:
    with Store.open(db, read_only=True) as store:
        return sql.counts(store.conn)


@pytest.mark.kafka
def test_a_bounded_run_serves_the_api_and_leaves_events_tokens_and_alerts(
    demo: Callable[..., Running],
    tmp_path: Path,
) -> None:
    db = tmp_path / "demo.duckdb"
    running = demo("--duration", "25", "--rate", "2000", "--db", str(db))
    url = running.wait_for(URL).group(1)
    key = running.wait_for(KEY).group(1)

    # While it runs, the API answers: ready once the consumer runs, and alerts with the key.
    with httpx.Client(base_url=url, timeout=10) as client:
        ready = client.get("/readyz")
        for _ in range(100):
            if ready.status_code == 200:
                break
            time.sleep(0.2)
            ready = client.get("/readyz")
        assert ready.json()["consumer"] == "running"
        alerts = client.get("/v1/alerts", headers={"Authorization": f"Bearer {key}"})
        assert alerts.status_code == 200
        assert "data" in alerts.json()
        assert client.get("/v1/alerts").status_code == 401

    err = stderr_of(running)
    assert running.process.returncode == 0, err
    assert "Traceback" not in err
    assert f"{url}/ui" in running.output
    assert f"API key    {key}" in running.output
    assert f"tokentrail alerts --db {db}" in running.output  # the suggested next commands
    stored = counts(db)
    assert stored.events > 0
    assert stored.tokens > 0
    assert sum(stored.alerts.values()) >= 1
    assert stored.dead_letters == 0  # simulated traffic is all valid
    assert (tmp_path / "demo-world" / "labels.json").is_file()


@pytest.mark.kafka
def test_sigint_mid_run_stops_cleanly_and_leaves_a_readable_database(
    demo: Callable[..., Running],
    tmp_path: Path,
) -> None:
    db = tmp_path / "demo.duckdb"
    running = demo("--db", str(db))  # no --duration: runs until interrupted
    running.wait_for(KEY)
    deadline = time.monotonic() + 120
    # Until the consumer has stored something (a figures line every few seconds).
    while int(running.wait_for(STORED).group(1).replace(",", "")) == 0:
        assert time.monotonic() < deadline, running.output

    running.process.send_signal(signal.SIGINT)

    err = stderr_of(running)
    assert running.process.returncode == 0, err
    assert "Traceback" not in err
    assert "demo stopped:" in running.output
    assert counts(db).events > 0


def test_a_port_in_use_is_one_clear_line(
    demo: Callable[..., Running],
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        running = demo("--port", str(port), "--db", str(tmp_path / "demo.duckdb"))
        err = stderr_of(running, timeout=60)

    assert running.process.returncode == 2
    assert err.strip().splitlines() == [
        f"tokentrail: error: port {port} on 127.0.0.1 is in use: choose another with --port,"
        " or --port 0 for any free port"
    ]
    assert not (tmp_path / "demo.duckdb").exists()


def test_a_missing_broker_binary_is_one_clear_line(
    demo: Callable[..., Running],
    tmp_path: Path,
) -> None:
    running = demo("--db", str(tmp_path / "demo.duckdb"), TOKENTRAIL_TANSU="/nonexistent/tansu")
    err = stderr_of(running, timeout=60)

    assert running.process.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tokentrail: error: Tansu broker binary not found")
    assert "/nonexistent/tansu" in lines[0]
    assert not (tmp_path / "demo.duckdb").exists()


def test_help_carries_an_example() -> None:
    result = CliRunner().invoke(app, ["demo", "--help"])

    assert result.exit_code == 0
    assert "tokentrail demo --duration 60" in result.output
