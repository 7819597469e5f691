"""Every route of the app needs a key and the right role: 401, 401 revoked, 403 below the role.

The routes are read from the app itself, so a new endpoint that forgets its role dependency
fails here; one that needs more than a viewer must be added to NEEDS.
"""

from __future__ import annotations

import re

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from tokentrail.api import api_settings, create_app
from tokentrail.api.auth import Role, create_key
from tokentrail.store import Store
from tokentrail.store import api as sql

# Open by design: probes, the OpenAPI document and its pages, the web view (it asks for a key)
# and its static files.
PUBLIC = frozenset(
    {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
# The routes that need more than a viewer key (docs/API.md, "Keys and roles").
NEEDS = {
    ("PATCH", "/v1/alerts/{alert_id}"): Role.analyst,
    ("POST", "/v1/query"): Role.analyst,
    ("GET", "/v1/keys"): Role.admin,
    ("POST", "/v1/keys"): Role.admin,
    ("DELETE", "/v1/keys/{key_id}"): Role.admin,
    ("GET", "/v1/requests"): Role.admin,
}


def _routes() -> list[tuple[str, str]]:
    """(method, path template) of every route of the app but the public ones."""
    with Store.open(":memory:") as empty:
        app = create_app(empty, api_settings())
    # Included routers are flattened (with their prefixes) by FastAPI's own walk.
    found = {
        (method, route.path)
        for route in iter_route_contexts(app.routes)
        if not public(route.path)
        for method in route.methods or ()
    }
    return sorted(found)


def public(path: str) -> bool:
    return path in PUBLIC or path == "/ui" or path.startswith("/ui/")


ROUTES = _routes()


def concrete(path: str) -> str:
    """A request path for a template: every parameter (`{id}`, `{identity:path}`) a probe."""
    return re.sub(r"\{[^}]+\}", "probe", path)


@pytest.fixture(scope="module")
def revoked(api_store: Store) -> dict[str, str]:
    """Headers with an admin key that has been revoked."""
    made = create_key(api_store.conn, name="revoked-admin", role=Role.admin)
    assert sql.revoke_key(api_store.conn, key_id=made.key_id)
    return {"Authorization": f"Bearer {made.key}"}


def test_the_walk_sees_every_route() -> None:
    assert set(NEEDS) <= set(ROUTES)
    assert len(ROUTES) >= 18  # the table of docs/API.md, less the public routes


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_route_needs_a_key_and_its_role(
    client: TestClient,
    auth: dict[str, dict[str, str]],
    revoked: dict[str, str],
    method: str,
    path: str,
) -> None:
    url = concrete(path)
    # No body: the role check runs before the body is validated, so every answer is about auth.
    anonymous = client.request(method, url)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert client.request(method, url, headers=revoked).status_code == 401
    needed = NEEDS.get((method, path), Role.viewer)
    for role in Role:
        response = client.request(method, url, headers=auth[role.value])
        if role.allows(needed):
            assert response.status_code not in (401, 403), (role, response.text)
        else:
            assert response.status_code == 403, (role, response.text)
            assert response.json() == {"detail": f"this needs the {needed.value} role or above"}
