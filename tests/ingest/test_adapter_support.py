"""Helpers shared by the adapter tests (no tests here): run an adapter, validate as ingest does."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from tokentrail.config import AdapterSettings
from tokentrail.events import EventDecoder
from tokentrail.ingest.adapters import Item, Mapped, Unmapped

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOKENTRAIL = str(Path(sys.executable).parent / "tokentrail")
DECODER = EventDecoder(salt=b"adapter-tests")

AdaptFn = Callable[[bytes, AdapterSettings], list[Item]]


def mapped(
    adapt: AdaptFn, record: bytes | dict[str, Any] | list[Any], **settings: Any
) -> list[dict[str, Any]]:
    """The events an adapter makes of one record, each checked by the contract decoder.

    Each comes back as its JSON (a dict), with the adapter's flags under `"flags"` when any.
    """
    raw = record if isinstance(record, bytes) else msgspec.json.encode(record)
    out = []
    for item in adapt(raw, AdapterSettings(**settings)):
        assert isinstance(item, Mapped), item
        DECODER.decode(item.event)  # raises on anything the contract refuses
        event = json.loads(item.event)
        if item.flags:
            event["flags"] = list(item.flags)
        out.append(event)
    return out


def one(adapt: AdaptFn, record: bytes | dict[str, Any] | list[Any], **settings: Any) -> Any:
    [event] = mapped(adapt, record, **settings)
    return event


def unmapped(adapt: AdaptFn, record: bytes | dict[str, Any] | list[Any]) -> list[Unmapped]:
    raw = record if isinstance(record, bytes) else msgspec.json.encode(record)
    return [i for i in adapt(raw, AdapterSettings()) if isinstance(i, Unmapped)]


def read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real `tokentrail` command, as an operator runs it."""
    return subprocess.run(
        [TOKENTRAIL, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )


def stats(db: Path) -> dict[str, Any]:
    result = run("stats", "--db", db, "--format", "json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied; a nested dict overrides key by key, None removes a key."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
