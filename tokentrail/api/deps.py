"""Typed dependencies: the shared state, a cursor per request, the caller and their role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

import duckdb
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tokentrail.api.auth import Principal, Role, authenticate
from tokentrail.api.state import ApiState
from tokentrail.catalog import Catalog


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.tokentrail
    return state


StateDep = Annotated[ApiState, Depends(get_state)]


def get_conn(state: StateDep) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of the store for this request, closed when it ends."""
    cursor = state.cursor()
    try:
        yield cursor
    finally:
        cursor.close()


ConnDep = Annotated[duckdb.DuckDBPyConnection, Depends(get_conn)]


def get_catalog(state: StateDep) -> Catalog:
    return state.catalog


CatalogDep = Annotated[Catalog, Depends(get_catalog)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `tokentrail keys create`.")


def get_principal(
    request: Request,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from `Authorization: Bearer <key>`; 401 without a valid key."""
    principal = None
    if credentials is not None and credentials.scheme.lower() == "bearer":
        with state.cursor() as cur:
            principal = authenticate(cur, credentials.credentials)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # The request log (middleware) records who made the request.
    request.state.principal = principal
    return principal


def require(role: Role) -> Callable[[Principal], Principal]:
    """A dependency admitting callers whose role is `role` or above; 403 for the others."""

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.role.allows(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this needs the {role.value} role or above"
            )
        return principal

    return check


ViewerDep = Annotated[Principal, Depends(require(Role.viewer))]
AnalystDep = Annotated[Principal, Depends(require(Role.analyst))]
AdminDep = Annotated[Principal, Depends(require(Role.admin))]
