"""Blast radius: what a token (or an identity) reached, weighted by what it is worth.

    score = sum over DISTINCT targets of
            sensitivity(target) x weight(highest privilege used there)
            x environment_crossing (target outside the token's home environment)
            x chain (0.5 when the target was only reached downstream, by another token)

Call counts never add to the score: 10,000 reads of a status page are worth one read of it.
Each target counts once, by its best way there (direct, through a derived token, or downstream
in a chain), and the breakdown says which target contributed how much. docs/GRAPH.md works an
example through.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from tokentrail.catalog import PRIVILEGES, Catalog, Privilege, privilege_of
from tokentrail.events import EPOCH, ONE_US
from tokentrail.graph.model import Result, utc
from tokentrail.store.graph import (
    EdgeRow,
    ReachRow,
    edge_rows,
    identity_token_ids,
    reach_rows,
    token_rows,
)
from tokentrail.store.graph import rank_tokens as rank_rows


class Contribution(Result, frozen=True, kw_only=True):
    """One reached target and what it added to the score, with the way it was reached."""

    target: str
    contribution: float
    sensitivity: float
    privilege: str
    privilege_weight: float
    via: str  # direct | derived | chain
    via_token: str  # the token that made the call
    environments: list[str]
    crossing: bool  # outside the home environment
    direct: bool  # reached with the subject's own tokens (else only transitively)
    successes: int  # successful direct calls: shown, never scored
    first_seen: datetime
    last_seen: datetime
    evidence_event_id: str | None  # chain reach: the first downstream hop
    evidence_trace_id: str | None


class PotentialTarget(Result, frozen=True, kw_only=True):
    target: str
    scopes: list[str]  # the granted scopes that reach it
    privilege: Privilege
    contribution: float
    reached: bool


class Potential(Result, frozen=True, kw_only=True):
    """Posture: what the granted scopes allow, and the least-privilege gap (granted, unused)."""

    granted_scopes: list[str]
    exercised_scopes: list[str]
    unused_scopes: list[str]
    targets: list[PotentialTarget]
    score: float
    unreached: list[str]
    gap_score: float


class Policy(Result, frozen=True, kw_only=True):
    """The identity's declared policy from the catalog, against what was used."""

    identity: str
    allowed_targets: list[str]
    allowed_scopes: list[str]
    targets_outside: list[str]
    scopes_outside: list[str]


class BlastRadius(Result, frozen=True, kw_only=True):
    subject: str
    kind: str  # token | identity
    score: float
    direct_targets: int
    transitive_targets: int  # reached only downstream in chains or through derived tokens
    total_targets: int
    environments: list[str]
    home_environment: str | None
    breakdown: list[Contribution]
    potential: Potential | None
    policy: Policy | None


class BlastSummary(Result, frozen=True, kw_only=True):
    score: float
    direct_targets: int
    transitive_targets: int
    environments: list[str]


class RankedToken(Result, frozen=True, kw_only=True):
    token_id: str
    identity: str
    calls: int
    blast_radius: BlastSummary


def _contribution(row: ReachRow) -> Contribution:
    return Contribution(
        target=row.target,
        contribution=round(row.contribution, 4),
        sensitivity=row.sensitivity,
        privilege=row.privilege,
        privilege_weight=row.weight,
        via=row.via,
        via_token=row.via_token,
        environments=row.environments,
        crossing=row.crossing,
        direct=row.direct,
        successes=row.successes,
        first_seen=utc(row.first_seen_us),
        last_seen=utc(row.last_seen_us),
        evidence_event_id=row.evidence_event_id,
        evidence_trace_id=row.evidence_trace_id,
    )


