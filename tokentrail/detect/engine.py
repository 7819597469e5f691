"""The detection engine: passes over stored events on an event-time watermark, alerts out.

After every stored batch (file or Kafka) the engine takes the events not processed yet whose
time is at or below the watermark (newest event time minus the allowed lateness), annotates
them against the baselines, runs every detector, merges the findings into alerts and folds the
events into the baselines, all in one transaction with the progress mark. At the end of an
ingest (and in a backfill) it flushes everything. docs/DETECTORS.md explains why this gives
the same alerts whatever the batching.

>>> from tokentrail.store import Store
>>> engine = Detection(Store.open(":memory:"))
>>> engine.finish().events
0
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import duckdb

from tokentrail.batch import Batch
from tokentrail.catalog import PRIVILEGES, Catalog
from tokentrail.detect.anomaly import Anomaly
from tokentrail.detect.model import (
    SEVERITIES,
    US_PER_HOUR,
    US_PER_SECOND,
    Call,
    Detector,
    Finding,
    Severity,
    stable_id,
    worst,
)
from tokentrail.detect.registry import DETECTORS
from tokentrail.detect.rules import CustomRule, Rules
from tokentrail.errors import ConfigError
from tokentrail.events import EPOCH, ONE_US
from tokentrail.store import BatchResult, Store
from tokentrail.store import alerts as sql
from tokentrail.store.alerts import AlertRow

log = logging.getLogger(__name__)

# Entries kept in each evidence list of an alert.
_EVIDENCE_LIST_CAP: Final = 50


@dataclass
class PassResult:
    """What detection passes did (summed over the passes of one run)."""

    events: int = 0
    late: int = 0
    candidates: int = 0
    findings: int = 0
    alerts_new: int = 0
    alerts_updated: int = 0
    suppressed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, other: PassResult) -> None:
        for name in ("events", "late", "candidates", "findings", "alerts_new", "alerts_updated"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.suppressed += other.suppressed
        for key, n in other.errors.items():
            self.errors[key] = self.errors.get(key, 0) + n


@dataclass(frozen=True)
class Meta:
    mitre: tuple[str, ...]
    owasp_nhi: tuple[str, ...]
    runbook: str


class Detection:
    """Runs detection on a store; `on_batch` is the ingest hook, `finish` flushes."""

    def __init__(
        self,
        store: Store,
        *,
        catalog: Catalog | None = None,
        rules: Rules | None = None,
        detectors: Sequence[Detector] | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog or Catalog()
        self.rules = rules or Rules()
        settings = self.rules.engine
        self.lateness_us = int(settings.lateness_seconds * US_PER_SECOND)
        self.dedupe_us = int(settings.dedupe_hours * US_PER_HOUR)
        self.evidence_cap = settings.evidence_cap
        self.detectors = list(detectors) if detectors is not None else self._build()
        weights: dict[str, float] = {p: self.catalog.weight(p) for p in PRIVILEGES}
        for detector in self.detectors:
            detector.weights = weights
            detector.crossing_factor = self.catalog.score.environment_crossing
            detector.warmup_us = int(settings.warmup_hours * US_PER_HOUR)
            detector.warmup_events = settings.warmup_events
        self.anomaly = next((d for d in self.detectors if isinstance(d, Anomaly)), None)
        self._meta = {d.id: Meta(d.mitre, d.owasp_nhi, d.runbook) for d in self.detectors}
        for rule in self.rules.rules:
            self._meta[rule.id] = Meta(rule.mitre, rule.owasp_nhi, rule.runbook)
        self.totals = PassResult()
        # Called after each pass that wrote alerts, with the ids it wrote (created, updated or
        # superseded), once they are committed: readers that keep alerts in memory drop those.
        self.alert_listeners: list[Callable[[frozenset[str]], None]] = []
        # Long passes would draw DuckDB's progress bar over the ingest's own.
        store.conn.execute("SET enable_progress_bar = false")

    def _build(self) -> list[Detector]:
        tuning = dict(self.rules.detectors)
        built: list[Detector] = []
        classes: dict[str, type[Detector]] = {**DETECTORS, Anomaly.id: Anomaly}
        for detector_id, cls in classes.items():
            try:
                built.append(cls(**tuning.pop(detector_id, {})))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"rules: detectors.{detector_id}: {exc}") from None
        if tuning:
            raise ConfigError(f"rules: no detector {sorted(tuning)[0]!r}")
        return built

    # --- the hook and the flush --------------------------------------------------------------

    def on_batch(self, batch: Batch, result: BatchResult) -> None:
        """Pipeline hook: detect up to the watermark after each stored batch."""
        if result.stored:
            try:
                self.run(final=False)
            except Exception as exc:  # detection must never stop ingestion; the next pass retries
                # One line for the operator; the traceback is for whoever debugs it.
                log.error("detection pass failed, events stay pending: %s", _one_line(exc))
                log.debug("detection pass failed", exc_info=True)
                self.totals.errors["engine"] = self.totals.errors.get("engine", 0) + 1

    def finish(self) -> PassResult:
        """Process everything stored (end of a file, an idle Kafka stream, a backfill)."""
        self.run(final=True)
        return self.totals

    def run(self, *, final: bool, since_us: int | None = None) -> PassResult:
        """One pass up to the watermark (everything when `final`). With `since_us`, events
        before it only teach the baselines (a backfill that alerts from a point in time)."""
        conn = self.store.conn
        newest, _ = sql.pending_bounds(conn)
        if newest is None:
            return PassResult()
        watermark = newest if final else newest - self.lateness_us
        result = PassResult()
        if since_us is not None and sql.progress(conn).ts_us < since_us:
            result.add(self._pass(min(since_us - 1, watermark), emit=False))
        result.add(self._pass(watermark, emit=True))
        self.totals.add(result)
        return result

    # --- one pass ------------------------------------------------------------------------------

    def _pass(self, watermark_us: int, *, emit: bool) -> PassResult:
        conn = self.store.conn
        after = sql.progress(conn)
        _, ingested_hwm = sql.pending_bounds(conn)
        window = sql.select_window(conn, after=after, watermark_us=watermark_us)
        result = PassResult(events=window.events, late=window.late)
        if not window.events:
            sql.drop_window(conn)
            return result
        per_token = {d.id for d in self.detectors if d.per_token}
        # Read before `learn` folds the window in: which tokens got a use older than one that
        # was processed already (only late events can be).
        reordered = sql.reordered_tokens(conn) if emit and window.late and per_token else []
        errors: list[tuple[str, str]] = []
        findings: list[Finding] = []
        last = (window.last_us or 0, window.last_event_id or "")
        mark = max((after.ts_us, after.event_id), last)
        lifetime = next((d for d in self.detectors if d.id == "lifetime"), None)
        dormant_us = int(getattr(lifetime, "dormant_days", 30.0) * 86_400 * US_PER_SECOND)
        with sql.catalog_tables(conn, catalog=self.catalog, tasks=self.rules.tasks):
            calls = sql.annotate(
                conn,
                default_sensitivity=float(self.catalog.score.default_sensitivity),
                max_ttl_us=int(getattr(lifetime, "max_ttl_days", 90.0) * 86_400 * US_PER_SECOND),
                dormant_us=dormant_us,
                pivot_window_us=2 * US_PER_HOUR,
            )
            result.candidates = len(calls)
            if emit:
                findings = self._detect(calls, window, errors)
                findings += self._custom(errors)
                if self.anomaly is not None:
                    findings += self._anomaly(after.ts_us, mark[0], errors)
        if reordered:
            # Decided again over all of these tokens' uses once the window is learned.
            skip = set(reordered)
            findings = [
                f for f in findings if f.detector not in per_token or f.token_id not in skip
            ]
        result.findings = len(findings)
        alerts, created = self._merge(findings)
        result.alerts_new = created
        result.alerts_updated = len(alerts) - created
        result.suppressed = sum(1 for a in alerts if a.status == "suppressed")
        written = {a.alert_id for a in alerts}
        conn.begin()
        try:
            sql.learn(conn)
            sql.upsert_alerts(conn, alerts=alerts)
            if reordered:
                new, updated, rewritten = self._redecide(reordered, mark, dormant_us, errors)
                result.alerts_new += new
                result.alerts_updated += updated
                written |= rewritten
            sql.save_progress(
                conn,
                ts_us=mark[0],
                event_id=mark[1],
                ingested_hwm_us=ingested_hwm or 0,
                events=window.events,
                late=window.late,
            )
            for detector_id, error in errors:
                sql.record_error(conn, detector=detector_id, error=error, window=window)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        sql.drop_window(conn)
        if written:
            for listener in self.alert_listeners:
                listener(frozenset(written))
        for detector_id, _ in errors:
            result.errors[detector_id] = result.errors.get(detector_id, 0) + 1
        return result

    def _detect(
        self, calls: list[Call], window: sql.Window, errors: list[tuple[str, str]]
    ) -> list[Finding]:
        findings: list[Finding] = []
        for detector in self.detectors:
            if isinstance(detector, Anomaly):
                continue
            try:
                findings.extend(detector.detect(calls))
            except Exception as exc:  # a broken detector is recorded; the stream goes on
                log.exception("detector %s failed on %d events", detector.id, window.events)
                errors.append((detector.id, f"{type(exc).__name__}: {exc}"))
        return findings

    def _custom(self, errors: list[tuple[str, str]]) -> list[Finding]:
        findings: list[Finding] = []
        for rule in self.rules.rules:
            try:
                columns, rows = sql.custom_rule_rows(self.store.conn, sql=rule.sql)
                findings.extend(_rule_findings(rule, columns, rows))
            except (duckdb.Error, KeyError, ValueError, TypeError) as exc:
                errors.append((rule.id, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))
        return findings

    def _anomaly(self, lo_us: int, hi_us: int, errors: list[tuple[str, str]]) -> list[Finding]:
        assert self.anomaly is not None
        try:
            return list(self.anomaly.score_hours(self.store.conn, self.catalog, lo_us, hi_us))
        except Exception as exc:
            log.exception("anomaly model failed")
            errors.append((self.anomaly.id, f"{type(exc).__name__}: {exc}"))
            return []

    # --- alerts --------------------------------------------------------------------------------

    def _redecide(
        self,
        tokens: list[str],
        mark: tuple[int, str],
        dormant_us: int,
        errors: list[tuple[str, str]],
    ) -> tuple[int, int, set[str]]:
        """Decide the per-token findings of `tokens` again by event time over all their
        processed uses, and put the alerts an in-order read gives (ids, first events, counts,
        evidence) in place of the ones arrival order gave. Returns how many alerts are new and
        updated, and the ids of every alert written (new, updated or superseded)."""
        conn = self.store.conn
        with sql.catalog_tables(conn, catalog=self.catalog, tasks=self.rules.tasks):
            calls = sql.redecide(
                conn,
                tokens=tokens,
                mark_us=mark[0],
                mark_id=mark[1],
                default_sensitivity=float(self.catalog.score.default_sensitivity),
                dormant_us=dormant_us,
            )
        findings: list[Finding] = []
        decided: list[str] = []
        for detector in self.detectors:
            if not detector.per_token:
                continue
            try:
                findings.extend(detector.detect(calls))
            except Exception as exc:  # its alerts on these tokens stay as they were
                log.exception(
                    "detector %s failed deciding %d tokens again", detector.id, len(tokens)
                )
                errors.append((detector.id, f"{type(exc).__name__}: {exc}"))
                continue
            decided.append(detector.id)
        if not decided:
            return 0, 0, set()
        rebuilt, _ = self._merge(findings, current={})
        old = {a.alert_id: a for a in sql.token_alerts(conn, tokens=tokens, detectors=decided)}
        fresh = {a.alert_id for a in rebuilt}
        gone = [a for a in old.values() if a.alert_id not in fresh]
        # Triage is kept: a replaced alert that was acknowledged or closed passes its status to
        # the new alert of the same key that starts nearest to it.
        carried: dict[str, str] = {}
        for a in gone:
            heirs = [
                b
                for b in rebuilt
                if b.alert_id not in old
                and (b.detector, b.dedupe_key) == (a.detector, a.dedupe_key)
            ]
            if a.status in ("acknowledged", "closed") and heirs:
                heir = min(
                    heirs, key=lambda b: (abs(b.first_seen_us - a.first_seen_us), b.alert_id)
                )
                carried.setdefault(heir.alert_id, a.status)
        # Only what changed is written: an unchanged alert keeps its version (sinks, API), an
        # updated one its status (the upsert does not touch it).
        changed = [
            b._replace(status=carried.get(b.alert_id, b.status))
            for b in rebuilt
            if b.alert_id not in old or _content(old[b.alert_id]) != _content(b)
        ]
        sql.supersede_alerts(conn, alert_ids=[a.alert_id for a in gone])
        sql.upsert_alerts(conn, alerts=changed)
        new = sum(1 for b in changed if b.alert_id not in old)
        written = {b.alert_id for b in changed} | {a.alert_id for a in gone}
        return new, len(changed) - new, written

    def _merge(
        self, findings: list[Finding], current: dict[tuple[str, str], AlertRow] | None = None
    ) -> tuple[list[AlertRow], int]:
        """Fold findings, in event-time order, into the open alert of their key (or a new one
        when there is none, or its last finding is older than the dedupe window); `current`
        replaces the stored open alerts (empty: build the alerts from these findings alone)."""
        if not findings:
            return [], 0
        findings.sort(key=lambda f: (f.ts_us, f.event_ids[0] if f.event_ids else "", f.detector))
        keys = sorted({(f.detector, f.key) for f in findings})
        if current is None:
            current = sql.open_alerts(self.store.conn, keys=keys)
        changed: dict[str, AlertRow] = {}
        created: set[str] = set()
        for f in findings:
            k = (f.detector, f.key)
            alert = current.get(k)
            if alert is not None and f.ts_us - alert.last_seen_us > self.dedupe_us:
                alert = None
            if alert is None:
                alert = self._new_alert(f)
                created.add(alert.alert_id)
            else:
                alert = self._merged(alert, f)
            current[k] = alert
            changed[alert.alert_id] = alert
        return list(changed.values()), len(created)

    def _new_alert(self, f: Finding) -> AlertRow:
        meta = self._meta.get(f.detector, Meta((), (), ""))
        first_event = f.event_ids[0] if f.event_ids else f"{f.ts_us}"
        evidence = dict(f.evidence)
        evidence["title_template"] = f.title
        evidence["reach"] = dict(f.reach)
        alert = AlertRow(
            alert_id=stable_id(f.detector, f.key, first_event),
            detector=f.detector,
            dedupe_key=f.key,
            severity=f.severity,
            score=0.0,
            title=f.title,
            token_id=f.token_id,
            identity=f.identity,
            targets=sorted(set(f.targets)),
            first_seen_us=f.ts_us,
            last_seen_us=f.last_us,
            first_event_id=first_event,
            occurrences=f.count,
            event_ids=list(f.event_ids[: self.evidence_cap]),
            evidence=evidence,
            mitre=list(meta.mitre),
            owasp_nhi=list(meta.owasp_nhi),
            runbook=meta.runbook,
            status="open",
            suppressed_by=None,
        )
        alert = _finish(alert, f.score)
        for rule in self.rules.suppressions:
            if rule.matches(
                detector=f.detector,
                identity=f.identity,
                targets=alert.targets,
                token_id=f.token_id,
                ts=sql.utc(f.ts_us),
            ):
                return alert._replace(
                    status="suppressed",
                    suppressed_by=rule.reason or rule.name,
                )
        return alert

    def _merged(self, alert: AlertRow, f: Finding) -> AlertRow:
        evidence = dict(alert.evidence)
        for name, value in f.evidence.items():
            old = evidence.get(name)
            if isinstance(value, list) and isinstance(old, list):
                evidence[name] = _union(old, value)
            elif name not in evidence:
                evidence[name] = value
        reach = dict(evidence.get("reach", {}))
        for target, value in f.reach:
            reach[target] = max(reach.get(target, 0.0), value)
        evidence["reach"] = reach
        ids = list(dict.fromkeys([*alert.event_ids, *f.event_ids]))[: self.evidence_cap]
        merged = alert._replace(
            severity=worst(_severity(alert.severity), f.severity),
            targets=sorted(set(alert.targets) | set(f.targets)),
            last_seen_us=max(alert.last_seen_us, f.last_us),
            occurrences=alert.occurrences + f.count,
            event_ids=ids,
            evidence=evidence,
        )
        return _finish(merged, max(alert.score, f.score))


def _one_line(exc: Exception) -> str:
    """What went wrong, on one line: DuckDB's messages name their kind, others get it added."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(exc, duckdb.OutOfMemoryException):
        text += " (raise the setting duckdb.memory_limit, or duckdb.serve_memory_limit in serve)"
    if not isinstance(exc, duckdb.Error):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


