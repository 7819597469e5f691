"""An alert as an OCSF Detection Finding (category 2, class 2004): the canonical JSON of every sink.

Targets OCSF 1.6.0, the first version with `finding_info.attack_graph`. The evidence path goes in
`finding_info.attack_graph` (identity -> tokens -> services), the baseline the alert broke in
`anomaly_analyses`, the evidence events in `finding_info.related_events`, and the identity, token
and targets as `observables`. Whatever has no OCSF attribute stays under `unmapped.tokentrail`.

>>> finding = detection_finding(example_alert())
>>> finding["class_uid"], finding["type_uid"], finding["finding_info"]["uid"]
(2004, 200401, 'al-1')
"""

from __future__ import annotations

import itertools
from enum import IntEnum
from typing import Any, Final

from tokentrail import __version__
from tokentrail.store.alerts import AlertRow

OCSF_VERSION: Final = "1.6.0"
CLASS_UID: Final = 2004
CATEGORY_UID: Final = 2


class Activity(IntEnum):
    """The finding activity: a new alert, a later version of it, or its closing."""

    create = 1
    update = 2
    close = 3


SEVERITY_ID: Final = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
_SEVERITY_NAME: Final = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}
# open -> New, acknowledged -> In Progress, suppressed -> Suppressed, closed -> Resolved.
STATUS_ID: Final = {"open": 1, "acknowledged": 2, "suppressed": 3, "closed": 4}
_STATUS_NAME: Final = {1: "New", 2: "In Progress", 3: "Suppressed", 4: "Resolved"}

# analytic.type_id: 1 Rule, 2 Behavioral (a learned per-identity baseline), 4 Learning (ML).
_ANALYTIC_TYPE: Final = {
    "anomaly": (4, "Learning (ML/DL)"),
    "scope_drift": (2, "Behavioral"),
    "unexpected_reach": (2, "Behavioral"),
    "credential_pivot": (2, "Behavioral"),
    "token_replay": (2, "Behavioral"),
}

# The ATT&CK ids the detectors declare, with their names (enterprise matrix v16).
ATTACK_NAMES: Final = {
    "TA0008": "Lateral Movement",
    "T1021": "Remote Services",
    "T1021.007": "Cloud Services",
    "T1078": "Valid Accounts",
    "T1078.004": "Cloud Accounts",
    "T1195": "Supply Chain Compromise",
    "T1195.002": "Compromise Software Supply Chain",
    "T1528": "Steal Application Access Token",
    "T1548": "Abuse Elevation Control Mechanism",
    "T1548.005": "Temporary Elevated Cloud Access",
    "T1550": "Use Alternate Authentication Material",
    "T1550.001": "Application Access Token",
    "T1552": "Unsecured Credentials",
    "T1552.001": "Credentials In Files",
}

# Observable type ids of OCSF 1.6: what a SIEM pivots on.
_OBS_IP: Final = 2
_OBS_RESOURCE_UID: Final = 10
_OBS_CREDENTIAL_ID: Final = 19
_OBS_USER_UID: Final = 31


def detection_finding(
    alert: AlertRow, *, version_us: int | None = None, activity: Activity | None = None
) -> dict[str, Any]:
    """The alert as an OCSF Detection Finding.

    `version_us` (the alert's `updated_at`) makes `metadata.uid` unique per alert version and
    sets `finding_info.modified_time`; `activity` defaults to Close for a closed alert, else
    Create. Times are event times, so the same alert always maps to the same finding.
    """
    if activity is None:
        activity = Activity.close if alert.status == "closed" else Activity.create
    severity_id = SEVERITY_ID.get(alert.severity, 99)
    status_id = STATUS_ID.get(alert.status, 99)
    first_ms, last_ms = alert.first_seen_us // 1000, alert.last_seen_us // 1000
    evidence = {k: v for k, v in alert.evidence.items() if k != "title_template"}
    type_id, type_name = _ANALYTIC_TYPE.get(alert.detector, (1, "Rule"))
    finding_info: dict[str, Any] = {
        "uid": alert.alert_id,
        "title": alert.title,
        "desc": alert.runbook,
        "analytic": {
            "uid": alert.detector,
            "name": alert.detector,
            "type_id": type_id,
            "type": type_name,
        },
        "types": [alert.detector, *alert.owasp_nhi],
        "first_seen_time": first_ms,
        "last_seen_time": last_ms,
        "related_events": [{"uid": e} for e in alert.event_ids],
        "related_events_count": alert.occurrences,
        "attack_graph": attack_graph(alert),
    }
    if alert.mitre:
        finding_info["attacks"] = [attack(m) for m in alert.mitre]
    if version_us is not None:
        finding_info["modified_time"] = version_us // 1000
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {
            "name": "tokentrail",
            "vendor_name": "tokentrail",
            "version": __version__,
        },
        "uid": alert.alert_id if version_us is None else f"{alert.alert_id}:{version_us}",
        "correlation_uid": alert.alert_id,
        "event_code": alert.detector,
    }
    finding: dict[str, Any] = {
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "activity_id": int(activity),
        "activity_name": activity.name.capitalize(),
        "type_uid": CLASS_UID * 100 + int(activity),
        "type_name": f"Detection Finding: {activity.name.capitalize()}",
        "time": last_ms,
        "start_time": first_ms,
        "end_time": last_ms,
        "severity_id": severity_id,
        "severity": _SEVERITY_NAME.get(severity_id, alert.severity),
        "status_id": status_id,
        "status": _STATUS_NAME.get(status_id, alert.status),
        "is_alert": activity is not Activity.close,
        "count": alert.occurrences,
        "message": alert.title,
        "metadata": metadata,
        "finding_info": finding_info,
        "risk_score": round(alert.score),
        "evidences": [_evidence(alert, evidence)],
        "observables": observables(alert, evidence),
        "remediation": {"desc": alert.runbook},
        "unmapped": {
            "tokentrail": {
                "dedupe_key": alert.dedupe_key,
                "score": alert.score,
                "owasp_nhi": alert.owasp_nhi,
                "suppressed_by": alert.suppressed_by,
                "evidence": evidence,
            }
        },
    }
    if alert.targets:
        finding["resources"] = [{"uid": t, "name": t, "type": "service"} for t in alert.targets]
    analyses = anomaly_analyses(alert, evidence)
    if analyses:
        finding["anomaly_analyses"] = analyses
    return finding


