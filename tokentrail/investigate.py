"""Incident response: from one alert to the attacker's path and what to revoke and rotate.

An investigation starts from a stored alert and gathers, from the store only:

- the **evidence**: the alert's events and the credential-access steps its path names, with the
  tokens and traces they involve, and the chains of those traces;
- the **lineage** of the alerted token (what it was derived from, what was derived from it);
- its **blast radius before and after**: as it stood just before the alert's first event, and
  as it stands now, target by target;
- the **attack path** from the service the evidence starts at to the most sensitive target;
- a **timeline** of the token family's calls around the alert, and its **reach graph**;
- the **containment list**: tokens to revoke, identities to rotate and credentials the family
  read or minted, each with its reason.

The notebook `notebooks/incident_response.ipynb` and `tokentrail contain` show these; they hold
no logic of their own. "Now" is the newest stored event (event time), never the wall clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import duckdb
import msgspec

from tokentrail.catalog import Catalog
from tokentrail.detect.setup import remembered_catalog
from tokentrail.errors import TokentrailError
from tokentrail.events import EPOCH, ONE_US
from tokentrail.graph.blast import BlastRadius, blast_radius
from tokentrail.graph.chains import Chain, load_chain
from tokentrail.graph.lineage import Lineage, token_lineage
from tokentrail.graph.model import Result, utc
from tokentrail.graph.paths import Paths, find_paths
from tokentrail.graph.tokens import TokenInfo, lookup_tokens
from tokentrail.store.alerts import AlertRow
from tokentrail.store.graph import edge_rows
from tokentrail.store.investigate import (
    CallRow,
    alert_row,
    calls_by_id,
    credential_calls,
    newest_event_us,
    token_calls,
    token_users,
    top_alert_id,
)

# How far around the alert the timeline reaches, and how many calls it shows at most.
TIMELINE_MARGIN: Final = timedelta(minutes=30)
TIMELINE_LIMIT: Final = 5_000
# Credential access this long before the evidence counts as part of the incident: the window
# the credential-pivot detector follows a derived token's ancestors back over.
CREDENTIAL_LOOKBACK: Final = timedelta(hours=2)

# The catalog the alerts were scored with: an investigation scores reach the same way.
stored_catalog = remembered_catalog


class UnknownAlertError(TokentrailError):
    """The store has no such alert (or no alert at all)."""


class AlertInfo(Result, frozen=True, kw_only=True):
    """The alert an investigation starts from, as stored."""

    alert_id: str
    detector: str
    severity: str
    score: float
    title: str
    token_id: str | None
    identity: str | None
    targets: list[str]
    first_seen: datetime
    last_seen: datetime
    count: int
    event_ids: list[str]  # the earliest evidence events, capped
    mitre: list[str]
    owasp_nhi: list[str]
    runbook: str
    status: str
    evidence: dict[str, Any]


class Call(Result, frozen=True, kw_only=True):
    """One event of the evidence or the timeline."""

    event_id: str
    ts: datetime
    token_id: str
    identity: str
    source: str
    target: str
    operation: str
    scope: str | None
    outcome: str
    trace_id: str | None
    resource: str | None
    role: Literal["finding", "credential_step", "context"]


class Evidence(Result, frozen=True, kw_only=True):
    """The events behind an alert, oldest first, and what they involve."""

    events: list[Call]
    tokens: list[str]  # in order of first use
    trace_ids: list[str]
    services: list[str]  # in order of first appearance, sources and targets
    first_seen: datetime
    last_seen: datetime


class TargetChange(Result, frozen=True, kw_only=True):
    """One target's contribution to the blast radius before the alert and now."""

    target: str
    before: float
    after: float
    via: str  # how it is reached now: direct | derived | chain
    via_token: str
    new: bool  # not reached at all before the alert


class BlastChange(Result, frozen=True, kw_only=True):
    """The blast radius of the alerted token (or identity) just before the alert, and now."""

    subject: str
    kind: str  # token | identity
    cutoff: datetime  # "before" counts the events strictly earlier than this
    before: BlastRadius
    after: BlastRadius
    growth: float
    targets: list[TargetChange]  # biggest contribution now first
    gained: list[str]  # targets first reached at or after the cutoff


class ReachNode(Result, frozen=True, kw_only=True):
    service: str
    sensitivity: float
    entry: bool  # where the evidence starts
    alerted: bool  # a target the alert names


