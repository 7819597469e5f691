"""Token graphs: the services a token (or an identity, over all its tokens) called, and how.

Read from `token_edges`, which ingest keeps aggregated per batch, so a graph costs one indexed
read however many calls stand behind it. Resources come from the events themselves.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from tokentrail.catalog import PRIVILEGES, Privilege, privilege_of
from tokentrail.graph.model import Result, utc
from tokentrail.store.graph import (
    EdgeRow,
    TokenRow,
    edge_rows,
    identity_token_ids,
    resource_counts,
    token_rows,
)


class Edge(Result, frozen=True, kw_only=True):
    """Calls one token made from `source` to `target` with one operation and scope."""

    token_id: str
    identity: str
    source: str
    target: str
    operation: str
    scope: str | None
    privilege: Privilege
    calls: int
    denied: int
    errors: int
    bytes_out: int
    environments: list[str]
    first_seen: datetime
    last_seen: datetime


class TargetUse(Result, frozen=True, kw_only=True):
    """Everything a token (or identity) did to one target, summed over its edges."""

    target: str
    reached: bool  # at least one call succeeded
    calls: int
    denied: int
    errors: int
    bytes_out: int
    privilege: Privilege  # the highest class used successfully (or attempted, if none was)
    operations: list[str]
    scopes: list[str]
    sources: list[str]
    environments: list[str]
    resources: int  # distinct resources touched successfully
    first_seen: datetime
    last_seen: datetime


class TokenGraph(Result, frozen=True, kw_only=True):
    """Nodes are services, edges the calls; `targets` sums the edges per target."""

    tokens: list[str]
    services: list[str]
    targets: list[TargetUse]
    edges: list[Edge]


class TokenInfo(Result, frozen=True, kw_only=True):
    """A token as the registry knows it: metadata from its newest event, and observed use."""

    token_id: str
    identity: str
    identity_kind: str | None
    kind: str | None
    scopes: list[str] | None
    issued_at: datetime | None
    expires_at: datetime | None
    parent_token_id: str | None
    audience: str | None
    first_seen: datetime
    last_seen: datetime
    calls: int
    denied: int
    errors: int
    redacted: bool


def token_info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        token_id=row.token_id,
        identity=row.identity,
        identity_kind=row.identity_kind,
        kind=row.kind,
        scopes=row.scopes,
        issued_at=utc(row.issued_at_us) if row.issued_at_us is not None else None,
        expires_at=utc(row.expires_at_us) if row.expires_at_us is not None else None,
        parent_token_id=row.parent_token_id,
        audience=row.audience,
        first_seen=utc(row.first_seen_us),
        last_seen=utc(row.last_seen_us),
        calls=row.calls,
        denied=row.denied,
        errors=row.errors,
        redacted=row.redacted,
    )


def lookup_tokens(conn: duckdb.DuckDBPyConnection, *, token_ids: list[str]) -> list[TokenInfo]:
    """Registry entries of the given tokens that the store knows."""
    return [token_info(row) for row in token_rows(conn, token_ids=token_ids)]


def build_graph(edges: list[EdgeRow], resources: dict[str, int]) -> TokenGraph:
    """Sum edges per target; the highest privilege counts among successful calls."""
    by_target: dict[str, list[EdgeRow]] = {}
    for edge in edges:
        by_target.setdefault(edge.target, []).append(edge)
    targets = [_target(t, rows, resources.get(t, 0)) for t, rows in sorted(by_target.items())]
    return TokenGraph(
        tokens=sorted({e.token_id for e in edges}),
        services=sorted({e.source for e in edges} | {e.target for e in edges}),
        targets=targets,
        edges=[
            Edge(
                token_id=e.token_id,
                identity=e.identity,
                source=e.source,
                target=e.target,
                operation=e.operation,
                scope=e.scope or None,
                privilege=privilege_of(e.operation, e.scope),
                calls=e.calls,
                denied=e.denied,
                errors=e.errors,
                bytes_out=e.bytes_out,
                environments=e.environments,
                first_seen=utc(e.first_seen_us),
                last_seen=utc(e.last_seen_us),
            )
            for e in edges
        ],
    )


def _target(target: str, rows: list[EdgeRow], resources: int) -> TargetUse:
    succeeded = [r for r in rows if r.calls > r.denied + r.errors]
    counted = succeeded or rows
    privilege = max((privilege_of(r.operation, r.scope) for r in counted), key=PRIVILEGES.index)
    return TargetUse(
        target=target,
        reached=bool(succeeded),
        calls=sum(r.calls for r in rows),
        denied=sum(r.denied for r in rows),
        errors=sum(r.errors for r in rows),
        bytes_out=sum(r.bytes_out for r in rows),
        privilege=privilege,
        operations=sorted({r.operation for r in rows}),
        scopes=sorted({r.scope for r in rows if r.scope}),
        sources=sorted({r.source for r in rows}),
        environments=sorted({env for r in rows for env in r.environments}),
        resources=resources,
        first_seen=utc(min(r.first_seen_us for r in rows)),
        last_seen=utc(max(r.last_seen_us for r in rows)),
    )


def token_graph(conn: duckdb.DuckDBPyConnection, *, token_id: str) -> TokenGraph:
    """The services one token called (from any identity that used it)."""
    return build_graph(
        edge_rows(conn, token_ids=[token_id]), resource_counts(conn, token_ids=[token_id])
    )


def identity_graph(conn: duckdb.DuckDBPyConnection, *, identity: str) -> TokenGraph:
    """The services an identity called, over all the tokens it used."""
    tokens = identity_token_ids(conn, identity=identity)
    return build_graph(
        edge_rows(conn, token_ids=tokens, identity=identity),
        resource_counts(conn, token_ids=tokens, identity=identity),
    )