def attack(mitre_id: str) -> dict[str, Any]:
    """An ATT&CK id as an OCSF `attack`: a tactic (TA…), technique, or sub-technique (T….nnn)
    with its parent technique."""
    name = ATTACK_NAMES.get(mitre_id)
    named = {"uid": mitre_id, **({"name": name} if name else {})}
    if mitre_id.startswith("TA"):
        return {"tactic": named}
    if "." in mitre_id:
        parent = mitre_id.split(".", 1)[0]
        parent_name = ATTACK_NAMES.get(parent)
        return {
            "technique": {"uid": parent, **({"name": parent_name} if parent_name else {})},
            "sub_technique": named,
        }
    return {"technique": named}


def attack_graph(alert: AlertRow) -> dict[str, Any]:
    """The evidence path as a directed graph: identity -holds-> token -derived-> token
    -calls-> service. A pivot alert's path (credential steps through derived tokens) is drawn
    step by step; any other alert links its token to the targets it reached."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, Any]] = []

    def node(kind: str, name: str) -> str:
        uid = f"{kind}:{name}"
        nodes.setdefault(uid, {"uid": uid, "name": name, "type": kind})
        return uid

    def edge(source: str, target: str, relation: str, **data: Any) -> None:
        found = {k: v for k, v in data.items() if v is not None}
        item: dict[str, Any] = {
            "uid": f"e{len(edges) + 1}",
            "source": source,
            "target": target,
            "relation": relation,
            "is_directed": True,
        }
        if found:
            item["data"] = found
        edges.append(item)

    holder = node("identity", alert.identity) if alert.identity else None
    path = alert.evidence.get("path")
    if isinstance(path, list) and path:
        ancestors = sorted(
            (s for s in path if isinstance(s, dict) and "depth" in s),
            key=lambda s: -int(s["depth"]),
        )
        chain = [str(s["token_id"]) for s in ancestors]
        if alert.token_id and alert.token_id not in chain:
            chain.append(alert.token_id)
        if holder and chain:
            edge(holder, node("token", chain[0]), "holds")
        for parent, child in itertools.pairwise(chain):
            edge(node("token", parent), node("token", child), "derived")
        for step in path:
            if isinstance(step, dict) and "target" in step and step.get("token_id"):
                edge(
                    node("token", str(step["token_id"])),
                    node("service", str(step["target"])),
                    "calls",
                    event_id=step.get("event_id"),
                    operation=step.get("operation"),
                    resource=step.get("resource"),
                )
    else:
        token = node("token", alert.token_id) if alert.token_id else None
        if holder and token:
            edge(holder, token, "holds")
        origin = token or holder
        for target in alert.targets:
            if origin:
                edge(origin, node("service", target), "calls")
            else:
                node("service", target)
    if not nodes:
        node("alert", alert.alert_id)
    return {
        "uid": f"{alert.alert_id}:path",
        "name": "evidence path",
        "type": "tokentrail call path",
        "is_directed": True,
        "nodes": list(nodes.values()),
        "edges": edges,
    }


def anomaly_analyses(alert: AlertRow, evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """The baseline the alert broke and what broke it (none for pure policy rules)."""
    subject = (
        {"name": alert.identity, "type": "identity"}
        if alert.identity
        else {"name": alert.token_id or alert.alert_id, "type": "token"}
    )
    drivers = evidence.get("drivers")
    if isinstance(drivers, list) and drivers:
        anomalies = [
            {
                "observation_parameter": str(d.get("feature", "")),
                "observation_type": "deviation",
                "observations": [{"value": str(d.get("value"))}],
                "observed_pattern": f"deviation {d.get('deviation')}",
            }
            for d in drivers
            if isinstance(d, dict)
        ]
        baselines = [
            {
                "observation_parameter": "anomaly_score",
                "observation_type": "threshold",
                "observations": [{"value": str(evidence.get("threshold"))}],
            }
        ]
        return [{"analysis_targets": [subject], "anomalies": anomalies, "baselines": baselines}]
    baseline = evidence.get("baseline")
    if not baseline:
        return []
    observed = [str(v) for v in _observed(alert, evidence)]
    return [
        {
            "analysis_targets": [subject],
            "anomalies": [
                {
                    "observation_parameter": str(evidence.get("basis") or alert.detector),
                    "observations": [{"value": v} for v in observed] or [{"value": alert.title}],
                }
            ],
            "baselines": [
                {
                    "observation_parameter": str(baseline),
                    "observation_type": "baseline",
                    "observations": [{"value": str(baseline)}],
                }
            ],
        }
    ]


def observables(alert: AlertRow, evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """The pivots: identity, token, targets and the source address, where known."""
    found: list[dict[str, Any]] = []
    if alert.identity:
        found.append(
            {"name": "evidences.actor.user.uid", "type_id": _OBS_USER_UID, "value": alert.identity}
        )
    if alert.token_id:
        found.append(
            {
                "name": "evidences.actor.user.credential_uid",
                "type_id": _OBS_CREDENTIAL_ID,
                "value": alert.token_id,
            }
        )
    found.extend(
        {"name": "resources.uid", "type_id": _OBS_RESOURCE_UID, "value": t} for t in alert.targets
    )
    ip = _source_ip(evidence)
    if ip:
        found.append({"name": "evidences.src_endpoint.ip", "type_id": _OBS_IP, "value": ip})
    return found


def _evidence(alert: AlertRow, evidence: dict[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = {"type_id": 4, "type": "Service"}
    if alert.identity:
        user["uid"] = alert.identity
        user["name"] = alert.identity
    if alert.token_id:
        user["credential_uid"] = alert.token_id
    item: dict[str, Any] = {
        "actor": {"user": user},
        "data": {"event_ids": alert.event_ids, "targets": alert.targets, **evidence},
    }
    if alert.token_id is None and alert.identity is None:
        item["actor"] = {"app_name": alert.detector}
    ip = _source_ip(evidence)
    if ip:
        item["src_endpoint"] = {"ip": ip}
    return item


def _observed(alert: AlertRow, evidence: dict[str, Any]) -> list[Any]:
    for key in ("scopes", "new_source_ip", "caller_class", "identities", "environments"):
        value = evidence.get(key)
        if isinstance(value, list) and value:
            return value
        if value and not isinstance(value, (dict, list)):
            return [value]
    return list(alert.targets)


def _source_ip(evidence: dict[str, Any]) -> str | None:
    for key in ("new_source_ip", "source_ip"):
        value = evidence.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def example_alert(**overrides: Any) -> AlertRow:
    """A credential-pivot alert with a two-step path, for examples and tests."""
    values: dict[str, Any] = {
        "alert_id": "al-1",
        "detector": "credential_pivot",
        "dedupe_key": "spiffe://prod/sa/agent|tok-root",
        "severity": "critical",
        "score": 42.5,
        "title": "agent pivoted through derived credentials to payments-db",
        "token_id": "tok-child",
        "identity": "spiffe://prod/sa/agent",
        "targets": ["payments-db"],
        "first_seen_us": 1_772_442_000_000_000,
        "last_seen_us": 1_772_442_060_000_000,
        "first_event_id": "ev-1",
        "occurrences": 2,
        "event_ids": ["ev-1", "ev-2"],
        "evidence": {
            "path": [
                {"token_id": "tok-root", "depth": 1},
                {
                    "event_id": "ev-1",
                    "token_id": "tok-root",
                    "operation": "secretsmanager:GetSecretValue",
                    "target": "secrets-manager",
                    "resource": "prod/db",
                },
                {
                    "event_id": "ev-2",
                    "token_id": "tok-child",
                    "target": "payments-db",
                    "operation": "SELECT",
                },
            ],
            "root_token": "tok-root",
            "credential_steps": ["ev-1"],
            "baseline": "targets of the identity (seen before)",
        },
        "mitre": ["TA0008", "T1528", "T1552", "T1550.001"],
        "owasp_nhi": ["NHI5"],
        "runbook": "Revoke the derived token and its parent; review the secret read.",
        "status": "open",
        "suppressed_by": None,
    }
    values.update(overrides)
    return AlertRow(**values)
