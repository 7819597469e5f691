"""Test data built by factories: events with defaults, written through the real pipeline."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from tokentrail.batch import Batch
from tokentrail.config import Settings
from tokentrail.ingest.pipeline import Pipeline
from tokentrail.store import BatchResult, Store

_ids = itertools.count(1)

# 2026-03-02T09:00:00Z, a Monday morning: a plausible working hour for every default event.
T0_MS = 1_772_442_000_000


def call(**overrides: Any) -> dict[str, Any]:
    """One event of the contract with sensible defaults; override any field by keyword.

    >>> call(target="payments-db", scope="payments:admin")["target"]
    'payments-db'
    """
    n = next(_ids)
    event: dict[str, Any] = {
        "event_id": f"ev-{n}",
        "ts": T0_MS + n * 1000,
        "token_id": "tok-invoicer-1",
        "identity": "spiffe://prod/ns/billing/sa/invoicer",
        "source": "invoicer",
        "target": "ledger-api",
        "operation": "GET /ledger",
        "scope": "ledger:read",
        "environment": "prod",
        "identity_kind": "service",
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


def encode(event: dict[str, Any]) -> bytes:
    return msgspec.json.encode(event)


def jsonl(events: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(encode(e) + b"\n" for e in events)


def write_events(path: Path, events: Iterable[dict[str, Any]]) -> Path:
    """Write events as a JSON lines file and return its path."""
    path.write_bytes(jsonl(events))
    return path


def ingest(
    store: Store, records: Iterable[dict[str, Any] | bytes], *, batch_size: int = 10_000
) -> list[BatchResult]:
    """Feed records (events or raw bytes) through the real pipeline in batches of `batch_size`."""
    pipeline = Pipeline(store, Settings())
    results = []
    batch = Batch("file", "factory")
    for position, record in enumerate(records, start=1):
        raw = record if isinstance(record, bytes) else encode(record)
        pipeline.feed(batch, raw, None, position)
        if len(batch) >= batch_size:
            results.append(pipeline.write(batch))
            batch = Batch("file", "factory")
    if len(batch):
        results.append(pipeline.write(batch))
    return results
