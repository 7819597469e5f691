"""API keys and the request log, for admins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from tokentrail.api.auth import Role, create_key
from tokentrail.api.deps import AdminDep, ConnDep, StateDep
from tokentrail.api.models import RequestPublic, RequestsPublic
from tokentrail.store import api as sql

router = APIRouter(prefix="/v1", tags=["admin"])


class KeyPublic(BaseModel):
    key_id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeysPublic(BaseModel):
    data: list[KeyPublic]
    count: int


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role


class KeyCreated(KeyPublic):
    key: str  # shown once


def _public(row: sql.KeyRow) -> KeyPublic:
    return KeyPublic(**{k: v for k, v in row._asdict().items() if k != "key_hash"})


@router.get("/keys", response_model=KeysPublic)
def list_keys(conn: ConnDep, state: StateDep, _: AdminDep) -> KeysPublic:
    state.audit.flush()  # `last_used_at` comes from the request log
    rows = sql.list_keys(conn)
    return KeysPublic(data=[_public(r) for r in rows], count=len(rows))


@router.post("/keys", response_model=KeyCreated, status_code=status.HTTP_201_CREATED)
def new_key(body: KeyCreate, conn: ConnDep, _: AdminDep) -> KeyCreated:
    """Create a key; the response is the only time the key is shown."""
    made = create_key(conn, name=body.name, role=body.role)
    row = sql.key_by_id(conn, key_id=made.key_id)
    assert row is not None
    return KeyCreated(**_public(row).model_dump(), key=made.key)


@router.delete("/keys/{key_id}", response_model=KeyPublic)
def revoke_key(key_id: str, conn: ConnDep, state: StateDep, _: AdminDep) -> KeyPublic:
    """Revoke a key: refused from the next request on (it leaves the key cache now)."""
    if not sql.revoke_key(conn, key_id=key_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no key {key_id!r}")
    state.keys.forget(key_id)
    row = sql.key_by_id(conn, key_id=key_id)
    assert row is not None
    return _public(row)


@router.get("/requests", response_model=RequestsPublic)
def list_requests(
    conn: ConnDep,
    state: StateDep,
    _: AdminDep,
    key_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RequestsPublic:
    """The request log, newest first (including rows still queued for it)."""
    state.audit.flush()
    rows = sql.recent_requests(conn, key_id=key_id, limit=limit)
    return RequestsPublic(data=[RequestPublic(**r._asdict()) for r in rows], count=len(rows))
