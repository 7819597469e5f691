"""`tokentrail ingest` from files and stdin, run as an operator would: the real command."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from factories import call, jsonl, write_events

TOKENTRAIL = str(Path(sys.executable).parent / "tokentrail")


def run(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENTRAIL, *map(str, args)],
        input=stdin.decode("utf-8", "surrogateescape"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stats(db: Path) -> dict[str, Any]:
    result = run("stats", "--db", db, "--format", "json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_jsonl_array_gzip_and_stdin_all_ingest(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    lines = write_events(tmp_path / "a.jsonl", [call() for _ in range(5)])
    array = tmp_path / "b.json"
    array.write_bytes(msgspec.json.encode([call() for _ in range(4)]))
    zipped = tmp_path / "c.jsonl.gz"
    zipped.write_bytes(gzip.compress(jsonl([call() for _ in range(3)])))
    assert run("ingest", lines, array, zipped, "--db", db).returncode == 0
    assert run("ingest", "-", "--db", db, stdin=jsonl([call(), call()])).returncode == 0
    assert stats(db) | {"dead_letter_reasons": None} == {
        "events": 14,
        "dead_letters": 0,
        "tokens": 1,
        "token_edges": 1,
        "alerts": 0,
        "dead_letter_reasons": None,
    }


BAD_CORPUS: list[tuple[bytes, str]] = [
    (b'{"event_id": "t1", "ts": 17', "unparsable JSON"),
    (msgspec.json.encode(call(status="teapot")), "invalid event"),
    (msgspec.json.encode({k: v for k, v in call().items() if k != "target"}), "invalid event"),
    (b"\x89PNG\r\x1a\x00\x00binary", "unparsable JSON"),
    (msgspec.json.encode(call(source="caf\u00e9")).replace(b"\xc3\xa9", b"\xe9"), "not UTF-8"),
    (msgspec.json.encode(call(attributes={"pad": "x" * 2_000_000})), "event is"),
]


def test_a_bad_corpus_is_dead_lettered_line_by_line_and_good_events_kept(tmp_path: Path) -> None:
    good = [call() for _ in range(3)]
    secret = call(token_id="ghp_" + "S3cr3t" * 6)
    duplicate = good[0]
    body = b"".join(
        [jsonl(good[:2])]
        + [raw + b"\n" for raw, _ in BAD_CORPUS]
        + [jsonl([secret, duplicate, good[2]])]
    )
    path = tmp_path / "bad.jsonl"
    path.write_bytes(body)
    db = tmp_path / "t.duckdb"
    result = run("ingest", path, "--db", db)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "1 duplicates skipped" in result.stderr
    counts = stats(db)
    assert (counts["events"], counts["dead_letters"]) == (4, len(BAD_CORPUS))
    import duckdb

    with duckdb.connect(str(db), read_only=True) as conn:
        letters = conn.execute(
            "SELECT position, reason, origin_name FROM dead_letters ORDER BY position"
        ).fetchall()
        token_ids = {r[0] for r in conn.execute("SELECT token_id FROM events").fetchall()}
    assert [p for p, _, _ in letters] == list(range(3, 3 + len(BAD_CORPUS)))
    for (_, reason, origin), (_, expected) in zip(letters, BAD_CORPUS, strict=True):
        assert reason.startswith(expected)
        assert origin == str(path)
    assert not any(t.startswith("ghp_") for t in token_ids)
    assert db.read_bytes().find(b"S3cr3tS3cr3t") == -1


def test_an_unsplittable_array_file_becomes_one_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'[{"event_id": "a"}, {"event_id": ')
    db = tmp_path / "t.duckdb"
    assert run("ingest", path, "--db", db).returncode == 0
    assert stats(db)["dead_letters"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "missing.jsonl", "--db", "{tmp}/t.duckdb"], "cannot read missing.jsonl"),
        (["ingest", "{tmp}/ok.jsonl", "--db", "{tmp}/no/such/t.duckdb"], "does not exist"),
        (["ingest", "--db", "{tmp}/t.duckdb"], "give either FILES or --kafka"),
        (["ingest", "--kafka", "127.0.0.1:1", "--db", "{tmp}/t.duckdb"], "--kafka needs --topic"),
    ],
)
def test_operator_errors_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    write_events(tmp_path / "ok.jsonl", [call()])
    result = run(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["ingest", "stats", "schema"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert "Example" in result.stdout


def test_schema_prints_the_shipped_json_schema() -> None:
    result = run("schema")
    assert json.loads(result.stdout)["required"][:3] == ["event_id", "ts", "token_id"]
