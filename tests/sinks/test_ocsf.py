"""The OCSF Detection Finding mapping: every finding validates against the OCSF schema."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ocsf_errors
from typer.testing import CliRunner

from tokentrail.cli import app
from tokentrail.sinks.ocsf import Activity, attack, detection_finding, example_alert
from tokentrail.store.alerts import AlertRow


def test_every_simulated_alert_maps_to_a_valid_finding(simulated_alerts: list[AlertRow]) -> None:
    detectors = {a.detector for a in simulated_alerts}
    assert {"credential_pivot", "scope_drift", "unexpected_reach", "anomaly"} <= detectors
    for alert in simulated_alerts:
        for activity in Activity:
            finding = detection_finding(alert, version_us=1, activity=activity)
            assert ocsf_errors(finding) == [], alert.detector


def test_validation_catches_what_is_wrong() -> None:
    finding = detection_finding(example_alert())
    del finding["finding_info"]["uid"]
    finding["severity_id"] = 7
    finding["finding_info"]["attack_graph"]["nodes"] = "ev-1"
    errors = ocsf_errors(finding)
    assert any("'uid' is a required property" in e for e in errors)
    assert any(e.startswith("severity_id:") for e in errors)
    assert any("attack_graph/nodes" in e for e in errors)


def test_the_required_attributes_and_mappings() -> None:
    finding = detection_finding(example_alert(), version_us=1_772_442_999_000_000)
    assert {k: finding[k] for k in ("category_uid", "class_uid", "activity_id", "type_uid")} == {
        "category_uid": 2, "class_uid": 2004, "activity_id": 1, "type_uid": 200401,
    }  # fmt: skip
    assert finding["time"] == 1_772_442_060_000 and finding["severity_id"] == 5
    assert finding["metadata"]["product"]["name"] == "tokentrail"
    assert finding["metadata"]["uid"] == "al-1:1772442999000000"
    info = finding["finding_info"]
    assert (info["uid"], info["analytic"]["uid"]) == ("al-1", "credential_pivot")
    assert info["related_events"] == [{"uid": "ev-1"}, {"uid": "ev-2"}]
    assert info["attacks"][0] == {"tactic": {"uid": "TA0008", "name": "Lateral Movement"}}
    assert {"name": "evidences.actor.user.credential_uid", "type_id": 19,
            "value": "tok-child"} in finding["observables"]  # fmt: skip
    assert finding["anomaly_analyses"][0]["baselines"][0]["observation_parameter"] == (
        "targets of the identity (seen before)"
    )


def test_the_evidence_path_is_the_attack_graph() -> None:
    graph = detection_finding(example_alert())["finding_info"]["attack_graph"]
    edges = [(e["source"], e["relation"], e["target"]) for e in graph["edges"]]
    assert edges == [
        ("identity:spiffe://prod/sa/agent", "holds", "token:tok-root"),
        ("token:tok-root", "derived", "token:tok-child"),
        ("token:tok-root", "calls", "service:secrets-manager"),
        ("token:tok-child", "calls", "service:payments-db"),
    ]
    assert graph["edges"][2]["data"]["event_id"] == "ev-1"
    plain = detection_finding(example_alert(evidence={}, targets=["a", "b"]))
    assert [e["target"] for e in plain["finding_info"]["attack_graph"]["edges"]] == [
        "token:tok-child", "service:a", "service:b",
    ]  # fmt: skip
    assert "anomaly_analyses" not in plain


def test_attack_ids() -> None:
    assert attack("T1550.001") == {
        "technique": {"uid": "T1550", "name": "Use Alternate Authentication Material"},
        "sub_technique": {"uid": "T1550.001", "name": "Application Access Token"},
    }
    assert attack("T9999") == {"technique": {"uid": "T9999"}}


def test_closed_alert_is_a_close_activity() -> None:
    finding = detection_finding(example_alert(status="closed"))
    assert (finding["activity_id"], finding["status_id"], finding["is_alert"]) == (3, 4, False)


def test_alerts_format_ocsf_prints_valid_findings(simulated_db: Path) -> None:
    done = CliRunner().invoke(app, ["alerts", "--db", str(simulated_db), "--format", "ocsf"])
    assert done.exit_code == 0, done.output
    findings = [json.loads(line) for line in done.stdout.splitlines()]
    assert findings and all(ocsf_errors(f) == [] for f in findings)
