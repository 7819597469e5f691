"""Scope drift: a token exercises a scope beyond its grant, beyond the grant of the token it was
derived from, beyond the identity's declared scopes, or a privilege class new to the identity."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

from tokentrail.detect.model import (
    NOVEL_PRIVILEGE,
    NOVEL_SCOPE,
    Call,
    Detector,
    Example,
    Finding,
    Severity,
    call,
    grade,
    short,
    worst,
)


class ScopeDrift(Detector):
    id = "scope_drift"
    title = "Scope drift"
    severity: ClassVar[Severity] = "medium"
    mitre = ("T1078.004", "T1548.005")
    owasp_nhi = ("NHI5",)
    runbook = (
        "Compare the scopes used with the token's grant and the identity's task; revoke the"
        " token and tighten the exchange or issuing policy that granted more."
    )
    examples = (
        Example(
            "exchanged token uses a scope its parent never had",
            (call(scope="crm:export", token_parent="tt-1", parent_scopes=("crm:read",)),),
            fires=True,
        ),
        Example(
            "a scope outside the declared policy fires during warm-up too",
            (call(scope="ledger:admin", allowed_scope=False, identity_events=0),),
            fires=True,
        ),
        Example(
            "first write of a warmed-up, undeclared identity",
            (call(scope="ledger:write", privilege="write", novel=("privilege", "scope")),),
            fires=True,
        ),
        Example(
            "a declared scope used for the first time",
            (call(scope="ledger:write", privilege="write", novel=("scope",), allowed_scope=True),),
            fires=False,
        ),
        Example(
            "a new read scope of an identity still warming up",
            (call(novel=("scope", "privilege"), identity_events=3),),
            fires=False,
        ),
    )

    def detect(self, calls: Sequence[Call]) -> Iterator[Finding]:
        for c in calls:
            if not c.scope:
                continue
            basis, why, floor = self._basis(c)
            if basis is None:
                continue
            score = self.score(c)
            yield self.finding(
                f"{c.identity}|{basis}",
                [c],
                severity=worst(floor, grade(score)),
                score=score,
                title=f"{short(c.identity)} used scopes {{scopes}} {why}",
                reach=((c.target, score),) if score else (),
                evidence={
                    "basis": basis,
                    "scope": c.scope,
                    "privilege": c.privilege,
                    "token_scopes": list(c.token_scopes or ()),
                    "parent_token": c.token_parent,
                    "parent_scopes": list(c.parent_scopes or ()),
                    "scopes": [c.scope],
                },
            )

    def _basis(self, c: Call) -> tuple[str | None, str, Severity]:
        boost: Severity = "high" if c.privilege == "admin" else "medium"
        if c.parent_scopes is not None and c.scope not in c.parent_scopes:
            return "derived", "beyond the grant of the token it was derived from", boost
        if c.token_scopes is not None and c.scope not in c.token_scopes:
            return "grant", "outside the token's grant", boost
        if c.allowed_scope is False:
            return "policy", "outside its declared policy", boost
        if c.allowed_scope is None and self.warmed(c):
            if NOVEL_PRIVILEGE in c.novel and c.privilege != "read":
                return "baseline", f"with a privilege class new to it ({c.privilege})", "medium"
            if NOVEL_SCOPE in c.novel and c.privilege != "read":
                return "baseline", "new to its baseline", "low"
        return None, "", "info"
