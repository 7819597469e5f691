"""What every request shares: the store, its catalog, the settings, metrics and the consumer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import duckdb
from anyio import to_thread
from starlette.requests import Request

from tokentrail.api.audit import AuditLog
from tokentrail.api.auth import KeyCache
from tokentrail.api.cache import EventCache, HopCache
from tokentrail.api.encoding import JSON
from tokentrail.api.lanes import Lane
from tokentrail.api.metrics import Metrics
from tokentrail.api.reads import Changes, Entry, Key, ReadModel, fresh_asked
from tokentrail.api.settings import ApiSettings
from tokentrail.catalog import Catalog
from tokentrail.histogram import Histogram
from tokentrail.sinks.delivery import Deliverer
from tokentrail.store import Store
from tokentrail.store import api as sql

log = logging.getLogger(__name__)


@dataclass
class ApiState:
    """The API's view of one store. Requests read and write through their own cursors of the
    store's connection, so a consumer writing with the connection itself never waits for them."""

    store: Store
    settings: ApiSettings
    catalog: Catalog
    metrics: Metrics = field(default_factory=Metrics)
    consumer: ConsumerStatus | None = None
    deliverer: Deliverer | None = None  # delivers alerts to SIEM sinks (docs/SINKS.md)
    # Ranking refreshes the stored blast scores; two refreshes at once would conflict.
    rank_lock: threading.Lock = field(default_factory=threading.Lock)
    # The catalog's fingerprint in `blast_scores`, once a ranking has refreshed them.
    scores_fingerprint: str | None = None
    keys: KeyCache = field(init=False)
    evidence: EventCache = field(init=False)
    hops: HopCache = field(init=False)
    reads: ReadModel = field(init=False)
    audit: AuditLog = field(init=False)
    _root: duckdb.DuckDBPyConnection | None = None
    _interactive: Lane | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.keys = KeyCache(ttl_s=self.settings.key_cache_s)
        self.evidence = EventCache(self.settings.evidence_cache)
        self.hops = HopCache(self.settings.trace_cache)
        self.reads = ReadModel(max_bytes=int(self.settings.read_cache_mb * (1 << 20)))
        # Not started: rows are stored as they come until the app's lifespan starts the thread.
        self.audit = AuditLog(self.cursor, every_s=self.settings.audit_flush_s)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A fresh cursor (its own transaction context) of the store's database."""
        with self._lock:
            if self._root is None:
                self._root = self.store.conn.cursor()
            return self._root.cursor()

    def interactive(self) -> Lane:
        """The request threads of short interactive reads (`ApiSettings.interactive_threads`),
        at the process's priority (tokentrail.api.lanes)."""
        with self._lock:
            if self._interactive is None:
                self._interactive = Lane("interactive", threads=self.settings.interactive_threads)
            return self._interactive

    async def kept(
        self,
        request: Request,
        key: Key,
        fill: Callable[[], Entry],
        *,
        general: bool = False,
    ) -> JSON:
        """The answer to `request` kept under `key`, or `fill()` run on a thread of the
        interactive lane (`general`: of the general one) and kept; `Cache-Control: no-cache`
        reads the store."""
        fresh = fresh_asked(request.scope["headers"])
        run = to_thread.run_sync if general else self.interactive().run
        body = await self.reads.read(key, fill, run, fresh=fresh)
        return JSON(body)

    def close(self) -> None:
        with self._lock:
            if self._interactive is not None:
                self._interactive.close()
                self._interactive = None
            if self._root is not None:
                self._root.close()
                self._root = None

    def record(self, request: sql.RequestRow) -> None:
        """Queue one request for the log (tokentrail.api.audit); never raises for the store."""
        self.audit.record(request)


class ConsumerStatus(Protocol):
    """What the API needs to know about a background consumer (see tokentrail.api.consumer)."""

    @property
    def state(self) -> str: ...  # running | stopped | failed

    @property
    def error(self) -> str | None: ...

    def totals(self) -> dict[str, int]: ...

    def lag(self) -> dict[int, int]: ...  # partition -> records not yet stored

    def write_seconds(self) -> Histogram | None: ...  # time to store each batch

    def start(self) -> None: ...

    def stop(self) -> None: ...  # finish the batch in hand, then return

    # `listener` learns what each of its commits may have changed, right after the commit.
    def subscribe(self, listener: Callable[[Changes], None]) -> None: ...


def harden(conn: duckdb.DuckDBPyConnection) -> None:
    """No file, network or extension access for any query of this database instance from now
    on, and no setting changed again: the SQL endpoint runs analysts' queries on it.

    The store's own writes need neither (batches arrive as registered Arrow tables).
    """
    locked = conn.execute("SELECT current_setting('lock_configuration')").fetchone()
    if locked and locked[0]:
        return  # hardened already (a second app over the same store)
    conn.execute("SET enable_external_access = false")
    conn.execute("SET autoinstall_known_extensions = false")
    conn.execute("SET autoload_known_extensions = false")
    conn.execute("SET lock_configuration = true")
