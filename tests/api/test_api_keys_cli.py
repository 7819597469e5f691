"""`tokentrail keys create | list | revoke` on a real file."""

from __future__ import annotations

from pathlib import Path

from factories import call, write_events
from typer.testing import CliRunner

from tokentrail.api.auth import authenticate
from tokentrail.cli import app
from tokentrail.store import Store


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    db = str(tmp_path / "audit.duckdb")
    run("ingest", str(write_events(tmp_path / "e.jsonl", [call()])), "--db", db)
    key = run("keys", "create", "--db", db, "--role", "analyst", "--name", "soc-alice")
    key = key.strip().splitlines()[-1]
    assert key.startswith("tt_")
    listing = run("keys", "list", "--db", db)
    key_id = key.split("_")[1]
    assert key_id in listing and "soc-alice" in listing and key not in listing
    with Store.open(db) as store:
        who = authenticate(store.conn, key)
        assert who is not None and who.role == "analyst"
    run("keys", "revoke", key_id, "--db", db)
    with Store.open(db) as store:
        assert authenticate(store.conn, key) is None


def test_keys_create_refuses_a_bad_role(tmp_path: Path) -> None:
    db = str(tmp_path / "audit.duckdb")
    run("ingest", str(write_events(tmp_path / "e.jsonl", [call()])), "--db", db)
    result = CliRunner().invoke(app, ["keys", "create", "--db", db, "--role", "root",
                                      "--name", "x"])  # fmt: skip
    assert result.exit_code != 0
