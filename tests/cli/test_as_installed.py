"""tokentrail as installed in production, without the dev dependencies: pandas is one of those
(the benchmarks' baselines) and no command may need it. The test venv has it, so the commands
run in an interpreter that cannot import it (bench/as_installed.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from factories import T0_MS, call, write_events

# Runs `tokentrail` in an interpreter that cannot import pandas.
AS_INSTALLED = Path(__file__).parents[2] / "bench" / "as_installed.py"


def tokentrail(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(AS_INSTALLED), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_ingest_detection_and_reads_need_no_pandas(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[[identity]]\nname = "spiffe://prod/ns/billing/sa/invoicer"\n'
        'allowed_targets = ["ledger-api"]\n'
    )
    events = [call(ts=T0_MS + i * 60_000, trace_id=f"t{i % 3}") for i in range(30)]
    events.append(call(ts=T0_MS, event_id="reach", target="payments-db"))
    path = write_events(tmp_path / "events.jsonl", events)
    db = str(tmp_path / "audit.duckdb")
    tokentrail("ingest", str(path), "--db", db, "--catalog", str(catalog))
    stats = json.loads(tokentrail("stats", "--db", db, "--format", "json"))
    assert stats["events"] == 31 and stats["alerts"] >= 1
    lines = tokentrail("alerts", "--db", db, "--format", "json").splitlines()
    alerts = [json.loads(line) for line in lines]
    assert any(a["detector"] == "unexpected_reach" for a in alerts)
    assert json.loads(tokentrail("chain", "t1", "--db", db, "--format", "json"))["spans"]
