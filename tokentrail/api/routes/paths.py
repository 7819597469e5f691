"""Paths: how access flowed from one service to another."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from tokentrail.api.deps import ConnDep, ViewerDep
from tokentrail.api.encoding import MsgspecJSON, schema_of
from tokentrail.graph import Paths, find_paths

router = APIRouter(prefix="/v1/paths", tags=["paths"])


def _utc(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


@router.get("", response_class=MsgspecJSON, responses=schema_of(Paths))
def get_paths(
    conn: ConnDep,
    _: ViewerDep,
    source: Annotated[str, Query(alias="from", description="Service access flowed from.")],
    target: Annotated[str, Query(alias="to", description="Service access flowed to.")],
    since: datetime | None = None,
    until: datetime | None = None,
    max_hops: Annotated[int, Query(ge=1, le=12)] = 6,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> MsgspecJSON:
    """Paths from `from` to `to`, fewest steps first, each step proven by an event."""
    return MsgspecJSON(
        find_paths(
            conn,
            source=source,
            target=target,
            since=_utc(since),
            until=_utc(until),
            max_hops=max_hops,
            limit=limit,
        )
    )
