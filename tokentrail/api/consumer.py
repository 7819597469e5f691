"""The Kafka consumer of `tokentrail serve --kafka`: ingest and detection on a background thread,
writing with the store's connection while the API reads through cursors of it (kafka-python and
validation run in a child process: tokentrail.ingest.reader)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tokentrail.api.reads import Changes
from tokentrail.batch import Batch
from tokentrail.catalog import load_catalog
from tokentrail.config import Settings
from tokentrail.detect.engine import Detection
from tokentrail.detect.setup import detection_for, remembered_catalog
from tokentrail.errors import TokentrailError
from tokentrail.graph.scores import ScoreKeeper
from tokentrail.histogram import Histogram
from tokentrail.ingest.pipeline import BatchHook, Pipeline
from tokentrail.ingest.reader import KafkaReader
from tokentrail.store import BatchResult, Store
from tokentrail.store.graph import last_reach_changes

log = logging.getLogger(__name__)


class BackgroundConsumer:
    """Consumes `topic` in `group` into `store` until stopped; `stop` lets the batch in hand
    finish (stored, offsets committed, detection run) before returning. Keeps the stored blast
    radius scores current (at most `ScoreKeeper.every_s` behind) for the API's ranking."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        fmt: str = "auto",
        detect: bool = True,
        catalog_path: Path | None = None,
        rules_path: Path | None = None,
    ) -> None:
        # Built now, before the API locks the database's settings (the engine sets one).
        self.engine: Detection | None = (
            detection_for(store, catalog_path=catalog_path, rules_path=rules_path)
            if detect
            else None
        )
        # The API ranks tokens by the stored blast radius scores while this consumer runs, rather
        # than rescoring inside requests: keep them current as batches land, as `ingest` does.
        self.scores = ScoreKeeper(
            store,
            self.engine.catalog
            if self.engine is not None
            else load_catalog(catalog_path)
            if catalog_path is not None
            else remembered_catalog(store.conn),
        )
        self._listeners: list[Callable[[Changes], None]] = []
        # What a batch changed is reported first, before detection or scoring could fail.
        hooks: list[BatchHook] = [self._report, self.scores.on_batch]
        if self.engine is not None:
            hooks.insert(1, self.engine.on_batch)
        self.pipeline = Pipeline(store, settings, hooks=hooks)
        self._bootstrap, self._topic, self._group, self._fmt = bootstrap, topic, group, fmt
        self._source: KafkaReader | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "stopped"
        self._error: str | None = None

    @property
    def state(self) -> str:
        """`running`, `disconnected` (running, waiting for the broker), `stopped` or `failed`."""
        source = self._source
        if self._state == "running" and source is not None and source.unreachable_since is not None:
            return "disconnected"
        return self._state

    @property
    def error(self) -> str | None:
        source = self._source
        since = source.unreachable_since if source is not None else None
        if self._state == "running" and source is not None and since is not None:
            return (
                f"no Kafka broker reachable at {self._bootstrap} for"
                f" {time.monotonic() - since:.0f} s; reconnecting"
            )
        return self._error

    def lag(self) -> dict[int, int]:
        """Partition -> records the broker holds that are not stored yet (as of the last poll)."""
        return dict(self._source.lag) if self._source is not None else {}

    def write_seconds(self) -> Histogram | None:
        """How long each batch took to store (write and detection)."""
        return self._source.write_seconds if self._source is not None else None

    def totals(self) -> dict[str, int]:
        t = self.pipeline.totals
        return {
            "read": t.read,
            "stored": t.stored,
            "duplicates": t.duplicates,
            "dead_letters": t.dead_letters,
        }

    def subscribe(self, listener: Callable[[Changes], None]) -> None:
        """Tell `listener` what each committed batch and detection pass may have changed."""
        self._listeners.append(listener)
        if self.engine is not None:
            self.engine.alert_listeners.append(lambda ids: listener(Changes(alerts=ids)))

    def _report(self, batch: Batch, result: BatchResult) -> None:
        if self._listeners and (batch.traces or batch.tokens):
            # A token's blast radius also changes with a hop of another token downstream of
            # its own in a trace: the store marked those in `reach_changes`.
            reach = last_reach_changes(self.pipeline.store.conn) if result.stored else set()
            changes = Changes.of_batch(batch, reach=reach)
            for listener in self._listeners:
                listener(changes)

    def start(self) -> None:
        self._state = "running"
        self._thread = threading.Thread(target=self._run, name="tt-consumer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._source = KafkaReader(
                self.pipeline,
                bootstrap=self._bootstrap,
                topic=self._topic,
                group=self._group,
                fmt=self._fmt,
            )
            if self._stop.is_set():
                self._source.stop_requested.set()
            self._source.run()
            self._state = "stopped"
        except TokentrailError as exc:
            log.error("consumer stopped: %s", exc)
            self._state, self._error = "failed", str(exc)
        except Exception as exc:
            log.exception("consumer failed")
            self._state, self._error = "failed", f"internal error: {type(exc).__name__}"
        finally:
            try:
                self.pipeline.close()
                if self.engine is not None:
                    self.engine.finish()
                self.scores.refresh()
            except TokentrailError as exc:
                log.error("consumer could not finish: %s", exc)

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        if self._source is not None:
            self._source.stop_requested.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("consumer did not stop within %g s", timeout_s)
