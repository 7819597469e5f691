"""What detectors share: the annotated call they read, the finding they return, severities.

A detector never queries the store. The engine hands it `Call`s: events already annotated, in
event-time order, with what was known *as of that event* (its identity's baseline, the token's
metadata and first use, the declared policy, the catalog's sensitivity). That is what makes
detection give the same alerts whatever the batching: the annotation is computed set-based in
`tokentrail.store.alerts`, and a detector is a pure function of it.
"""

from __future__ import annotations

import hashlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final, Literal, NamedTuple

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: Final[tuple[Severity, ...]] = ("info", "low", "medium", "high", "critical")

US_PER_SECOND: Final = 1_000_000
US_PER_HOUR: Final = 3600 * US_PER_SECOND
US_PER_DAY: Final = 24 * US_PER_HOUR

# Identity facets learned per identity (never per token: tokens rotate, identities stay).
NOVEL_TARGET: Final = "target"
NOVEL_SCOPE: Final = "scope"
NOVEL_PRIVILEGE: Final = "privilege"
NOVEL_TASK_TARGET: Final = "task_target"
# Token facets: a second value for a token that was already in use.
NOVEL_TOKEN_IP: Final = "token_ip"
NOVEL_TOKEN_IDENTITY: Final = "token_identity"
NOVEL_TOKEN_SOURCE: Final = "token_source"
NOVEL_TOKEN_ENV: Final = "token_env"
# Target facet: a class of caller (build, runtime, agent) new to the target.
NOVEL_CALLER_CLASS: Final = "caller_class"


def rank(severity: Severity) -> int:
    return SEVERITIES.index(severity)


def worst(*severities: Severity) -> Severity:
    """The highest of the given severities.

    >>> worst("low", "high", "medium")
    'high'
    """
    return max(severities, key=SEVERITIES.index)


def raise_by(severity: Severity, steps: int) -> Severity:
    """`severity` moved `steps` levels up (or down), within info..critical."""
    return SEVERITIES[max(0, min(len(SEVERITIES) - 1, rank(severity) + steps))]


def grade(score: float) -> Severity:
    """Severity of a reach score (sensitivity x privilege weight x crossing; docs/DETECTORS.md).

    A read of a crown jewel (10 x 1) is medium, a write to it (10 x 3) high, an admin call on it
    or a write across environments critical; a read of a status page (1) is info.

    >>> grade(1), grade(6), grade(10), grade(30), grade(100)
    ('info', 'low', 'medium', 'high', 'critical')
    """
    if score >= 60:
        return "critical"
    if score >= 25:
        return "high"
    if score >= 8:
        return "medium"
    if score >= 3:
        return "low"
    return "info"


class Call(NamedTuple):
    """One event as a detector sees it: the event, plus what was known as of its time.

    `novel` lists the facets this event was the first to show (see the NOVEL_* names);
    `allowed_*` are None when the identity declares no policy for that dimension.
    """

    event_id: str
    ts_us: int
    token_id: str
    identity: str
    source: str
    target: str
    operation: str
    scope: str  # '' when the call named none
    outcome: str
    status: int | None
    trace_id: str | None
    environment: str | None
    identity_kind: str | None
    resource: str | None
    source_ip: str | None
    user_agent: str | None
    bytes_out: int | None
    task_id: str | None
    task_kind: str | None
    actor: str | None
    late: bool  # stored after detection had passed its time: seen with later state
    privilege: str  # read | write | admin
    caller_class: str  # build | runtime | agent
    novel: tuple[str, ...]
    token_first: bool  # the first use of this token ever stored
    token_prev_us: int | None  # the token's previous use
    token_kind: str | None  # first declared metadata of the token, as of this event
    token_scopes: tuple[str, ...] | None
    token_issued_us: int | None
    token_expires_us: int | None
    token_parent: str | None
    parent_scopes: tuple[str, ...] | None  # the grant of the token it was derived from
    identity_first_us: int  # when the identity was first seen
    identity_events: int  # events of the identity before this one
    target_first_us: int
    sensitivity: float  # of the target, from the catalog
    target_env: str | None  # of the target: the catalog's, else the event's
    home_env: str | None  # of the identity: declared, else its first environment
    declared: bool  # the identity has a declared policy
    allowed_target: bool | None
    allowed_scope: bool | None
    actor_allowed_target: bool | None  # for a call made on behalf of a declared identity
    path: tuple[Step, ...]  # lineage of a derived token: ancestors and credential steps

    @property
    def success(self) -> bool:
        return self.outcome == "success"

    @property
    def crossing(self) -> bool:
        """The call reached another environment than the identity's home."""
        return bool(self.home_env and self.target_env and self.target_env != self.home_env)

    def warmed(self, warmup_us: int, min_events: int) -> bool:
        """The identity has enough history for novelty to mean something."""
        return (
            self.ts_us - self.identity_first_us >= warmup_us and self.identity_events >= min_events
        )


