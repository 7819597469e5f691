"""Request and response models of the API resources (graph results are msgspec structs, see
`tokentrail.api.encoding`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from tokentrail.graph.blast import RankedToken

AlertStatus = Literal["open", "acknowledged", "closed", "suppressed"]
Severity = Literal["info", "low", "medium", "high", "critical"]


class ErrorPublic(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    schema_version: int
    consumer: Literal["running", "disconnected", "stopped", "failed", "none"]
    detail: str | None = None


class AlertPublic(BaseModel):
    alert_id: str
    detector: str
    severity: Severity
    score: float
    title: str
    token_id: str | None
    identity: str | None
    targets: list[str]
    first_seen: datetime
    last_seen: datetime
    count: int
    event_ids: list[str]
    evidence: dict[str, Any]
    mitre: list[str]
    owasp_nhi: list[str]
    runbook: str
    status: AlertStatus
    suppressed_by: str | None
    dedupe_key: str
    assignee: str | None


class AlertsPublic(BaseModel):
    data: list[AlertPublic]
    count: int  # alerts matching the filters (data is one page of them)


class HistoryEntry(BaseModel):
    at: datetime
    key_id: str | None
    actor: str | None
    status_from: str | None
    status_to: str | None
    assignee_from: str | None
    assignee_to: str | None
    note: str | None


class EventPublic(BaseModel):
    event_id: str
    ts: datetime
    token_id: str
    identity: str
    source: str
    target: str
    operation: str
    scope: str | None
    outcome: str
    status: int | None
    trace_id: str | None
    span_id: str | None
    parent_span_id: str | None
    environment: str | None
    identity_kind: str | None
    resource: str | None
    source_ip: str | None
    user_agent: str | None
    bytes_out: int | None
    task_id: str | None
    actor: str | None
    token_kind: str | None
    flags: list[str] | None
    attributes: dict[str, Any] | None


class AlertDetail(AlertPublic):
    """One alert with its evidence events (as stored) and its triage history."""

    events: list[EventPublic]
    history: list[HistoryEntry]


class AlertUpdate(BaseModel):
    """A triage change: any of status, assignee (null unassigns) and a note."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["open", "acknowledged", "closed"] | None = None
    assignee: str | None = Field(default=None, max_length=200)
    note: str | None = Field(default=None, max_length=4000)


class EventsPublic(BaseModel):
    data: list[EventPublic]
    count: int  # events in this page
    next_cursor: str | None  # pass as ?cursor= for the next (older) page


class TokensPage(msgspec.Struct, frozen=True, kw_only=True):
    data: list[RankedToken]
    count: int


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1)
    max_rows: int | None = Field(default=None, ge=1)


class QueryResult(BaseModel):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool  # more rows than the limit: only the first ones are returned
    elapsed_ms: float


class RequestPublic(BaseModel):
    at: datetime
    key_id: str | None
    role: str | None
    method: str
    path: str
    query: str | None
    status: int
    duration_ms: float
    client: str | None
    detail: str | None


class RequestsPublic(BaseModel):
    data: list[RequestPublic]
    count: int
