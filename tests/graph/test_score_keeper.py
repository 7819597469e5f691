"""Blast radius scores kept current by ingest (ScoreKeeper), and read by `tokentrail tokens`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from factories import call, write_events
from typer.testing import CliRunner

from tokentrail.catalog import load_catalog
from tokentrail.cli import app
from tokentrail.graph.blast import rank_tokens
from tokentrail.store import graph
from tokentrail.store.graph import refresh_scores, scores_in_parts

CATALOG = """
[[service]]
name = "payments-db"
environment = "prod"
sensitivity = 10
"""


def events(prefix: str, n: int) -> list[dict[str, object]]:
    return [
        *(call(event_id=f"{prefix}-a{i}", token_id="tok-wide", target="payments-db",
               scope="payments:write") for i in range(n)),
        *(call(event_id=f"{prefix}-b{i}", token_id="tok-narrow", target="status-page")
          for i in range(n)),
    ]  # fmt: skip


def ingest(tmp_path: Path, db: Path, name: str, batch: list[dict[str, object]]) -> None:
    (tmp_path / "catalog.toml").write_text(CATALOG)
    result = CliRunner().invoke(
        app,
        ["ingest", str(write_events(tmp_path / name, batch)), "--db", str(db),
         "--catalog", str(tmp_path / "catalog.toml")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def stored_scores(db: Path) -> dict[str, float]:
    rows = duckdb.connect(str(db)).sql("SELECT token_id, score FROM blast_scores").fetchall()
    scores = {token: score for token, score in rows}
    assert len(scores) == len(rows), "a token is scored twice"  # the table has no key
    return scores


def test_ingest_with_a_catalog_leaves_the_ranking_computed_and_exact(tmp_path: Path) -> None:
    db = tmp_path / "audit.duckdb"
    ingest(tmp_path, db, "one.jsonl", events("one", 3))
    first = stored_scores(db)
    # New reach for the narrow token arrives in a later ingest: its stored score must follow.
    ingest(tmp_path, db, "two.jsonl", [call(token_id="tok-narrow", target="payments-db")])
    second = stored_scores(db)

    fresh = duckdb.connect(str(db), read_only=True)  # read-only: scores computed, not cached
    exact = {
        r.token_id: r.blast_radius.score
        for r in rank_tokens(fresh, catalog=load_catalog(tmp_path / "catalog.toml"))
    }
    assert set(first) == {"tok-wide", "tok-narrow"}
    assert second["tok-narrow"] > first["tok-narrow"]
    assert second == exact


def test_tokens_ranks_with_the_catalog_the_database_was_ingested_with(tmp_path: Path) -> None:
    db = tmp_path / "audit.duckdb"
    ingest(tmp_path, db, "one.jsonl", events("one", 3))

    result = CliRunner().invoke(app, ["tokens", "--db", str(db), "--format", "json"])

    ranked = json.loads(result.stdout)
    assert [t["token_id"] for t in ranked] == ["tok-wide", "tok-narrow"]
    assert ranked[0]["blast_radius"]["score"] == stored_scores(db)["tok-wide"]


def test_ingest_without_detection_keeps_scores_for_the_catalog_given(tmp_path: Path) -> None:
    db = tmp_path / "audit.duckdb"
    (tmp_path / "catalog.toml").write_text(CATALOG)
    result = CliRunner().invoke(
        app,
        ["ingest", str(write_events(tmp_path / "e.jsonl", events("one", 2))), "--db", str(db),
         "--catalog", str(tmp_path / "catalog.toml"), "--no-detect"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert set(stored_scores(db)) == {"tok-wide", "tok-narrow"}


def test_two_writers_refreshing_at_once_report_the_conflict_and_leave_the_cursor_usable(
    tmp_path: Path,
) -> None:
    # The consumer's ScoreKeeper and the API's first ranking refresh through two cursors of one
    # database; a refresh that loses must say so and must not leave its cursor aborted.
    db = tmp_path / "audit.duckdb"
    ingest(tmp_path, db, "one.jsonl", events("one", 2))
    catalog = load_catalog(tmp_path / "catalog.toml")
    with duckdb.connect(str(db)) as conn:
        conn.execute("UPDATE blast_state SET batch = 0")  # the scores are stale for every writer
        holder, loser = conn.cursor(), conn.cursor()
        holder.begin()  # a refresh under way in the other writer
        holder.execute("UPDATE blast_state SET batch = 1000000")
        with pytest.raises(duckdb.TransactionException, match="Conflict"):
            refresh_scores(loser, catalog=catalog)
        holder.commit()
        # The winner's refresh is current: the loser reads it and writes nothing.
        assert refresh_scores(loser, catalog=catalog) == catalog.fingerprint
        assert loser.execute("SELECT count(*) FROM blast_scores").fetchall() == [(2,)]


def test_a_first_refresh_that_loses_to_another_writer_finds_the_scores_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh database: neither writer has stored scores for the catalog. The other writer's
    # refresh commits its `blast_state` row while this one's transaction is under way; DuckDB
    # then refuses this one's row as a duplicate key (seen in `make test`: GET /v1/tokens
    # answered 503 while the consumer's ScoreKeeper refreshed).
    db = tmp_path / "audit.duckdb"
    ingest(tmp_path, db, "one.jsonl", events("one", 2))
    catalog = load_catalog(tmp_path / "catalog.toml")
    with duckdb.connect(str(db)) as conn:
        conn.execute("DELETE FROM blast_scores")
        conn.execute("DELETE FROM blast_state")
        holder, loser = conn.cursor(), conn.cursor()
        holder.begin()  # the other writer's refresh of a new catalog, about to commit
        holder.execute("DELETE FROM blast_state")
        holder.execute("INSERT INTO blast_state VALUES (?, 1000000)", [catalog.fingerprint])
        real_registered, committing = graph.registered, [True]

        @contextmanager
        def other_writer_commits_first(*args: Any, **tables: Any) -> Iterator[None]:
            if "tt_fresh_scores" in tables and committing:
                holder.commit()  # inside the loser's write transaction, after its deletes
                committing.clear()
            with real_registered(*args, **tables):
                yield

        monkeypatch.setattr(graph, "registered", other_writer_commits_first)
        assert refresh_scores(loser, catalog=catalog) == catalog.fingerprint

        # The winner's row stands; the loser wrote nothing and its cursor reads on.
        assert loser.execute("SELECT batch FROM blast_state").fetchall() == [(1000000,)]


def test_scores_stored_under_the_keyed_table_of_version_7_are_dropped_and_recomputed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "audit.duckdb"
    ingest(tmp_path, db, "one.jsonl", events("one", 2))
    with duckdb.connect(str(db)) as conn:  # back to version 7: scores keyed by (catalog, token)
        conn.execute("DELETE FROM schema_migrations WHERE version >= 8")
        conn.execute("DROP TABLE blast_scores")
        conn.execute(
            "CREATE TABLE blast_scores (catalog VARCHAR, token_id VARCHAR, score DOUBLE,"
            " direct_targets BIGINT, transitive_targets BIGINT, environments VARCHAR[],"
            " PRIMARY KEY (catalog, token_id))"
        )
        conn.execute("INSERT INTO blast_scores VALUES ('old', 'tok-wide', 1, 1, 0, [])")
    ingest(tmp_path, db, "two.jsonl", [call(token_id="tok-narrow", target="payments-db")])
    with duckdb.connect(str(db), read_only=True) as conn:
        keys = conn.sql(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'blast_scores'"
            " AND constraint_type = 'PRIMARY KEY'"
        ).fetchall()
        catalogs = conn.sql("SELECT DISTINCT catalog FROM blast_scores").fetchall()
    assert keys == [(0,)]
    assert catalogs == [(load_catalog(tmp_path / "catalog.toml").fingerprint,)]
    assert set(stored_scores(db)) == {"tok-wide", "tok-narrow"}


def test_a_catalog_changed_by_copy_is_scored_as_a_new_catalog(tmp_path: Path) -> None:
    (tmp_path / "catalog.toml").write_text(CATALOG)
    catalog = load_catalog(tmp_path / "catalog.toml")
    before = catalog.fingerprint  # read once, as a ranking does
    halved = catalog.model_copy(
        update={"score": catalog.score.model_copy(update={"chain": catalog.score.chain / 2})}
    )
    assert halved.fingerprint != before
    assert catalog.model_copy().fingerprint == before


def test_scores_in_parts_equal_the_scores_of_one_query(tmp_path: Path) -> None:
    # The fallback when one query over every token runs out of DuckDB's memory limit.
    db = tmp_path / "audit.duckdb"
    ingest(tmp_path, db, "one.jsonl", [*events("one", 3), call(token_id="tok-third")])
    catalog = load_catalog(tmp_path / "catalog.toml")
    with duckdb.connect(str(db), read_only=True) as conn:
        whole = rank_tokens(conn, catalog=catalog)
        parts = scores_in_parts(conn, catalog=catalog, chunk=2)  # 2 + 1 tokens
    assert parts.num_rows == 3
    by_token = {r["token_id"]: r["score"] for r in parts.to_pylist()}
    assert by_token == {r.token_id: r.blast_radius.score for r in whole}
