"""Token graphs as Cytoscape JSON, GraphML and DOT (JSON is the graph result itself).

>>> from tokentrail.graph.tokens import build_graph
>>> to_dot(build_graph([], {})).splitlines()[0]
'digraph tokentrail {'
"""

from __future__ import annotations

from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from tokentrail.graph.tokens import Edge, TokenGraph


def _edge_data(number: int, edge: Edge) -> dict[str, Any]:
    return {
        "id": f"e{number}",
        "source": edge.source,
        "target": edge.target,
        "token_id": edge.token_id,
        "identity": edge.identity,
        "operation": edge.operation,
        "scope": edge.scope,
        "privilege": edge.privilege,
        "calls": edge.calls,
        "denied": edge.denied,
        "errors": edge.errors,
        "first_seen": edge.first_seen.isoformat(),
        "last_seen": edge.last_seen.isoformat(),
    }


_STRING: Final = {"type": "string"}
_COUNT: Final = {"type": "integer"}

# What `to_cytoscape` returns, for the OpenAPI document (`format=cytoscape` answers JSON that is
# not a TokenGraph, so the document must say so or clients validating responses reject it).
CYTOSCAPE_SCHEMA: Final[dict[str, Any]] = {
    "title": "CytoscapeGraph",
    "type": "object",
    "required": ["data", "elements"],
    "properties": {
        "data": {
            "type": "object",
            "required": ["tokens"],
            "properties": {"tokens": {"type": "array", "items": _STRING}},
        },
        "elements": {
            "type": "object",
            "required": ["nodes", "edges"],
            "properties": {
                "nodes": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {
                            "data": {
                                "type": "object",
                                "required": ["id", "label"],
                                "properties": {"id": _STRING, "label": _STRING},
                            }
                        },
                    },
                },
                "edges": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {
                            "data": {
                                "type": "object",
                                "required": ["id", "source", "target", "token_id", "calls"],
                                "properties": {
                                    "id": _STRING,
                                    "source": _STRING,
                                    "target": _STRING,
                                    "token_id": _STRING,
                                    "identity": _STRING,
                                    "operation": _STRING,
                                    "scope": {"anyOf": [_STRING, {"type": "null"}]},
                                    "privilege": _STRING,
                                    "calls": _COUNT,
                                    "denied": _COUNT,
                                    "errors": _COUNT,
                                    "first_seen": {"type": "string", "format": "date-time"},
                                    "last_seen": {"type": "string", "format": "date-time"},
                                },
                            }
                        },
                    },
                },
            },
        },
    },
}


def to_cytoscape(graph: TokenGraph) -> dict[str, Any]:
    """Cytoscape.js elements: services as nodes, one edge per (token, operation, scope)."""
    return {
        "data": {"tokens": graph.tokens},
        "elements": {
            "nodes": [{"data": {"id": s, "label": s}} for s in graph.services],
            "edges": [{"data": _edge_data(n, e)} for n, e in enumerate(graph.edges)],
        },
    }


_GRAPHML_KEYS = (
    ("token_id", "string"),
    ("identity", "string"),
    ("operation", "string"),
    ("scope", "string"),
    ("privilege", "string"),
    ("calls", "long"),
    ("denied", "long"),
    ("errors", "long"),
    ("first_seen", "string"),
    ("last_seen", "string"),
)


def to_graphml(graph: TokenGraph) -> str:
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">',
        *(
            f'  <key id="{name}" for="edge" attr.name="{name}" attr.type="{kind}"/>'
            for name, kind in _GRAPHML_KEYS
        ),
        '  <graph id="tokentrail" edgedefault="directed">',
        *(f"    <node id={quoteattr(s)}/>" for s in graph.services),
    ]
    for number, edge in enumerate(graph.edges):
        data = _edge_data(number, edge)
        lines.append(
            f"    <edge id={quoteattr(data['id'])} source={quoteattr(edge.source)}"
            f" target={quoteattr(edge.target)}>"
        )
        for name, _ in _GRAPHML_KEYS:
            if data[name] is not None:
                lines.append(f'      <data key="{name}">{escape(str(data[name]))}</data>')
        lines.append("    </edge>")
    lines += ["  </graph>", "</graphml>", ""]
    return "\n".join(lines)


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _dot_id(text: str) -> str:
    return f'"{_esc(text)}"'


def to_dot(graph: TokenGraph) -> str:
    lines = ["digraph tokentrail {", "  rankdir=LR;", "  node [shape=box];"]
    lines += [f"  {_dot_id(s)};" for s in graph.services]
    for edge in graph.edges:
        label = f'"{_esc(edge.operation)}\\n{_esc(edge.token_id)} x{edge.calls}"'
        style = ' color="red"' if edge.privilege == "admin" else ""
        lines.append(f"  {_dot_id(edge.source)} -> {_dot_id(edge.target)} [label={label}{style}];")
    lines += ["}", ""]
    return "\n".join(lines)
