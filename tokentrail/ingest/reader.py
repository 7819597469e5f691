"""The Kafka consumer in a process of its own, feeding the process that writes.

kafka-python decodes every record in Python, and validation is Python too: ~30 µs per event
holding the GIL of the process that writes to DuckDB and, in `serve`, answers the API. Sampled
with `py-spy --gil` under bench/api_load.py, the consumer thread held serve's GIL ~40% of the
time, and the event loop and request threads waited for it. Here `KafkaIngest` (unchanged: group
membership, positions, outages, truncated logs) runs in a child process and validates records
into batches; this process writes each batch in one transaction with its offsets, as before, and
answers the child's two questions: is the batch stored, and which offsets are stored. So
exactly-once rests where it did, on the store, and the child holds nothing that must survive it:
if it dies, the next one resumes from the stored offsets; if this process dies, the kernel stops
the child (`PR_SET_PDEATHSIG`).

Messages, pickled over a socket pair (`multiprocessing.connection`): the child sends
`("ready",)` (it handles SIGTERM from then on), `("batch", batch, records_read)`,
`("offsets", topic)`, `("status", lag, unreachable_since, log_resets)`, then `("done",)` or
`("error", kind, message)`; the parent answers `("stored",)` and `("offsets", {partition:
offset})`. SIGTERM to the child asks it to stop: it stores what it read and says done.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final, NoReturn

from tokentrail.batch import Batch
from tokentrail.config import Settings
from tokentrail.errors import ConfigError, SourceError, TokentrailError
from tokentrail.histogram import Histogram
from tokentrail.ingest.pipeline import Pipeline, Validator

log = logging.getLogger(__name__)

# How often the child reports its lag and broker state, and the parent looks at the child.
_STATUS_EVERY_S: Final = 0.5
# How long a child that said done may take to leave its consumer group before it is killed.
_EXIT_GRACE_S: Final = 10.0
_ERRORS: Final[dict[str, type[TokentrailError]]] = {
    "SourceError": SourceError,
    "ConfigError": ConfigError,
}


@dataclass(frozen=True)
class _Spec:
    """What the child needs to consume: the same arguments `KafkaIngest` takes."""

    settings: Settings
    salt: bytes
    bootstrap: str
    topic: str
    group: str
    fmt: str
    idle_exit: float | None
    log_level: int
    kafka_log_level: int


class KafkaReader:
    """Consumes `topic` in `group` in a child process and writes its batches through
    `pipeline` here; the same surface as `KafkaIngest` (`run`, `stop_requested`, `lag`,
    `write_seconds`, `unreachable_since`, `log_resets`)."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        fmt: str = "events",
    ) -> None:
        self.pipeline = pipeline
        self.bootstrap, self.topic, self.group, self.fmt = bootstrap, topic, group, fmt
        self.stop_requested = threading.Event()
        # Mirrors of the child's state, for metrics and readyz on other threads.
        self.lag: dict[int, int] = {}
        self.unreachable_since: float | None = None
        self.log_resets = 0
        self.write_seconds = Histogram()
        # The child process while `run` runs.
        self.pid: int | None = None

    def run(
        self,
        *,
        idle_exit: float | None = None,
        on_batch: Callable[[Batch], None] | None = None,
    ) -> None:
        """Consume until `stop_requested` is set, or `idle_exit` seconds pass with no message."""
        spec = _Spec(
            settings=self.pipeline.settings,
            salt=self.pipeline.store.salt(),
            bootstrap=self.bootstrap,
            topic=self.topic,
            group=self.group,
            fmt=self.fmt,
            idle_exit=idle_exit,
            log_level=logging.getLogger().getEffectiveLevel(),
            kafka_log_level=logging.getLogger("kafka").getEffectiveLevel(),
        )
        try:
            self._consume(spec, on_batch)
        finally:
            self.pid = None

    def _consume(self, spec: _Spec, on_batch: Callable[[Batch], None] | None) -> None:
        with _Child.started(spec) as child:
            self.pid = child.process.pid
            # A SIGTERM before the child handles it would kill it: it says when it does.
            ready = asked_to_stop = False
            while True:
                if ready and self.stop_requested.is_set() and not asked_to_stop:
                    child.process.send_signal(signal.SIGTERM)
                    asked_to_stop = True
                message = child.receive(timeout_s=_STATUS_EVERY_S)
                if message is None:
                    continue
                kind = message[0]
                if kind == "ready":
                    ready = True
                elif kind == "batch":
                    self._write(message[1], message[2], on_batch)
                    child.send(("stored",))
                elif kind == "offsets":
                    child.send(("offsets", self.pipeline.stored_offsets(topic=message[1])))
                elif kind == "status":
                    self.lag, self.unreachable_since, self.log_resets = message[1:4]
                elif kind == "error":
                    raise _ERRORS.get(message[1], SourceError)(message[2])
                elif kind == "done":
                    return

    def _write(self, batch: Batch, read: int, on_batch: Callable[[Batch], None] | None) -> None:
        started = time.monotonic()
        self.pipeline.totals.read += read
        self.pipeline.write(batch)
        self.write_seconds.observe(time.monotonic() - started)
        if on_batch is not None:
            on_batch(batch)


