"""Prometheus metrics: events ingested, dead letters, alerts by severity, sink delivery, API
latency."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from tokentrail.api.deps import ConnDep, StateDep, ViewerDep
from tokentrail.api.metrics import gauge
from tokentrail.sinks.delivery import prometheus
from tokentrail.store import api as sql

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(conn: ConnDep, state: StateDep, _: ViewerDep) -> PlainTextResponse:
    """Prometheus text format (scrape with `authorization: {credentials: <viewer key>}`)."""
    found = sql.counts(conn)
    by_severity: dict[tuple[tuple[str, str], ...], float] = {}
    for (severity, alert_status), n in found.alerts.items():
        key = (("severity", severity), ("status", alert_status))
        by_severity[key] = by_severity.get(key, 0) + n
    lines = [
        *gauge("tokentrail_events_stored", "Events in the store.", {(): found.events}),
        *gauge("tokentrail_dead_letters", "Dead letters in the store.", {(): found.dead_letters}),
        *gauge("tokentrail_tokens", "Tokens in the registry.", {(): found.tokens}),
        *gauge("tokentrail_alerts", "Alerts by severity and status.", by_severity),
    ]
    if state.consumer is not None:
        totals = state.consumer.totals()
        lines += gauge(
            "tokentrail_consumer_records",
            "Records the background consumer handled since start, by outcome.",
            {(("outcome", k),): v for k, v in totals.items()},
        )
        lines += gauge(
            "tokentrail_consumer_up",
            "1 while the background consumer runs.",
            {(): 1 if state.consumer.state == "running" else 0},
        )
        lines += gauge(
            "tokentrail_consumer_lag",
            "Records on the broker not yet stored, by partition (as of the last poll).",
            {(("partition", str(p)),): n for p, n in state.consumer.lag().items()},
        )
        timings = state.consumer.write_seconds()
        if timings is not None:
            lines += timings.lines(
                "tokentrail_batch_seconds",
                "Time to store one batch once handed to the writer: write and detection.",
            )
    if state.deliverer is not None:
        lines += prometheus(conn, state.deliverer).splitlines()
    lines += state.metrics.lines()
    kept, kept_bytes = state.reads.size()
    lines += gauge(
        "tokentrail_api_read_cache_reads",
        "Kept reads (tokentrail.api.reads) answered from memory (hit) or the store (miss).",
        {
            **{(("read", k), ("outcome", "hit")): n for k, n in state.reads.hits.items()},
            **{(("read", k), ("outcome", "miss")): n for k, n in state.reads.misses.items()},
        },
    )
    lines += gauge(
        "tokentrail_api_read_cache_bytes", "JSON of the answers kept in memory.", {(): kept_bytes}
    )
    lines += gauge("tokentrail_api_read_cache_answers", "Answers kept in memory.", {(): kept})
    return PlainTextResponse(
        "\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8"
    )
