"""Real Zipkin traces (tests/fixtures/zipkin, see NOTICE.md) rebuild into exactly their trees."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tokentrail.cli import app
from tokentrail.graph.chains import load_chain
from tokentrail.ingest import formats
from tokentrail.store import Store

FIXTURES = Path(__file__).parents[1] / "fixtures" / "zipkin"
TRACES = sorted(FIXTURES.glob("*.json*"))

pytestmark = pytest.mark.skipif(
    "zipkin" not in formats.FORMATS, reason="no `zipkin` input format in tokentrail.ingest yet"
)


def spans_of(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    spans: list[dict[str, Any]] = json.loads(data)
    return spans


def hex_id(value: str) -> str:
    return value.lower().zfill(16)


def expected_tree(spans: list[dict[str, Any]]) -> dict[str, tuple[str | None, int]]:
    """span id -> (parent id, depth) straight from the file; a missing parent is a gap (1)."""
    parents: dict[str, str | None] = {}
    for span in spans:
        parent = span.get("parentId")
        key = hex_id(span["id"])
        if parents.get(key) is None:
            parents[key] = hex_id(parent) if parent else None

    def depth(span_id: str) -> int:
        steps, current = 0, span_id
        while True:
            parent = parents[current]
            if parent is None:
                return steps
            if parent not in parents:
                return steps + 1
            steps, current = steps + 1, parent

    return {key: (parent, depth(key)) for key, parent in parents.items()}


@pytest.mark.parametrize("path", TRACES, ids=[p.name for p in TRACES])
def test_a_zipkin_trace_reconstructs_exactly(path: Path, tmp_path: Path) -> None:
    db = tmp_path / "zipkin.duckdb"
    result = CliRunner().invoke(app, ["ingest", str(path), "--format", "zipkin", "--db", str(db)])
    assert result.exit_code == 0, result.output
    spans = spans_of(path)
    expected = expected_tree(spans)
    with Store.open(db) as store:
        [(trace_id,)] = store.conn.execute("SELECT trace_id FROM traces").fetchall()
        assert trace_id == hex_id(spans[0]["traceId"]) or trace_id == spans[0]["traceId"].lower()
        chain = load_chain(store.conn, trace_id=trace_id)
    got = {s.span_id: (s.parent_span_id, s.depth) for s in chain.spans}
    assert got == expected
    assert {o.span_id for o in chain.orphans} == {
        key
        for key, (parent, _) in expected.items()
        if parent is not None and parent not in expected
    }
    assert chain.cycles == []
    # Only ids the file itself repeats (a shared span's client and server halves) are duplicates.
    repeated = {hex_id(s["id"]) for s in spans if sum(t["id"] == s["id"] for t in spans) > 1}
    assert {d.span_id for d in chain.duplicates} <= repeated
    leaves = {s.span_id for s in chain.spans} - {s.parent_span_id for s in chain.spans}
    assert sum(p.count for p in chain.paths) == len(leaves)
