"""`tokentrail demo`: broker, simulated attacks, ingest, detection, API and web view, live."""

from __future__ import annotations

import shlex
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Final, Protocol

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tokentrail.cli.app import app, settings
from tokentrail.demo import SEVERITIES, Demo, DemoPlan, Figures
from tokentrail.detect.model import short
from tokentrail.errors import TokentrailError
from tokentrail.simulate.core import DAY, fmt_ts
from tokentrail.store.alerts import AlertRow

_LIVE_ALERTS: Final = 8
_PLAIN_EVERY_S: Final = 5.0
_CATCH_UP_S: Final = 60.0  # a bounded run waits this long for the consumer to read the rest
_SEVERITY_STYLE: Final = {
    "critical": "bold white on red",
    "high": "bold red",
    "medium": "yellow",
    "low": "cyan",
    "info": "dim",
}


@app.command()
def demo(
    db: Annotated[
        Path,
        typer.Option(
            "--db",
            help="The DuckDB file; an existing one is added to (see --fresh).",
            dir_okay=False,
        ),
    ] = Path("demo.duckdb"),
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            metavar="SECONDS",
            help="Stop after this long and print a summary; without it, run until Ctrl-C.",
        ),
    ] = None,
    rate: Annotated[float, typer.Option("--rate", help="Simulated events per second.")] = 2000.0,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same traffic.")] = 7,
    port: Annotated[
        int, typer.Option("--port", help="API port on 127.0.0.1; 0 picks a free one.")
    ] = 8000,
    days: Annotated[
        float | None,
        typer.Option(
            "--days", help="Simulated days to stream (default: a week, or enough for --duration)."
        ),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Replace the database instead of adding to it.")
    ] = False,
) -> None:
    """Run tokentrail end to end on this machine, nothing else needed: an embedded
    Kafka-protocol broker (Tansu), simulated machine-identity traffic with attacks at --rate
    events/s, ingest and detection, and the API with its web view on 127.0.0.1, with a demo
    API key and a live summary.

    Every attack family fires on the first simulated day (within seconds at the default rate)
    and again after the detectors' warm-up day. Ctrl-C (or SIGTERM) stops it all cleanly and
    leaves the database for inspection; run again to add to it, or pass --fresh.

    Examples:
      tokentrail demo
      tokentrail demo --duration 60 --port 0 --db /tmp/demo.duckdb --fresh
    """
    plan = DemoPlan(
        db=db, port=port, rate=rate, seed=seed, days=days, duration_s=duration, fresh=fresh
    )
    console = Console(soft_wrap=True, highlight=False)
    interrupted = threading.Event()
    outcome: str | None = None
    with _signals(interrupted):
        running = Demo(plan, settings())
        with running:
            _header(console, running)
            view: _View = (
                _LiveView(console, running) if console.is_terminal else _PlainView(console)
            )
            with view:
                outcome = _watch(running, view, interrupted)
            console.print("stopping: the consumer finishes its batch, then the API and the broker")
        _summary(console, running)
    if outcome is not None:
        raise TokentrailError(outcome)


