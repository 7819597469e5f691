"""The outbox: every alert version reaches every sink at least once, in order, with backoff."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from conftest import AddAlerts

from tokentrail.config import HttpSink as HttpSettings
from tokentrail.config import SinksSettings
from tokentrail.sinks import Outgoing, SinkError
from tokentrail.sinks.delivery import Deliverer, DeliveryThread, prometheus
from tokentrail.sinks.ocsf import Activity
from tokentrail.store import Store
from tokentrail.store import alerts as alert_sql
from tokentrail.store import delivery as sql


@dataclass
class FakeSink:
    """Records what it is sent; fails while `failures` is above zero."""

    name: str = "fake"
    failures: int = 0
    sent: list[tuple[str, int, Activity]] = field(default_factory=list)
    delivered: threading.Event = field(default_factory=threading.Event)

    def send(self, batch: Sequence[Outgoing]) -> None:
        if self.failures:
            self.failures -= 1
            raise SinkError("collector down")
        self.sent += [(o.alert.alert_id, o.version_us, o.activity) for o in batch]
        self.delivered.set()

    def close(self) -> None:
        pass


def _deliverer(sink: FakeSink, **policy: object) -> Deliverer:
    outputs = [HttpSettings(type="http", name=sink.name, url="http://127.0.0.1:9", batch_size=2)]
    settings = SinksSettings.model_validate({"outputs": outputs, **policy})
    deliverer = Deliverer.from_settings(settings, sinks=[sink])
    # Event-free clock: 1000 s per reading, so a backoff has always passed by the next pass.
    ticks = itertools.count(start=1_000_000, step=1000)
    deliverer.clock = lambda: float(next(ticks))
    return deliverer


def test_delivers_every_alert_once_in_order(store: Store, add_alerts: AddAlerts) -> None:
    rows = add_alerts(5)
    sink = FakeSink()
    reports = _deliverer(sink).run_once(store.conn)
    assert [a for a, _, _ in sink.sent] == [r.alert_id for r in rows]
    assert {act for _, _, act in sink.sent} == {Activity.create}
    assert (reports[0].delivered, reports[0].backlog) == (5, 0)
    assert _deliverer(sink).run_once(store.conn)[0].delivered == 0


def test_an_update_is_delivered_again(store: Store, add_alerts: AddAlerts) -> None:
    add_alerts(2)
    sink = FakeSink()
    deliverer = _deliverer(sink)
    deliverer.run_once(store.conn)
    add_alerts(1, occurrences=9)  # al-0 again, with more findings
    alert_sql.set_status(store.conn, alert_id="al-1", status="closed")
    deliverer.run_once(store.conn)
    assert [(a, act) for a, _, act in sink.sent[2:]] == [
        ("al-0", Activity.update),
        ("al-1", Activity.close),
    ]
    versions = sql.delivered_versions(store.conn, sink="fake")
    assert versions["al-0"] == sink.sent[2][1] > sink.sent[0][1]


def test_failures_back_off_and_keep_the_order(store: Store, add_alerts: AddAlerts) -> None:
    rows = add_alerts(3)
    sink = FakeSink(failures=2)
    deliverer = _deliverer(sink, backoff_initial_s=10, backoff_max_s=15)
    now = [1000.0]
    deliverer.clock = lambda: now[0]
    first = deliverer.run_once(store.conn)[0]
    assert (first.failed, first.backlog, first.error) == (True, 3, "collector down")
    assert sql.sink_state(store.conn, sink="fake").next_attempt_us == 1010 * 1_000_000
    assert deliverer.run_once(store.conn)[0].waiting  # still in backoff
    now[0] = 1010.0
    assert deliverer.run_once(store.conn)[0].failed
    # Second failure: 20 s, capped at 15.
    assert sql.sink_state(store.conn, sink="fake").next_attempt_us == 1025 * 1_000_000
    now[0] = 1025.0
    done = deliverer.run_once(store.conn)[0]
    assert (done.delivered, done.backlog) == (3, 0)
    assert [a for a, _, _ in sink.sent] == [r.alert_id for r in rows]
    state = sql.sink_state(store.conn, sink="fake")
    assert (state.failures, state.failed_total, state.delivered_total) == (0, 2, 3)


def test_filters_by_severity(store: Store, add_alerts: AddAlerts) -> None:
    add_alerts(1, severity="low")
    add_alerts(1, start=1, severity="high")
    sink = FakeSink()
    outputs = [{"type": "http", "name": "fake", "url": "http://x", "min_severity": "medium"}]
    deliverer = Deliverer.from_settings(
        SinksSettings.model_validate({"outputs": outputs}), sinks=[sink]
    )
    deliverer.run_once(store.conn)
    assert [a for a, _, _ in sink.sent] == ["al-1"]


def test_the_backlog_is_bounded_and_measured(store: Store, add_alerts: AddAlerts) -> None:
    add_alerts(5)
    sink = FakeSink(failures=100)
    deliverer = _deliverer(sink, backlog_warn=2, backlog_max=3)
    report = deliverer.run_once(store.conn)[0]
    assert (report.dropped, report.backlog, report.failed) == (2, 3, True)
    sink.failures = 0
    deliverer.run_once(store.conn)
    assert [a for a, _, _ in sink.sent] == ["al-2", "al-3", "al-4"]
    text = prometheus(store.conn, deliverer)
    assert 'tokentrail_sink_backlog{sink="fake"} 0' in text
    assert 'tokentrail_sink_dropped_total{sink="fake"} 2' in text
    assert 'tokentrail_sink_delivered_total{sink="fake"} 3' in text
    assert 'tokentrail_sink_failed_total{sink="fake"} 1' in text


def test_a_delivery_thread_runs_beside_the_writer(store: Store, add_alerts: AddAlerts) -> None:
    sink = FakeSink()
    thread = DeliveryThread(store.conn, _deliverer(sink, poll_interval_s=0.05)).start()
    try:
        add_alerts(2)  # written on the main connection while the thread polls
        assert sink.delivered.wait(30)
        for _ in range(600):
            if len(sink.sent) == 2:
                break
            sink.delivered.clear()
            sink.delivered.wait(0.05)
    finally:
        thread.stop()
    assert sorted(a for a, _, _ in sink.sent) == ["al-0", "al-1"]
