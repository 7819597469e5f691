"""Chains: the span tree of one trace, as hops `source -> target` with the token used at each.

A chain is rebuilt from the stored events every time it is read, so spans that arrived late
simply appear the next time. Nothing in the data makes it fail: a span whose parent never arrived
is an *orphan*, kept under a marked gap; a second copy of a span id is a *duplicate*, reported and
left out of the tree; parent links that loop are a *cycle*, cut at the earliest span.

>>> chain = build_chain("t1", [hop("a", None, "gw", "api", "tok-1"), hop("b", "a", "api", "db",
...     "tok-2"), hop("c", "zz", "api", "cache", "tok-2")])
>>> [(s.span_id, s.depth) for s in chain.spans], [p.services for p in chain.paths]
([('a', 0), ('b', 1), ('c', 1)], [['gw', 'api', 'db'], ['api', 'cache']])
>>> [(o.span_id, o.missing_parent_span_id) for o in chain.orphans]
[('c', 'zz')]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, NamedTuple

import duckdb

from tokentrail.graph.model import Result, utc
from tokentrail.store.graph import (
    HopRow,
    chain_hops,
    edge_rows,
    lineage_below,
    token_scopes,
)

Relation = Literal["broader", "narrower", "same", "different", "unknown"]


class Span(Result, frozen=True, kw_only=True):
    """One hop of a chain: `source` called `target` with `token_id`."""

    span_id: str | None
    parent_span_id: str | None
    source: str
    target: str
    operation: str
    token_id: str
    identity: str
    scope: str | None
    outcome: str
    status: int | None
    environment: str | None
    resource: str | None
    ts: datetime
    depth: int
    event_id: str
    # The parent span never arrived: the span hangs under a marked gap (its depth counts the gap).
    orphan: bool = False
    # The span's parent link closed a cycle and was cut here.
    cycle: bool = False


class ChainPath(Result, frozen=True, kw_only=True):
    """A root-to-leaf service path; identical paths are counted, not repeated."""

    services: list[str]
    tokens: list[str]
    span_ids: list[str | None]
    count: int
    gap: bool  # it starts below a missing parent


class TokenSwitch(Result, frozen=True, kw_only=True):
    """A delegation point: a hop below another uses a different token than its caller."""

    span_id: str | None
    parent_span_id: str
    at: str  # the service that switched
    from_token: str
    to_token: str
    relation: Relation  # the new token against the caller's: its grant, else its reach
    basis: Literal["scopes", "reach"] | None
    gained: list[str]
    dropped: list[str]
    derived: bool  # the new token descends from the caller's (exchange, AssumeRole ...)
    ts: datetime


class Orphan(Result, frozen=True, kw_only=True):
    span_id: str | None
    missing_parent_span_id: str
    event_id: str


class Duplicate(Result, frozen=True, kw_only=True):
    """Several events carried one span id; the earliest is the span, the others are listed."""

    span_id: str
    kept_event_id: str
    other_event_ids: list[str]
    conflicting: bool  # the copies disagree on the hop: source, target, token or parent


class Chain(Result, frozen=True, kw_only=True):
    trace_id: str
    spans: list[Span]
    paths: list[ChainPath]
    token_switches: list[TokenSwitch]
    orphans: list[Orphan]
    duplicates: list[Duplicate]
    cycles: list[list[str]]
    services: list[str]
    tokens: list[str]
    first_seen: datetime | None
    last_seen: datetime | None


# (caller's token, new token) -> (relation, basis, gained, dropped, derived)
Comparison = tuple[Relation, Literal["scopes", "reach"] | None, list[str], list[str], bool]
Compare = Callable[[str, str], Comparison]

_GAP: Final = "gap"


@dataclass
class _Node:
    row: HopRow
    key: str
    children: list[_Node] = field(default_factory=list)
    parent: _Node | None = None
    depth: int = 0
    orphan: bool = False
    cycle: bool = False


def _unknown(_: str, __: str) -> Comparison:
    return "unknown", None, [], [], False


def build_chain(trace_id: str, hops: Iterable[HopRow], compare: Compare = _unknown) -> Chain:
    """Rebuild a chain from a trace's events (any order); `compare` judges token switches."""
    rows = sorted(hops, key=lambda r: (r.ts_us, r.event_id))
    nodes: dict[str, _Node] = {}
    copies: dict[str, list[HopRow]] = {}
    for row in rows:
        key = row.span_id if row.span_id is not None else f"\0{row.event_id}"
        if key in nodes:
            copies.setdefault(key, []).append(row)
        else:
            nodes[key] = _Node(row, key)
    roots: list[_Node] = []
    for node in nodes.values():
        parent_id = node.row.parent_span_id
        parent = nodes.get(parent_id) if parent_id is not None else None
        if parent_id is None:
            roots.append(node)
        elif parent is None:
            node.orphan = True
            node.depth = 1  # below the gap where its parent should be
            roots.append(node)
        elif parent is not node:
            node.parent = parent
            parent.children.append(node)
    order: list[_Node] = []
    seen: set[str] = set()
    _walk(roots, order, seen)
    cycles = _cut_cycles(nodes, order, seen)
    spans = [_span(n) for n in order]
    return Chain(
        trace_id=trace_id,
        spans=spans,
        paths=_paths(order),
        token_switches=_switches(order, compare),
        orphans=[
            Orphan(
                span_id=n.row.span_id,
                missing_parent_span_id=n.row.parent_span_id or "",
                event_id=n.row.event_id,
            )
            for n in order
            if n.orphan
        ],
        duplicates=[_duplicate(nodes[key].row, others) for key, others in copies.items()],
        cycles=cycles,
        services=sorted({s.source for s in spans} | {s.target for s in spans}),
        tokens=sorted({s.token_id for s in spans}),
        first_seen=utc(rows[0].ts_us) if rows else None,
        last_seen=utc(rows[-1].ts_us) if rows else None,
    )