def _content(alert: AlertRow) -> tuple[Any, ...]:
    """What detection decides of an alert (not its triage status)."""
    return (
        *alert[: alert._fields.index("evidence")],
        json.dumps(alert.evidence, sort_keys=True),
        *alert[alert._fields.index("mitre") : alert._fields.index("status")],
    )


def _severity(value: str) -> Severity:
    for s in SEVERITIES:
        if s == value:
            return s
    return "info"


def _union(old: list[Any], new: Iterable[Any]) -> list[Any]:
    # Entries compared as canonical JSON: `old` may come back from the store, where objects
    # were saved with sorted keys, and a repr would then tell apart equal path steps.
    out = list(old)
    seen = {_canonical(v) for v in out}
    for v in new:
        if len(out) >= _EVIDENCE_LIST_CAP:
            break
        key = _canonical(v)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _finish(alert: AlertRow, finding_score: float) -> AlertRow:
    """The alert's score (the blast radius its findings added) and its rendered title."""
    reach: dict[str, float] = alert.evidence.get("reach", {})
    score = round(max(sum(reach.values()), finding_score), 2)
    template = str(alert.evidence.get("title_template", alert.title))
    title = template.replace("{targets}", _names(alert.targets)).replace(
        "{scopes}", _names(alert.evidence.get("scopes", []))
    )
    return alert._replace(score=score, title=title)


