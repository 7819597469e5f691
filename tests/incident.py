"""A small incident for the investigation tests and the notebook: a credential pivot written
through the real pipeline (`tokentrail ingest --catalog`, which detects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from factories import T0_MS, call, write_events
from typer.testing import CliRunner

from tokentrail.cli import app
from tokentrail.simulate import World, WorldSpec, parse_attacks, write_world

NEWSLETTER = "spiffe://prod/ns/marketing/sa/newsletter"
PAYMENTS = "spiffe://prod/ns/payments/sa/payments-api"
MINUTE = 60_000

CATALOG = f"""
[[service]]
name = "payments-db"
environment = "prod"
sensitivity = 10

[[service]]
name = "hr-db"
environment = "prod"
sensitivity = 9

[[identity]]
name = "{NEWSLETTER}"
environment = "prod"
allowed_targets = ["email-relay", "secrets-vault"]
"""


def _newsletter(minute: float, **fields: Any) -> dict[str, Any]:
    event = {"identity": NEWSLETTER, "source": "newsletter", "token_id": "svid-1", "scope": None}
    return call(ts=T0_MS + int(minute * MINUTE), **(event | fields))


def pivot_events() -> list[dict[str, Any]]:
    """The newsletter's workload token reads a secret, assumes a role (ASIA1), which calls the
    payments API (whose own token then reads payments-db below it) and creates a key (AKIA1)
    that reads hr-db; an unrelated call two hours later moves the store's clock on."""
    return [
        *(_newsletter(n, event_id=f"warm-{n}", target="email-relay", operation="POST /send")
          for n in range(3)),
        _newsletter(10, event_id="secret", target="secrets-vault",
                    operation="secretsmanager:GetSecretValue", resource="prod/payments/creds"),
        _newsletter(11, event_id="assume", target="sts", operation="sts:AssumeRole",
                    resource="role/payments-operator",
                    attributes={"issued_token": {"token_id": "ASIA1"}}),
        _newsletter(12, event_id="charges", token_id="ASIA1", target="payments-api",
                    operation="GET /charges", trace_id="t1", span_id="s1",
                    token={"kind": "sts-session", "parent_token_id": "svid-1",
                           "expires_at": "2026-03-02T10:00:00Z"}),
        call(event_id="deputy", ts=T0_MS + 12 * MINUTE + 500, identity=PAYMENTS,
             source="payments-api", token_id="tok-pay", target="payments-db",
             operation="GET /rows", scope=None, trace_id="t1", span_id="s2",
             parent_span_id="s1"),
        _newsletter(13, event_id="newkey", token_id="ASIA1", target="iam",
                    operation="iam:CreateAccessKey", resource="user/ops"),
        _newsletter(14, event_id="hr", token_id="AKIA1", target="hr-db",
                    operation="GET /employees",
                    token={"kind": "access-key", "parent_token_id": "ASIA1"}),
        call(event_id="later", ts=T0_MS + 120 * MINUTE, token_id="tok-other", identity="other",
             source="cron", target="status-page"),
    ]  # fmt: skip


def ingest_with_catalog(events: Path, catalog: Path, db: Path) -> Path:
    done = CliRunner().invoke(
        app, ["ingest", str(events), "--db", str(db), "--catalog", str(catalog)]
    )
    assert done.exit_code == 0, done.output
    return db


def pivot_db(folder: Path) -> Path:
    """The hand-built pivot above, ingested and detected."""
    (folder / "catalog.toml").write_text(CATALOG)
    source = write_events(folder / "events.jsonl", pivot_events())
    return ingest_with_catalog(source, folder / "catalog.toml", folder / "pivot.duckdb")


def simulated_db(folder: Path) -> Path:
    """Two simulated days at a small scale with a credential pivot (a token family: workload
    token -> AssumeRole session -> access key) and a token replay; seed 7."""
    spec = WorldSpec(
        seed=7, days=2, scale=0.1, attacks=parse_attacks("credential_pivot,token_replay")
    )
    write_world(World(spec), folder)
    return ingest_with_catalog(
        folder / "events.jsonl", folder / "catalog.toml", folder / "simulated.duckdb"
    )
