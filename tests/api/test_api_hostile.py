"""Oversized and malformed requests get a 4xx with a one-line reason, never a 5xx; no API key
or raw token value ever leaves the server (responses, error bodies, request log, log output)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import call, ingest
from fastapi.testclient import TestClient
from httpx import Response

from tokentrail.api import api_settings, create_app
from tokentrail.api.auth import Role, create_key
from tokentrail.store import Store

Auth = dict[str, dict[str, str]]
MIB = 1 << 20


def one_line_reason(response: Response) -> None:
    """4xx, one line of JSON whose `detail` says why, nothing of the server's insides."""
    assert 400 <= response.status_code < 500, response.text[:300]
    assert "\n" not in response.text and "Traceback" not in response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [("POST", "/v1/query", "sql"), ("PATCH", "/v1/alerts/probe", "note")],
)
def test_oversized_bodies_are_refused(
    client: TestClient, auth: Auth, method: str, path: str, field: str
) -> None:
    huge = {field: "x" * (2 * MIB)}
    response = client.request(method, path, json=huge, headers=auth["admin"])
    assert response.status_code == 413
    one_line_reason(response)
    assert "limit" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what arrives
        yield b'{"%s": "' % field.encode()
        for _ in range(3):
            yield b"x" * MIB
        yield b'"}'

    streamed = client.request(
        method,
        path,
        content=chunks(),
        headers={**auth["admin"], "content-type": "application/json"},
    )
    assert streamed.status_code == 413
    one_line_reason(streamed)


MALFORMED = {
    "text/plain": (b'{"sql": "SELECT 1"}', "text/plain"),
    "form": (b"sql=SELECT+1", "application/x-www-form-urlencoded"),
    "no content type": (b'{"sql": "SELECT 1"}', None),
    "invalid utf-8": (b'{"sql": "SELECT \xff\xfe"}', "application/json"),
    "truncated json": (b'{"sql": ', "application/json"),
    "not an object": (b"[1, 2, 3]", "application/json"),
    "deep nesting": (b'{"sql": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "application/json"),
    "deep objects": (b'{"sql": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, "application/json"),
}


@pytest.mark.parametrize(("body", "content_type"), MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("path", ["/v1/query", "/v1/alerts/probe"])
def test_malformed_bodies_get_a_reason(
    client: TestClient, auth: Auth, path: str, body: bytes, content_type: str | None
) -> None:
    headers = {**auth["admin"], **({"content-type": content_type} if content_type else {})}
    method = "POST" if path == "/v1/query" else "PATCH"
    one_line_reason(client.request(method, path, content=body, headers=headers))


def test_validation_errors_do_not_echo_the_input(client: TestClient, auth: Auth) -> None:
    marker = "echo-marker-" + "n" * 5000  # over the note's 4000 characters
    response = client.patch("/v1/alerts/probe", json={"note": marker}, headers=auth["analyst"])
    assert response.status_code == 422
    assert "echo-marker" not in response.text
    assert response.json()["detail"][0]["loc"] == ["body", "note"]


@pytest.mark.parametrize(
    "query",
    [
        "since=99999-01-01",
        "since=0001-01-01T00:00:00%2B14:00",
        "until=9999-12-31T23:59:59-14:00",
        "limit=99999999999999999999999",
        "limit=-1",
        "identity=%ff%fe",
        "identity=a%00b",
        "cursor=" + "A" * 5000,
    ],
)
def test_odd_query_parameters_are_not_server_errors(
    client: TestClient, auth: Auth, query: str
) -> None:
    response = client.get(f"/v1/events?{query}", headers=auth["viewer"])
    assert response.status_code < 500, response.text[:300]


# --- nothing secret leaves --------------------------------------------------------------------

RAW_TOKEN = "ghp_" + "R4wT0k3n" * 5  # a GitHub token's shape: stored only as a keyed hash
RAW_PARENT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJl"  # a JWT


@pytest.fixture
def leaky(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], str]]:
    """A store whose events carried raw tokens, an app over it, keys by role, and a trace id."""
    with Store.open(tmp_path / "leaky.duckdb") as store:
        trace = "trace-with-raw-tokens"
        ingest(store, [
            call(token_id=RAW_TOKEN, trace_id=trace, span_id=f"s{i}",
                 token={"parent_token_id": RAW_PARENT}, target=f"svc-{i}")
            for i in range(5)
        ])  # fmt: skip
        keys = {r.value: create_key(store.conn, name=f"leak-{r}", role=r).key for r in Role}
        app = create_app(store, api_settings())
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, keys, trace


def test_no_key_or_raw_token_leaves_the_server(
    leaky: tuple[TestClient, dict[str, str], str], caplog: pytest.LogCaptureFixture
) -> None:
    client, keys, trace = leaky
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    caplog.set_level(logging.DEBUG)
    stored = client.get("/v1/events", params={"trace_id": trace}, headers=admin).json()["data"]
    assert stored and {e["token_id"] for e in stored} != {RAW_TOKEN}
    token = stored[0]["token_id"]
    answers = [
        client.get(path, headers=admin)
        for path in (
            f"/v1/events?trace_id={trace}",
            f"/v1/chains/{trace}",
            "/v1/tokens",
            f"/v1/tokens/{token}",
            f"/v1/tokens/{token}/lineage",
            f"/v1/tokens/{token}/blast-radius",
            f"/v1/tokens/{token}/graph?format=graphml",
            "/v1/services/svc-1/exposure",
            f"/v1/identities/{stored[0]['identity']}",
            "/v1/alerts",
            "/v1/keys",
            "/metrics",
        )
    ]
    answers.append(client.post("/v1/query", json={"sql": "SELECT * FROM events"}, headers=admin))
    answers.append(client.post("/v1/query", json={"sql": "SELECT * FROM tokens"}, headers=admin))
    # Errors: a wrong key, a revoked-looking key, a key in the wrong scheme, a bad query.
    wrong = keys["viewer"][:-4] + "AAAA"
    answers.append(client.get("/v1/alerts", headers={"Authorization": f"Bearer {wrong}"}))
    answers.append(client.get("/v1/alerts", headers={"Authorization": f"Basic {keys['admin']}"}))
    answers.append(client.get("/v1/keys", headers={"Authorization": f"Bearer {keys['viewer']}"}))
    answers.append(client.post("/v1/query", json={"sql": "SELECT * FROM api_keys"}, headers=admin))
    answers.append(client.patch("/v1/alerts/x", json={"note": 5}, headers=admin))
    # A key or raw token pasted into a URL by mistake is kept out of the request log.
    answers.append(client.get(f"/v1/alerts?token_id={keys['analyst']}", headers=admin))
    answers.append(client.get(f"/v1/events?token_id={RAW_TOKEN}", headers=admin))
    answers.append(client.get(f"/v1/events/{RAW_PARENT}", headers=admin))
    answers.append(client.get("/v1/requests?limit=1000", headers=admin))
    assert all(a.status_code < 500 for a in answers)
    logged = [
        f"{r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore"))  # the test client's own log
    ]
    seen = "\n".join([*(a.text for a in answers), *logged])
    for secret in [*keys.values(), RAW_TOKEN, RAW_PARENT]:
        assert secret not in seen
