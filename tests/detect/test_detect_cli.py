"""The CLI contract of detection: `ingest` detects, `detect` backfills, `alerts`, `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

from factories import T0_MS, call, write_events
from typer.testing import CliRunner

from tokentrail.cli import app

CATALOG = """
[[service]]
name = "payments-db"
environment = "prod"
sensitivity = 10

[[identity]]
name = "spiffe://prod/ns/billing/sa/invoicer"
allowed_targets = ["ledger-api"]
"""

FIELDS = {
    "alert_id", "detector", "severity", "score", "title", "token_id", "identity", "first_seen",
    "last_seen", "count", "event_ids", "mitre", "owasp_nhi", "status",
}  # fmt: skip


def test_ingest_detects_and_alerts_prints_the_contract(tmp_path: Path) -> None:
    events = [call(ts=T0_MS + n * 1000, target="payments-db", event_id=f"p{n}") for n in range(3)]
    source = write_events(tmp_path / "e.jsonl", events)
    (tmp_path / "catalog.toml").write_text(CATALOG)
    db = str(tmp_path / "a.duckdb")
    runner = CliRunner()
    done = runner.invoke(
        app, ["ingest", str(source), "--db", db, "--catalog", str(tmp_path / "catalog.toml")]
    )
    assert done.exit_code == 0, done.output
    listed = runner.invoke(app, ["alerts", "--db", db, "--format", "json"])
    assert listed.exit_code == 0, listed.output
    alerts = [json.loads(line) for line in listed.stdout.splitlines()]
    reach = [a for a in alerts if a["detector"] == "unexpected_reach"]
    assert len(reach) == 1
    assert set(reach[0]) >= FIELDS
    assert reach[0]["count"] == 3 and reach[0]["event_ids"] == ["p0", "p1", "p2"]
    assert reach[0]["first_seen"] == "2026-03-02T09:00:00.000Z"
    assert reach[0]["severity"] in ("medium", "high", "critical")
    ocsf = runner.invoke(app, ["alerts", "--db", db, "--format", "ocsf"])
    assert json.loads(ocsf.stdout.splitlines()[0])["class_uid"] == 2004
    # A backfill afterwards finds nothing new and duplicates nothing; the catalog is remembered.
    again = runner.invoke(app, ["detect", "--db", db])
    assert again.exit_code == 0, again.output
    relisted = runner.invoke(app, ["alerts", "--db", db, "--format", "json"])
    assert relisted.stdout == listed.stdout


def test_no_detect_then_backfill(tmp_path: Path) -> None:
    events = [call(ts=T0_MS + n * 1000, target="payments-db", event_id=f"p{n}") for n in range(3)]
    source = write_events(tmp_path / "e.jsonl", events)
    (tmp_path / "catalog.toml").write_text(CATALOG)
    db = str(tmp_path / "a.duckdb")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(source), "--db", db, "--no-detect"]).exit_code == 0
    assert runner.invoke(app, ["alerts", "--db", db, "--format", "json"]).stdout == ""
    done = runner.invoke(app, ["detect", "--db", db, "--catalog", str(tmp_path / "catalog.toml")])
    assert done.exit_code == 0, done.output
    listed = runner.invoke(app, ["alerts", "--db", db, "--format", "json"])
    assert any(json.loads(x)["detector"] == "unexpected_reach" for x in listed.stdout.splitlines())
