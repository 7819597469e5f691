"""Detection commands: `detect` (backfill), `alerts` (list), `evaluate` (against labels)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokentrail.cli.app import DbOption, app, err
from tokentrail.detect.evaluate import Evaluation, Scores, evaluate, load_labels
from tokentrail.detect.model import SEVERITIES
from tokentrail.detect.setup import detection_for
from tokentrail.errors import StoreError, TokentrailError
from tokentrail.events import EPOCH, ONE_US
from tokentrail.sinks.cef import cef_line
from tokentrail.sinks.ocsf import detection_finding
from tokentrail.store import Store
from tokentrail.store import alerts as sql
from tokentrail.store.alerts import AlertRow

out = Console(highlight=False, width=None if sys.stdout.isatty() else 1000)

CatalogOption = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        help="Service catalog (TOML): sensitivity, privilege weights, declared policy."
        " Remembered in the database for later runs.",
        envvar="TOKENTRAIL_CATALOG",
        dir_okay=False,
    ),
]
RulesOption = Annotated[
    Path | None,
    typer.Option(
        "--rules",
        help="Detection rules (TOML): settings, tuning, task policies, suppressions, SQL rules."
        " Remembered in the database for later runs.",
        envvar="TOKENTRAIL_RULES",
        dir_okay=False,
    ),
]


class AlertFormat(StrEnum):
    json = "json"
    table = "table"
    ocsf = "ocsf"
    cef = "cef"


class Status(StrEnum):
    open = "open"
    acknowledged = "acknowledged"
    closed = "closed"
    suppressed = "suppressed"


class Level(StrEnum):
    info = "info"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


@contextmanager
def _store(db: Path) -> Iterator[Store]:
    if not db.exists():
        raise StoreError(f"no database at {db}; ingest events first (tokentrail ingest ...)")
    with Store.open(db) as store:
        yield store


def _time_us(value: str, option: str) -> int:
    text = value.strip()
    try:
        if text.isdigit():
            return int(text) * 1000
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise TokentrailError(
            f"{option} {value!r}: expected RFC 3339 (2026-03-02T09:00:00Z), a date or epoch ms"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // ONE_US


def _rfc3339(us: int) -> str:
    return sql.utc(us).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@app.command()
def detect(
    db: DbOption,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Alert from this time on; earlier events only teach."),
    ] = None,
    catalog: CatalogOption = None,
    rules: RulesOption = None,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Forget baselines and alerts and detect again from the first event (alert"
            " triage status is kept for alerts that come back).",
        ),
    ] = False,
) -> None:
    """Run detection over stored events not processed yet (a backfill); never duplicates alerts.

    Examples:
      tokentrail detect --db audit.duckdb
      tokentrail detect --db audit.duckdb --catalog catalog.toml --since 2026-03-03
    """
    with _store(db) as store:
        engine = detection_for(store, catalog_path=catalog, rules_path=rules)
        kept: dict[str, tuple[str, str | None]] = {}
        if rebuild:
            kept = sql.reset(store.conn)
        result = engine.run(final=True, since_us=_time_us(since, "--since") if since else None)
        if kept:
            sql.restore_status(store.conn, statuses=kept)
        total = len(sql.list_alerts(store.conn))
    errors = ", ".join(f"{d} {n}" for d, n in sorted(result.errors.items()))
    err.print(
        f"detected over {result.events:,} events ({result.late:,} late):"
        f" {result.alerts_new:,} new alerts, {result.alerts_updated:,} updated,"
        f" {total:,} in total" + (f"; detector errors: {errors}" if errors else ""),
        highlight=False,
        markup=False,
    )


def alert_json(alert: AlertRow) -> dict[str, Any]:
    """The JSON form of an alert (the `alerts --format json` contract)."""
    return {
        "alert_id": alert.alert_id,
        "detector": alert.detector,
        "severity": alert.severity,
        "score": alert.score,
        "title": alert.title,
        "token_id": alert.token_id,
        "identity": alert.identity,
        "targets": alert.targets,
        "first_seen": _rfc3339(alert.first_seen_us),
        "last_seen": _rfc3339(alert.last_seen_us),
        "count": alert.occurrences,
        "event_ids": alert.event_ids,
        "evidence": {k: v for k, v in alert.evidence.items() if k != "title_template"},
        "mitre": alert.mitre,
        "owasp_nhi": alert.owasp_nhi,
        "runbook": alert.runbook,
        "status": alert.status,
        "suppressed_by": alert.suppressed_by,
        "dedupe_key": alert.dedupe_key,
    }


@app.command()
def alerts(
    db: DbOption,
    severity: Annotated[
        list[Level] | None,
        typer.Option("--severity", help="Only these severities (repeatable)."),
    ] = None,
    min_severity: Annotated[
        Level | None, typer.Option("--min-severity", help="This severity and above.")
    ] = None,
    status: Annotated[
        list[Status] | None,
        typer.Option("--status", help="Only these statuses (default: all but suppressed)."),
    ] = None,
    detector: Annotated[str | None, typer.Option("--detector", help="One detector.")] = None,
    fmt: Annotated[AlertFormat, typer.Option("--format", help="Output format.")] = (
        AlertFormat.table
    ),
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many.")] = None,
) -> None:
    """Alerts, most severe first: one JSON object per line, a table, OCSF findings (one
    Detection Finding per line) or CEF lines, for a pipe.

    Examples:
      tokentrail alerts --db audit.duckdb --min-severity high
      tokentrail alerts --db audit.duckdb --format json --status open
      tokentrail alerts --db audit.duckdb --format cef | logger --rfc5424 -n siem -T -P 514
    """
    levels: list[str] | None = [s.value for s in severity] if severity else None
    if min_severity is not None:
        floor = SEVERITIES.index(min_severity.value)
        above: list[str] = [s for s in SEVERITIES if SEVERITIES.index(s) >= floor]
        levels = [s for s in levels if s in above] if levels else above
    statuses = [s.value for s in status] if status else ["open", "acknowledged", "closed"]
    with _store(db) as store:
        rows = sql.list_alerts(
            store.conn, severities=levels, statuses=statuses, detector=detector, limit=limit
        )
    if fmt is AlertFormat.json:
        for row in rows:
            typer.echo(msgspec.json.encode(alert_json(row)).decode())
    elif fmt is AlertFormat.ocsf:
        for row in rows:
            typer.echo(msgspec.json.encode(detection_finding(row)).decode())
    elif fmt is AlertFormat.cef:
        for row in rows:
            typer.echo(cef_line(row))
    else:
        table = Table(
            "alert", "severity", "score", "detector", "title", "first seen", "count", "status"
        )
        for row in rows:
            table.add_row(
                # The id `contain`, `/v1/alerts/{id}` and `/ui#alert=` take; never folded.
                Text(row.alert_id, no_wrap=True),
                row.severity,
                f"{row.score:g}",
                row.detector,
                row.title,
                _rfc3339(row.first_seen_us),
                str(row.occurrences),
                row.status,
            )
        out.print(table)
        err.print(f"{len(rows)} alerts", highlight=False)


@app.command("evaluate")
def evaluate_command(
    db: DbOption,
    labels: Annotated[
        Path, typer.Option("--labels", help="labels.json from tokentrail simulate.", dir_okay=False)
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="table, json, or both (table then JSON).")
    ] = "both",
    percentile: Annotated[
        float, typer.Option("--percentile", help="Threshold of the naive access-count baseline.")
    ] = 0.995,
) -> None:
    """Per-attack detection, recall, precision and false alerts per day, against ground truth;
    and the same for a naive access-count baseline.

    Example: tokentrail evaluate --db audit.duckdb --labels sim/labels.json
    """
    if fmt not in ("table", "json", "both"):
        raise TokentrailError("--format must be table, json or both")
    with _store(db) as store:
        result = evaluate(store.conn, labels=load_labels(labels), percentile=percentile)
    if fmt in ("table", "both"):
        _evaluation_tables(result)
    if fmt in ("json", "both"):
        typer.echo(msgspec.json.format(msgspec.json.encode(result), indent=2).decode())


def _evaluation_tables(result: Evaluation) -> None:
    table = Table("attack", "family", "detected", "first alert", "detectors", "severity", "delay")
    for c in result.tokentrail.caught:
        table.add_row(
            c.attack_id,
            c.family,
            "yes" if c.detected else "NO",
            c.first_alert or "-",
            ", ".join(c.detectors) or "-",
            c.severity or "-",
            f"{c.delay_seconds:.0f} s" if c.delay_seconds is not None else "-",
        )
    out.print(table)
    summary = Table("method", "recall", "precision", "alerts", "false", "false/day",
                    *(f"{s}/day" for s in SEVERITIES))  # fmt: skip
    for s in (result.tokentrail, result.naive):
        summary.add_row(*_summary_row(s))
    out.print(summary)
    if result.benign_changes:
        changes = Table("benign change", "kind", "alerts", "max severity")
        for ch in result.benign_changes:
            changes.add_row(ch.change_id, ch.kind, str(len(ch.alerts)), ch.max_severity or "-")
        out.print(changes)


def _summary_row(s: Scores) -> list[str]:
    return [
        s.method,
        f"{s.recall:.3f} ({s.detected}/{s.attacks})",
        f"{s.precision:.3f}",
        str(s.alerts),
        str(s.false_alerts),
        f"{s.false_per_day:.2f}",
        *(f"{s.false_per_day_by_severity[level]:.2f}" for level in SEVERITIES),
    ]