class ReachEdge(Result, frozen=True, kw_only=True):
    """Calls one token of the family made from `source` to `target`."""

    source: str
    target: str
    token_id: str
    calls: int
    successes: int
    first_seen: datetime
    last_seen: datetime
    evidence: bool  # an evidence event made this call
    new: bool  # first made at or after the alert's first event


class ReachGraph(Result, frozen=True, kw_only=True):
    """The services the token family reached: nodes, and edges per token."""

    tokens: list[str]
    nodes: list[ReachNode]
    edges: list[ReachEdge]


class RevokeToken(Result, frozen=True, kw_only=True):
    token_id: str
    identity: str | None
    kind: str | None
    relation: Literal["alerted", "ancestor", "descendant", "relative", "evidence"]
    action: Literal["revoke", "expired"]  # expired: nothing left to revoke, confirm only
    expires_at: datetime | None
    last_seen: datetime | None
    reason: str


class RotateIdentity(Result, frozen=True, kw_only=True):
    identity: str
    tokens: list[str]
    reason: str


class ExposedCredential(Result, frozen=True, kw_only=True):
    """A secret, role or key the family read or minted: rotate it, it may be in the attacker's
    hands even after every token above is revoked."""

    credential: str  # the resource, else the target
    target: str
    operation: str
    token_id: str
    event_id: str
    ts: datetime
    action: str
    reason: str


class Containment(Result, frozen=True, kw_only=True):
    alert_id: str
    as_of: datetime  # validity is judged at the newest stored event
    tokens: list[RevokeToken]
    identities: list[RotateIdentity]
    credentials: list[ExposedCredential]


class Investigation(Result, frozen=True, kw_only=True):
    alert: AlertInfo
    evidence: Evidence
    chains: list[Chain]
    lineage: Lineage
    blast: BlastChange
    entry: str  # the service the attack came in from
    path: Paths | None  # from `entry` to the most sensitive target the alert names
    timeline: list[Call]
    reach: ReachGraph
    containment: Containment


# --- the alert and its evidence ----------------------------------------------------------------


def pick_alert(conn: duckdb.DuckDBPyConnection) -> str:
    """The open alert to start from: most severe, then highest score, then earliest."""
    found = top_alert_id(conn)
    if found is None:
        raise UnknownAlertError("no open alert in this database")
    return found


def load_alert(conn: duckdb.DuckDBPyConnection, *, alert_id: str) -> AlertInfo:
    row = alert_row(conn, alert_id=alert_id)
    if row is None:
        raise UnknownAlertError(f"no alert {alert_id!r} in this database")
    return _alert_info(row)


def _alert_info(row: AlertRow) -> AlertInfo:
    return AlertInfo(
        alert_id=row.alert_id,
        detector=row.detector,
        severity=row.severity,
        score=row.score,
        title=row.title,
        token_id=row.token_id,
        identity=row.identity,
        targets=row.targets,
        first_seen=utc(row.first_seen_us),
        last_seen=utc(row.last_seen_us),
        count=row.occurrences,
        event_ids=row.event_ids,
        mitre=row.mitre,
        owasp_nhi=row.owasp_nhi,
        runbook=row.runbook,
        status=row.status,
        evidence={k: v for k, v in row.evidence.items() if k != "title_template"},
    )


def _call(row: CallRow, role: Literal["finding", "credential_step", "context"]) -> Call:
    return Call(
        event_id=row.event_id,
        ts=utc(row.ts_us),
        token_id=row.token_id,
        identity=row.identity,
        source=row.source,
        target=row.target,
        operation=row.operation,
        scope=row.scope,
        outcome=row.outcome,
        trace_id=row.trace_id,
        resource=row.resource,
        role=role,
    )


def alert_evidence(conn: duckdb.DuckDBPyConnection, *, alert: AlertInfo) -> Evidence:
    """The alert's events and the credential steps of its path (credential pivot), oldest first.

    Example: `alert_evidence(conn, alert=load_alert(conn, alert_id="ac88fe43..."))`.
    """
    finding_ids = set(alert.event_ids)
    steps = [str(s) for s in alert.evidence.get("credential_steps") or []]
    rows = calls_by_id(conn, event_ids=sorted(finding_ids | set(steps)))
    events = [_call(r, "finding" if r.event_id in finding_ids else "credential_step") for r in rows]
    if not events:
        raise UnknownAlertError(f"alert {alert.alert_id}: none of its events are stored")
    return Evidence(
        events=events,
        tokens=_ordered(e.token_id for e in events),
        trace_ids=_ordered(e.trace_id for e in events if e.trace_id),
        services=_ordered(s for e in events for s in (e.source, e.target)),
        first_seen=events[0].ts,
        last_seen=events[-1].ts,
    )


