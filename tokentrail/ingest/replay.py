"""Replaying a file (or stdin) through the pipeline: the loop the CLI, demo and benchmarks share."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tokentrail.batch import Batch
from tokentrail.ingest.files import RecordFile
from tokentrail.ingest.formats import file_records
from tokentrail.ingest.pipeline import Pipeline

log = logging.getLogger(__name__)


def ingest_file(
    pipeline: Pipeline,
    source: RecordFile,
    *,
    fmt: str,
    batch_size: int,
    progress: Callable[[], None] = lambda: None,
) -> None:
    """Validate every record of `source` and store it in batches of `batch_size`.

    Each batch is written on the pipeline's writer thread while the next one is validated;
    all are stored when this returns.
    """
    name = source.name
    found, records = file_records(source, fmt)
    log.info("reading %s as %s", name, found)
    feed = pipeline.feeder(found)
    batch = Batch(source.kind, name)
    for position, raw in records:
        feed(batch, raw, None, position)
        if len(batch) >= batch_size:
            pipeline.submit(batch)
            batch = Batch(source.kind, name)
            progress()
    if len(batch):
        pipeline.submit(batch)
    pipeline.drain()
    progress()
