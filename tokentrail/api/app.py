"""The app factory: state, routers, the request log, and errors that never leak internals."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import duckdb
from anyio import to_thread
from fastapi import FastAPI, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import tokentrail
from tokentrail.api.auth import scrub
from tokentrail.api.encoding import components
from tokentrail.api.fastpath import ROUTE_TEMPLATE, KeptAnswers
from tokentrail.api.lanes import lower_workers
from tokentrail.api.limits import BodyLimit
from tokentrail.api.models import TokensPage
from tokentrail.api.routes import (
    alerts,
    chains,
    containment,
    events,
    health,
    identities,
    keys,
    metrics,
    paths,
    query,
    services,
    tokens,
    ui,
)
from tokentrail.api.settings import ApiSettings
from tokentrail.api.state import ApiState, ConsumerStatus, harden
from tokentrail.catalog import Catalog
from tokentrail.detect.setup import remembered_catalog
from tokentrail.errors import TokentrailError
from tokentrail.graph import (
    BlastRadius,
    Chain,
    Exposure,
    IdentityReport,
    Lineage,
    Paths,
    TokenGraph,
    TokenReport,
    UnknownSubjectError,
)
from tokentrail.sinks.delivery import Deliverer, DeliveryThread
from tokentrail.store import Store
from tokentrail.store.api import RequestRow

log = logging.getLogger(__name__)

# Graph results documented with msgspec's schemas (tokentrail.api.encoding).
_STRUCTS: list[type[Any]] = [
    Chain,
    TokensPage,
    TokenReport,
    BlastRadius,
    Lineage,
    TokenGraph,
    Paths,
    Exposure,
    IdentityReport,
]


def create_app(
    store: Store,
    settings: ApiSettings,
    *,
    catalog: Catalog | None = None,
    consumer: ConsumerStatus | None = None,
    deliverer: Deliverer | None = None,
) -> FastAPI:
    """The API over `store`. Locks the database instance down for the SQL endpoint (no file or
    network access, settings frozen) — create any writer that needs settings before this.

    With a `deliverer` that has routes, alerts are delivered to its sinks on a background thread
    (its own cursor) while the app runs, and `/metrics` reports delivery."""
    if deliverer is not None and not deliverer.routes:
        deliverer = None
    state = ApiState(
        store=store,
        settings=settings,
        catalog=catalog if catalog is not None else remembered_catalog(store.conn),
        consumer=consumer,
        deliverer=deliverer,
    )
    harden(store.conn)
    if consumer is not None:
        consumer.subscribe(state.reads.changed)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        to_thread.current_default_thread_limiter().total_tokens = settings.threads
        state.audit.start()
        if consumer is not None:
            consumer.start()
        delivery = DeliveryThread(store.conn, deliverer).start() if deliverer is not None else None
        lowering = asyncio.create_task(lower_workers(settings.general_nice))
        try:
            yield
        finally:
            lowering.cancel()
            if consumer is not None:
                await run_in_threadpool(consumer.stop)
            if delivery is not None:
                await run_in_threadpool(delivery.stop)
            # Requests have all ended: store the rows still queued before the cursors close.
            await run_in_threadpool(state.audit.stop)
            state.close()

    app = FastAPI(
        title="tokentrail",
        version=tokentrail.__version__,
        description="Call chains, tokens, blast radius, lineage, paths and alerts of"
        " non-human identities. Authenticate with `Authorization: Bearer <API key>`.",
        lifespan=lifespan,
    )
    app.state.tokentrail = state
    for module in (health, alerts, containment, chains, tokens, events, paths, services):
        app.include_router(module.router)
    for module in (identities, query, metrics, keys, ui):
        app.include_router(module.router)
    _errors(app)
    # Innermost: a request it answers is still size-checked, logged and counted.
    app.add_middleware(KeptAnswers, state=state)
    # Added before the audit middleware so that it wraps this one and records the 413s.
    app.add_middleware(BodyLimit, max_bytes=settings.body_max_bytes)
    app.add_middleware(Audit, state=state)
    _openapi(app)
    return app


def _errors(app: FastAPI) -> None:
    """Known errors become one line with the right status; nothing else leaves the process."""

    async def unknown(_: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    async def refused(_: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_400_BAD_REQUEST)

    async def store_failed(request: Request, exc: Exception) -> Response:
        log.error("store error on %s %s: %s", request.method, scrub(request.url.path), exc)
        return JSONResponse(
            {"detail": "the store could not answer; try again"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    async def invalid(_: Request, exc: Exception) -> Response:
        # FastAPI's default echoes each invalid `input` back (a megabyte note, a pasted secret);
        # the location, message and type say what is wrong without it.
        assert isinstance(exc, RequestValidationError)
        errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
        return JSONResponse(
            {"detail": jsonable_encoder(errors)},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(UnknownSubjectError, unknown)
    app.add_exception_handler(TokentrailError, refused)
    app.add_exception_handler(duckdb.Error, store_failed)


class Audit:
    """ASGI middleware: record every request (who, what, when, outcome) and its latency; turn
    anything that escaped the handlers into a bare 500.

    Plain ASGI rather than `@app.middleware("http")`: that one runs each request in an extra
    task with its body streamed through queues, a measurable share of the event loop's time
    under load; and the row is only queued here (tokentrail.api.audit), no thread hop."""

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        at = datetime.now(UTC)
        started = time.perf_counter()
        status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
        responded = False

        async def sending(message: Message) -> None:
            nonlocal status_code, responded
            if message["type"] == "http.response.start":
                status_code, responded = message["status"], True
            await send(message)

        request = Request(scope)
        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("internal error on %s %s", request.method, scrub(request.url.path))
            if not responded:
                await JSONResponse(
                    {"detail": "internal error"},
                    status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
                )(scope, receive, send)
            status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
        seconds = time.perf_counter() - started
        # The route's path template: set by the router, or by KeptAnswers for what it answered.
        template = scope.get(ROUTE_TEMPLATE) or getattr(scope.get("route"), "path", None)
        template = template or "unmatched"
        self.state.metrics.observe(
            method=request.method, route=template, status=status_code, seconds=seconds
        )
        principal = getattr(request.state, "principal", None)
        self.state.record(
            RequestRow(
                at=at,
                key_id=principal.key_id if principal else None,
                role=principal.role.value if principal else None,
                method=request.method,
                path=scrub(request.url.path),
                query=scrub(request.url.query) if request.url.query else None,
                status=status_code,
                duration_ms=round(seconds * 1000, 3),
                client=request.client.host if request.client else None,
                detail=getattr(request.state, "audit_detail", None),
            )
        )


def _openapi(app: FastAPI) -> None:
    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            found = document.setdefault("components", {}).setdefault("schemas", {})
            for name, value in components(_STRUCTS).items():
                found.setdefault(name, value)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
