"""Typed dependencies: the shared state, a cursor per request, the caller and their role.

They are `async` on purpose: FastAPI runs each plain `def` dependency in the thread pool, one
hop per dependency (two for a generator), and under load each hop waits in line for a thread
again, behind every other request. These only read memory (a key checked again reads the
store, on a thread of the interactive lane), so a request takes one hop: its route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Annotated

import duckdb
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tokentrail.api.auth import Principal, Role
from tokentrail.api.state import ApiState
from tokentrail.catalog import Catalog


async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.tokentrail
    return state


StateDep = Annotated[ApiState, Depends(get_state)]


async def get_conn(state: StateDep) -> AsyncIterator[duckdb.DuckDBPyConnection]:
    """A cursor of the store for this request, closed when it ends (opening one is cheap)."""
    cursor = state.cursor()
    try:
        yield cursor
    finally:
        cursor.close()


ConnDep = Annotated[duckdb.DuckDBPyConnection, Depends(get_conn)]


async def get_catalog(state: StateDep) -> Catalog:
    return state.catalog


CatalogDep = Annotated[Catalog, Depends(get_catalog)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `tokentrail keys create`.")


async def get_principal(
    request: Request,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from `Authorization: Bearer <key>`; 401 without a valid key."""
    principal = None
    if credentials is not None and credentials.scheme.lower() == "bearer":
        key = credentials.credentials
        principal = state.keys.cached(key)
        if principal is None:
            principal = await state.interactive().run(
                partial(state.keys.authenticate, state.cursor, key)
            )
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # The request log (middleware) records who made the request.
    request.state.principal = principal
    return principal


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting callers whose role is `role` or above; 403 for the others."""

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.role.allows(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this needs the {role.value} role or above"
            )
        return principal

    return check


ViewerDep = Annotated[Principal, Depends(require(Role.viewer))]
AnalystDep = Annotated[Principal, Depends(require(Role.analyst))]
AdminDep = Annotated[Principal, Depends(require(Role.admin))]