class _Child:
    """The child process and this side's end of the link to it."""

    def __init__(self, process: subprocess.Popen[bytes], link: Connection) -> None:
        self.process = process
        self._link = link

    @classmethod
    @contextlib.contextmanager
    def started(cls, spec: _Spec) -> Iterator[_Child]:
        """A child consuming as `spec` says. On the way out it is given `_EXIT_GRACE_S` to
        close its Kafka client once it said done, and killed otherwise (this side failed: what
        it read is not stored, and the next run reads it again)."""
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "tokentrail.ingest.reader", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        child = cls(process, Connection(ours.detach()))
        try:
            child.send(spec)
            yield child
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(_EXIT_GRACE_S)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            child._link.close()

    def send(self, message: object) -> None:
        try:
            self._link.send(message)
        except OSError:
            self._died()

    def receive(self, *, timeout_s: float) -> tuple[Any, ...] | None:
        """The child's next message, or None after `timeout_s` of silence."""
        try:
            if self._link.poll(timeout_s):
                message: tuple[Any, ...] = self._link.recv()
                return message
        except (EOFError, OSError):
            self._died()
        if self.process.poll() is not None:
            self._died()
        return None

    def _died(self) -> NoReturn:
        code = self.process.wait()
        raise SourceError(f"the Kafka reader process exited unexpectedly (exit code {code})")


class _Link:
    """The child's end: one sender at a time (the main loop and the status thread)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._connection.send(message)

    def expect(self, kind: str) -> tuple[Any, ...]:
        """Wait for the parent's answer of `kind` (the parent answers in order)."""
        message: tuple[Any, ...] = self._connection.recv()
        if message[0] != kind:
            raise SourceError(f"Kafka reader: expected {kind!r}, got {message[0]!r}")
        return message


class _RemotePipeline(Validator):
    """Validation here, writes in the parent: at most one batch in flight, as in `Pipeline`."""

    def __init__(self, link: _Link, settings: Settings, *, salt: bytes) -> None:
        super().__init__(settings, salt=salt)
        self._link = link
        self._in_flight = False
        self._reported = 0  # records read, as far as the parent was told

    def submit(self, batch: Batch) -> None:
        self.drain()
        read, self._reported = self.totals.read - self._reported, self.totals.read
        self._link.send(("batch", batch, read))
        self._in_flight = True

    def drain(self) -> None:
        if self._in_flight:
            self._link.expect("stored")
            self._in_flight = False

    def stored_offsets(self, *, topic: str) -> dict[int, int]:
        self.drain()  # answers come in order: the write in flight is acknowledged first
        self._link.send(("offsets", topic))
        offsets: dict[int, int] = self._link.expect("offsets")[1]
        return offsets


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (PR_SET_PDEATHSIG)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def _child_main(fd: int) -> int:
    from tokentrail.ingest.kafka import KafkaIngest

    _die_with_parent()
    # Ctrl-C reaches the whole process group: the parent decides, and sends SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    connection = Connection(fd)
    spec: _Spec = connection.recv()
    logging.basicConfig(
        level=spec.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(spec.kafka_log_level)
    link = _Link(connection)
    try:
        link.send(("ready",))
        pipeline = _RemotePipeline(link, spec.settings, salt=spec.salt)
        source = KafkaIngest(
            pipeline,
            bootstrap=spec.bootstrap,
            topic=spec.topic,
            group=spec.group,
            settings=spec.settings.kafka,
            fmt=spec.fmt,
        )
        source.stop_requested = stop

        def report() -> None:
            while not stop.wait(_STATUS_EVERY_S):
                try:
                    link.send(
                        ("status", dict(source.lag), source.unreachable_since, source.log_resets)
                    )
                except OSError:
                    stop.set()  # the parent is gone (where no PR_SET_PDEATHSIG stopped us)

        threading.Thread(target=report, name="tt-reader-status", daemon=True).start()
        source.run(idle_exit=spec.idle_exit)
        stop.set()  # ends the status reports
        link.send(("done",))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 1  # the parent is gone
    except TokentrailError as exc:
        link.send(("error", type(exc).__name__, str(exc)))
    except Exception as exc:
        log.exception("Kafka reader failed")
        link.send(("error", "internal", f"Kafka reader failed: {type(exc).__name__}: {exc}"))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("tokentrail.ingest.reader is started by `tokentrail ingest --kafka` and `serve`")
    sys.exit(_child_main(int(sys.argv[1])))