def _walk(starts: Sequence[_Node], order: list[_Node], seen: set[str]) -> None:
    """Depth-first, children by time: the order a responder reads a chain in."""
    stack = [(n, n.depth) for n in reversed(starts)]
    while stack:
        node, depth = stack.pop()
        if node.key in seen:
            continue
        seen.add(node.key)
        node.depth = depth
        order.append(node)
        stack.extend((c, depth + 1) for c in reversed(node.children) if c.key not in seen)


def _cut_cycles(nodes: dict[str, _Node], order: list[_Node], seen: set[str]) -> list[list[str]]:
    """Spans no root reaches sit on or under a parent loop: cut each loop at its earliest span."""
    cycles: list[list[str]] = []
    for node in nodes.values():  # in time order
        if node.key in seen:
            continue
        loop: list[_Node] = []
        on_path: set[str] = set()
        current: _Node | None = node
        while current is not None and current.key not in on_path:
            on_path.add(current.key)
            loop.append(current)
            current = current.parent
            if current is None and loop[-1].row.parent_span_id == loop[-1].key:
                current = loop[-1]  # a span that names itself as parent
        if current is None:
            continue
        members = loop[loop.index(current) :]
        cut = min(members, key=lambda n: (n.row.ts_us, n.row.event_id))
        cycles.append([m.row.span_id or "" for m in members])
        if cut.parent is not None:
            cut.parent.children.remove(cut)
            cut.parent = None
        cut.cycle = True
        cut.depth = 0
        _walk([cut], order, seen)
    return cycles


def _span(node: _Node) -> Span:
    r = node.row
    return Span(
        span_id=r.span_id,
        parent_span_id=r.parent_span_id,
        source=r.source,
        target=r.target,
        operation=r.operation,
        token_id=r.token_id,
        identity=r.identity,
        scope=r.scope,
        outcome=r.outcome,
        status=r.status,
        environment=r.environment,
        resource=r.resource,
        ts=utc(r.ts_us),
        depth=node.depth,
        event_id=r.event_id,
        orphan=node.orphan,
        cycle=node.cycle,
    )


def _paths(order: list[_Node]) -> list[ChainPath]:
    found: dict[tuple[tuple[str, ...], tuple[str, ...]], ChainPath] = {}
    for leaf in order:
        if leaf.children:
            continue
        hops: list[_Node] = []
        current: _Node | None = leaf
        while current is not None:
            hops.append(current)
            current = current.parent
        hops.reverse()
        services = [hops[0].row.source, *(h.row.target for h in hops)]
        tokens = [h.row.token_id for h in hops]
        key = (tuple(services), tuple(tokens))
        if key in found:
            found[key] = _counted(found[key])
        else:
            found[key] = ChainPath(
                services=services,
                tokens=tokens,
                span_ids=[h.row.span_id for h in hops],
                count=1,
                gap=hops[0].orphan,
            )
    return list(found.values())


def _counted(path: ChainPath) -> ChainPath:
    return ChainPath(
        services=path.services,
        tokens=path.tokens,
        span_ids=path.span_ids,
        count=path.count + 1,
        gap=path.gap,
    )


def _switches(order: list[_Node], compare: Compare) -> list[TokenSwitch]:
    switches = []
    for node in order:
        parent = node.parent
        if parent is None or parent.row.token_id == node.row.token_id:
            continue
        relation, basis, gained, dropped, derived = compare(parent.row.token_id, node.row.token_id)
        switches.append(
            TokenSwitch(
                span_id=node.row.span_id,
                parent_span_id=parent.key,
                at=node.row.source,
                from_token=parent.row.token_id,
                to_token=node.row.token_id,
                relation=relation,
                basis=basis,
                gained=gained,
                dropped=dropped,
                derived=derived,
                ts=utc(node.row.ts_us),
            )
        )
    return switches


