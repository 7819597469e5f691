"""`tokentrail ingest`: files, stdin or a Kafka topic into the store."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from tokentrail.batch import Batch
from tokentrail.catalog import load_catalog
from tokentrail.cli.app import DbOption, app, err, open_store, settings
from tokentrail.cli.detect import CatalogOption, RulesOption
from tokentrail.detect.engine import PassResult
from tokentrail.detect.setup import detection_for
from tokentrail.errors import TokentrailError
from tokentrail.graph.scores import ScoreKeeper
from tokentrail.ingest.files import RecordFile
from tokentrail.ingest.pipeline import BatchHook, Pipeline, Totals
from tokentrail.ingest.reader import KafkaReader
from tokentrail.ingest.replay import ingest_file

log = logging.getLogger(__name__)


class InputFormat(StrEnum):
    """`--format`: one of tokentrail.ingest.formats.FORMATS, or auto."""

    auto = "auto"
    events = "events"
    cloudtrail = "cloudtrail"
    otlp = "otlp"
    zipkin = "zipkin"


@app.command()
def ingest(
    files: Annotated[
        list[str] | None,
        typer.Argument(
            help="JSON lines, JSON array or JSON document files, gzipped or not; `-` for stdin."
        ),
    ] = None,
    db: DbOption = Path("tokentrail.duckdb"),
    fmt: Annotated[
        InputFormat,
        typer.Option(
            "--format",
            help="Input format: tokentrail events, AWS CloudTrail, OTLP/JSON traces or Zipkin v2"
            " spans; auto detects it per file (per message on Kafka).",
        ),
    ] = InputFormat.auto,
    kafka: Annotated[
        str | None, typer.Option("--kafka", help="Consume from this broker (HOST:PORT).")
    ] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Topic to consume.")] = None,
    group: Annotated[str, typer.Option("--group", help="Consumer group id.")] = "tokentrail",
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", help="Exit after this many seconds with no new message."),
    ] = None,
    no_detect: Annotated[
        bool, typer.Option("--no-detect", help="Store events without running detectors.")
    ] = False,
    catalog: CatalogOption = None,
    rules: RulesOption = None,
) -> None:
    """Validate events and store them; bad records go to the dead-letter table.

    Examples:
      tokentrail ingest events.jsonl.gz --db audit.duckdb
      tokentrail ingest 123456789012_CloudTrail_us-east-1_20240730T2130Z.json.gz --db audit.duckdb
      tokentrail ingest trace.json --format zipkin --db audit.duckdb
      tokentrail ingest --kafka 127.0.0.1:9092 --topic api-calls --group tt --db audit.duckdb
    """
    if bool(files) == bool(kafka):
        raise TokentrailError("give either FILES or --kafka HOST:PORT --topic T")
    if kafka and not topic:
        raise TokentrailError("--kafka needs --topic")
    cfg = settings()
    with open_store(db) as store:
        engine = None if no_detect else detection_for(store, catalog_path=catalog, rules_path=rules)
        # Keep blast radius scores under the catalog current as we go: detection's (given or
        # remembered), else the one given with --no-detect.
        scoring = engine.catalog if engine else load_catalog(catalog) if catalog else None
        keeper = ScoreKeeper(store, scoring) if scoring is not None else None
        hooks: list[BatchHook] = [h.on_batch for h in (engine, keeper) if h is not None]
        with Pipeline(store, cfg, hooks=hooks) as pipeline:
            if kafka and topic:
                _ingest_kafka(pipeline, kafka, topic, group, idle_exit, fmt)
                origin = f"{kafka}/{topic}"
            else:
                for name in files or []:
                    _ingest_file(pipeline, name, cfg.file_batch_size, fmt)
                origin = ", ".join(files or [])
        if engine is not None:
            engine.finish()
        if keeper is not None:
            keeper.refresh()
    _summary(pipeline.totals, origin)
    if engine is not None:
        _detect_summary(engine.totals)


def _ingest_file(pipeline: Pipeline, name: str, batch_size: int, fmt: str) -> None:
    source = RecordFile(name)
    with _file_progress(source) as advance:
        ingest_file(pipeline, source, fmt=fmt, batch_size=batch_size, progress=advance)


@contextmanager
def _file_progress(source: RecordFile) -> Iterator[Callable[[], None]]:
    """A progress bar on a terminal (by bytes read); nothing when stderr is piped."""
    if not err.is_terminal or source.size is None:
        yield lambda: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(Path(source.name).name, total=source.size)
        yield lambda: progress.update(task, completed=source.consumed())


def _ingest_kafka(
    pipeline: Pipeline,
    bootstrap: str,
    topic: str,
    group: str,
    idle_exit: float | None,
    fmt: str,
) -> None:
    source = KafkaReader(pipeline, bootstrap=bootstrap, topic=topic, group=group, fmt=fmt)

    def stop(signum: int, frame: FrameType | None) -> None:
        source.stop_requested.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()

    def show(batch: Batch) -> None:
        if err.is_terminal:
            rate = pipeline.totals.read / max(time.monotonic() - started, 1e-6)
            err.print(
                f"{pipeline.totals.read:,} read, {pipeline.totals.stored:,} stored,"
                f" {pipeline.totals.dead_letters:,} dead letters ({rate:,.0f}/s)",
                end="\r",
            )

    try:
        source.run(idle_exit=idle_exit, on_batch=show)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _summary(totals: Totals, origin: str) -> None:
    reasons = ", ".join(f"{n:,} {r}" for r, n in sorted(totals.reasons.items()))
    err.print(
        f"ingested {totals.read:,} records from {origin}: {totals.stored:,} stored,"
        f" {totals.duplicates:,} duplicates skipped, {totals.dead_letters:,} dead-lettered"
        + (f" ({reasons})" if reasons else ""),
        highlight=False,
        markup=False,
    )


def _detect_summary(totals: PassResult) -> None:
    errors = ", ".join(f"{d} {n}" for d, n in sorted(totals.errors.items()))
    err.print(
        f"detection: {totals.alerts_new:,} new alerts, {totals.alerts_updated:,} updated"
        f" ({totals.late:,} late events)" + (f"; detector errors: {errors}" if errors else ""),
        highlight=False,
        markup=False,
    )