def _ordered(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- reach: before and after, the path, the graph ----------------------------------------------


def blast_change(
    conn: duckdb.DuckDBPyConnection,
    *,
    catalog: Catalog,
    cutoff: datetime,
    token_id: str | None = None,
    identity: str | None = None,
) -> BlastChange:
    """The blast radius of a token (or identity) just before `cutoff` and now, per target.

    Example: `blast_change(conn, catalog=c, cutoff=alert.first_seen, token_id=alert.token_id)`.
    """
    before = blast_radius(
        conn, catalog=catalog, token_id=token_id, identity=identity, until=cutoff - ONE_US
    )
    after = blast_radius(conn, catalog=catalog, token_id=token_id, identity=identity)
    was = {c.target: c.contribution for c in before.breakdown}
    targets = [
        TargetChange(
            target=c.target,
            before=was.get(c.target, 0.0),
            after=c.contribution,
            via=c.via,
            via_token=c.via_token,
            new=c.target not in was,
        )
        for c in after.breakdown
    ]
    return BlastChange(
        subject=after.subject,
        kind=after.kind,
        cutoff=cutoff,
        before=before,
        after=after,
        growth=round(after.score - before.score, 2),
        targets=targets,
        gained=[t.target for t in targets if t.new],
    )


def entry_service(evidence: Evidence, chains: Sequence[Chain]) -> str:
    """Where the attack came in: the root of the chain of the first evidence event (a confused
    deputy is driven from above it), else that event's caller."""
    first = evidence.events[0]
    for chain in chains:
        if chain.trace_id == first.trace_id and chain.spans:
            return chain.spans[0].source
    return first.source


def attack_path(
    conn: duckdb.DuckDBPyConnection,
    *,
    entry: str,
    evidence: Evidence,
    alert: AlertInfo,
    catalog: Catalog,
    since: datetime | None = None,
) -> Paths | None:
    """Paths from the `entry` service to the most sensitive target the alert names, from `since`
    (default: the first evidence event) to the alert's end; None when there is no such pair."""
    candidates = [t for t in alert.targets if t != entry] or [
        t for t in evidence.services if t != entry
    ]
    if not candidates:
        return None
    target = max(candidates, key=lambda t: (catalog.sensitivity(t), -candidates.index(t)))
    return find_paths(
        conn,
        source=entry,
        target=target,
        since=since if since is not None else evidence.first_seen,
        until=max(evidence.last_seen, alert.last_seen),
        limit=3,
    )


def _us(moment: datetime) -> int:
    return (moment - EPOCH) // ONE_US


def reach_graph(
    conn: duckdb.DuckDBPyConnection,
    *,
    token_ids: Sequence[str],
    catalog: Catalog,
    entry: str,
    evidence: Evidence,
    alert: AlertInfo,
) -> ReachGraph:
    """The services the given tokens called, one edge per token and service pair, marked where
    the evidence made the call and where it was new at the alert."""
    made = {(e.token_id, e.source, e.target) for e in evidence.events}
    cutoff = _us(alert.first_seen)
    merged: dict[tuple[str, str, str], list[int]] = {}
    for edge in edge_rows(conn, token_ids=list(token_ids)):
        key = (edge.source, edge.target, edge.token_id)
        successes = edge.calls - edge.denied - edge.errors
        now = [edge.calls, successes, edge.first_seen_us, edge.last_seen_us]
        old = merged.get(key)
        merged[key] = now if old is None else [
            old[0] + now[0], old[1] + now[1], min(old[2], now[2]), max(old[3], now[3])
        ]  # fmt: skip
    edges = [
        ReachEdge(
            source=source,
            target=target,
            token_id=token,
            calls=calls,
            successes=successes,
            first_seen=utc(first),
            last_seen=utc(last),
            evidence=(token, source, target) in made,
            new=first >= cutoff,
        )
        for (source, target, token), (calls, successes, first, last) in sorted(merged.items())
    ]
    services = sorted({e.source for e in edges} | {e.target for e in edges})
    return ReachGraph(
        tokens=sorted({e.token_id for e in edges}),
        nodes=[
            ReachNode(
                service=s,
                sensitivity=float(catalog.sensitivity(s)),
                entry=s == entry,
                alerted=s in alert.targets,
            )
            for s in services
        ],
        edges=edges,
    )


def family_timeline(
    conn: duckdb.DuckDBPyConnection,
    *,
    token_ids: Sequence[str],
    evidence: Evidence,
    alert: AlertInfo,
    margin: timedelta = TIMELINE_MARGIN,
    limit: int = TIMELINE_LIMIT,
) -> list[Call]:
    """Calls of the given tokens from `margin` before the evidence to `margin` after the alert,
    oldest first; evidence events keep their role, the rest are context."""
    roles = {e.event_id: e.role for e in evidence.events}
    rows = token_calls(
        conn,
        token_ids=token_ids,
        since_us=_us(min(evidence.first_seen, alert.first_seen) - margin),
        until_us=_us(max(evidence.last_seen, alert.last_seen) + margin),
        limit=limit,
    )
    return [_call(r, roles.get(r.event_id, "context")) for r in rows]


# --- containment -------------------------------------------------------------------------------


def _family(lineage: Lineage, evidence: Evidence, subject_tokens: Sequence[str]) -> list[str]:
    """The tokens an incident involves: the alerted ones, their lineage, the evidence's."""
    return _ordered([*subject_tokens, *(t.token_id for t in lineage.tokens), *evidence.tokens])


def _token_reasons(
    alert: AlertInfo, lineage: Lineage, evidence: Evidence
) -> dict[str, tuple[Literal["alerted", "ancestor", "descendant", "relative", "evidence"], str]]:
    """Why each token is on the list; a token the incident only brushes is left off."""
    used = {t: sum(e.token_id == t for e in evidence.events) for t in evidence.tokens}
    reasons: dict[
        str, tuple[Literal["alerted", "ancestor", "descendant", "relative", "evidence"], str]
    ] = {}
    if alert.token_id is not None:
        reasons[alert.token_id] = (
            "alerted",
            f"the alerted token ({alert.detector}, {alert.severity})",
        )
    children: dict[str, list[str]] = {}
    for member in lineage.tokens:
        for parent in member.parents:
            children.setdefault(parent, []).append(member.token_id)
    for member in lineage.tokens:
        token = member.token_id
        if token in reasons:
            continue
        when = f" at {member.derived_at:%Y-%m-%d %H:%M:%S}Z" if member.derived_at else ""
        derived = f"{when} ({member.via})" if member.via else when
        if member.relation == "ancestor":
            below = ", ".join(sorted(children.get(token, [])))
            reasons[token] = ("ancestor", f"minted or exchanged into {below}: its holder pivoted")
        elif member.relation == "descendant":
            parents = ", ".join(member.parents)
            reasons[token] = ("descendant", f"derived from {parents}{derived}")
        elif member.relation == "relative" and (
            token in used
            or (member.derived_at is not None and member.derived_at >= evidence.first_seen)
        ):
            # A sibling minted from the same root while the attacker held it: theirs too.
            parents = ", ".join(member.parents)
            reasons[token] = ("relative", f"derived from {parents}{derived} during the incident")
    for token in evidence.tokens:
        if token not in reasons:
            reasons[token] = ("evidence", f"made {used[token]} of the alert's evidence calls")
    return reasons


# Credential-access operations and what undoing them takes, first match wins.
_UNDO: Final = (
    # A listing names secrets without reading them: a lead to follow, not a secret to rotate.
    (re.compile(r"(?i)(^|[:/ ])list"), "review what the listing showed"),
    (
        re.compile(r"(?i)assumerole|getsessiontoken|getfederationtoken"),
        "revoke the role's sessions",
    ),
    (re.compile(r"(?i)accesskey|serviceaccountkey"), "delete the key it created"),
    (re.compile(r"(?i)token"), "revoke the tokens it minted"),
    (re.compile(r"(?i)secret"), "rotate the secret"),
)


def _undo(operation: str, scope: str | None) -> str:
    text = f"{operation} {scope or ''}"
    return next((action for pattern, action in _UNDO if pattern.search(text)), "rotate")


def containment(
    conn: duckdb.DuckDBPyConnection,
    *,
    alert_id: str,
    as_of: datetime | None = None,
) -> Containment:
    """What to revoke and rotate for an alert: the alerted token and its lineage (revoke the
    ones still valid `as_of`, by default the newest stored event), the identities that hold
    them or acted with their own token below them in a chain, and the credentials the family
    read or minted.

    Example: `containment(conn, alert_id="ac88fe4399f9f2e0043a").tokens[0].token_id`.
    """
    alert = load_alert(conn, alert_id=alert_id)
    evidence = alert_evidence(conn, alert=alert)
    lineage = token_lineage(conn, token_id=_subject_token(alert, evidence))
    chains = _chains(conn, evidence)
    return build_containment(conn, alert=alert, evidence=evidence, lineage=lineage,
                             chains=chains, as_of=as_of)  # fmt: skip


def upstream_tokens(chains: Sequence[Chain], family: Sequence[str]) -> list[str]:
    """Tokens that called into a family token in the chains (token switches into the family)."""
    inside = set(family)
    return _ordered(
        w.from_token
        for chain in chains
        for w in chain.token_switches
        if w.to_token in inside and w.from_token not in inside
    )


def _subject_token(alert: AlertInfo, evidence: Evidence) -> str:
    return alert.token_id if alert.token_id is not None else evidence.tokens[0]


def _chains(conn: duckdb.DuckDBPyConnection, evidence: Evidence) -> list[Chain]:
    return [load_chain(conn, trace_id=t) for t in evidence.trace_ids]


def build_containment(
    conn: duckdb.DuckDBPyConnection,
    *,
    alert: AlertInfo,
    evidence: Evidence,
    lineage: Lineage,
    chains: Sequence[Chain],
    as_of: datetime | None = None,
) -> Containment:
    """The containment list from an investigation's parts (see `containment`)."""
    if as_of is None:
        newest = newest_event_us(conn)
        as_of = utc(newest) if newest is not None else evidence.last_seen
    reasons = _token_reasons(alert, lineage, evidence)
    registry = {t.token_id: t for t in lookup_tokens(conn, token_ids=list(reasons))}
    tokens = [_revoke(t, relation, why, registry.get(t), as_of)
              for t, (relation, why) in reasons.items()]  # fmt: skip
    return Containment(
        alert_id=alert.alert_id,
        as_of=as_of,
        tokens=tokens,
        identities=_identities(
            alert, tokens, chains, set(reasons), token_users(conn, token_ids=list(reasons))
        ),
        credentials=_credentials(conn, tokens=list(reasons), evidence=evidence, alert=alert),
    )


def _revoke(
    token: str,
    relation: Literal["alerted", "ancestor", "descendant", "relative", "evidence"],
    reason: str,
    info: TokenInfo | None,
    as_of: datetime,
) -> RevokeToken:
    expires = info.expires_at if info else None
    valid = expires is None or expires > as_of
    return RevokeToken(
        token_id=token,
        identity=info.identity if info else None,
        kind=info.kind if info else None,
        relation=relation,
        action="revoke" if valid else "expired",
        expires_at=expires,
        last_seen=info.last_seen if info else None,
        reason=reason if valid else f"{reason}; expired {expires:%Y-%m-%d %H:%M}Z, confirm only",
    )


def _identities(
    alert: AlertInfo,
    tokens: Sequence[RevokeToken],
    chains: Sequence[Chain],
    family: set[str],
    users: Sequence[tuple[str, str]],
) -> list[RotateIdentity]:
    held: dict[str, list[str]] = {}
    why: dict[str, list[str]] = {}
    if alert.identity is not None:
        held.setdefault(alert.identity, [])
        why.setdefault(alert.identity, []).append("the alert's identity")
    for token in tokens:
        if token.identity is not None:
            held.setdefault(token.identity, []).append(token.token_id)
    for identity, owned in held.items():
        if owned:
            why.setdefault(identity, []).append(f"holds {', '.join(owned)}")
    holders = {t.token_id: t.identity for t in tokens}
    for token_id, user in users:
        if user != holders.get(token_id):
            # A token used by someone other than its holder (shared, copied or stolen): that
            # identity had the secret too, and its own workloads may keep more copies.
            held.setdefault(user, []).append(token_id)
            why.setdefault(user, []).append(f"also used {token_id}")
    for chain in chains:
        holder = {s.token_id: s.identity for s in chain.spans}
        for switch in chain.token_switches:
            caller = holder.get(switch.from_token)
            if switch.to_token in family and switch.from_token not in family and caller:
                # The request the family's token served came from above, with this identity's
                # token: the principal that drove it (a confused deputy's real caller).
                held.setdefault(caller, []).append(switch.from_token)
                why.setdefault(caller, []).append(
                    f"its token {switch.from_token} drove {switch.to_token} at {switch.at}"
                    f" (trace {chain.trace_id})"
                )
            if switch.from_token in family and switch.to_token not in family:
                deputy = holder.get(switch.to_token)
                if deputy is None:
                    continue
                # A hop below the attacker's call ran with this identity's own credential: it
                # acted for the attacker (confused deputy), so its secret is in play as well.
                held.setdefault(deputy, []).append(switch.to_token)
                why.setdefault(deputy, []).append(
                    f"acted with its token {switch.to_token} below {switch.from_token}"
                    f" at {switch.at} (trace {chain.trace_id})"
                )
    return [
        RotateIdentity(identity=i, tokens=_ordered(held[i]), reason="; ".join(_ordered(why[i])))
        for i in held
    ]


def _credentials(
    conn: duckdb.DuckDBPyConnection,
    *,
    tokens: Sequence[str],
    evidence: Evidence,
    alert: AlertInfo,
) -> list[ExposedCredential]:
    rows = credential_calls(
        conn,
        token_ids=tokens,
        since_us=_us(min(evidence.first_seen, alert.first_seen) - CREDENTIAL_LOOKBACK),
        until_us=_us(max(evidence.last_seen, alert.last_seen)),
    )
    found: dict[tuple[str, str], ExposedCredential] = {}
    for row in rows:
        credential = row.resource or row.target
        key = (credential, row.operation)
        if key in found:
            continue
        found[key] = ExposedCredential(
            credential=credential,
            target=row.target,
            operation=row.operation,
            token_id=row.token_id,
            event_id=row.event_id,
            ts=utc(row.ts_us),
            action=_undo(row.operation, row.scope),
            reason=f"{row.operation} on {row.target} with {row.token_id}"
            f" at {utc(row.ts_us):%Y-%m-%d %H:%M:%S}Z",
        )
    return list(found.values())


# --- everything at once ------------------------------------------------------------------------


def investigate(
    conn: duckdb.DuckDBPyConnection, *, alert_id: str, catalog: Catalog | None = None
) -> Investigation:
    """Everything an incident responder needs about one alert (see the module docstring).

    Example: `investigate(conn, alert_id=pick_alert(conn)).containment.tokens`.
    """
    catalog = catalog if catalog is not None else stored_catalog(conn)
    alert = load_alert(conn, alert_id=alert_id)
    evidence = alert_evidence(conn, alert=alert)
    subject = _subject_token(alert, evidence)
    lineage = token_lineage(conn, token_id=subject, catalog=catalog)
    chains = _chains(conn, evidence)
    family = _family(lineage, evidence, [subject])
    entry = entry_service(evidence, chains)
    # The calls above the evidence in its chains (how the entry reached it) count for the path.
    start = min([evidence.first_seen, *(c.first_seen for c in chains if c.first_seen)])
    # The graph and timeline also show the tokens that called into the family in its chains.
    involved = _ordered([*family, *upstream_tokens(chains, family)])
    if alert.token_id is None and alert.identity is not None:
        # An alert on an identity (anomaly, boundary ...): its reach over all its tokens.
        blast = blast_change(
            conn, catalog=catalog, cutoff=alert.first_seen, identity=alert.identity
        )
    else:
        blast = blast_change(conn, catalog=catalog, cutoff=alert.first_seen, token_id=subject)
    return Investigation(
        alert=alert,
        evidence=evidence,
        chains=chains,
        lineage=lineage,
        blast=blast,
        entry=entry,
        path=attack_path(
            conn, entry=entry, evidence=evidence, alert=alert, catalog=catalog, since=start
        ),
        timeline=family_timeline(conn, token_ids=involved, evidence=evidence, alert=alert),
        reach=reach_graph(
            conn, token_ids=involved, catalog=catalog, entry=entry, evidence=evidence, alert=alert
        ),
        containment=build_containment(
            conn, alert=alert, evidence=evidence, lineage=lineage, chains=chains
        ),
    )


def records(items: Iterable[Result]) -> list[dict[str, Any]]:
    """Results as flat dicts (lists joined with ", "), one per row: for a DataFrame or a table.

    >>> records([TargetChange(target="vault", before=0.0, after=9.0, via="derived",
    ...                       via_token="tok-2", new=True)])[0]["after"]
    9.0
    """
    rows = []
    for item in items:
        row: dict[str, Any] = {}
        for key, value in msgspec.structs.asdict(item).items():
            row[key] = ", ".join(map(str, value)) if isinstance(value, list) else value
        rows.append(row)
    return rows