def _duplicate(kept: HopRow, others: list[HopRow]) -> Duplicate:
    # The two halves of a Zipkin shared span name one call differently (`GET /x`, `get /x`):
    # only a different hop is a conflict.
    def shape(r: HopRow) -> tuple[object, ...]:
        return (r.source, r.target, r.token_id, r.parent_span_id)

    return Duplicate(
        span_id=kept.span_id or "",
        kept_event_id=kept.event_id,
        other_event_ids=[r.event_id for r in others],
        conflicting=any(shape(r) != shape(kept) for r in others),
    )


def compare_sets(before: set[str], after: set[str]) -> Relation:
    """How a new grant (or reach) relates to the one it replaced.

    >>> compare_sets({"a:read"}, {"a:read", "b:write"}), compare_sets({"a", "b"}, {"a"})
    ('broader', 'narrower')
    """
    if after == before:
        return "same"
    if after > before:
        return "broader"
    if after < before:
        return "narrower"
    return "different"


def store_comparison(
    conn: duckdb.DuckDBPyConnection,
    tokens: Iterable[str],
    *,
    below: dict[str, set[str]] | None = None,
) -> Compare:
    """Compare tokens by their granted scopes, or by their observed direct reach when a grant is
    unknown; lineage says whether the new token was derived from the caller's (`below`: each
    token's descendants, read already)."""
    wanted = sorted(set(tokens))
    scopes = {t: set(s) for t, s in token_scopes(conn, token_ids=wanted).items() if s}
    if below is None:
        below = lineage_below(conn, token_ids=wanted)
    among = set(wanted)
    derived = {(a, d) for a in wanted for d in below.get(a, ()) if d in among}
    reach: dict[str, set[str]] = {}

    def reach_of(token: str) -> set[str]:
        if token not in reach:
            reach[token] = {
                e.target
                for e in edge_rows(conn, token_ids=[token])
                if e.calls > e.denied + e.errors
            }
        return reach[token]

    def compare(before: str, after: str) -> Comparison:
        is_derived = (before, after) in derived
        if before in scopes and after in scopes:
            old, new = scopes[before], scopes[after]
            basis: Literal["scopes", "reach"] = "scopes"
        else:
            old, new = reach_of(before), reach_of(after)
            basis = "reach"
            if not old or not new:
                return "unknown", None, [], [], is_derived
        return compare_sets(old, new), basis, sorted(new - old), sorted(old - new), is_derived

    return compare


class ChainRead(NamedTuple):
    """A chain and every token its answer was read from: the tokens of its hops (their scopes,
    edges) and, when there are several, every token derived from them. A new lineage link
    that makes one hop's token an ancestor of another's starts below a token in this set, so
    a store change that touches none of them, nor the trace, leaves the chain as it is."""

    chain: Chain
    tokens: frozenset[str]


def read_chain(
    conn: duckdb.DuckDBPyConnection, *, trace_id: str, hops: Sequence[HopRow] | None = None
) -> ChainRead:
    """The chain of a trace as stored now (empty spans when the trace is unknown) and what it
    was read from; `hops`, when given, are its stored events read already."""
    if hops is None:
        hops = chain_hops(conn, trace_id=trace_id)
    tokens = {h.token_id for h in hops}
    if len(tokens) <= 1:  # no token switch to judge: the hops are the whole answer
        return ChainRead(build_chain(trace_id, hops, _unknown), frozenset(tokens))
    below = lineage_below(conn, token_ids=sorted(tokens))
    chain = build_chain(trace_id, hops, store_comparison(conn, tokens, below=below))
    return ChainRead(chain, frozenset(tokens).union(*below.values()))


def load_chain(
    conn: duckdb.DuckDBPyConnection, *, trace_id: str, hops: Sequence[HopRow] | None = None
) -> Chain:
    """The chain of a trace as stored now (empty spans when the trace is unknown)."""
    return read_chain(conn, trace_id=trace_id, hops=hops).chain


def hop(
    span_id: str | None,
    parent_span_id: str | None,
    source: str,
    target: str,
    token_id: str,
    *,
    ts_us: int = 1_772_442_000_000_000,
    event_id: str | None = None,
) -> HopRow:
    """A hand-made hop, for examples and tests of `build_chain` without a store."""
    return HopRow(
        event_id=event_id or f"ev-{span_id}",
        ts_us=ts_us,
        trace_id="t",
        span_id=span_id,
        parent_span_id=parent_span_id,
        token_id=token_id,
        identity=f"id-{source}",
        source=source,
        target=target,
        operation="GET /",
        scope=None,
        outcome="success",
        status=None,
        environment=None,
        resource=None,
        parent_token_id=None,
    )
