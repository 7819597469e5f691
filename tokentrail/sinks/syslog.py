"""CEF alerts over syslog: RFC 5424 messages, over TCP with octet counting (RFC 6587, optionally
in TLS, RFC 5425) or over UDP (RFC 5426).

Over plain TCP each batch uses its own connection, closed with a half-close and a wait for the
receiver's own close: a receiver that went away mid-batch shows up as an error and the batch is
sent again. Syslog has no application acknowledgement (RELP would), so this is the best TCP
gives. Over UDP nothing is acknowledged: a lost datagram is lost (prefer TCP).

>>> frame(b"hi")
b'2 hi'
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from tokentrail.config import SyslogSink as SyslogSettings
from tokentrail.sinks import Outgoing, SinkError
from tokentrail.sinks.cef import SYSLOG_SEVERITY

_NILVALUE: Final = "-"


def rfc5424(
    msg: str,
    *,
    facility: int,
    severity: int,
    timestamp_us: int,
    hostname: str,
    app_name: str,
    msgid: str,
    procid: str = _NILVALUE,
) -> bytes:
    """One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`."""
    stamp = datetime.fromtimestamp(timestamp_us / 1_000_000, UTC)
    header = " ".join(
        [
            f"<{facility * 8 + severity}>1",
            stamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            _field(hostname, 255),
            _field(app_name, 48),
            _field(procid, 128),
            _field(msgid, 32),
            _NILVALUE,  # no structured data: the CEF extension carries the fields
        ]
    )
    return f"{header} {msg}".encode()


def frame(message: bytes) -> bytes:
    """Octet-counting framing (RFC 6587 §3.4.1): `LENGTH SP MESSAGE`."""
    return str(len(message)).encode() + b" " + message


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most `limit` characters."""
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return text or _NILVALUE


class SyslogSink:
    """Sends each alert version as one CEF line in one RFC 5424 message."""

    def __init__(self, settings: SyslogSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self.hostname = settings.hostname or socket.gethostname()

    def messages(self, batch: Sequence[Outgoing]) -> list[bytes]:
        s = self.settings
        return [
            rfc5424(
                item.cef(),
                facility=s.facility,
                severity=SYSLOG_SEVERITY.get(item.alert.severity, 4),
                timestamp_us=item.version_us,
                hostname=self.hostname,
                app_name=s.app_name,
                msgid=item.alert.detector,
            )
            for item in batch
        ]

    def send(self, batch: Sequence[Outgoing]) -> None:
        messages = self.messages(batch)
        try:
            if self.settings.protocol == "udp":
                self._send_udp(messages)
            else:
                self._send_tcp(messages)
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(
                f"syslog {self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
            ) from None

    def _send_udp(self, messages: list[bytes]) -> None:
        s = self.settings
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(s.timeout_s)
            for message in messages:
                sock.sendto(message[: s.max_udp_bytes], (s.host, s.port))

    def _send_tcp(self, messages: list[bytes]) -> None:
        s = self.settings
        raw = socket.create_connection((s.host, s.port), timeout=s.timeout_s)
        sock: socket.socket = raw
        try:
            if s.tls:
                context = ssl.create_default_context(cafile=s.ca_file)
                if not s.verify_tls:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(raw, server_hostname=s.host)
            sock.sendall(b"".join(frame(m) for m in messages))
            if not isinstance(sock, ssl.SSLSocket):
                # The receiver closes once it has read everything we sent. (Over TLS a
                # half-close is not possible; the close_notify alone ends the session.)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
        finally:
            sock.close()
            raw.close()

    def close(self) -> None:
        """Nothing is held between batches."""
