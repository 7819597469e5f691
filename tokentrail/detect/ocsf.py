"""A minimal OCSF Detection Finding (class 2004) per alert, until the canonical sink (#8).

Evidence events go in `evidences`, the path (pivot alerts) in `finding_info.attack_graph`-like
`related_events`, the baseline in `anomaly_analyses`. Enough for a SIEM to ingest and pivot on.
"""

from __future__ import annotations

from typing import Any, Final

from tokentrail import __version__
from tokentrail.store.alerts import AlertRow

_SEVERITY_ID: Final = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
_STATUS_ID: Final = {"open": 1, "acknowledged": 2, "suppressed": 3, "closed": 4}


def detection_finding(alert: AlertRow) -> dict[str, Any]:
    """The alert as an OCSF 1.x Detection Finding (category 2, class 2004, activity Create)."""
    ms = alert.first_seen_us // 1000
    evidence = alert.evidence
    return {
        "category_uid": 2,
        "class_uid": 2004,
        "activity_id": 1,
        "type_uid": 200401,
        "time": ms,
        "severity_id": _SEVERITY_ID.get(alert.severity, 0),
        "severity": alert.severity.capitalize(),
        "status_id": _STATUS_ID.get(alert.status, 99),
        "status": alert.status.capitalize(),
        "count": alert.occurrences,
        "message": alert.title,
        "metadata": {
            "version": "1.3.0",
            "product": {"name": "tokentrail", "vendor_name": "tokentrail", "version": __version__},
            "uid": alert.alert_id,
            "correlation_uid": f"{alert.detector}:{alert.dedupe_key}",
        },
        "finding_info": {
            "uid": alert.alert_id,
            "title": alert.title,
            "analytic": {"uid": alert.detector, "name": alert.detector, "type_id": 1},
            "first_seen_time": ms,
            "last_seen_time": alert.last_seen_us // 1000,
            "attacks": [{"technique": {"uid": t}} for t in alert.mitre],
            "related_events": [{"uid": e} for e in alert.event_ids],
            "types": list(alert.owasp_nhi),
        },
        "risk_score": alert.score,
        "evidences": [
            {
                "actor": {"user": {"name": alert.identity, "type": "Service"}},
                "data": {"token_id": alert.token_id, "targets": alert.targets},
            }
        ],
        "anomaly_analyses": (
            [
                {
                    "analysis_targets": [{"name": t} for t in alert.targets],
                    "observation_parameter": str(evidence.get("baseline", "")),
                }
            ]
            if evidence.get("baseline")
            else []
        ),
        "remediation": {"desc": alert.runbook},
        "unmapped": {"evidence": {k: v for k, v in evidence.items() if k != "title_template"}},
    }
