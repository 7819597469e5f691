"""Liveness and readiness probes (no key needed)."""

from __future__ import annotations

import duckdb
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tokentrail.api.deps import StateDep
from tokentrail.api.models import Health, Ready
from tokentrail.store import api as sql
from tokentrail.store.migrations import LATEST

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
def readyz(state: StateDep) -> Ready | JSONResponse:
    """The store answers at the current schema and the consumer (if any) is running and reaches
    its broker (`disconnected` while it waits for one: 503, with how long in `detail`)."""
    consumer = state.consumer.state if state.consumer is not None else "none"
    detail = state.consumer.error if state.consumer is not None else None
    try:
        with state.cursor() as cur:
            version = sql.schema_version(cur)
    except duckdb.Error:
        version, detail = 0, "the store does not answer"
    ready = version == LATEST and consumer in ("running", "none")
    body = Ready(
        status="ready" if ready else "not ready",
        schema_version=version,
        consumer=consumer,  # type: ignore[arg-type]
        detail=detail,
    )
    return body if ready else JSONResponse(body.model_dump(), status_code=503)