def _names(values: Sequence[str]) -> str:
    values = list(values)
    if len(values) <= 3:
        return ", ".join(values) or "nothing"
    return f"{', '.join(values[:3])} and {len(values) - 3} more"


def _rule_findings(
    rule: CustomRule, columns: list[str], rows: list[tuple[Any, ...]]
) -> Iterable[Finding]:
    index = {name: i for i, name in enumerate(columns)}
    if "event_id" not in index or "ts" not in index:
        raise ValueError("a rule must return the columns event_id and ts (SELECT * does)")
    for row in rows:
        ts = row[index["ts"]]
        ts_us = (ts - EPOCH) // ONE_US if ts is not None else 0

        def get(name: str, row: tuple[Any, ...] = row) -> Any:
            return row[index[name]] if name in index else None

        key = "|".join(str(get(name)) for name in rule.key)
        target = get("target")
        yield Finding(
            detector=rule.id,
            key=key,
            severity=rule.severity,
            score=0.0,
            title=rule.title,
            ts_us=int(ts_us),
            last_us=int(ts_us),
            event_ids=(str(get("event_id")),),
            token_id=get("token_id"),
            identity=get("identity"),
            targets=(str(target),) if target is not None else (),
            evidence={"rule": rule.id, "sql": rule.sql},
        )
