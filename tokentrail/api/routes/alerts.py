"""Alerts: list with filters, one alert with its evidence and history, triage updates."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status

from tokentrail.api.deps import AnalystDep, ConnDep, StateDep, ViewerDep
from tokentrail.api.encoding import JSON, ModelJSON
from tokentrail.api.models import (
    AlertDetail,
    AlertPublic,
    AlertsPublic,
    AlertStatus,
    AlertUpdate,
    HistoryEntry,
    Severity,
)
from tokentrail.api.reads import Changes, Entry
from tokentrail.detect.model import SEVERITIES
from tokentrail.store import alerts as alert_sql
from tokentrail.store import api as sql
from tokentrail.store.alerts import AlertRow

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


def alert_public(row: AlertRow, assignee: str | None) -> AlertPublic:
    return AlertPublic(
        alert_id=row.alert_id,
        detector=row.detector,
        severity=row.severity,  # type: ignore[arg-type]
        score=row.score,
        title=row.title,
        token_id=row.token_id,
        identity=row.identity,
        targets=row.targets,
        first_seen=alert_sql.utc(row.first_seen_us),
        last_seen=alert_sql.utc(row.last_seen_us),
        count=row.occurrences,
        event_ids=row.event_ids,
        evidence={k: v for k, v in row.evidence.items() if k != "title_template"},
        mitre=row.mitre,
        owasp_nhi=row.owasp_nhi,
        runbook=row.runbook,
        status=row.status,  # type: ignore[arg-type]
        suppressed_by=row.suppressed_by,
        dedupe_key=row.dedupe_key,
        assignee=assignee,
    )


@router.get("", response_model=AlertsPublic, response_class=JSON)
async def list_alerts(
    request: Request,
    state: StateDep,
    _: ViewerDep,
    severity: Annotated[list[Severity] | None, Query(description="Repeatable.")] = None,
    min_severity: Severity | None = None,
    alert_status: Annotated[
        list[AlertStatus] | None,
        Query(alias="status", description="Repeatable; default: all but suppressed."),
    ] = None,
    detector: str | None = None,
    token_id: str | None = None,
    identity: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JSON:
    """Alerts, most severe then oldest first."""
    levels: list[str] | None = sorted(set(severity)) if severity else None
    if min_severity is not None:
        above = SEVERITIES[SEVERITIES.index(min_severity) :]
        levels = [s for s in levels if s in above] if levels else list(above)
    statuses = sorted(set(alert_status)) if alert_status else ["open", "acknowledged", "closed"]

    def fill() -> Entry:
        with state.cursor() as conn:
            rows = [
                r
                for r in alert_sql.list_alerts(
                    conn, severities=levels, statuses=statuses, detector=detector
                )
                if (token_id is None or r.token_id == token_id)
                and (identity is None or r.identity == identity)
            ]
            page = rows[offset : offset + limit]
            owners = sql.assignees(conn, alert_ids=[r.alert_id for r in page])
        found = AlertsPublic(
            data=[alert_public(r, owners.get(r.alert_id)) for r in page], count=len(rows)
        )
        return Entry(found.model_dump_json().encode(), every_alert=True)

    asked = json.dumps([levels, statuses, detector, token_id, identity, limit, offset])
    return await state.kept(request, ("alerts", asked), fill)


def _detail(conn: ConnDep, state: StateDep, alert_id: str) -> AlertDetail:
    row = sql.alert_by_id(conn, alert_id=alert_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id!r}")
    owner = sql.assignees(conn, alert_ids=[alert_id]).get(alert_id)
    return AlertDetail(
        **alert_public(row, owner).model_dump(),
        # The evidence lies between the alert's first and last seen (looked for there first).
        events=state.evidence.events(
            conn, event_ids=row.event_ids, within=(row.first_seen_us, row.last_seen_us)
        ),
        history=[HistoryEntry(**h._asdict()) for h in sql.alert_history(conn, alert_id=alert_id)],
    )


@router.get("/{alert_id}", response_model=AlertDetail, response_class=JSON)
async def get_alert(alert_id: str, request: Request, state: StateDep, _: ViewerDep) -> JSON:
    """One alert with its evidence events and triage history."""

    def fill() -> Entry:
        with state.cursor() as conn:
            detail = _detail(conn, state, alert_id)
        return Entry(detail.model_dump_json().encode(), alerts=frozenset({alert_id}))

    return await state.kept(request, ("alert", alert_id), fill)


@router.patch("/{alert_id}", response_model=AlertDetail)
def update_alert(
    alert_id: str, change: AlertUpdate, conn: ConnDep, state: StateDep, who: AnalystDep
) -> ModelJSON:
    """Triage: set status and/or assignee (null unassigns), with a note; every change is kept."""
    given = change.model_fields_set
    if not given & {"status", "assignee", "note"}:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "give status, assignee or note")
    found = sql.triage_alert(
        conn,
        alert_id=alert_id,
        key_id=who.key_id,
        actor=who.name,
        status=change.status,
        note=change.note,
        **({"assignee": change.assignee} if "assignee" in given else {}),
    )
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id!r}")
    state.reads.changed(Changes(alerts=frozenset({alert_id})))
    return ModelJSON(_detail(conn, state, alert_id))
