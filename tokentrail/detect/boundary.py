"""Boundary: a build (CI) credential on a runtime or agent path, or the other way round."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

from tokentrail.detect.model import (
    NOVEL_CALLER_CLASS,
    T0_US,
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


class Boundary(Detector):
    id = "boundary"
    title = "Build, runtime and agent paths crossed"
    severity: ClassVar[Severity] = "high"
    mitre = ("T1195.002", "T1078.004", "T1552.001")
    owasp_nhi = ("NHI8", "NHI3")
    runbook = (
        "Build tokens belong to the build path: revoke the job token, inspect the job's"
        " dependencies and logs, and check what the runtime targets returned."
    )
    examples = (
        Example(
            "a CI job token calls a prod API that only runtime callers use",
            (
                call(
                    identity="repo:acme/search:ref:refs/heads/main",
                    identity_kind="ci",
                    caller_class="build",
                    target="customers-api",
                    novel=("caller_class",),
                ),
            ),
            fires=True,
        ),
        Example(
            "a build identity declared for its target",
            (call(caller_class="build", novel=("caller_class",), allowed_target=True),),
            fires=False,
        ),
        Example(
            "a target still warming up",
            (call(caller_class="build", novel=("caller_class",), target_first_us=T0_US),),
            fires=False,
        ),
    )

    def detect(self, calls: Sequence[Call]) -> Iterator[Finding]:
        for c in calls:
            if NOVEL_CALLER_CLASS not in c.novel or c.allowed_target:
                continue
            if c.ts_us - c.target_first_us < self.warmup_us:
                continue
            score = self.score(c)
            yield self.finding(
                c.identity,
                [c],
                severity=worst(self.severity, grade(score)),
                score=score,
                title=f"{c.caller_class.capitalize()} identity {short(c.identity)} on another"
                " path: reached {targets}",
                reach=((c.target, score),) if score else (),
                evidence={
                    "caller_class": c.caller_class,
                    "target": c.target,
                    "baseline": f"callers of {c.target} so far: never a {c.caller_class} one",
                },
            )
