"""Storage faults: a read-only location and a full disk, with the real `tokentrail ingest`.

Each must end the command with exit status 2 and one line on stderr (no traceback), leave the
DuckDB file readable with what was committed before the fault, and a re-run once the fault is gone
must store every event exactly once (batches are transactions; `event_id` makes re-runs idempotent).

Faults are real mounts (a read-only bind mount, a small tmpfs), since chmod does not stop root.
The tests skip, saying why, where mounting is not permitted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import call, write_events

TOKENTRAIL = str(Path(sys.executable).parent / "tokentrail")


def run(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENTRAIL, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **env},
    )


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} not permitted here: {result.stderr.strip()}")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def counts(db: Path) -> tuple[int, int]:
    result = run("stats", "--db", db, "--format", "json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    return int(stats["events"]), int(stats["dead_letters"])


def assert_one_clean_line(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tokentrail: error:"), result.stderr
    assert words in lines[0]


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(writable folder, the same folder mounted read-only)."""
    writable, frozen = tmp_path / "rw", tmp_path / "ro"
    writable.mkdir()
    frozen.mkdir()
    mount("--bind", str(writable), str(frozen))
    try:
        mount("-o", "remount,bind,ro", str(frozen))
        yield writable, frozen
    finally:
        umount(frozen)


def test_a_read_only_database_refuses_ingest_cleanly_and_stays_whole(
    tmp_path: Path, read_only: tuple[Path, Path]
) -> None:
    writable, frozen = read_only
    first = write_events(tmp_path / "first.jsonl", [call(event_id=f"a{i}") for i in range(50)])
    second = write_events(tmp_path / "second.jsonl", [call(event_id=f"b{i}") for i in range(50)])
    assert run("ingest", first, "--db", writable / "t.duckdb", "--no-detect").returncode == 0

    assert_one_clean_line(
        run("ingest", second, "--db", frozen / "t.duckdb", "--no-detect"), "Read-only file system"
    )
    assert_one_clean_line(
        run("ingest", second, "--db", frozen / "new.duckdb", "--no-detect"), "Read-only"
    )
    assert counts(writable / "t.duckdb") == (50, 0)  # untouched, and it reopens

    # Writable again: the refused file is ingested, the first is not stored twice.
    for source in (second, first):
        assert run("ingest", source, "--db", writable / "t.duckdb", "--no-detect").returncode == 0
    assert counts(writable / "t.duckdb") == (100, 0)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=5m", "tmpfs", str(disk))
    try:
        yield disk
    finally:
        umount(disk)


def test_a_full_disk_stops_ingest_cleanly_and_a_rerun_stores_each_event_once(
    tmp_path: Path, small_disk: Path
) -> None:
    total = 12_000
    # ~600 bytes of attributes each: 12k events need ~9 MB of WAL, the disk has 5.
    source = write_events(
        tmp_path / "big.jsonl",
        [call(event_id=f"e{i}", attributes={"pad": "x" * 600, "i": i}) for i in range(total)],
    )
    db = small_disk / "t.duckdb"
    batch = {"TOKENTRAIL_FILE_BATCH_SIZE": "1500"}

    full = run("ingest", source, "--db", db, "--no-detect", **batch)
    assert_one_clean_line(full, "No space left on device")
    stored, letters = counts(db)  # the file reopens: the batches committed before the fault
    assert letters == 0 and stored % 1500 == 0 and stored < total

    mount("-o", "remount,size=256m", str(small_disk))  # space returns
    resumed = run("ingest", source, "--db", db, "--no-detect", **batch)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{total - stored:,} stored, {stored:,} duplicates skipped" in resumed.stderr
    assert counts(db) == (total, 0)


def test_a_checkpoint_that_finds_no_space_keeps_the_data_in_the_wal(tmp_path: Path) -> None:
    """Found while writing these tests: on a disk with room for the WAL but not for the checkpoint
    DuckDB runs on close, ingest succeeds; the checkpoint fails silently and the WAL, replayed on
    the next open, still holds every event. Nothing is lost, so this is not an error."""
    disk = tmp_path / "tiny"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk))
    try:
        source = write_events(tmp_path / "e.jsonl", [call()])
        result = run("ingest", source, "--db", disk / "t.duckdb", "--no-detect")
        assert result.returncode == 0, result.stderr
        assert (disk / "t.duckdb.wal").stat().st_size > 0
        assert counts(disk / "t.duckdb") == (1, 0)
    finally:
        umount(disk)
