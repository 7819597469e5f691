"""Blast radius scores kept fresh while batches land.

Ranking every token by blast radius scores all of them the first time a catalog is used (seconds
on millions of events); after that only tokens whose reach changed are rescored. Ingest knows the
catalog, so it keeps the stored scores current as it goes, and the analyst's first ranking is a
read of them rather than a scoring of the whole estate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import duckdb

from tokentrail.batch import Batch
from tokentrail.catalog import Catalog
from tokentrail.store import BatchResult, Store
from tokentrail.store.graph import refresh_scores

log = logging.getLogger(__name__)


class ScoreKeeper:
    """Pipeline hook: rescore the tokens whose reach changed, at most every `every_s` seconds
    (each refresh costs about one batch's worth of rescoring, however many batches it covers).

    >>> keeper = ScoreKeeper(Store.open(":memory:"), Catalog(), every_s=0)
    >>> keeper.refresh()
    True
    """

    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        *,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.catalog, self.every_s, self.clock = store, catalog, every_s, clock
        self._last: float | None = None

    def on_batch(self, batch: Batch, result: BatchResult) -> None:
        due = self._last is None or self.clock() - self._last >= self.every_s
        if result.stored and due:
            self.refresh()

    def refresh(self) -> bool:
        """Bring the stored scores up to date now; False (logged) if the database refused."""
        try:
            refresh_scores(self.store.conn, catalog=self.catalog)
        except duckdb.Error as exc:  # scores are a cache: a failed refresh is redone on read
            log.warning("blast radius scores not refreshed: %s", str(exc).splitlines()[0])
            return False
        self._last = self.clock()
        return True
