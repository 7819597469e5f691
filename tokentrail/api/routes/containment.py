"""What to revoke and rotate for an alert (`tokentrail contain`, over HTTP): while `serve` holds
the database no other process can open it, so a responder on a live system asks the API."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from tokentrail.api.deps import ConnDep, ViewerDep
from tokentrail.api.encoding import MsgspecJSON, schema_of
from tokentrail.investigate import Containment, UnknownAlertError, containment

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


@router.get("/{alert_id}/containment", response_class=MsgspecJSON, responses=schema_of(Containment))
def get_containment(alert_id: str, conn: ConnDep, _: ViewerDep) -> MsgspecJSON:
    """Tokens to revoke (the alerted one and its lineage), identities to rotate, credentials
    the family read or minted; each with its reason."""
    try:
        return MsgspecJSON(containment(conn, alert_id=alert_id))
    except UnknownAlertError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id!r}") from None