@contextmanager
def _signals(interrupted: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM ask for a clean stop instead of raising in whatever code runs."""

    def ask(signum: int, frame: FrameType | None) -> None:
        interrupted.set()

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch(running: Demo, view: _View, interrupted: threading.Event) -> str | None:
    """Refresh the view about once a second until Ctrl-C, --duration or a failure; the
    failure's message, else None. A bounded run lets the consumer read what was produced."""
    duration = running.plan.duration_s
    started = time.monotonic()
    draining_since: float | None = None
    while True:
        elapsed = time.monotonic() - started
        figures = running.figures(latest=view.latest)
        failure = running.failure()
        if failure is not None:
            return failure
        if draining_since is not None:
            caught_up = figures.read >= figures.produced
            if caught_up or interrupted.is_set() or time.monotonic() > draining_since + _CATCH_UP_S:
                view.update(figures, elapsed, "stopping")
                return None
            view.update(figures, elapsed, "catching up")
        elif interrupted.is_set():
            view.update(figures, elapsed, "stopping")
            return None
        elif duration is not None and elapsed >= duration:
            running.stop_stream()
            draining_since = time.monotonic()
            continue
        else:
            view.update(figures, elapsed, "streaming" if figures.streaming else "stream finished")
        interrupted.wait(1.0 if duration is None else max(0.05, min(1.0, duration - elapsed)))


class _Rates:
    """Events per second over the last few seconds, from counters sampled once a second."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=6)

    def add(self, produced: int, read: int) -> tuple[float, float]:
        now = time.monotonic()
        self._samples.append((now, produced, read))
        then, produced_then, read_then = self._samples[0]
        seconds = now - then
        if seconds <= 0:
            return 0.0, 0.0
        return (produced - produced_then) / seconds, (read - read_then) / seconds


class _View(Protocol):
    latest: int  # how many of the newest alerts each update needs

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...

    def update(self, figures: Figures, elapsed: float, status: str) -> None: ...


class _LiveView:
    """A rich Live panel redrawn on every update (about once a second)."""

    def __init__(self, console: Console, running: Demo) -> None:
        self.running = running
        self.latest = _LIVE_ALERTS
        self.rates = _Rates()
        self.live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> _LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def update(self, figures: Figures, elapsed: float, status: str) -> None:
        produced_rate, read_rate = self.rates.add(figures.produced, figures.read)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column(justify="right")
        grid.add_column()
        grid.add_row("produced", f"{figures.produced:,}", f"{produced_rate:,.0f} events/s")
        lag = max(0, figures.produced - figures.read)
        grid.add_row("ingested", f"{figures.read:,}", f"{read_rate:,.0f} events/s, lag {lag:,}")
        grid.add_row(
            "stored",
            f"{figures.events:,}",
            f"events, {figures.tokens:,} tokens, {figures.dead_letters:,} dead letters",
        )
        grid.add_row("alerts", f"{sum(figures.alerts.values()):,}", _severities(figures.alerts))
        grid.add_row("event time", "", _event_time(self.running, figures))
        parts: list[RenderableType] = [grid]
        if figures.latest:
            parts.append(_alert_table(figures.latest, self.live.console.width))
        parts.append(_progress(self.running.plan.duration_s, elapsed, status))
        self.live.update(Group(*parts), refresh=True)


class _PlainView:
    """For pipes and CI: new alerts as lines, and a figures line every few seconds."""

    def __init__(self, console: Console) -> None:
        self.console = console
        # Enough to print every alert of a burst between two updates.
        self.latest = 100
        self.rates = _Rates()
        self.seen: set[str] | None = None  # alerts printed (or stored before the run)
        self.last_line = float("-inf")
        self.last_status = ""

    def __enter__(self) -> _PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, figures: Figures, elapsed: float, status: str) -> None:
        produced_rate, read_rate = self.rates.add(figures.produced, figures.read)
        if self.seen is None:
            # The first look, before anything was ingested: alerts of a reused database.
            self.seen = {row.alert_id for row in figures.latest}
        for row in reversed(figures.latest):
            if row.alert_id not in self.seen:
                self.seen.add(row.alert_id)
                self.console.print(f"alert: {_alert_line(row)}", markup=False)
        if time.monotonic() - self.last_line < _PLAIN_EVERY_S and status == self.last_status:
            return
        self.last_line, self.last_status = time.monotonic(), status
        alerts = sum(figures.alerts.values())
        self.console.print(
            f"[{_clock(elapsed)}] {status}: produced {figures.produced:,}"
            f" ({produced_rate:,.0f}/s), ingested {figures.read:,} ({read_rate:,.0f}/s),"
            f" stored {figures.events:,} events, {figures.tokens:,} tokens,"
            f" {figures.dead_letters:,} dead letters, {alerts:,} alerts"
            f" ({_severities(figures.alerts, plain=True)})",
            markup=False,
        )


def _header(console: Console, running: Demo) -> None:
    """Printed once, above the live view, so that it stays in the scrollback."""
    url = running.url
    console.print(
        f"[bold]tokentrail demo[/]: seed {running.plan.seed}, {running.plan.rate:,.0f} events/s"
        f" into topic {running.topic} of an embedded broker"
    )
    console.print(f"  web view   {url}/ui", markup=False)
    console.print(f"  API docs   {url}/docs", markup=False)
    console.print(f"  API key    {running.key}", markup=False)
    console.print(f"  database   {running.plan.db}", markup=False)
    if running.reused_events:
        console.print(
            f"  (adding to {running.reused_events:,} events stored before; --fresh starts over)",
            markup=False,
        )
    console.print(
        f"  try        curl -H 'Authorization: Bearer {running.key}' {url}/v1/alerts", markup=False
    )
    console.print("Ctrl-C stops everything; the database stays for inspection.")


def _summary(console: Console, running: Demo) -> None:
    final = running.final
    db = shlex.quote(str(running.plan.db))
    if final is not None:
        alerts = sum(final.alerts.values())
        console.print(
            f"demo stopped: {final.produced:,} events produced, {final.read:,} ingested;"
            f" {db} holds {final.events:,} events, {final.tokens:,} tokens,"
            f" {final.dead_letters:,} dead letters and {alerts:,} alerts"
            f" ({_severities(final.alerts, plain=True)})",
            markup=False,
        )
    labels = shlex.quote(str(running.world_dir / "labels.json"))
    key = shlex.quote(f"Authorization: Bearer {running.key}")
    port = running.port
    console.print("Next:", markup=False)
    for line in (
        f"tokentrail alerts --db {db} --format table",
        f"tokentrail tokens --db {db} --top 10",
        f"tokentrail evaluate --db {db} --labels {labels} --format table",
        f"tokentrail serve --db {db} --port {port}      # the API again, then:",
        f"curl -H {key} http://127.0.0.1:{port}/v1/alerts",
    ):
        console.print(f"  {line}", markup=False)


def _severities(alerts: dict[str, int], *, plain: bool = False) -> str:
    if plain:
        return ", ".join(f"{alerts.get(s, 0)} {s}" for s in SEVERITIES[:4])
    return "  ".join(f"[{_SEVERITY_STYLE[s]}]{s}[/] {alerts.get(s, 0):,}" for s in SEVERITIES[:4])


def _event_time(running: Demo, figures: Figures) -> str:
    world = running.world
    if world is None:
        return ""
    day = (figures.reached_ms - world.start_ms) // DAY + 1
    total = round((world.end_ms - world.start_ms) / DAY)
    return (
        f"{fmt_ts(figures.reached_ms)[:16].replace('T', ' ')} UTC, simulated day {day} of {total}"
    )


def _alert_table(rows: list[AlertRow], width: int) -> Table:
    """Fixed widths, the title taking the rest: rich would otherwise squeeze the short columns
    out of a narrow terminal first."""
    table = Table(title="latest alerts", title_justify="left", box=None, padding=(0, 1))
    fixed = {"severity": 8, "detector": 16, "identity": 24}
    # Narrow terminals keep what says most: who, which detector, what happened.
    if width >= 100:
        fixed["token"] = 16
    for name, size in fixed.items():
        table.add_column(name, width=size, no_wrap=True, overflow="ellipsis")
    title_width = max(10, width - sum(fixed.values()) - 2 * (len(fixed) + 1))
    table.add_column("title", width=title_width, no_wrap=True, overflow="ellipsis")
    for row in rows:
        cells = [
            Text(row.severity, style=_SEVERITY_STYLE.get(row.severity, "")),
            Text(row.detector),
            Text(short(row.identity)),
            *([Text(row.token_id or "-")] if "token" in fixed else []),
            Text(row.title),
        ]
        table.add_row(*cells)
    return table


def _progress(duration: float | None, elapsed: float, status: str) -> RenderableType:
    grid = Table.grid(padding=(0, 1))
    if duration is None:
        hint = "" if status == "stopping" else "; Ctrl-C stops"
        grid.add_row(Text(f"{_clock(elapsed)} elapsed, {status}{hint}", style="dim"))
        return grid
    bar = ProgressBar(total=duration, completed=min(elapsed, duration), width=40)
    grid.add_row(bar, Text(f"{_clock(elapsed)} / {_clock(duration)}, {status}", style="dim"))
    return grid


def _alert_line(row: AlertRow) -> str:
    return (
        f"{row.severity} {row.detector} identity={row.identity or '-'}"
        f" token={row.token_id or '-'}: {row.title}"
    )


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
