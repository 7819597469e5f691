"""Unexpected reach: a call reaches a target outside the identity's declared policy (or the
policy of the task or principal it acts for), or new to its baseline; weighted by what the
target is worth and whether it crosses environments."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

from tokentrail.detect.model import (
    NOVEL_TARGET,
    NOVEL_TASK_TARGET,
    Call,
    Detector,
    Example,
    Finding,
    Severity,
    call,
    grade,
    raise_by,
    short,
    worst,
)


class UnexpectedReach(Detector):
    id = "unexpected_reach"
    title = "Unexpected reach"
    severity: ClassVar[Severity] = "medium"
    mitre = ("T1021.007", "T1550.001")
    owasp_nhi = ("NHI5", "NHI8")
    runbook = (
        "Check whether the identity's task needs the targets listed; if not, revoke its tokens"
        " and review what the calls returned (bytes, resources)."
    )
    examples = (
        Example(
            "a declared service calls a crown jewel outside its policy",
            (call(target="payments-db", sensitivity=10.0, declared=True, allowed_target=False),),
            fires=True,
        ),
        Example(
            "a gateway acts for an agent task outside the agent's policy",
            (call(target="hr-api", actor="agent-a", actor_allowed_target=False, task_id="t1"),),
            fires=True,
        ),
        Example(
            "an undeclared identity reaches a new sensitive target after warm-up",
            (call(target="hr-db", sensitivity=10.0, novel=("target",)),),
            fires=True,
        ),
        Example(
            "a staging token reaches prod",
            (call(target="orders-db", home_env="staging", target_env="prod", novel=("target",)),),
            fires=True,
        ),
        Example(
            "a target within the declared policy",
            (call(target="ledger-api", declared=True, allowed_target=True),),
            fires=False,
        ),
        Example(
            "a new target during warm-up",
            (call(target="hr-db", novel=("target",), identity_events=5),),
            fires=False,
        ),
    )

    def detect(self, calls: Sequence[Call]) -> Iterator[Finding]:
        for c in calls:
            found = self._basis(c)
            if found is None:
                continue
            basis, why, floor = found
            score = self.score(c)
            severity = worst(floor, grade(score))
            if c.crossing and c.target_env == "prod":
                severity = worst(severity, "high")
            if not c.success:
                severity = raise_by(severity, -1) if basis != "policy" else severity
            if basis == "declared":
                severity = "low"  # a declared dependency used for the first time: a change
            yield self.finding(
                f"{c.identity}|{basis}",
                [c],
                severity=severity,
                score=score,
                title=f"{short(c.identity)} reached {{targets}} {why}",
                reach=((c.target, score),) if score else (),
                evidence={
                    "basis": basis,
                    "target": c.target,
                    "sensitivity": c.sensitivity,
                    "privilege": c.privilege,
                    "home_environment": c.home_env,
                    "target_environment": c.target_env,
                    "acting_for": c.actor if basis == "acting_for" else None,
                    "task_id": c.task_id,
                    "baseline": "declared policy" if c.declared else "targets seen before",
                },
            )

    def _basis(self, c: Call) -> tuple[str, str, Severity] | None:
        if c.allowed_target is False:
            return "policy", "outside its declared policy", "medium"
        if c.actor_allowed_target is False and c.allowed_target is None:
            return "acting_for", f"acting for {short(c.actor)}, outside that policy", "high"
        if not self.warmed(c):
            return None
        if c.allowed_target is None and (NOVEL_TARGET in c.novel or NOVEL_TASK_TARGET in c.novel):
            if c.crossing:
                return "environment", f"in another environment ({c.target_env})", "medium"
            return "baseline", "new to its baseline", "low"
        if c.allowed_target and NOVEL_TARGET in c.novel and c.success:
            return "declared", "for the first time (declared in its policy)", "low"
        return None
