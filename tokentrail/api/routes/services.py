"""Services: who reached a service (its exposure)."""

from __future__ import annotations

from fastapi import APIRouter

from tokentrail.api.deps import CatalogDep, ConnDep, ViewerDep
from tokentrail.api.encoding import MsgspecJSON, schema_of
from tokentrail.graph import Exposure, service_exposure

router = APIRouter(prefix="/v1/services", tags=["services"])


@router.get("/{name}/exposure", response_class=MsgspecJSON, responses=schema_of(Exposure))
def get_exposure(name: str, conn: ConnDep, catalog: CatalogDep, _: ViewerDep) -> MsgspecJSON:
    """Every token and identity that reached the service, directly or transitively."""
    return MsgspecJSON(service_exposure(conn, service=name, catalog=catalog))
