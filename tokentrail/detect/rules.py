"""The detection rules file (TOML): engine settings, detector tuning, task policies,
suppressions and custom SQL rules. Data, not code: a SOC changes it without a release.

```toml
[engine]
lateness_seconds = 300

[detectors.lifetime]
max_ttl_days = 30

[[task]]                      # declared policy of an identity for one task kind
identity = "spiffe://prod/ns/agents/sa/support-triage"
kind = "triage"               # matched against attributes.task_kind
allowed_targets = ["tickets-api", "kb-api"]

[[suppress]]
detector = "lifetime"         # globs; an omitted field matches anything
identity = "svc-partner-sync"
reason = "legacy partner key, rotation tracked in SEC-142"
until = "2026-06-30T00:00:00Z"

[[rule]]
id = "custom.prod_admin_at_night"
title = "Admin call on a prod service at night"
severity = "medium"
key = ["identity", "target"]
sql = '''SELECT * FROM window_events
         WHERE privilege = 'admin' AND environment = 'prod' AND hour(ts) < 5'''
```
"""

from __future__ import annotations

import tomllib
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokentrail.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class EngineSettings(_Model):
    """How detection follows the stream (docs/DETECTORS.md, "Event time and replay")."""

    # Events may arrive this late (event time) and still be seen in order.
    lateness_seconds: float = Field(default=300.0, ge=0)
    # Novelty rules stay quiet for an identity until it has this much history ...
    warmup_hours: float = Field(default=24.0, ge=0)
    # ... and at least this many events.
    warmup_events: int = Field(default=20, ge=0)
    # A finding this long (event time) after its alert's last one opens a new alert.
    dedupe_hours: float = Field(default=24.0, gt=0)
    # Evidence event ids kept per alert (the earliest ones).
    evidence_cap: int = Field(default=50, ge=1)


class TaskPolicy(_Model):
    """Declared targets and scopes of an identity while it works on one kind of task."""

    identity: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    allowed_targets: tuple[str, ...] = ()
    allowed_scopes: tuple[str, ...] = ()


class Suppression(_Model):
    """Findings matching every given field become suppressed alerts (kept, not shown)."""

    detector: str = "*"
    identity: str = "*"
    target: str = "*"
    token: str = "*"
    start: datetime | None = Field(default=None, alias="from")
    until: datetime | None = None
    reason: str = ""

    def matches(
        self,
        *,
        detector: str,
        identity: str | None,
        targets: list[str],
        token_id: str | None,
        ts: datetime,
    ) -> bool:
        if not fnmatchcase(detector, self.detector):
            return False
        if not fnmatchcase(identity or "", self.identity):
            return False
        if not fnmatchcase(token_id or "", self.token):
            return False
        if self.target != "*" and not any(fnmatchcase(t, self.target) for t in targets):
            return False
        if self.start is not None and ts < self.start:
            return False
        return self.until is None or ts < self.until

    @property
    def name(self) -> str:
        fields = [f"{k}={v}" for k, v in (("detector", self.detector),
                  ("identity", self.identity), ("target", self.target), ("token", self.token))
                  if v != "*"]  # fmt: skip
        return " ".join(fields) or "everything"


class CustomRule(_Model):
    """A SQL rule over `window_events` (the calls of one detection pass); each row returned
    is a finding (detection as code)."""

    id: str = Field(pattern=r"^custom\.[a-z0-9_.-]+$")
    title: str = Field(min_length=1)
    severity: Literal["info", "low", "medium", "high", "critical"] = "medium"
    sql: str = Field(min_length=1)
    # Columns of the result whose values make the dedupe key.
    key: tuple[str, ...] = ("identity",)
    mitre: tuple[str, ...] = ()
    owasp_nhi: tuple[str, ...] = ()
    runbook: str = "Review the matching calls; the rule's author documents the response."


class Rules(_Model):
    """A loaded rules file; `Rules()` is the default with nothing suppressed."""

    engine: EngineSettings = EngineSettings()
    detectors: dict[str, dict[str, Any]] = {}
    tasks: tuple[TaskPolicy, ...] = Field(default=(), alias="task")
    suppressions: tuple[Suppression, ...] = Field(default=(), alias="suppress")
    rules: tuple[CustomRule, ...] = Field(default=(), alias="rule")


def parse_rules(text: str, *, origin: str = "rules") -> Rules:
    """Rules from TOML text; any problem is a `ConfigError` of one line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}") from None
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "rules"
        raise ConfigError(f"{origin}: {where}: {first['msg']}") from None


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
