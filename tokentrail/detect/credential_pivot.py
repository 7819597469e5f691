"""Credential pivot (lateral movement): a token derived after a credential-access step (secret
read, role assumption, key creation, token exchange) reaches targets outside the baseline or the
policy of the identity; the alert carries the whole path."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

from tokentrail.detect.model import (
    NOVEL_TARGET,
    Call,
    Detector,
    Example,
    Finding,
    Severity,
    Step,
    call,
    short,
)

_ROLE = Step("call", 1, "svid-1", "ev-assume", 0, "newsletter", "sts:AssumeRole", "sts", None)
_PARENT = Step("token", 1, "svid-1", None, None, None, None, None, None)


class CredentialPivot(Detector):
    id = "credential_pivot"
    title = "Credential pivot"
    severity: ClassVar[Severity] = "critical"
    mitre = ("TA0008", "T1528", "T1552", "T1550.001")
    owasp_nhi = ("NHI5", "NHI7")
    runbook = (
        "Revoke the derived credentials and the one they came from; follow the path in the"
        " evidence from the first credential access to every target reached."
    )
    examples = (
        Example(
            "an assumed-role session reads a crown jewel new to the identity",
            (
                call(
                    token_id="ASIA1",
                    target="payments-db",
                    sensitivity=10.0,
                    token_parent="svid-1",
                    novel=("target",),
                    path=(_PARENT, _ROLE),
                ),
            ),
            fires=True,
        ),
        Example(
            "an exchanged agent token on its usual tool",
            (
                call(
                    token_id="xt-1", token_parent="tt-1", path=(_PARENT._replace(token_id="tt-1"),)
                ),
            ),
            fires=False,
        ),
    )

    def detect(self, calls: Sequence[Call]) -> Iterator[Finding]:
        for c in calls:
            if not c.path:
                continue
            outside = c.allowed_target is False or (
                c.allowed_target is None and NOVEL_TARGET in c.novel and self.warmed(c)
            )
            if not outside:
                continue
            ancestors = [s for s in c.path if s.kind == "token"]
            steps = [s for s in c.path if s.kind == "call"]
            root = max(ancestors, key=lambda s: s.depth).token_id if ancestors else c.token_id
            score = self.score(c)
            severity: Severity = "critical" if c.success and c.sensitivity >= 7 else "high"
            path: list[dict[str, object]] = [
                {"token_id": s.token_id, "depth": s.depth}
                if s.kind == "token"
                else {
                    "event_id": s.event_id,
                    "token_id": s.token_id,
                    "operation": s.operation,
                    "target": s.target,
                    "resource": s.resource,
                }
                for s in c.path
            ]
            path.append({"event_id": c.event_id, "token_id": c.token_id, "target": c.target,
                         "operation": c.operation})  # fmt: skip
            yield self.finding(
                f"{c.identity}|{root}",
                [c],
                severity=severity,
                score=score,
                title=f"{short(c.identity)} pivoted through derived credentials to {{targets}}",
                reach=((c.target, score),) if score else (),
                evidence={
                    "path": path,
                    "root_token": root,
                    "credential_steps": [s.event_id for s in steps],
                    "baseline": "targets of the identity"
                    + (" (declared policy)" if c.declared else " (seen before)"),
                },
            )
