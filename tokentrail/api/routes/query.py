"""Read-only SQL for analysts, with a row limit and a time limit (see tokentrail.api.sandbox)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from tokentrail.api import sandbox
from tokentrail.api.deps import AnalystDep, ConnDep, StateDep
from tokentrail.api.models import ErrorPublic, QueryRequest, QueryResult

router = APIRouter(prefix="/v1/query", tags=["query"])


@router.post("", response_model=QueryResult, responses={400: {"model": ErrorPublic}})
def run_query(
    body: QueryRequest, request: Request, conn: ConnDep, state: StateDep, _: AnalystDep
) -> QueryResult:
    """Run one SELECT over the audit tables; 400 with the reason when it is refused."""
    settings = state.settings
    request.state.audit_detail = body.sql[:2000]
    if len(body.sql) > settings.query_length_max:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the query is too long")
    max_rows = min(body.max_rows or settings.query_rows_max, settings.query_rows_max)
    try:
        out = sandbox.run(conn, body.sql, max_rows=max_rows, timeout_s=settings.query_timeout_s)
    except sandbox.QueryRefusedError as refused:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(refused)) from None
    return QueryResult(
        columns=out.columns,
        types=out.types,
        rows=out.rows,
        row_count=len(out.rows),
        truncated=out.truncated,
        elapsed_ms=out.elapsed_ms,
    )
