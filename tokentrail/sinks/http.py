"""OCSF findings to an HTTP collector: Splunk HEC (`POST /services/collector/event`,
`Authorization: Splunk <token>`, one JSON envelope per finding), or any JSON collector with
`envelope = "ndjson"` (one finding per line) and another auth scheme or headers.

A batch is one request. Any answer but 2xx, and any connection error, fails the whole batch; it
is sent again after a backoff, so a collector may see a finding twice (dedupe on
`metadata.uid`, unique per alert version), never miss one.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from tokentrail.config import HttpSink as HttpSettings
from tokentrail.sinks import Outgoing, SinkError


def hec_event(item: Outgoing, settings: HttpSettings) -> dict[str, Any]:
    """The HEC envelope of one finding (event time in epoch seconds)."""
    envelope: dict[str, Any] = {
        "time": round(item.alert.last_seen_us / 1_000_000, 3),
        "source": settings.source,
        "sourcetype": settings.sourcetype,
        "event": item.finding(),
        # Indexed fields: searchable without parsing the event.
        "fields": {
            "alert_id": item.alert.alert_id,
            "detector": item.alert.detector,
            "severity": item.alert.severity,
        },
    }
    if settings.host:
        envelope["host"] = settings.host
    if settings.index:
        envelope["index"] = settings.index
    return envelope


def body(batch: Sequence[Outgoing], settings: HttpSettings) -> bytes:
    """HEC accepts envelopes back to back; NDJSON is one finding per line."""
    if settings.envelope == "hec":
        items = [hec_event(item, settings) for item in batch]
    else:
        items = [item.finding() for item in batch]
    return "".join(json.dumps(i, separators=(",", ":")) + "\n" for i in items).encode()


class HttpSink:
    """POSTs each batch as one request; keeps no connection between batches."""

    def __init__(self, settings: HttpSettings) -> None:
        self.name = settings.name
        self.settings = settings
        parts = urlsplit(settings.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def headers(self) -> dict[str, str]:
        s = self.settings
        content = "application/json" if s.envelope == "hec" else "application/x-ndjson"
        found = {"Content-Type": content, "User-Agent": "tokentrail"}
        if s.token:
            found["Authorization"] = f"{s.auth_scheme} {s.token}"
        return found | s.headers

    def send(self, batch: Sequence[Outgoing]) -> None:
        s = self.settings
        conn: http.client.HTTPConnection
        if self.https:
            context = ssl.create_default_context(cafile=s.ca_file)
            if not s.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=s.timeout_s, context=context
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=s.timeout_s)
        try:
            conn.request("POST", self.path, body=body(batch, s), headers=self.headers())
            response = conn.getresponse()
            answer = response.read(2048)
        except (OSError, http.client.HTTPException) as exc:
            raise SinkError(f"{s.url}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            text = answer.decode("utf-8", "replace").strip()[:200]
            raise SinkError(f"{s.url}: HTTP {response.status} {text}")

    def close(self) -> None:
        """Nothing is held between batches."""
