"""Lineage: the family of a token through exchanges, derivations and AssumeRole.

A link `child -> parent` comes from `token.parent_token_id` on the child's events, or from a call
made with the parent that issued the child (`attributes.issued_token`). The family is every
token linked to the token's roots; its reach is what all of them reached together.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Literal

import duckdb

from tokentrail.catalog import Catalog
from tokentrail.graph.model import Result, utc
from tokentrail.graph.tokens import lookup_tokens
from tokentrail.store.graph import LinkRow, family_links, reach_rows


class LineageToken(Result, frozen=True, kw_only=True):
    token_id: str
    relation: Literal["self", "ancestor", "descendant", "relative"]
    generation: int  # links below the family's root (roots are 0)
    parents: list[str]
    via: str | None  # how it was derived from its (first) parent
    derived_at: datetime | None
    link_event_id: str | None  # the event that showed the derivation
    # From the registry; None for a token that was issued but never used.
    identity: str | None
    kind: str | None
    scopes: list[str] | None
    calls: int
    first_seen: datetime | None
    last_seen: datetime | None


class FamilyReach(Result, frozen=True, kw_only=True):
    """What the family reached as a whole, scored like one token's blast radius."""

    targets: list[str]
    environments: list[str]
    score: float


class Lineage(Result, frozen=True, kw_only=True):
    token_id: str
    roots: list[str]
    ancestors: list[str]  # nearest first
    descendants: list[str]
    tokens: list[LineageToken]
    reach: FamilyReach


def _earliest(link: LinkRow) -> tuple[int, str]:
    return link.first_seen_us, link.event_id


def _closure(start: str, edges: dict[str, list[str]]) -> list[str]:
    """Tokens reachable from `start` along `edges`, nearest first (breadth-first)."""
    found: list[str] = []
    seen = {start}
    queue = deque([start])
    while queue:
        for nxt in edges.get(queue.popleft(), []):
            if nxt not in seen:
                seen.add(nxt)
                found.append(nxt)
                queue.append(nxt)
    return found


def build_lineage(token_id: str, links: list[LinkRow]) -> tuple[list[str], list[str], list[str]]:
    """(roots, ancestors nearest first, descendants) of a token given its family's links.

    >>> from tokentrail.store.graph import LinkRow
    >>> build_lineage("c", [LinkRow("b", "a", "x", 0, "e1"), LinkRow("c", "b", "x", 1, "e2"),
    ...                     LinkRow("d", "c", "x", 2, "e3")])
    (['a'], ['b', 'a'], ['d'])
    """
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    for link in links:
        up.setdefault(link.child_token_id, []).append(link.parent_token_id)
        down.setdefault(link.parent_token_id, []).append(link.child_token_id)
    ancestors = _closure(token_id, up)
    lineage = [token_id, *ancestors]
    roots = sorted(t for t in lineage if not up.get(t)) or [lineage[-1]]
    return roots, ancestors, _closure(token_id, down)


def token_lineage(
    conn: duckdb.DuckDBPyConnection, *, token_id: str, catalog: Catalog | None = None
) -> Lineage:
    """The family of a token and the reach of the family as a whole."""
    links = family_links(conn, token_id=token_id)
    roots, ancestors, descendants = build_lineage(token_id, links)
    down: dict[str, list[str]] = {}
    parents: dict[str, list[LinkRow]] = {}
    for link in links:
        down.setdefault(link.parent_token_id, []).append(link.child_token_id)
        parents.setdefault(link.child_token_id, []).append(link)
    generation: dict[str, int] = {}
    queue = deque((root, 0) for root in roots)
    while queue:
        token, depth = queue.popleft()
        if token in generation:
            continue
        generation[token] = depth
        queue.extend((child, depth + 1) for child in down.get(token, []))
    family = sorted(generation, key=lambda t: (generation[t], t))
    if token_id not in generation:
        family.append(token_id)  # inside a lineage cycle with no root: still part of it
        generation[token_id] = 0
    registry = {t.token_id: t for t in lookup_tokens(conn, token_ids=family)}
    above, below = set(ancestors), set(descendants)
    members = []
    for token in family:
        info = registry.get(token)
        first = min(parents.get(token, []), key=_earliest, default=None)
        members.append(
            LineageToken(
                token_id=token,
                relation=_relation(token, token_id, above, below),
                generation=generation[token],
                parents=sorted(r.parent_token_id for r in parents.get(token, [])),
                via=first.via if first else None,
                derived_at=utc(first.first_seen_us) if first else None,
                link_event_id=first.event_id if first else None,
                identity=info.identity if info else None,
                kind=info.kind if info else None,
                scopes=info.scopes if info else None,
                calls=info.calls if info else 0,
                first_seen=info.first_seen if info else None,
                last_seen=info.last_seen if info else None,
            )
        )
    return Lineage(
        token_id=token_id,
        roots=roots,
        ancestors=ancestors,
        descendants=descendants,
        tokens=members,
        reach=family_reach(conn, token_ids=family, catalog=catalog or Catalog()),
    )


def _relation(
    token: str, subject: str, above: set[str], below: set[str]
) -> Literal["self", "ancestor", "descendant", "relative"]:
    if token == subject:
        return "self"
    if token in above:
        return "ancestor"
    return "descendant" if token in below else "relative"


def family_reach(
    conn: duckdb.DuckDBPyConnection, *, token_ids: list[str], catalog: Catalog
) -> FamilyReach:
    """Targets any of the tokens reached; each target scores once, by its best way there."""
    best: dict[str, float] = {}
    environments: set[str] = set()
    for row in reach_rows(conn, catalog=catalog, token_ids=token_ids):
        best[row.target] = max(best.get(row.target, 0.0), row.contribution)
        environments.update(row.environments)
    return FamilyReach(
        targets=sorted(best),
        environments=sorted(environments),
        score=round(sum(best.values()), 2),
    )
