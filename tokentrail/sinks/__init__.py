"""Delivery of alerts to SIEMs (docs/SINKS.md): formats (OCSF, CEF) and transports (syslog,
Kafka, HTTP collector), one module each, driven by the outbox in `sinks.delivery`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tokentrail.errors import TokentrailError
from tokentrail.sinks.cef import cef_line
from tokentrail.sinks.ocsf import Activity, detection_finding
from tokentrail.store.alerts import AlertRow

__all__ = ["Outgoing", "Sink", "SinkError"]


class SinkError(TokentrailError):
    """A sink could not take a batch; the batch stays owed and is retried with backoff."""


@dataclass(frozen=True)
class Outgoing:
    """One alert version on its way to a sink."""

    alert: AlertRow
    version_us: int
    activity: Activity

    def finding(self) -> dict[str, Any]:
        return detection_finding(self.alert, version_us=self.version_us, activity=self.activity)

    def cef(self) -> str:
        return cef_line(self.alert, version_us=self.version_us)


class Sink(Protocol):
    """A transport: `send` delivers the whole batch or raises SinkError (then it is retried,
    so receivers may see an alert version twice, never lose one)."""

    name: str

    def send(self, batch: Sequence[Outgoing]) -> None: ...

    def close(self) -> None: ...
