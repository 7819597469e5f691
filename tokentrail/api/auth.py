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
import threading
import time
from collections.abc import Callable
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


class KeyCache:
    """Valid keys seen in the last `ttl_s` seconds, by the key's hash, so that a request need not
    read `api_keys` (a DuckDB query per request, the second largest cost of a cheap read).

    Only valid keys are kept: a wrong or revoked key is looked up every time. A key revoked
    through the API is forgotten at once (`forget`). Nothing else can revoke one while `serve`
    runs: DuckDB lets one process open the file for writing, so `tokentrail keys revoke` cannot
    run beside it; a revocation written around the cache (SQL on the same connection) shows
    after at most `ttl_s`.

    >>> cache = KeyCache(ttl_s=5.0)
    >>> cache.forget("0123456789ab")
    """

    def __init__(
        self,
        *,
        ttl_s: float = 5.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s, self.max_keys, self.clock = ttl_s, max_keys, clock
        self._found: dict[str, tuple[Principal, float]] = {}
        self._generation = 0  # revocations so far
        self._lock = threading.Lock()

    def cached(self, key: str) -> Principal | None:
        """The principal of `key` if the cache holds it, fresh; None means "ask the store"."""
        with self._lock:
            hit = self._found.get(hash_key(key))
        return hit[0] if hit is not None and hit[1] > self.clock() else None

    def authenticate(
        self, conn: Callable[[], duckdb.DuckDBPyConnection], key: str
    ) -> Principal | None:
        """As `authenticate`, answered from the cache while the key's entry is fresh; `conn`
        opens a cursor, called only on a miss."""
        digest = hash_key(key)
        now = self.clock()
        with self._lock:
            hit = self._found.get(digest)
            generation = self._generation
        if hit is not None and hit[1] > now:
            return hit[0]
        with conn() as cur:
            principal = authenticate(cur, key)
        with self._lock:
            if principal is None:
                self._found.pop(digest, None)
            elif generation != self._generation:
                pass  # a key was revoked while this one was read: the read may predate it
            else:
                if len(self._found) >= self.max_keys:
                    self._found.clear()  # many distinct keys at once: start over, stay bounded
                self._found[digest] = (principal, now + self.ttl_s)
        return principal

    def forget(self, key_id: str) -> None:
        """Drop the key `key_id` (revoked): its next request is checked against the store."""
        with self._lock:
            self._generation += 1
            for digest in [d for d, (p, _) in self._found.items() if p.key_id == key_id]:
                del self._found[digest]


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