class Step(NamedTuple):
    """One step of a derived token's path: an ancestor token, or a credential-access call."""

    kind: str  # 'token' (an ancestor, `depth` links up) or 'call' (a credential-access step)
    depth: int
    token_id: str
    event_id: str | None
    ts_us: int | None
    identity: str | None
    operation: str | None
    target: str | None
    resource: str | None


@dataclass(frozen=True)
class Finding:
    """What a detector found in some calls; findings with one `key` become one alert."""

    detector: str
    key: str  # the dedupe key within the detector: one alert per key (per dedupe window)
    severity: Severity
    score: float
    title: str
    ts_us: int  # event time of the first call behind it
    last_us: int
    event_ids: tuple[str, ...]
    token_id: str | None
    identity: str | None
    # target -> what reaching it adds to the blast radius; merged by max across findings.
    reach: tuple[tuple[str, float], ...] = ()
    targets: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)
    count: int = 1


def contribution(call: Call, weights: dict[str, float], crossing_factor: float) -> float:
    """What reaching `call.target` with this call's privilege adds to the blast radius."""
    value = call.sensitivity * weights.get(call.privilege, 1.0)
    return round(value * (crossing_factor if call.crossing else 1.0), 2)


@dataclass(frozen=True)
class Example:
    """A detector's own example: calls, and whether the detector must fire on them."""

    name: str
    calls: tuple[Call, ...]
    fires: bool


class Detector(ABC):
    """One detection: class attributes say what it is, `detect` finds it in annotated calls.

    Tuning is a class attribute too (`warmup_hours = 24`), overridden per deployment from the
    rules file (`[detectors.<id>]`).
    """

    id: ClassVar[str]
    title: ClassVar[str]
    severity: ClassVar[Severity]  # the usual severity; a finding may grade itself up or down
    mitre: ClassVar[tuple[str, ...]]
    owasp_nhi: ClassVar[tuple[str, ...]]
    runbook: ClassVar[str]
    examples: ClassVar[tuple[Example, ...]]
    # Its findings on a token stand on the token's other uses (its first use, the first use of
    # each address or identity, the previous use), which a topic keyed by identity spreads over
    # partitions: the engine decides them again by event time when an earlier use arrives late.
    # Such a detector reads only token annotations and the call's own fields and score.
    per_token: ClassVar[bool] = False

    # Blast radius weights (from the catalog) and the warm-up (from the engine settings).
    weights: dict[str, float]
    crossing_factor: float
    warmup_us: int
    warmup_events: int

    def __init__(self, **tuning: Any) -> None:
        self.weights = {"read": 1.0, "write": 3.0, "admin": 10.0}
        self.crossing_factor = 2.0
        self.warmup_us = 24 * US_PER_HOUR
        self.warmup_events = 20
        for name, value in tuning.items():
            if name.startswith("_") or not hasattr(type(self), name) or callable(value):
                raise ValueError(f"detector {self.id} has no setting {name!r}")
            setattr(self, name, type(getattr(type(self), name))(value))

    @abstractmethod
    def detect(self, calls: Sequence[Call]) -> Iterator[Finding]:
        """Findings in `calls` (in event-time order); called once per detection pass."""

    def finding(self, key: str, calls: Sequence[Call], **values: Any) -> Finding:
        """A finding of this detector over `calls` (ordered), with defaults from the first."""
        first = calls[0]
        values.setdefault("severity", self.severity)
        values.setdefault("score", 0.0)
        values.setdefault("token_id", first.token_id)
        values.setdefault("identity", first.identity)
        values.setdefault("targets", tuple(dict.fromkeys(c.target for c in calls)))
        return Finding(
            detector=self.id,
            key=key,
            ts_us=first.ts_us,
            last_us=calls[-1].ts_us,
            event_ids=tuple(c.event_id for c in calls),
            count=len(calls),
            **values,
        )

    def warmed(self, c: Call) -> bool:
        """Novelty may fire for the call's identity: its warm-up is over."""
        return c.warmed(self.warmup_us, self.warmup_events)

    def score(self, c: Call) -> float:
        """What the call's target adds to the blast radius (0 when the call failed)."""
        return contribution(c, self.weights, self.crossing_factor) if c.success else 0.0

    def reach_of(self, calls: Iterable[Call]) -> tuple[tuple[str, float], ...]:
        """Target -> contribution for the successful calls (best privilege per target)."""
        best: dict[str, float] = {}
        for c in calls:
            if c.success:
                value = contribution(c, self.weights, self.crossing_factor)
                best[c.target] = max(best.get(c.target, 0.0), value)
        return tuple(sorted(best.items()))


