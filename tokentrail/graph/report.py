"""What `tokentrail token` and `tokentrail identity` show: everything about one subject."""

from __future__ import annotations

import duckdb

from tokentrail.catalog import Catalog
from tokentrail.errors import TokentrailError
from tokentrail.graph.blast import BlastRadius, blast_radius
from tokentrail.graph.lineage import Lineage, token_lineage
from tokentrail.graph.model import Result
from tokentrail.graph.tokens import (
    TokenGraph,
    TokenInfo,
    identity_graph,
    lookup_tokens,
    token_graph,
)
from tokentrail.store.graph import identity_token_ids


class UnknownSubjectError(TokentrailError):
    """The store has no token or identity of that name."""


class TokenReport(Result, frozen=True, kw_only=True):
    token: TokenInfo
    graph: TokenGraph
    lineage: Lineage
    blast_radius: BlastRadius


class IdentityReport(Result, frozen=True, kw_only=True):
    identity: str
    tokens: list[TokenInfo]
    graph: TokenGraph
    blast_radius: BlastRadius


def token_report(
    conn: duckdb.DuckDBPyConnection, *, token_id: str, catalog: Catalog
) -> TokenReport:
    """The registry entry, graph, lineage and blast radius of one token."""
    found = lookup_tokens(conn, token_ids=[token_id])
    if not found:
        raise UnknownSubjectError(f"no token {token_id!r} in this database")
    return TokenReport(
        token=found[0],
        graph=token_graph(conn, token_id=token_id),
        lineage=token_lineage(conn, token_id=token_id, catalog=catalog),
        blast_radius=blast_radius(conn, catalog=catalog, token_id=token_id),
    )


def identity_report(
    conn: duckdb.DuckDBPyConnection, *, identity: str, catalog: Catalog
) -> IdentityReport:
    """The tokens, combined graph and blast radius of one identity."""
    tokens = identity_token_ids(conn, identity=identity)
    if not tokens:
        raise UnknownSubjectError(f"no identity {identity!r} in this database")
    return IdentityReport(
        identity=identity,
        tokens=lookup_tokens(conn, token_ids=tokens),
        graph=identity_graph(conn, identity=identity),
        blast_radius=blast_radius(conn, catalog=catalog, identity=identity),
    )
