"""Tokens: ranked by blast radius; one token's report, blast radius, lineage and graph."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import Response

from tokentrail.api.deps import CatalogDep, ConnDep, StateDep, ViewerDep
from tokentrail.api.encoding import JSON, MsgspecJSON, schema_of
from tokentrail.api.export import CYTOSCAPE_SCHEMA, to_cytoscape, to_dot, to_graphml
from tokentrail.api.models import TokensPage
from tokentrail.api.reads import Entry
from tokentrail.graph import (
    BlastRadius,
    Lineage,
    RankedToken,
    TokenGraph,
    TokenReport,
    blast_radius,
    rank_tokens,
    token_graph,
    token_lineage,
    token_report,
)
from tokentrail.graph.blast import BlastSummary
from tokentrail.graph.tokens import lookup_tokens
from tokentrail.store import api as sql
from tokentrail.store.graph import lineage_below, refresh_scores

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


class GraphFormat(StrEnum):
    json = "json"
    cytoscape = "cytoscape"
    graphml = "graphml"
    dot = "dot"


def _known(conn: ConnDep, token_id: str) -> None:
    if not lookup_tokens(conn, token_ids=[token_id]):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no token {token_id!r}")


@router.get("", response_class=MsgspecJSON, responses=schema_of(TokensPage))
def list_tokens(
    conn: ConnDep,
    state: StateDep,
    catalog: CatalogDep,
    _: ViewerDep,
    identity: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MsgspecJSON:
    """Tokens by blast radius score, highest first (`count` is the page's size)."""
    if identity is None and state.consumer is not None:
        # The consumer keeps the stored scores current (ScoreKeeper, at most a refresh interval
        # behind): read them. Refreshing here made a request a write transaction, serialised
        # by the lock and at odds with the consumer's own refresh.
        with state.rank_lock:
            if state.scores_fingerprint is None:  # the first ranking scores what is unscored
                state.scores_fingerprint = refresh_scores(conn, catalog=catalog)
        ranked = [
            RankedToken(
                token_id=row.token_id,
                identity=row.identity,
                calls=row.calls,
                blast_radius=BlastSummary(
                    score=row.score,
                    direct_targets=row.direct_targets,
                    transitive_targets=row.transitive_targets,
                    environments=row.environments,
                ),
            )
            for row in sql.stored_ranking(conn, fingerprint=state.scores_fingerprint, top=limit)
        ]
    else:
        # Nothing else writes events: after the first ranking the refresh finds scores current.
        with state.rank_lock:
            ranked = rank_tokens(conn, catalog=catalog, top=limit, identity=identity)
    return MsgspecJSON(TokensPage(data=ranked, count=len(ranked)))


@router.get("/{token_id}", response_class=MsgspecJSON, responses=schema_of(TokenReport))
def get_token(token_id: str, conn: ConnDep, catalog: CatalogDep, _: ViewerDep) -> MsgspecJSON:
    """Registry entry, graph, lineage and blast radius of one token."""
    return MsgspecJSON(token_report(conn, token_id=token_id, catalog=catalog))


@router.get("/{token_id}/blast-radius", response_class=JSON, responses=schema_of(BlastRadius))
async def get_blast_radius(
    token_id: str, request: Request, state: StateDep, catalog: CatalogDep, _: ViewerDep
) -> JSON:
    """What the token reached, weighted, with the contribution of each target."""

    def fill() -> Entry:
        with state.cursor() as conn:
            _known(conn, token_id)
            radius = blast_radius(conn, catalog=catalog, token_id=token_id)
            # Read from the token's own rows and those of every token derived from it (direct,
            # chain and derived reach); a new link below any of them names one of them.
            below = lineage_below(conn, token_ids=[token_id])[token_id]
        return Entry(msgspec.json.encode(radius), tokens=frozenset({token_id, *below}))

    # ~20-40 ms of CPU: with the heavier reads (tokentrail.api.lanes).
    return await state.kept(request, ("blast-radius", token_id), fill, general=True)


@router.get("/{token_id}/lineage", response_class=MsgspecJSON, responses=schema_of(Lineage))
def get_lineage(token_id: str, conn: ConnDep, catalog: CatalogDep, _: ViewerDep) -> MsgspecJSON:
    """The token's family (derived and parent tokens) and the reach of the family."""
    _known(conn, token_id)
    return MsgspecJSON(token_lineage(conn, token_id=token_id, catalog=catalog))


_MEDIA = {
    GraphFormat.graphml: "application/graphml+xml",
    GraphFormat.dot: "text/vnd.graphviz",
}
_GRAPH_RESPONSES = schema_of(TokenGraph)
_JSON = _GRAPH_RESPONSES[200]["content"]["application/json"]
# JSON is the TokenGraph, or with format=cytoscape the Cytoscape elements.
_JSON["schema"] = {"anyOf": [_JSON["schema"], CYTOSCAPE_SCHEMA]}
_GRAPH_RESPONSES[200]["content"].update(
    {media: {"schema": {"type": "string"}} for media in _MEDIA.values()}
)


@router.get("/{token_id}/graph", response_class=MsgspecJSON, responses=_GRAPH_RESPONSES)
def get_graph(
    token_id: str,
    conn: ConnDep,
    _: ViewerDep,
    fmt: Annotated[GraphFormat, Query(alias="format")] = GraphFormat.json,
) -> Response:
    """The token's call graph as JSON, Cytoscape JSON, GraphML or DOT."""
    _known(conn, token_id)
    graph = token_graph(conn, token_id=token_id)
    if fmt is GraphFormat.cytoscape:
        return MsgspecJSON(to_cytoscape(graph))
    if fmt is GraphFormat.graphml:
        return Response(to_graphml(graph), media_type=_MEDIA[fmt])
    if fmt is GraphFormat.dot:
        return Response(to_dot(graph), media_type=_MEDIA[fmt])
    return MsgspecJSON(graph)
