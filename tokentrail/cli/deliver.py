"""`tokentrail deliver`: send alerts to the SIEM sinks of the settings file (docs/SINKS.md)."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from tokentrail.cli.app import DbOption, app, err, settings
from tokentrail.errors import ConfigError, StoreError
from tokentrail.sinks.delivery import Deliverer
from tokentrail.store import Store


@app.command()
def deliver(
    db: DbOption,
    once: Annotated[
        bool,
        typer.Option(
            "--once", help="Deliver what is owed now (until done or every sink fails), then exit."
        ),
    ] = False,
) -> None:
    """Deliver every alert version to every sink of the settings file, at least once, in order;
    failed sends are retried with backoff. Runs until interrupted unless --once.

    Example: tokentrail --config tokentrail.toml deliver --db audit.duckdb --once
    """
    policy = settings().sinks
    if not any(o.enabled for o in policy.outputs):
        raise ConfigError("no sinks configured: add [[sinks.outputs]] to the settings file")
    if not Path(db).exists():
        raise StoreError(f"no database at {db}; ingest events first (tokentrail ingest ...)")
    stop = threading.Event()
    if not once:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deliverer = Deliverer.from_settings(policy)
    try:
        with Store.open(db) as store:
            with contextlib.suppress(KeyboardInterrupt):
                deliverer.run(store.conn, stop, drain=once)
            reports = deliverer.reports
    finally:
        deliverer.close()
    for r in reports:
        state = "failing" if r.failed else "waiting (backoff)" if r.waiting else "ok"
        err.print(
            f"sink {r.sink}: {state}, {r.delivered:,} delivered in the last pass,"
            f" {r.backlog:,} owed" + (f"; {r.error}" if r.error else ""),
            highlight=False,
            markup=False,
        )
    if once and any(r.failed or r.waiting for r in reports):
        raise typer.Exit(1)
