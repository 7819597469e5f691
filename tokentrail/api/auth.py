"""Bearer API keys: `tt_<key id>_<secret>`, stored as sha256 of the whole key, with a role.

Roles are ordered: an admin may do what an analyst may, an analyst what a viewer may.

>>> key = new_key()
>>> parse_key(key.key) == key.key_id
True
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import unquote_plus

import duckdb

from tokentrail.errors import TokentrailError
from tokentrail.events import looks_like_secret
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


_KEY_SHAPE: Final = re.compile(r"(tt_[0-9a-f]{12}_)[A-Za-z0-9_-]+")
_URL_PARTS: Final = re.compile(r"([/?&=])")


def scrub(text: str) -> str:
    """A request path or query string fit for the request log: the secret part of anything shaped
    like an API key, and any segment or value shaped like a raw credential, replaced. Keys and
    tokens end up in URLs by mistake; the log must not keep them.

    >>> scrub("token_id=tt_0123456789ab_s3cr3t&limit=5")
    'token_id=tt_0123456789ab_[redacted]&limit=5'
    """
    text = _KEY_SHAPE.sub(r"\1[redacted]", text)
    parts = _URL_PARTS.split(text)
    return "".join("[redacted]" if looks_like_secret(unquote_plus(p)) else p for p in parts)
