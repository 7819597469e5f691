"""Measure detection against simulator ground truth (labels.json).

An alert catches an attack when its evidence names one of the attack's malicious events, or
when it is about one of the attack's tokens and lies within the attack's time span (an hour
either side). An alert that catches no attack is a false alert. The same is computed for a
naive baseline that alerts on access counts (calls per token per hour above a percentile of the
warm-up day), to show what scoring blast radius rather than volume buys.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import duckdb
import msgspec

from tokentrail.detect.model import SEVERITIES, US_PER_DAY, US_PER_HOUR
from tokentrail.errors import ConfigError
from tokentrail.events import EPOCH, ONE_US
from tokentrail.store import alerts as sql

SLACK_US: Final = US_PER_HOUR


class Caught(msgspec.Struct, frozen=True, kw_only=True):
    """How one attack was (or was not) detected."""

    attack_id: str
    family: str
    detected: bool
    alerts: list[str]
    detectors: list[str]
    first_alert: str | None
    severity: str | None  # the highest of its alerts
    delay_seconds: float | None  # from the first malicious event to the first evidence


class Scores(msgspec.Struct, frozen=True, kw_only=True):
    """Recall, precision and the false alert rate of one alerting method."""

    method: str
    attacks: int
    detected: int
    recall: float
    alerts: int
    true_alerts: int
    false_alerts: int
    precision: float
    days: float
    false_per_day: float
    false_per_day_by_severity: dict[str, float]
    caught: list[Caught]


class ChangeWindow(msgspec.Struct, frozen=True, kw_only=True):
    """What a labelled benign change produced."""

    change_id: str
    kind: str
    alerts: list[str]
    max_severity: str | None


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    seed: int | None
    days: float
    tokentrail: Scores
    naive: Scores
    benign_changes: list[ChangeWindow]
    naive_threshold: float


class _Attack(msgspec.Struct, frozen=True):
    id: str
    family: str
    start_us: int
    end_us: int
    event_ids: frozenset[str]
    token_ids: frozenset[str]


class _Alert(msgspec.Struct, frozen=True):
    alert_id: str
    detector: str
    severity: str
    token_id: str | None
    identity: str | None
    targets: list[str]
    first_us: int
    last_us: int
    event_ids: list[str]


def _us(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment - EPOCH) // ONE_US


def load_labels(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read labels {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"labels {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or "attacks" not in data:
        raise ConfigError(f"labels {path} has no `attacks` (write it with tokentrail simulate)")
    return data


def evaluate(
    conn: duckdb.DuckDBPyConnection, *, labels: dict[str, Any], percentile: float = 0.995
) -> Evaluation:
    """Score the stored alerts (not suppressed) and the naive baseline against `labels`."""
    attacks = [
        _Attack(
            a["id"],
            a["family"],
            _us(a["start"]),
            _us(a["end"]),
            frozenset(a["event_ids"]),
            frozenset(a.get("token_ids", [])),
        )
        for a in labels["attacks"]
    ]
    days = float(labels.get("days") or 0)
    if not days:
        lo, hi = sql.time_span(conn)
        days = max(((hi or 0) - (lo or 0)) / US_PER_DAY, 1e-9)
    stored = [a for a in sql.list_alerts(conn) if a.status != "suppressed"]
    alerts = [
        _Alert(
            a.alert_id,
            a.detector,
            a.severity,
            a.token_id,
            a.identity,
            a.targets,
            a.first_seen_us,
            a.last_seen_us,
            a.event_ids,
        )
        for a in stored
    ]
    times = sql.event_times(conn, event_ids=sorted({e for a in alerts for e in a.event_ids}))
    ours = _score("tokentrail", attacks, alerts, times, days)
    warmup_end = _us(labels["warmup_end"]) if "warmup_end" in labels else None
    if warmup_end is None:
        lo, _ = sql.time_span(conn)
        warmup_end = (lo or 0) + US_PER_DAY
    threshold, hours = sql.naive_token_hours(conn, warmup_end_us=warmup_end, percentile=percentile)
    naive_alerts: dict[str, _Alert] = {}
    for h in hours:
        old = naive_alerts.get(h.token_id)
        ids = (old.event_ids if old else []) + h.event_ids[:50]
        naive_alerts[h.token_id] = _Alert(
            f"naive-{h.token_id}",
            "access_count",
            "medium",
            h.token_id,
            h.identity,
            [],
            old.first_us if old else h.hour_us,
            h.hour_us + US_PER_HOUR - 1,
            ids,
        )
    naive_times = sql.event_times(
        conn, event_ids=sorted({e for a in naive_alerts.values() for e in a.event_ids})
    )
    naive = _score("naive access count", attacks, list(naive_alerts.values()), naive_times, days)
    changes = [
        _change(c, [a for a in alerts if not _matches_any(a, attacks)])
        for c in labels.get("benign_changes", [])
    ]
    return Evaluation(
        seed=labels.get("seed"),
        days=days,
        tokentrail=ours,
        naive=naive,
        benign_changes=changes,
        naive_threshold=threshold,
    )


def _matches(alert: _Alert, attack: _Attack) -> bool:
    if attack.event_ids.intersection(alert.event_ids):
        return True
    return (
        alert.token_id in attack.token_ids
        and alert.first_us <= attack.end_us + SLACK_US
        and alert.last_us >= attack.start_us - SLACK_US
    )


def _matches_any(alert: _Alert, attacks: Sequence[_Attack]) -> bool:
    return any(_matches(alert, a) for a in attacks)


def _score(
    method: str,
    attacks: Sequence[_Attack],
    alerts: Sequence[_Alert],
    times: dict[str, int],
    days: float,
) -> Scores:
    caught: list[Caught] = []
    true_ids: set[str] = set()
    for attack in attacks:
        hits = sorted(
            (a for a in alerts if _matches(a, attack)), key=lambda a: (a.first_us, a.alert_id)
        )
        true_ids.update(a.alert_id for a in hits)
        delay = None
        first = None
        if hits:

            def seen(a: _Alert, attack: _Attack = attack) -> int:
                inside = [times[e] for e in a.event_ids if e in attack.event_ids and e in times]
                return min(inside) if inside else max(a.first_us, attack.start_us)

            first = min(hits, key=lambda a: (seen(a), a.alert_id))
            delay = max(0.0, (seen(first) - attack.start_us) / 1_000_000)
        caught.append(
            Caught(
                attack_id=attack.id,
                family=attack.family,
                detected=bool(hits),
                alerts=[a.alert_id for a in hits],
                detectors=sorted({a.detector for a in hits}),
                first_alert=first.alert_id if first else None,
                severity=max((a.severity for a in hits), key=_rank, default=None),
                delay_seconds=round(delay, 1) if delay is not None else None,
            )
        )
    false = [a for a in alerts if a.alert_id not in true_ids]
    detected = sum(1 for c in caught if c.detected)
    return Scores(
        method=method,
        attacks=len(attacks),
        detected=detected,
        recall=round(detected / len(attacks), 4) if attacks else 1.0,
        alerts=len(alerts),
        true_alerts=len(alerts) - len(false),
        false_alerts=len(false),
        precision=round((len(alerts) - len(false)) / len(alerts), 4) if alerts else 1.0,
        days=round(days, 3),
        false_per_day=round(len(false) / days, 3),
        false_per_day_by_severity={
            s: round(sum(1 for a in false if a.severity == s) / days, 3) for s in SEVERITIES
        },
        caught=caught,
    )


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def _change(change: dict[str, Any], false_alerts: Sequence[_Alert]) -> ChangeWindow:
    start, end = _us(change["start"]), _us(change["end"]) + 2 * US_PER_HOUR
    identities = set(change.get("identities", []))
    targets = set(change.get("targets", []))
    hits = [
        a
        for a in false_alerts
        if a.first_us <= end
        and a.last_us >= start
        and (a.identity in identities or targets.intersection(a.targets))
    ]
    return ChangeWindow(
        change_id=change["id"],
        kind=change["kind"],
        alerts=[a.alert_id for a in hits],
        max_severity=max((a.severity for a in hits), key=_rank, default=None),
    )
