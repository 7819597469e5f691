"""The request log, written in batches: requests queue their row in memory and a background
thread stores what has queued in one INSERT every `every_s` seconds (sooner once `batch` rows
wait). One INSERT per request cost each request a DuckDB write transaction on its own cursor,
the largest share of a cheap read under load (bench/api_load.py).

Nothing is lost on an orderly stop: `stop` stores every queued row before it returns, and a
row recorded after that is stored at once. Rows are stored in the order they were recorded.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

import duckdb

from tokentrail.store import api as sql

log = logging.getLogger(__name__)

Cursor = Callable[[], duckdb.DuckDBPyConnection]


class AuditLog:
    """Queue of request rows flushed to `api_requests` by one background thread.

    >>> audit = AuditLog(cursor, every_s=1.0).start()  # doctest: +SKIP
    >>> audit.record(row)  # doctest: +SKIP
    >>> audit.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        cursor: Cursor,
        *,
        every_s: float = 1.0,
        batch: int = 500,
        max_pending: int = 100_000,
    ) -> None:
        self._cursor = cursor
        self.every_s, self.batch, self.max_pending = every_s, batch, max_pending
        self._pending: deque[sql.RequestRow] = deque()
        # One flush at a time keeps rows in order when a reader flushes while the thread does.
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0

    def start(self) -> AuditLog:
        self._thread = threading.Thread(target=self._run, name="tt-audit", daemon=True)
        self._thread.start()
        return self

    def record(self, row: sql.RequestRow) -> None:
        """Queue one request's row (stored at once when no thread is flushing)."""
        self._pending.append(row)
        if self._thread is None or self._stop.is_set():
            self.flush()
        elif len(self._pending) >= self.batch:
            self._wake.set()

    def flush(self) -> None:
        """Store every row queued so far; on a database error keep them for the next flush."""
        with self._flushing:
            rows: list[sql.RequestRow] = []
            while self._pending:
                rows.append(self._pending.popleft())
            if not rows:
                return
            try:
                with self._cursor() as cur:
                    sql.log_requests(cur, requests=rows)
            except duckdb.Error as exc:
                log.error("cannot record %d API requests: %s", len(rows), exc)
                self._pending.extendleft(reversed(rows))
                self._shed()
                return
            self.written += len(rows)

    def _shed(self) -> None:
        # A store that refuses writes for long must not grow the queue without bound.
        over = len(self._pending) - self.max_pending
        if over > 0:
            for _ in range(over):
                self._pending.popleft()
            self.dropped += over
            log.error("request log: %d rows dropped, the store refuses writes", over)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every_s)
            self._wake.clear()
            self.flush()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Store what is queued and stop the thread; later rows are stored as they come."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush()
