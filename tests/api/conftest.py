"""One simulated day (scale 0.2) ingested into a real DuckDB file, served by one TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tokentrail.api import api_settings, create_app
from tokentrail.api.auth import Role, create_key
from tokentrail.cli import app as cli
from tokentrail.simulate import World, WorldSpec, write_world
from tokentrail.store import Store


@pytest.fixture(scope="session")
def api_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("api-sim")
    write_world(World(WorldSpec(seed=7, days=1, scale=0.2)), folder)
    db = folder / "audit.duckdb"
    result = CliRunner().invoke(
        cli,
        ["ingest", str(folder / "events.jsonl"), "--db", str(db),
         "--catalog", str(folder / "catalog.toml")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return db


@pytest.fixture(scope="session")
def api_store(api_db: Path) -> Iterator[Store]:
    with Store.open(api_db) as store:
        yield store


@pytest.fixture(scope="session")
def keys(api_store: Store) -> dict[str, str]:
    """A key per role, by role name."""
    return {role.value: create_key(api_store.conn, name=f"test-{role}", role=role).key
            for role in Role}  # fmt: skip


@pytest.fixture(scope="session")
def client(api_store: Store, keys: dict[str, str]) -> Iterator[TestClient]:
    """A client without a key; tests pass `headers=auth(...)`."""
    api = create_app(api_store, api_settings(query_timeout_s=1.0, query_rows_max=50))
    with TestClient(api, raise_server_exceptions=False) as running:
        yield running


@pytest.fixture(scope="session")
def auth(keys: dict[str, str]) -> dict[str, dict[str, str]]:
    """Authorization headers by role name."""
    return {role: {"Authorization": f"Bearer {key}"} for role, key in keys.items()}
