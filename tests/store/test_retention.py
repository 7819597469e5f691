"""Retention (`tokentrail prune`) and backup (`tokentrail backup`) through the CLI."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import Result
from factories import T0_MS, call, ingest, write_events
from typer.testing import CliRunner

from tokentrail.cli import app
from tokentrail.errors import TokentrailError
from tokentrail.store import Store

HOUR_MS = 3_600_000
CUTOFF = "2026-03-02T12:00:00Z"  # T0 is 09:00: three hours of "old" events before it


def tokentrail(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def refused(result: Result) -> str:
    """The one-line error a refused command prints (`tokentrail.cli.main` prints it)."""
    assert isinstance(result.exception, TokentrailError), result.output
    return str(result.exception)


def old_and_new() -> list[dict[str, object]]:
    """Ten calls an hour apart from T0, through one token, each in its own trace."""
    return [
        call(event_id=f"e{i}", ts=T0_MS + i * HOUR_MS, trace_id=f"t{i}", span_id="s1")
        for i in range(10)
    ]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.duckdb"
    events = write_events(tmp_path / "events.jsonl", old_and_new())
    done = tokentrail("ingest", str(events), "--db", str(path))
    assert done.exit_code == 0, done.output
    return path


def counts(path: Path) -> dict[str, int]:
    with Store.open(path) as store:
        return store.stats()


def test_prune_deletes_old_events_and_keeps_aggregates(db: Path, tmp_path: Path) -> None:
    edges_before = duckdb.connect(str(db)).sql("SELECT sum(calls) FROM token_edges").fetchall()
    archive = tmp_path / "archive"

    done = tokentrail("prune", "--db", str(db), "--before", CUTOFF, "--archive", str(archive))

    assert done.exit_code == 0, done.output
    assert "deleted 3 events" in done.stdout
    conn = duckdb.connect(str(db))
    assert conn.sql("SELECT min(event_id), count(*) FROM events").fetchall() == [("e3", 7)]
    assert conn.sql("SELECT count(*) FROM traces").fetchall() == [(7,)]
    # The token's reach still counts every call it made.
    assert conn.sql("SELECT sum(calls) FROM token_edges").fetchall() == edges_before
    archived = conn.sql(
        f"SELECT list(event_id ORDER BY event_id) FROM '{archive}/events-before-*.parquet'"
    ).fetchall()
    assert archived == [(["e0", "e1", "e2"],)]


def test_a_replayed_pruned_event_is_dead_lettered_not_counted_twice(db: Path) -> None:
    assert tokentrail("prune", "--db", str(db), "--before", CUTOFF).exit_code == 0

    with Store.open(db) as store:
        ingest(store, old_and_new())  # the whole file again, e.g. a replayed export
        reasons = store.dead_letter_reasons()
        calls = store.conn.execute("SELECT sum(calls) FROM token_edges").fetchall()

    assert [(r.split(":")[0], n) for r, n in reasons] == [
        ("event time before the retention floor 2026-03-02T12", 3)
    ]
    assert calls == [(10,)]
    assert counts(db)["events"] == 7


def test_dry_run_changes_nothing(db: Path) -> None:
    done = tokentrail("prune", "--db", str(db), "--before", CUTOFF, "--dry-run")

    assert done.exit_code == 0, done.output
    assert "would delete 3 events" in done.stdout
    assert counts(db)["events"] == 10


def test_pruning_past_what_detection_saw_needs_force(tmp_path: Path) -> None:
    path = tmp_path / "nodetect.duckdb"
    events = write_events(tmp_path / "events.jsonl", old_and_new())
    assert tokentrail("ingest", str(events), "--db", str(path), "--no-detect").exit_code == 0

    plain = tokentrail("prune", "--db", str(path), "--before", CUTOFF)
    forced = tokentrail("prune", "--db", str(path), "--before", CUTOFF, "--force")

    assert "detection never ran" in refused(plain)
    assert forced.exit_code == 0, forced.output
    assert counts(path)["events"] == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give one of --older-than or --before"),
        (("--older-than", "soon"), "expected a positive age"),
        (("--before", "2026-03-02T12:00:00"), "give an offset"),
    ],
)
def test_bad_cutoffs_are_one_clear_line(db: Path, args: tuple[str, ...], message: str) -> None:
    done = tokentrail("prune", "--db", str(db), *args)

    assert message in refused(done)


def test_backup_is_a_complete_database_and_never_overwrites(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "backup.duckdb"

    first = tokentrail("backup", "--db", str(db), str(out))
    again = tokentrail("backup", "--db", str(db), str(out))

    assert first.exit_code == 0, first.output
    assert counts(out) == counts(db)
    with Store.open(out) as copy:
        assert copy.version == Store.open(db).version
    assert "never overwrite" in refused(again)
