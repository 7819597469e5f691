"""Lineage from a real CloudTrail capture (tests/fixtures/cloudtrail, see NOTICE.md): a key
assumes a role, and the session it got leaves the AWS organization."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokentrail.cli import app
from tokentrail.graph.lineage import token_lineage
from tokentrail.graph.paths import service_exposure
from tokentrail.ingest import formats
from tokentrail.store import Store

CAPTURE = (
    Path(__file__).parents[1]
    / "fixtures"
    / "cloudtrail"
    / ("aws.defense-evasion.organizations-leave.json")
)
KEY = "AKIADVISM0T50G52IF0D"  # the caller's long-lived key
SESSION = "ASIA36EV31F1RB3OA8IG"  # the role session AssumeRole issued to it

pytestmark = pytest.mark.skipif(
    "cloudtrail" not in formats.FORMATS, reason="no `cloudtrail` input format in tokentrail.ingest"
)


def test_an_assumed_role_session_descends_from_the_key_that_assumed_it(tmp_path: Path) -> None:
    db = tmp_path / "ct.duckdb"
    result = CliRunner().invoke(
        app, ["ingest", str(CAPTURE), "--format", "cloudtrail", "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    with Store.open(db) as store:
        lineage = token_lineage(store.conn, token_id=SESSION)
        assert lineage.ancestors == [KEY]
        [session] = [t for t in lineage.tokens if t.token_id == SESSION]
        assert (session.via, session.relation) == ("sts:AssumeRole", "self")
        family = token_lineage(store.conn, token_id=KEY)
        # Two sessions were issued; one was never used (no registry entry, still family).
        assert sorted(family.descendants) == sorted([SESSION, "ASIAMOWPWQJ1QHWCWJXJ"])
        exposure = service_exposure(store.conn, service="organizations.amazonaws.com")
    # The session's LeaveOrganization was refused: an attempt, not reach.
    assert [(t.token_id, t.reached, t.privilege) for t in exposure.tokens] == [
        (SESSION, False, "admin")
    ]