def group_by(calls: Iterable[Call], *names: str) -> dict[tuple[Any, ...], list[Call]]:
    """Calls grouped by the values of some fields, each group in the calls' order."""
    groups: dict[tuple[Any, ...], list[Call]] = {}
    for c in calls:
        groups.setdefault(tuple(getattr(c, n) for n in names), []).append(c)
    return groups


def short(name: str | None) -> str:
    """The last part of an identity for titles (`spiffe://prod/ns/a/sa/orders-api` -> ...)."""
    if not name:
        return "?"
    if name.startswith("spiffe://"):
        parts = name.split("/")
        env = parts[2] if len(parts) > 2 else ""
        return f"{parts[-1]} ({env})" if env and env != "prod" else parts[-1]
    return name


def stable_id(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:20]


# --- a factory for examples and tests ---------------------------------------------------------

T0_US: Final = 1_772_442_000_000_000  # 2026-03-02T09:00:00Z
_seq = itertools.count(1)

_DEFAULTS: Final[dict[str, Any]] = {
    "token_id": "tok-invoicer-1",
    "identity": "spiffe://prod/ns/billing/sa/invoicer",
    "source": "invoicer",
    "target": "ledger-api",
    "operation": "GET /ledger",
    "scope": "ledger:read",
    "outcome": "success",
    "status": 200,
    "trace_id": None,
    "environment": "prod",
    "identity_kind": "service",
    "resource": None,
    "source_ip": "10.0.0.1",
    "user_agent": None,
    "bytes_out": 1000,
    "task_id": None,
    "task_kind": None,
    "actor": None,
    "late": False,
    "privilege": "read",
    "caller_class": "runtime",
    "novel": (),
    "token_first": False,
    "token_prev_us": None,
    "token_kind": None,
    "token_scopes": None,
    "token_issued_us": None,
    "token_expires_us": None,
    "token_parent": None,
    "parent_scopes": None,
    "identity_first_us": T0_US - 7 * US_PER_DAY,
    "identity_events": 10_000,
    "target_first_us": T0_US - 7 * US_PER_DAY,
    "sensitivity": 3.0,
    "target_env": "prod",
    "home_env": "prod",
    "declared": False,
    "allowed_target": None,
    "allowed_scope": None,
    "actor_allowed_target": None,
    "path": (),
}
_FIELDS: Final = frozenset(Call._fields)


def call(**overrides: Any) -> Call:
    """An annotated call with defaults (a warmed-up prod service reading the ledger); override
    any field by keyword.

    >>> call(target="payments-db", sensitivity=10.0).target
    'payments-db'
    """
    unknown = set(overrides) - _FIELDS
    if unknown:
        raise TypeError(f"Call has no fields {sorted(unknown)}")
    n = next(_seq)
    values = {"event_id": f"ex-{n}", "ts_us": T0_US + n * US_PER_SECOND, **_DEFAULTS}
    values.update(overrides)
    return Call(**values)


def finding_fields() -> tuple[str, ...]:
    return tuple(f.name for f in fields(Finding))
