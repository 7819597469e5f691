"""Bearer API keys: `tt_<key id>_<secret>`, stored as sha256 of the whole key, with a role.

Roles are ordered: an admin may do what an analyst may, an analyst what a viewer may.

>>> key = new_key()
>>> parse_key(key.key) == key.key_id
True
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

import duckdb

from tokentrail.errors import TokentrailError
from tokentrail.store import api as sql


class Role(StrEnum):
    viewer = "viewer"
    analyst = "analyst"
    admin = "admin"

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class NewKey:
    key_id: str
    key: str  # shown once, never stored


@dataclass(frozen=True)
class Principal:
    """Who made a request: the key's id, name and role."""

    key_id: str
    name: str
    role: Role


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    return NewKey(key_id, f"tt_{key_id}_{secrets.token_urlsafe(32)}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key(key: str) -> str | None:
    """The key id inside a well-formed key, else None."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != "tt" or len(key_id) != 12 or not secret:
        return None
    return key_id


def create_key(conn: duckdb.DuckDBPyConnection, *, name: str, role: Role) -> NewKey:
    if not name.strip():
        raise TokentrailError("a key needs a --name")
    made = new_key()
    sql.insert_key(
        conn, key_id=made.key_id, name=name, role=role.value, key_hash=hash_key(made.key)
    )
    return made


def authenticate(conn: duckdb.DuckDBPyConnection, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key; None for anything else."""
    key_id = parse_key(key)
    if key_id is None:
        return None
    row = sql.key_by_id(conn, key_id=key_id)
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, hash_key(key)):
        return None
    return Principal(row.key_id, row.name, Role(row.role))