def blast_radius(
    conn: duckdb.DuckDBPyConnection,
    *,
    catalog: Catalog,
    token_id: str | None = None,
    identity: str | None = None,
    until: datetime | None = None,
) -> BlastRadius:
    """The blast radius of one token, or of one identity over all the tokens it used; with
    `until`, as it stood at that time (events after it ignored: an incident's "before").

    Example: `blast_radius(conn, catalog=catalog, token_id="tok-gw", until=alert_time)`.
    """
    if (token_id is None) == (identity is None):
        raise ValueError("give exactly one of token_id and identity")
    until_us = (until - EPOCH) // ONE_US if until is not None else None
    if token_id is not None:
        rows = reach_rows(conn, catalog=catalog, token_ids=[token_id], until_us=until_us)
        edges = edge_rows(conn, token_ids=[token_id], until_us=until_us)
        registry = token_rows(conn, token_ids=[token_id])
        owner = registry[0].identity if registry else None
        granted = set(registry[0].scopes or []) if registry else set()
        subject, kind = token_id, "token"
    else:
        assert identity is not None
        rows = reach_rows(conn, catalog=catalog, identity=identity, until_us=until_us)
        tokens = identity_token_ids(conn, identity=identity)
        edges = edge_rows(conn, token_ids=tokens, identity=identity, until_us=until_us)
        granted = {s for t in token_rows(conn, token_ids=tokens) for s in t.scopes or []}
        owner, subject, kind = identity, identity, "identity"
    policy = catalog.identity(owner) if owner else None
    home = rows[0].home if rows else (policy.environment if policy else None)
    breakdown = [_contribution(r) for r in rows]
    direct = {c.target for c in breakdown if c.direct}
    environments = {e for c in breakdown for e in c.environments} | ({home} if home else set())
    return BlastRadius(
        subject=subject,
        kind=kind,
        score=round(sum(r.contribution for r in rows), 2),
        direct_targets=len(direct),
        transitive_targets=len(breakdown) - len(direct),
        total_targets=len(breakdown),
        environments=sorted(environments),
        home_environment=home,
        breakdown=breakdown,
        potential=_potential(catalog, granted, edges, direct, home),
        policy=_policy(catalog, owner, edges) if owner else None,
    )


def _succeeded(edges: list[EdgeRow]) -> list[EdgeRow]:
    return [e for e in edges if e.calls > e.denied + e.errors]


def _potential(
    catalog: Catalog, granted: set[str], edges: list[EdgeRow], reached: set[str], home: str | None
) -> Potential | None:
    if not granted or not catalog.maps_scopes:
        return None
    exercised = {e.scope for e in _succeeded(edges) if e.scope}
    targets = []
    for name, scopes in sorted(catalog.services_for_scopes(granted).items()):
        service = catalog.service(name)
        privilege = max((privilege_of("", s) for s in scopes), key=PRIVILEGES.index)
        crossing = bool(service and service.environment and home and service.environment != home)
        value = catalog.sensitivity(name) * catalog.weight(privilege)
        value *= catalog.score.environment_crossing if crossing else 1.0
        targets.append(
            PotentialTarget(
                target=name,
                scopes=scopes,
                privilege=privilege,
                contribution=round(value, 4),
                reached=name in reached,
            )
        )
    unreached = [t for t in targets if not t.reached]
    return Potential(
        granted_scopes=sorted(granted),
        exercised_scopes=sorted(exercised),
        unused_scopes=sorted(granted - exercised),
        targets=targets,
        score=round(sum(t.contribution for t in targets), 2),
        unreached=[t.target for t in unreached],
        gap_score=round(sum(t.contribution for t in unreached), 2),
    )


def _policy(catalog: Catalog, identity: str, edges: list[EdgeRow]) -> Policy | None:
    declared = catalog.identity(identity)
    if declared is None:
        return None
    used = _succeeded(edges)
    return Policy(
        identity=identity,
        allowed_targets=list(declared.allowed_targets),
        allowed_scopes=list(declared.allowed_scopes),
        targets_outside=sorted(
            {e.target for e in used} - set(declared.allowed_targets)
            if declared.allowed_targets
            else set()
        ),
        scopes_outside=sorted(
            {e.scope for e in used if e.scope} - set(declared.allowed_scopes)
            if declared.allowed_scopes
            else set()
        ),
    )


def rank_tokens(
    conn: duckdb.DuckDBPyConnection,
    *,
    catalog: Catalog,
    top: int | None = None,
    identity: str | None = None,
) -> list[RankedToken]:
    """Tokens by blast radius score, highest first; computed from the aggregated tables."""
    return [
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
        for row in rank_rows(conn, catalog=catalog, top=top, identity=identity)
    ]
