"""Lifetime: use after expiry, lifetimes above policy (or none at all), dormant tokens waking."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar

from tokentrail.detect.model import (
    T0_US,
    US_PER_DAY,
    US_PER_SECOND,
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


class Lifetime(Detector):
    id = "lifetime"
    title = "Token lifetime"
    severity: ClassVar[Severity] = "high"
    mitre = ("T1550.001", "T1078.004")
    owasp_nhi = ("NHI7", "NHI1")
    per_token = True
    runbook = (
        "Expired use: revoke at the resource, and fix the service that accepted it. Long or no"
        " expiry: rotate to short-lived credentials. Dormant: confirm the owner still needs it."
    )
    # Clock skew tolerated between issuer and resource.
    grace_seconds = 60.0
    max_ttl_days = 90.0
    dormant_days = 30.0

    examples = (
        Example(
            "a CI token used an hour after it expired",
            (call(token_expires_us=T0_US - 3600 * US_PER_SECOND),),
            fires=True,
        ),
        Example(
            "a static key with no expiry, on its first use",
            (call(token_first=True, token_kind="static-service-key"),),
            fires=True,
        ),
        Example(
            "a token waking up after 60 days",
            (call(token_prev_us=T0_US - 60 * US_PER_DAY),),
            fires=True,
        ),
        Example(
            "a one-hour token within its life",
            (
                call(
                    token_first=True,
                    token_kind="jwt-svid",
                    token_issued_us=T0_US - 600 * US_PER_SECOND,
                    token_expires_us=T0_US + 3000 * US_PER_SECOND,
                ),
            ),
            fires=False,
        ),
    )

    def detect(self, calls: Sequence[Call]) -> Iterator[Finding]:
        grace = int(self.grace_seconds * US_PER_SECOND)
        for c in calls:
            if c.token_expires_us is not None and c.ts_us > c.token_expires_us + grace:
                yield self._expired(c)
            if c.token_first and (c.token_kind or c.token_issued_us) is not None:
                ttl = (
                    None
                    if c.token_expires_us is None
                    else c.token_expires_us - (c.token_issued_us or c.ts_us)
                )
                if ttl is None or ttl > self.max_ttl_days * US_PER_DAY:
                    yield self._long_lived(c, ttl)
            if (
                c.token_prev_us is not None
                and c.ts_us - c.token_prev_us > self.dormant_days * US_PER_DAY
            ):
                days = (c.ts_us - c.token_prev_us) / US_PER_DAY
                yield self.finding(
                    f"{c.token_id}|dormant",
                    [c],
                    severity="medium",
                    title=f"Token of {short(c.identity)} woke up after {days:.0f} days",
                    evidence={"previous_use_us": c.token_prev_us, "dormant_days": round(days)},
                )

    def _expired(self, c: Call) -> Finding:
        assert c.token_expires_us is not None
        late = (c.ts_us - c.token_expires_us) / (3600 * US_PER_SECOND)
        score = self.score(c)
        return self.finding(
            f"{c.token_id}|expired",
            [c],
            severity=worst("high" if c.success else "medium", grade(score)),
            score=score,
            title=f"Token of {short(c.identity)} used {late:.1f} h after it expired;"
            " reached {targets}",
            reach=((c.target, score),) if score else (),
            evidence={
                "expires_at_us": c.token_expires_us,
                "hours_after_expiry": round(late, 2),
                "accepted_by": [c.target] if c.success else [],
                "source_ip": c.source_ip,
                "baseline": "the token's declared expiry",
            },
        )

    def _long_lived(self, c: Call, ttl: int | None) -> Finding:
        life = "no expiry" if ttl is None else f"a lifetime of {ttl / US_PER_DAY:.0f} days"
        return self.finding(
            f"{c.token_id}|ttl",
            [c],
            severity="low",
            title=f"Token of {short(c.identity)} ({c.token_kind or 'unknown kind'}) has {life}",
            evidence={
                "ttl_days": None if ttl is None else round(ttl / US_PER_DAY, 1),
                "max_ttl_days": self.max_ttl_days,
                "token_kind": c.token_kind,
            },
        )
