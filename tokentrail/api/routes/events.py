"""Events: filtered, newest first, with cursor pagination and a hard page limit."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from tokentrail.api.deps import ConnDep, StateDep, ViewerDep
from tokentrail.api.encoding import ModelJSON
from tokentrail.api.models import EventPublic, EventsPublic
from tokentrail.events import EPOCH, ONE_US
from tokentrail.store import api as sql

router = APIRouter(prefix="/v1/events", tags=["events"])


def encode_cursor(ts: datetime, event_id: str) -> str:
    us = (ts - EPOCH) // ONE_US
    return base64.urlsafe_b64encode(f"{us}:{event_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        us, event_id = text.split(":", 1)
        return EPOCH + timedelta(microseconds=int(us)), event_id
    # OverflowError: a forged cursor with a timestamp no datetime can hold.
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "bad cursor") from None


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.get("", response_model=EventsPublic)
def list_events(
    conn: ConnDep,
    state: StateDep,
    _: ViewerDep,
    token_id: str | None = None,
    identity: str | None = None,
    source: str | None = None,
    target: str | None = None,
    operation: str | None = None,
    scope: str | None = None,
    outcome: str | None = None,
    trace_id: str | None = None,
    environment: str | None = None,
    task_id: str | None = None,
    since: Annotated[datetime | None, Query(description="RFC 3339; naive is UTC.")] = None,
    until: Annotated[datetime | None, Query(description="Exclusive.")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the page before.")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Capped by the server.")] = None,
) -> ModelJSON:
    """Stored events, newest first; follow `next_cursor` for older ones."""
    settings = state.settings
    size = min(limit or settings.events_page, settings.events_page_max)
    given = {
        "token_id": token_id,
        "identity": identity,
        "source": source,
        "target": target,
        "operation": operation,
        "scope": scope,
        "outcome": outcome,
        "trace_id": trace_id,
        "environment": environment,
        "task_id": task_id,
    }
    rows = sql.events_page(
        conn,
        filters={k: v for k, v in given.items() if v is not None},
        since=_utc(since),
        until=_utc(until),
        after=decode_cursor(cursor) if cursor else None,
        limit=size + 1,
    )
    page = rows[:size]
    following = encode_cursor(page[-1]["ts"], page[-1]["event_id"]) if len(rows) > size else None
    return ModelJSON(
        EventsPublic(
            data=[EventPublic.model_validate(r) for r in page],
            count=len(page),
            next_cursor=following,
        )
    )
