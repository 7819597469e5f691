"""Token replay / new source: a token already in use shows up from another address or workload."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

from tokentrail.detect.model import (
    NOVEL_TOKEN_IDENTITY,
    NOVEL_TOKEN_IP,
    NOVEL_TOKEN_SOURCE,
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


class TokenReplay(Detector):
    id = "token_replay"
    title = "Token used from a new source"
    severity: ClassVar[Severity] = "high"
    mitre = ("T1550.001", "T1078.004")
    owasp_nhi = ("NHI2",)
    per_token = True
    runbook = (
        "Revoke the token now; find where it leaked (logs, images, CI output) from its first"
        " source, and review what the new source reached."
    )
    examples = (
        Example(
            "a token in use from 10.0.0.1 is replayed from an outside address",
            (call(source_ip="198.51.100.23", novel=("token_ip",)),),
            fires=True,
        ),
        Example("the token's usual address", (call(),), fires=False),
        Example(
            "another identity's use is the shared-token detector's business",
            (call(novel=("token_identity", "token_ip")),),
            fires=False,
        ),
    )

    def detect(self, calls: Sequence[Call]) -> Iterator[Finding]:
        for c in calls:
            if NOVEL_TOKEN_IDENTITY in c.novel:
                continue
            if NOVEL_TOKEN_IP not in c.novel and NOVEL_TOKEN_SOURCE not in c.novel:
                continue
            score = self.score(c)
            where = c.source_ip if NOVEL_TOKEN_IP in c.novel else c.source
            yield self.finding(
                f"{c.token_id}|{where}",
                [c],
                severity=worst(self.severity, grade(score)),
                score=score,
                title=f"Token of {short(c.identity)} used from a new source {where};"
                " reached {targets}",
                reach=((c.target, score),) if score else (),
                evidence={
                    "new_source_ip": c.source_ip,
                    "new_source": c.source,
                    "user_agent": c.user_agent,
                    "previous_use_us": c.token_prev_us,
                    "baseline": "addresses and workloads this token was used from",
                },
            )
