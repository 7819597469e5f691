"""Identities: all the tokens of one workload identity, their graph and blast radius."""

from __future__ import annotations

from fastapi import APIRouter

from tokentrail.api.deps import CatalogDep, ConnDep, ViewerDep
from tokentrail.api.encoding import MsgspecJSON, schema_of
from tokentrail.graph import IdentityReport, identity_report

router = APIRouter(prefix="/v1/identities", tags=["identities"])


# `:path`: SPIFFE ids contain slashes (spiffe://prod/ns/payments/sa/payments-api).
@router.get("/{identity:path}", response_class=MsgspecJSON, responses=schema_of(IdentityReport))
def get_identity(identity: str, conn: ConnDep, catalog: CatalogDep, _: ViewerDep) -> MsgspecJSON:
    """One identity over all its tokens: combined graph and blast radius."""
    return MsgspecJSON(identity_report(conn, identity=identity, catalog=catalog))
