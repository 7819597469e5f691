"""Call chains by trace id."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, HTTPException, Request, status

from tokentrail.api.deps import StateDep, ViewerDep
from tokentrail.api.encoding import JSON, schema_of
from tokentrail.api.reads import Entry
from tokentrail.graph import Chain
from tokentrail.graph.chains import read_chain

router = APIRouter(prefix="/v1/chains", tags=["chains"])


@router.get("/{trace_id}", response_class=JSON, responses=schema_of(Chain))
async def get_chain(trace_id: str, request: Request, state: StateDep, _: ViewerDep) -> JSON:
    """The chain of a trace: hops, service paths, token switches, orphans, duplicates, cycles."""

    def fill() -> Entry:
        with state.cursor() as conn:
            # The trace's events are kept apart too (tokentrail.api.cache): a chain whose
            # tokens changed is read again without reading its events again.
            hops = state.hops.hops(conn, trace_id=trace_id)
            read = read_chain(conn, trace_id=trace_id, hops=hops)
        if not read.chain.spans:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no trace {trace_id!r}")
        body = msgspec.json.encode(read.chain)
        return Entry(body, traces=frozenset({trace_id}), tokens=read.tokens)

    return await state.kept(request, ("chain", trace_id), fill)
