"""The DuckDB memory bound a command's store gets from the settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tokentrail.cli.app import open_store
from tokentrail.config import _load


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    # Settings are read once per process; these tests change the environment they come from.
    _load.cache_clear()
    yield
    _load.cache_clear()


def limit_of(db: Path, *, serving: bool) -> str:
    with open_store(db, serving=serving) as store:
        [(limit,)] = store.conn.execute("SELECT current_setting('memory_limit')").fetchall()
        return str(limit)


def test_serve_has_a_memory_bound_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENTRAIL_DUCKDB__MEMORY_LIMIT", "100MB")
    monkeypatch.setenv("TOKENTRAIL_DUCKDB__SERVE_MEMORY_LIMIT", "300MB")
    # DuckDB reports sizes in MiB: 100 MB = 95.3 MiB.
    assert limit_of(tmp_path / "t.duckdb", serving=False) == "95.3 MiB"
    assert limit_of(tmp_path / "t.duckdb", serving=True) == "286.1 MiB"


def test_serve_defaults_to_more_memory_than_ingest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKENTRAIL_DUCKDB__MEMORY_LIMIT", raising=False)
    monkeypatch.delenv("TOKENTRAIL_DUCKDB__SERVE_MEMORY_LIMIT", raising=False)
    assert limit_of(tmp_path / "t.duckdb", serving=False) == "183.1 MiB"
    assert limit_of(tmp_path / "t.duckdb", serving=True) == "953.6 MiB"
