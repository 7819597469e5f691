"""`tokentrail simulate` as an operator runs it, and its output through `tokentrail ingest`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOKENTRAIL = str(Path(sys.executable).parent / "tokentrail")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENTRAIL, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )


def test_simulate_then_ingest_stores_every_event(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    result = run("simulate", "--out", out, "--days", "1", "--scale", "0.1", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    (summary,) = result.stderr.splitlines()
    assert summary.startswith("simulated 1 day at scale 0.1 (seed 3): ")
    labels = json.loads((out / "labels.json").read_text())
    assert labels["seed"] == 3 and len(labels["attacks"]) == 9

    db = tmp_path / "t.duckdb"
    ingested = run("ingest", out / "events.jsonl", "--db", db, "--no-detect")
    assert ingested.returncode == 0, ingested.stderr
    stats = run("stats", "--db", db, "--format", "json")
    counts = json.loads(stats.stdout)
    assert counts["dead_letters"] == 0
    assert counts["events"] == labels["events"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --out DIR, --kafka HOST:PORT --topic T, or both"),
        (("--out", "x", "--attacks", "replay"), "unknown attack family 'replay'"),
        (("--kafka", "127.0.0.1:9"), "--kafka needs --topic"),
        (("--out", "x", "--days", "0"), "days must be in"),
        (("--out", "x", "--start", "monday"), "not an RFC 3339 time"),
    ],
)
def test_bad_invocations_are_one_clear_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = subprocess.run(
        [TOKENTRAIL, "simulate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("tokentrail: error: ") and message in line
