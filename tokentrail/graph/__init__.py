"""The graph: chains, token graphs, lineage, blast radius, paths and exposure (DESIGN.md §4).

Each function takes a DuckDB connection (a `Store`'s, or a cursor of it) and returns frozen,
JSON-encodable results; the SQL behind them lives in `tokentrail.store.graph`.
"""

from tokentrail.graph.blast import BlastRadius, RankedToken, blast_radius, rank_tokens
from tokentrail.graph.chains import Chain, build_chain, load_chain
from tokentrail.graph.lineage import Lineage, token_lineage
from tokentrail.graph.paths import Exposure, Paths, find_paths, service_exposure
from tokentrail.graph.report import (
    IdentityReport,
    TokenReport,
    UnknownSubjectError,
    identity_report,
    token_report,
)
from tokentrail.graph.tokens import TokenGraph, identity_graph, token_graph

__all__ = [
    "BlastRadius",
    "Chain",
    "Exposure",
    "IdentityReport",
    "Lineage",
    "Paths",
    "RankedToken",
    "TokenGraph",
    "TokenReport",
    "UnknownSubjectError",
    "blast_radius",
    "build_chain",
    "find_paths",
    "identity_graph",
    "identity_report",
    "load_chain",
    "rank_tokens",
    "service_exposure",
    "token_graph",
    "token_lineage",
    "token_report",
]
