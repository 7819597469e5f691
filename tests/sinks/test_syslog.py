"""CEF over syslog to a real rsyslog (Debian's `rsyslog` package), over TCP and UDP."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import AddAlerts, parse_cef

from tokentrail.broker import free_port
from tokentrail.config import SinksSettings
from tokentrail.sinks.delivery import Deliverer
from tokentrail.sinks.syslog import frame, rfc5424
from tokentrail.store import Store

RSYSLOGD = shutil.which("rsyslogd") or (
    "/usr/sbin/rsyslogd" if Path("/usr/sbin/rsyslogd").exists() else None
)

# What rsyslog parsed out of each message, one line per message.
CONF = """
global(workDirectory="{work}")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
input(type="imudp" address="127.0.0.1" port="{udp}")
template(name="fields" type="string"
         string="%pri%\\t%protocol-version%\\t%hostname%\\t%app-name%\\t%msgid%\\t%msg%\\n")
*.* action(type="omfile" file="{out}" template="fields")
"""


@dataclass
class Rsyslog:
    tcp: int
    udp: int
    out: Path

    def lines(self) -> list[list[str]]:
        text = self.out.read_text() if self.out.exists() else ""
        return [line.split("\t", 5) for line in text.splitlines()]

    def wait_for(self, app: str, n: int, *, timeout_s: float = 30.0) -> list[list[str]]:
        """The messages of `app`, once there are `n` (or the timeout passed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [line for line in self.lines() if len(line) == 6 and line[3] == app]
            if len(found) >= n or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    """rsyslogd in the foreground with its own config, writing what it receives to a file."""
    if RSYSLOGD is None:
        pytest.skip("rsyslogd is not installed (Debian: apt-get install rsyslog; `make test`)")
    work = tmp_path_factory.mktemp("rsyslog")
    server = Rsyslog(free_port(), _free_udp_port(), work / "received.log")
    conf = work / "rsyslog.conf"
    conf.write_text(CONF.format(work=work, tcp=server.tcp, udp=server.udp, out=server.out))
    log = (work / "rsyslogd.out").open("wb")
    process = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(conf), "-i", str(work / "rsyslogd.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(server, process, work)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def _wait_ready(server: Rsyslog, process: subprocess.Popen[bytes], work: Path) -> None:
    """TCP accepts, and a UDP probe made it to the file."""
    probe = rfc5424("probe", facility=1, severity=6, timestamp_us=0, hostname="h",
                    app_name="probe", msgid="probe")  # fmt: skip
    for _ in range(400):
        if process.poll() is not None:
            raise RuntimeError(f"rsyslogd exited: {(work / 'rsyslogd.out').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", server.tcp), timeout=1):
                pass
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(probe, ("127.0.0.1", server.udp))
            if server.lines():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("rsyslogd did not become ready")


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_cef_lines_reach_rsyslog_and_parse_back(
    protocol: str, rsyslog: Rsyslog, store: Store, add_alerts: AddAlerts
) -> None:
    rows = add_alerts(3, title=f"pivot | over {protocol} = yes", runbook="revoke\nthen = review")
    app = f"tt-{protocol}"
    output = {"type": "syslog", "name": app, "host": "127.0.0.1", "protocol": protocol,
              "port": rsyslog.tcp if protocol == "tcp" else rsyslog.udp, "app_name": app,
              "hostname": "tokentrail-host", "timeout_s": 5}  # fmt: skip
    deliverer = Deliverer.from_settings(SinksSettings.model_validate({"outputs": [output]}))
    report = deliverer.run_once(store.conn)[0]
    assert (report.delivered, report.failed) == (3, False), report.error
    lines = rsyslog.wait_for(app, 3)
    assert len(lines) == 3
    for row, (pri, version, host, _, msgid, msg) in zip(rows, lines, strict=True):
        assert (pri, version, host, msgid) == ("82", "1", "tokentrail-host", "credential_pivot")
        header, ext = parse_cef(msg)
        assert header[4:] == ["credential_pivot", f"pivot | over {protocol} = yes", "10"]
        assert (ext["externalId"], ext["suser"], ext["cs1"]) == (
            row.alert_id, row.identity, row.token_id,
        )  # fmt: skip
        assert ext["msg"] == "revoke\nthen = review"
        assert ext["cs3"] == ",".join(row.mitre)


def test_rfc5424_framing() -> None:
    message = rfc5424(
        "CEF:0|x",
        facility=10,
        severity=2,
        timestamp_us=1_772_442_000_123_456,
        hostname="host name",
        app_name="tokentrail",
        msgid="credential_pivot",
    )
    assert message == (
        b"<82>1 2026-03-02T09:00:00.123456Z host_name tokentrail - credential_pivot - CEF:0|x"
    )
    assert frame(message) == str(len(message)).encode() + b" " + message


def test_a_closed_port_fails_the_batch(store: Store, add_alerts: AddAlerts) -> None:
    add_alerts(1)
    output = {"type": "syslog", "name": "down", "host": "127.0.0.1", "port": free_port(),
              "timeout_s": 2}  # fmt: skip
    deliverer = Deliverer.from_settings(SinksSettings.model_validate({"outputs": [output]}))
    report = deliverer.run_once(store.conn)[0]
    assert (report.failed, report.backlog) == (True, 1)
    assert report.error is not None and "refused" in report.error.lower()
