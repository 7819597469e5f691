"""CEF lines: header and extension escaping, and every field parses back."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import parse_cef
from typer.testing import CliRunner

from tokentrail.cli import app
from tokentrail.sinks.cef import cef_line, escape_extension, escape_header
from tokentrail.sinks.ocsf import example_alert
from tokentrail.store.alerts import AlertRow


@pytest.mark.parametrize(
    ("raw", "header", "extension"),
    [
        ("plain", "plain", "plain"),
        ("a|b", "a\\|b", "a|b"),
        ("a=b", "a=b", "a\\=b"),
        ("c:\\dir", "c:\\\\dir", "c:\\\\dir"),
        ("two\nlines\r", "two lines ", "two\\nlines\\r"),
        ("\\|=", "\\\\\\|=", "\\\\|\\="),
    ],
)
def test_escaping(raw: str, header: str, extension: str) -> None:
    assert escape_header(raw) == header
    assert escape_extension(raw) == extension


def test_a_hostile_alert_parses_back() -> None:
    alert = example_alert(
        title="pivot | to db\\x = y\nnext",
        identity="spiffe://a=b/c|d",
        runbook="revoke; key=value \\ done\r\n",
        evidence={"source_ip": "10.0.0.7"},
    )
    header, ext = parse_cef(cef_line(alert, version_us=1_772_443_000_000_000))
    assert header == ["CEF:0", "tokentrail", "tokentrail", "0.1.0", "credential_pivot",
                      "pivot | to db\\x = y next", "10"]  # fmt: skip
    assert ext == {
        "externalId": "al-1",
        "cat": "credential_pivot",
        "rt": "1772443000000",
        "start": "1772442000000",
        "end": "1772442060000",
        "cnt": "2",
        "suser": "spiffe://a=b/c|d",
        "dhost": "payments-db",
        "src": "10.0.0.7",
        "cs1Label": "tokenId",
        "cs1": "tok-child",
        "cs2Label": "targets",
        "cs2": "payments-db",
        "cs3Label": "mitreAttack",
        "cs3": "TA0008,T1528,T1552,T1550.001",
        "cs4Label": "owaspNhi",
        "cs4": "NHI5",
        "cs5Label": "status",
        "cs5": "open",
        "cs6Label": "eventIds",
        "cs6": "ev-1,ev-2",
        "cfp1Label": "score",
        "cfp1": "42.5",
        "msg": "revoke; key=value \\ done\r\n",
    }


def test_missing_values_leave_out_their_label() -> None:
    _, ext = parse_cef(cef_line(example_alert(token_id=None, identity=None)))
    assert "cs1" not in ext and "cs1Label" not in ext and "suser" not in ext


def test_every_simulated_alert_parses_back(simulated_alerts: list[AlertRow]) -> None:
    for alert in simulated_alerts:
        header, ext = parse_cef(cef_line(alert))
        assert (header[4], header[5]) == (alert.detector, alert.title.replace("\n", " "))
        assert (ext["externalId"], ext.get("suser"), ext.get("cs1")) == (
            alert.alert_id, alert.identity, alert.token_id,
        )  # fmt: skip


def test_alerts_format_cef(simulated_db: Path, simulated_alerts: list[AlertRow]) -> None:
    done = CliRunner().invoke(app, ["alerts", "--db", str(simulated_db), "--format", "cef"])
    assert done.exit_code == 0, done.output
    ids = [parse_cef(line)[1]["externalId"] for line in done.stdout.splitlines()]
    assert sorted(ids) == sorted(a.alert_id for a in simulated_alerts if a.status != "suppressed")
