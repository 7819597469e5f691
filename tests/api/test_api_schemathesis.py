"""Property-based conformance of the whole API (schemathesis over its own OpenAPI document).

The app runs in a real uvicorn on a loopback port, over a copy of the simulated day (triage
and key creation by the generated requests must not change what the other API tests see).
Every operation gets generated requests, valid and invalid, with path ids that half the time are
real ones from the store; each response must be no 5xx and match the documented schema.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from tokentrail.api import api_settings, create_app
from tokentrail.api.auth import Role, create_key
from tokentrail.broker import free_port
from tokentrail.store import Store

# Admin-only operations; the rest run with an analyst key (the highest role they need).
ADMIN_PATHS = ("/v1/keys", "/v1/requests")


@pytest.fixture(scope="module")
def fuzz_store(api_store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A copy of the session's store, so generated writes stay in this module."""
    api_store.conn.execute("CHECKPOINT")
    copy = tmp_path_factory.mktemp("api-fuzz") / "audit.duckdb"
    shutil.copyfile(api_store.path, copy)
    with Store.open(copy) as store:
        yield store


@pytest.fixture(scope="module")
def fuzz_keys(fuzz_store: Store) -> dict[str, str]:
    return {role.value: create_key(fuzz_store.conn, name=f"fuzz-{role}", role=role).key
            for role in Role}  # fmt: skip


@pytest.fixture(scope="module")
def real_ids(fuzz_store: Store) -> dict[str, list[str]]:
    """Path parameter values that exist, by parameter name (never the keys the test uses)."""
    conn = fuzz_store.conn

    def column(sql: str) -> list[str]:
        return [str(v) for (v,) in conn.execute(sql).fetchall()]

    spare = create_key(conn, name="fuzz-spare", role=Role.viewer)
    return {
        "trace_id": column("SELECT DISTINCT trace_id FROM events WHERE trace_id IS NOT NULL"
                           " ORDER BY 1 LIMIT 20"),
        "alert_id": column("SELECT alert_id FROM alerts ORDER BY 1 LIMIT 20"),
        "token_id": column("SELECT token_id FROM tokens ORDER BY 1 LIMIT 20"),
        "identity": column("SELECT DISTINCT identity FROM events ORDER BY 1 LIMIT 20"),
        "name": column("SELECT DISTINCT target FROM events ORDER BY 1 LIMIT 20"),
        "key_id": [spare.key_id],
    }  # fmt: skip


@pytest.fixture(scope="module")
def live_url(fuzz_store: Store, fuzz_keys: dict[str, str]) -> Iterator[str]:
    """The app in a real uvicorn on a free loopback port, stopped when the module ends."""
    app = create_app(fuzz_store, api_settings(query_timeout_s=1.0, query_rows_max=50))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="tt-fuzz-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _document() -> dict[str, Any]:
    """The app's OpenAPI document, built over an empty in-memory store.

    schemathesis needs the document when pytest collects (one test per operation); its lazy
    `from_fixture` loader does not run under pytest 9 (it reads `Function._nodeid`). The test
    below checks that the live server serves this same document."""
    with Store.open(":memory:") as empty:
        return create_app(empty, api_settings()).openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
# Filled by the `live` fixture before any example is drawn: real path ids by parameter name.
REAL_IDS: dict[str, list[str]] = {}


@schema.hook
def before_generate_path_parameters(_: Any, strategy: st.SearchStrategy[Any]) -> Any:
    """Half the examples use ids that exist: random ones only ever reach the 404 branch."""

    def pick(name: str, generated: Any, index: int) -> Any:
        found = REAL_IDS.get(name)
        return found[index % len(found)] if found else generated

    def maybe_real(params: dict[str, Any] | None) -> st.SearchStrategy[Any]:
        if not params:
            return st.just(params)
        real = {k: st.integers(0, 1 << 16).map(lambda i, k=k, v=v: pick(k, v, i))
                for k, v in params.items()}  # fmt: skip
        return st.one_of(st.just(params), st.fixed_dictionaries(real))

    return strategy.flatmap(maybe_real)


@pytest.fixture(scope="module")
def live(live_url: str, real_ids: dict[str, list[str]]) -> str:
    REAL_IDS.update(real_ids)
    return live_url


def test_the_served_document_is_the_fuzzed_one(live: str) -> None:
    served = httpx.get(f"{live}/openapi.json", timeout=30)
    assert served.status_code == 200 and served.json() == DOCUMENT


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms(case: Any, live: str, fuzz_keys: dict[str, str]) -> None:
    role = "admin" if case.path.startswith(ADMIN_PATHS) else "analyst"
    case.call_and_validate(
        base_url=live,
        headers={"Authorization": f"Bearer {fuzz_keys[role]}"},
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
        timeout=30,
    )
