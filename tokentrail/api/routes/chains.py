"""Call chains by trace id."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from tokentrail.api.deps import ConnDep, StateDep, ViewerDep
from tokentrail.api.encoding import MsgspecJSON, schema_of
from tokentrail.graph import Chain, load_chain

router = APIRouter(prefix="/v1/chains", tags=["chains"])


@router.get("/{trace_id}", response_class=MsgspecJSON, responses=schema_of(Chain))
def get_chain(trace_id: str, conn: ConnDep, state: StateDep, _: ViewerDep) -> MsgspecJSON:
    """The chain of a trace: hops, service paths, token switches, orphans, duplicates, cycles."""
    # The trace's events are kept between reads while its row in `traces` stays the same
    # (tokentrail.api.cache); token switches are judged afresh.
    chain = load_chain(conn, trace_id=trace_id, hops=state.hops.hops(conn, trace_id=trace_id))
    if not chain.spans:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no trace {trace_id!r}")
    return MsgspecJSON(chain)
