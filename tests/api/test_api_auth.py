"""Keys and roles, the request log, and errors that never leak internals."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tokentrail.api.auth import Role, create_key
from tokentrail.store import Store
from tokentrail.store import api as sql

Auth = dict[str, dict[str, str]]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer tt_000000000000_wrong"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
def test_401_without_a_valid_key(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/v1/alerts", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_refused(client: TestClient, api_store: Store, auth: Auth) -> None:
    made = create_key(api_store.conn, name="short-lived", role=Role.viewer)
    headers = {"Authorization": f"Bearer {made.key}"}
    assert client.get("/v1/tokens", params={"limit": 1}, headers=headers).status_code == 200
    # Through the API, as while `serve` runs (the CLI cannot open the file beside it).
    revoked = client.delete(f"/v1/keys/{made.key_id}", headers=auth["admin"])
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/v1/tokens", params={"limit": 1}, headers=headers).status_code == 401


def test_keys_are_stored_hashed(api_store: Store, keys: dict[str, str]) -> None:
    stored = api_store.conn.execute("SELECT key_hash FROM api_keys").fetchall()
    assert stored and not {k for (k,) in stored} & set(keys.values())


@pytest.mark.parametrize(
    ("method", "path", "body", "allowed"),
    [
        ("PATCH", "/v1/alerts/x", {"note": "n"}, "analyst"),
        ("POST", "/v1/query", {"sql": "SELECT 1"}, "analyst"),
        ("GET", "/v1/requests", None, "admin"),
        ("GET", "/v1/keys", None, "admin"),
    ],
)
def test_403_below_the_role(
    client: TestClient, auth: Auth, method: str, path: str, body: object, allowed: str
) -> None:
    for role in Role:
        response = client.request(method, path, json=body, headers=auth[role.value])
        if role.allows(Role(allowed)):
            assert response.status_code != 403, role
        else:
            assert response.status_code == 403, role


def test_every_request_is_recorded(client: TestClient, auth: Auth, api_store: Store) -> None:
    client.get("/v1/tokens/recorded-probe", headers=auth["viewer"])
    client.get("/v1/alerts", params={"detector": "probe-401"})
    client.post("/v1/query", json={"sql": "COPY events TO 'x'"}, headers=auth["analyst"])
    log = client.get("/v1/requests", params={"limit": 20}, headers=auth["admin"]).json()["data"]
    seen = {(r["path"], r["role"], r["status"]) for r in log}
    assert ("/v1/tokens/recorded-probe", "viewer", 404) in seen
    assert ("/v1/alerts", None, 401) in seen
    assert ("/v1/query", "analyst", 400) in seen
    refused = next(r for r in log if r["path"] == "/v1/query")
    assert refused["detail"] == "COPY events TO 'x'"
    probe = next(r for r in log if r["query"] == "detector=probe-401")
    assert probe["key_id"] is None and probe["duration_ms"] >= 0


def test_internal_errors_do_not_leak(api_store: Store, auth: Auth) -> None:
    from tokentrail.api import api_settings, create_app

    app: FastAPI = create_app(api_store, api_settings())

    def boom() -> None:
        raise RuntimeError("secret internals /srv/tokentrail/x.py line 42")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as local:
        response = local.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    rows = sql.recent_requests(api_store.conn, limit=5)
    assert any(r.path == "/boom" and r.status == 500 for r in rows)
