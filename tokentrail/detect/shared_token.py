"""Shared token: one token used by several identities or in several environments."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

from tokentrail.detect.model import (
    NOVEL_TOKEN_ENV,
    NOVEL_TOKEN_IDENTITY,
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


class SharedToken(Detector):
    id = "shared_token"
    title = "Token shared across identities or environments"
    severity: ClassVar[Severity] = "high"
    mitre = ("T1078.004", "T1552.001")
    owasp_nhi = ("NHI9", "NHI8")
    per_token = True
    runbook = (
        "Issue each workload its own credential, then revoke the shared one; find where it is"
        " pasted (config, secrets, images)."
    )
    examples = (
        Example("a second identity uses the token", (call(novel=("token_identity",)),), True),
        Example("the token appears in another environment", (call(novel=("token_env",)),), True),
        Example("its own identity again", (call(),), False),
    )

    def detect(self, calls: Sequence[Call]) -> Iterator[Finding]:
        for c in calls:
            if NOVEL_TOKEN_IDENTITY not in c.novel and NOVEL_TOKEN_ENV not in c.novel:
                continue
            score = self.score(c)
            yield self.finding(
                c.token_id,
                [c],
                severity=worst(self.severity, grade(score)),
                score=score,
                title=f"One token used by several identities or environments, now by"
                f" {short(c.identity)}; reached {{targets}}",
                reach=((c.target, score),) if score else (),
                evidence={
                    "identities": [c.identity],
                    "environments": [c.environment] if c.environment else [],
                    "token_kind": c.token_kind,
                    "baseline": "the identity and environment of the token's first use",
                },
            )
