"""Paths and exposure: how access flowed from one service to another, and who reached a service.

A step leaves a service through a token it held (a token it made calls with) and arrives where
that token was used, from that service (`call`) or from anywhere else (`reused`: the credential
travelled), or where a token derived from it was used (`derived`: exchange, AssumeRole).
The search runs breadth-first over the stored service graph (`service_hops`, a few thousand
rows kept per batch), reads the ways of taking the steps of the candidate paths from the
aggregated `token_edges` (one query), then proves each of those steps with real events (one
statement, each step read within its own time span), each at or after the one before it when the
events allow (`time_ordered`). With a time range it searches level by level on the edges active
in the range instead (one query per level), since the range decides which steps exist.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import pairwise
from typing import Final, Literal

import duckdb

from tokentrail.catalog import PRIVILEGES, Catalog, Privilege, privilege_of
from tokentrail.events import EPOCH, ONE_US
from tokentrail.graph.model import Result, utc
from tokentrail.store.graph import (
    ExposureRow,
    ProofRow,
    StepRow,
    exposure_rows,
    path_steps,
    service_hops,
    step_events,
)

StepKind = Literal["call", "reused", "derived"]
_KIND_ORDER: Final[dict[StepKind, int]] = {"call": 0, "derived": 1, "reused": 2}
# Ways of taking one step that a path keeps (the best first); the rest are counted.
_WAYS_PER_STEP: Final = 3


class Proof(Result, frozen=True, kw_only=True):
    """The event that shows a step happened."""

    event_id: str
    ts: datetime
    token_id: str
    source: str
    target: str
    operation: str
    trace_id: str | None


class Step(Result, frozen=True, kw_only=True):
    source: str  # the service access flowed from
    target: str
    kind: StepKind
    token_id: str  # the token `source` held
    call_token_id: str  # the token used for the call (derived from `token_id` when `derived`)
    call_source: str  # where the call was made from
    lineage_depth: int
    proof: Proof
    events_in_range: int  # successful calls of this way in the range
    alternatives: int  # other ways (held token, call token, call source) to take this step


class Path(Result, frozen=True, kw_only=True):
    services: list[str]
    hops: int
    time_ordered: bool  # each step's proof is no earlier than the previous step's
    first_seen: datetime
    last_seen: datetime
    steps: list[Step]


class Paths(Result, frozen=True, kw_only=True):
    source: str
    target: str
    since: datetime | None
    until: datetime | None
    max_hops: int
    paths: list[Path]


def _kind(row: StepRow) -> StepKind:
    if row.call_token != row.held_token:
        return "derived"
    return "call" if row.call_source == row.from_service else "reused"


def _preference(row: StepRow) -> tuple[int, int, int, str, str]:
    return (
        _KIND_ORDER[_kind(row)],
        row.lineage_depth,
        -row.successes,
        row.call_token,
        row.held_token,
    )


def _key(row: StepRow) -> tuple[str, str, str]:
    return row.call_token, row.call_source, row.target


def find_paths(
    conn: duckdb.DuckDBPyConnection,
    *,
    source: str,
    target: str,
    since: datetime | None = None,
    until: datetime | None = None,
    max_hops: int = 6,
    limit: int = 10,
) -> Paths:
    """Paths from service `source` to service `target`, fewest steps first, each step proven."""
    since_us = _us(since)
    until_us = _us(until)
    # Without a time range the search walks the stored service graph in memory and reads the
    # details of the candidate steps only, in one query: each level's query would join a hub's
    # held tokens with all of `token_edges`. A range changes which steps exist, so it searches
    # level by level on the edges active in it.
    hops = service_hops(conn) if since is None and until is None else None
    ways: dict[tuple[str, str], list[StepRow]] = {}

    def level(frontier: list[str], into: str | None) -> list[tuple[str, str]]:
        rows = path_steps(
            conn,
            services=frontier,
            targets=None if into is None else [into],
            since_us=since_us,
            until_us=until_us,
        )
        for row in rows:
            ways.setdefault((row.from_service, row.target), []).append(row)
        return [(row.from_service, row.target) for row in rows]

    explored, horizon = _explore(level if hops is None else _walker(hops), source, target, max_hops)
    candidates = list(_simple_paths(explored, source, target, horizon, limit * 3))
    needed = {step for path in candidates for step in path}
    if hops is not None and needed:
        for row in path_steps(
            conn, services=sorted({u for u, _ in needed}), targets=sorted({v for _, v in needed})
        ):
            if (row.from_service, row.target) in needed:
                ways.setdefault((row.from_service, row.target), []).append(row)
    for options in ways.values():
        options.sort(key=_preference)
    spans = {
        _key(w): (w.first_seen_us, w.last_seen_us)
        for path in candidates
        for step in path
        for w in ways[step][:_WAYS_PER_STEP]
    }
    keys = sorted((*key, *span) for key, span in spans.items())
    proofs: dict[tuple[str, str, str], list[ProofRow]] = {}
    for proof in step_events(conn, keys=keys, since_us=since_us, until_us=until_us):
        proofs.setdefault((proof.token_id, proof.source, proof.target), []).append(proof)
    proven = [p for p in (_prove(c, ways, proofs) for c in candidates) if p is not None]
    proven.sort(key=lambda p: (p.hops, not p.time_ordered, p.first_seen, p.services))
    return Paths(
        source=source,
        target=target,
        since=since,
        until=until,
        max_hops=max_hops,
        paths=proven[:limit],
    )


# The steps out of a frontier of services (only those into the target, when given).
_Out = Callable[[list[str], str | None], list[tuple[str, str]]]


def _walker(hops: dict[str, list[str]]) -> _Out:
    def out(frontier: list[str], into: str | None) -> list[tuple[str, str]]:
        return [(u, v) for u in frontier for v in hops.get(u, []) if into is None or v == into]

    return out


def _explore(
    out: _Out, source: str, target: str, max_hops: int
) -> tuple[set[tuple[str, str]], int]:
    """Breadth-first from `source`: the steps looked at, and the longest path worth listing."""
    explored: set[tuple[str, str]] = set()
    dist = {source: 0}
    frontier = [source]
    horizon = max_hops
    level = 0
    while frontier and level < horizon:
        level += 1
        # Once the target is found, one more level shows the next-shortest alternatives; it
        # only needs the steps into the target.
        into = target if target in dist else None
        found: set[str] = set()
        for step in out(frontier, into):
            explored.add(step)
            if step[1] not in dist:
                dist[step[1]] = level
                found.add(step[1])
        if into is None and target in dist:
            horizon = min(horizon, dist[target] + 1)
        frontier = sorted(found) if into is None else []
    return explored, horizon


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - EPOCH) // ONE_US


def _ts(proof: ProofRow) -> int:
    return proof.ts_us


def _simple_paths(
    steps: set[tuple[str, str]], source: str, target: str, max_len: int, cap: int
) -> Iterator[list[tuple[str, str]]]:
    """Simple paths over the explored steps, by increasing length, at most `cap` of them."""
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for u, v in sorted(steps):
        succ.setdefault(u, []).append(v)
        pred.setdefault(v, []).append(u)
    to_target = {target: 0}
    queue = deque([target])
    while queue:
        v = queue.popleft()
        for u in pred.get(v, []):
            if u not in to_target:
                to_target[u] = to_target[v] + 1
                queue.append(u)
    count = 0
    for length in range(1, max_len + 1):
        stack: list[tuple[str, list[str]]] = [(source, [source])]
        while stack:
            node, nodes = stack.pop()
            remaining = length - (len(nodes) - 1)
            if remaining == 0:
                if node == target:
                    yield list(pairwise(nodes))
                    count += 1
                    if count >= cap:
                        return
                continue
            for nxt in reversed(succ.get(node, [])):
                if nxt in nodes or to_target.get(nxt, max_len + 1) > remaining - 1:
                    continue
                if nxt == target and remaining > 1:
                    continue
                stack.append((nxt, [*nodes, nxt]))


def _prove(
    path: list[tuple[str, str]],
    ways: dict[tuple[str, str], list[StepRow]],
    proofs: dict[tuple[str, str, str], list[ProofRow]],
) -> Path | None:
    """Pick, for each step, the way and event that follow the previous step soonest in time."""
    steps: list[Step] = []
    after = -(1 << 62)
    ordered = True
    for u, v in path:
        found = []
        for rank, way in enumerate(ways[(u, v)][:_WAYS_PER_STEP]):
            events = proofs.get(_key(way))
            if not events:
                continue
            at = bisect_left(events, after, key=_ts)
            late = at == len(events)
            chosen = events[0] if late else events[at]
            found.append(((late, chosen.ts_us, rank), way, chosen))
        if not found:
            return None  # no event in the range proves this step
        (late, _, _), way, proof = min(found, key=lambda f: f[0])
        ordered = ordered and not late
        after = max(after, proof.ts_us)
        steps.append(
            Step(
                source=u,
                target=v,
                kind=_kind(way),
                token_id=way.held_token,
                call_token_id=way.call_token,
                call_source=way.call_source,
                lineage_depth=way.lineage_depth,
                proof=Proof(
                    event_id=proof.event_id,
                    ts=utc(proof.ts_us),
                    token_id=proof.token_id,
                    source=proof.source,
                    target=proof.target,
                    operation=proof.operation,
                    trace_id=proof.trace_id,
                ),
                events_in_range=len(proofs.get(_key(way), [])),
                alternatives=way.ways - 1,
            )
        )
    times = [s.proof.ts for s in steps]
    return Path(
        services=[path[0][0], *(v for _, v in path)],
        hops=len(steps),
        time_ordered=ordered,
        first_seen=min(times),
        last_seen=max(times),
        steps=steps,
    )


# --- exposure --------------------------------------------------------------------------------

_VIA_ORDER: Final = {"direct": 0, "derived": 1, "chain": 2}


class ExposedToken(Result, frozen=True, kw_only=True):
    token_id: str
    identity: str | None
    reached: bool  # False: it only tried (every direct call denied or failed)
    via: str  # the closest way: direct | derived | chain
    ways: list[str]
    via_tokens: list[str]  # the tokens that made the calls (itself when direct)
    privilege: Privilege
    operations: list[str]
    calls: int
    successes: int
    denied: int
    first_seen: datetime
    last_seen: datetime
    evidence_event_id: str | None


class ExposedIdentity(Result, frozen=True, kw_only=True):
    identity: str | None
    tokens: int
    ways: list[str]
    privilege: Privilege


class Exposure(Result, frozen=True, kw_only=True):
    service: str
    sensitivity: int
    tokens: list[ExposedToken]
    identities: list[ExposedIdentity]


def _highest(privileges: list[Privilege]) -> Privilege:
    return max(privileges, key=PRIVILEGES.index)


def service_exposure(
    conn: duckdb.DuckDBPyConnection, *, service: str, catalog: Catalog | None = None
) -> Exposure:
    """Every token and identity that reached `service`, directly or transitively."""
    by_token: dict[str, list[ExposureRow]] = {}
    for row in exposure_rows(conn, service=service):
        by_token.setdefault(row.token_id, []).append(row)
    tokens = [_exposed(token, rows) for token, rows in by_token.items()]
    tokens.sort(
        key=lambda t: (
            not t.reached,
            _VIA_ORDER[t.via],
            -PRIVILEGES.index(t.privilege),
            -t.successes,
            t.token_id,
        )
    )
    identities: dict[str | None, list[ExposedToken]] = {}
    for token in tokens:
        if token.reached:
            identities.setdefault(token.identity, []).append(token)
    return Exposure(
        service=service,
        sensitivity=(catalog or Catalog()).sensitivity(service),
        tokens=tokens,
        identities=[
            ExposedIdentity(
                identity=identity,
                tokens=len(members),
                ways=sorted({w for m in members for w in m.ways}, key=_VIA_ORDER.__getitem__),
                privilege=_highest([m.privilege for m in members]),
            )
            for identity, members in identities.items()
        ],
    )


def _exposed(token: str, rows: list[ExposureRow]) -> ExposedToken:
    reaching = [r for r in rows if r.via != "direct" or r.successes > 0]
    ways = sorted({r.via for r in reaching}, key=_VIA_ORDER.__getitem__)
    via = ways[0] if ways else "direct"
    chosen = [r for r in (reaching or rows) if r.via == via]
    direct = [r for r in rows if r.via == "direct"]
    return ExposedToken(
        token_id=token,
        identity=rows[0].identity,
        reached=bool(reaching),
        via=via,
        ways=ways,
        via_tokens=sorted({r.via_token for r in chosen}),
        privilege=_highest([privilege_of(r.operation, r.scope) for r in chosen]),
        operations=sorted({r.operation for r in chosen}),
        calls=sum(r.calls for r in direct),
        successes=sum(r.successes for r in direct),
        denied=sum(r.denied for r in direct),
        first_seen=utc(min(r.first_seen_us for r in chosen)),
        last_seen=utc(max(r.last_seen_us for r in chosen)),
        evidence_event_id=min(
            (r.evidence_event_id for r in chosen if r.evidence_event_id), default=None
        ),
    )
