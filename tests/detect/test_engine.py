"""The engine: replay equivalence, warm-up, policy, rotation, suppression, broken detectors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from factories import T0_MS, call

from tokentrail.batch import Batch
from tokentrail.catalog import Catalog, load_catalog
from tokentrail.config import Settings
from tokentrail.detect.engine import Detection
from tokentrail.detect.model import Call, Detector, Finding
from tokentrail.detect.registry import DETECTORS
from tokentrail.detect.rules import parse_rules
from tokentrail.ingest.pipeline import Pipeline
from tokentrail.store import BatchResult, Store
from tokentrail.store.alerts import list_alerts, set_status, superseded_alerts

HOUR_MS = 3_600_000
SVC = "spiffe://prod/ns/billing/sa/invoicer"


def feed(store: Store, engine: Detection | None, lines: Sequence[bytes], size: int) -> None:
    """Lines through the real pipeline in batches of `size`, detecting after each batch."""
    with Pipeline(store, Settings(), hooks=[engine.on_batch] if engine else []) as pipeline:
        batch = Batch("file", "test")
        for n, line in enumerate(lines, start=1):
            pipeline.feed(batch, line, None, n)
            if len(batch) >= size:
                pipeline.write(batch)
                batch = Batch("file", "test")
        if len(batch):
            pipeline.write(batch)
    if engine is not None:
        engine.finish()


def comparable(store: Store) -> list[tuple[Any, ...]]:
    superseded = superseded_alerts(store.conn)  # closed, in place of another
    return sorted(
        (
            a.alert_id,
            a.detector,
            a.dedupe_key,
            a.severity,
            a.score,
            a.title,
            a.occurrences,
            tuple(a.event_ids),
            a.first_seen_us,
            a.last_seen_us,
            tuple(a.targets),
            repr(sorted(a.evidence.items())),
            a.status,
        )
        for a in list_alerts(store.conn)
        if a.alert_id not in superseded
    )


def test_alerts_do_not_depend_on_batching_or_backfill(world: Path, tmp_path: Path) -> None:
    lines = (world / "events.jsonl").read_bytes().splitlines()
    catalog = load_catalog(world / "catalog.toml")
    results = []
    for name, size, live in (("once", len(lines), True), ("small", 3_001, True),
                             ("backfill", 7_919, False)):  # fmt: skip
        with Store.open(tmp_path / f"{name}.duckdb") as store:
            engine = Detection(store, catalog=catalog)
            feed(store, engine if live else None, lines, size)
            if not live:
                engine.finish()
            again = Detection(store, catalog=catalog).finish()
            assert again.alerts_new == 0 and again.alerts_updated == 0  # nothing duplicated
            results.append(comparable(store))
    assert results[0], "the world's attacks raise alerts"
    assert results[0] == results[1] == results[2]


def lines_of(events: list[dict[str, Any]]) -> list[bytes]:
    from factories import encode

    return [encode(e) for e in events]


def run(tmp_path: Path, events: list[dict[str, Any]], **engine: Any) -> Store:
    store = Store.open(tmp_path / "t.duckdb")
    feed(store, Detection(store, **engine), lines_of(events), 1_000)
    return store


def routine(hours: int, *, token: str = "tok-1", every_min: int = 10) -> list[dict[str, Any]]:
    """An invoicer reading the ledger every few minutes for `hours`, with one address."""
    return [
        call(ts=T0_MS + m * 60_000, token_id=token, source_ip="10.0.0.1", event_id=f"r-{token}-{m}")
        for m in range(0, hours * 60, every_min)
    ]


def test_novelty_waits_for_warm_up_then_fires(tmp_path: Path) -> None:
    early = call(ts=T0_MS + 2 * HOUR_MS, target="hr-db", scope="hr:read", event_id="early")
    late = call(ts=T0_MS + 30 * HOUR_MS, target="payments-db", scope="payments:read",
                event_id="late")  # fmt: skip
    events = sorted([*routine(31), early, late], key=lambda e: e["ts"])
    store = run(tmp_path, events)
    reach = [a for a in list_alerts(store.conn) if a.detector == "unexpected_reach"]
    assert [a.targets for a in reach] == [["payments-db"]]
    assert reach[0].event_ids == ["late"]


def test_policy_fires_from_the_first_event(tmp_path: Path) -> None:
    catalog = Catalog.model_validate(
        {
            "identity": [
                {"name": SVC, "allowed_targets": ["ledger-api"], "allowed_scopes": ["ledger:read"]}
            ]
        }
    )
    events = [call(ts=T0_MS, event_id="first", target="payments-db", scope="ledger:read")]
    store = run(tmp_path, events, catalog=catalog)
    reach = [a for a in list_alerts(store.conn) if a.detector == "unexpected_reach"]
    assert len(reach) == 1 and reach[0].event_ids == ["first"]
    assert reach[0].evidence["basis"] == "policy"


def test_token_rotation_is_not_novelty(tmp_path: Path) -> None:
    events = routine(30, token="tok-a") + [
        {**e, "event_id": f"b-{n}", "ts": e["ts"] + 30 * HOUR_MS}
        for n, e in enumerate(routine(10, token="tok-b"))
    ]
    store = run(tmp_path, events)
    assert list_alerts(store.conn) == []


def test_repeats_update_one_alert(tmp_path: Path) -> None:
    catalog = Catalog.model_validate(
        {"identity": [{"name": SVC, "allowed_targets": ["ledger-api"]}]}
    )
    events = [
        call(ts=T0_MS + n * 60_000, target="payments-db", event_id=f"p-{n}") for n in range(5)
    ]
    store = Store.open(tmp_path / "t.duckdb")
    feed(store, Detection(store, catalog=catalog), lines_of(events), 2)
    (alert,) = [a for a in list_alerts(store.conn) if a.detector == "unexpected_reach"]
    assert alert.occurrences == 5
    assert alert.event_ids == [f"p-{n}" for n in range(5)]
    assert alert.last_seen_us - alert.first_seen_us == 4 * 60_000_000


def test_a_replayed_token_is_one_alert(tmp_path: Path) -> None:
    events = routine(30) + [
        call(
            ts=T0_MS + 30 * HOUR_MS + n * 60_000,
            token_id="tok-1",
            source_ip="198.51.100.9",
            event_id=f"replay-{n}",
        )
        for n in range(5)
    ]
    store = run(tmp_path, events)
    (alert,) = [a for a in list_alerts(store.conn) if a.detector == "token_replay"]
    assert alert.event_ids == ["replay-0"]  # later calls from that address are known now


@pytest.mark.parametrize(
    ("addresses", "alerts"),
    [
        (["10.0.0.7", "10.0.0.99", "10.0.0.250"], 0),  # pods moving inside one /24
        (["2001:db8:1:2::5", "2001:db8:1:ff::9"], 0),  # one IPv6 /48
        (["10.0.0.7", "10.9.0.7"], 1),  # a second network
    ],
)
def test_a_token_moving_inside_its_network_is_not_a_replay(
    tmp_path: Path, addresses: list[str], alerts: int
) -> None:
    first = {"2001": "2001:db8:1:2::1"}.get(addresses[0][:4], "10.0.0.1")
    events = [{**e, "source_ip": first} for e in routine(30)] + [
        call(
            ts=T0_MS + 30 * HOUR_MS + n * 60_000,
            token_id="tok-1",
            source_ip=address,
            event_id=f"moved-{n}",
        )
        for n, address in enumerate(addresses)
    ]
    store = run(tmp_path, events)
    assert len([a for a in list_alerts(store.conn) if a.detector == "token_replay"]) == alerts


def test_suppression_keeps_the_alert_out_of_the_way(tmp_path: Path) -> None:
    rules = parse_rules(
        '[[suppress]]\ndetector = "token_replay"\nidentity = "spiffe://prod/*"\n'
        'reason = "pentest SEC-1"\n'
    )
    events = [
        *routine(30),
        call(
            ts=T0_MS + 30 * HOUR_MS, token_id="tok-1", source_ip="198.51.100.9", event_id="replay"
        ),
    ]
    store = run(tmp_path, events, rules=rules)
    (alert,) = list_alerts(store.conn)
    assert alert.status == "suppressed" and alert.suppressed_by == "pentest SEC-1"


class Broken(Detector):
    id = "broken"
    title = "always throws"
    severity = "low"
    mitre = ()
    owasp_nhi = ()
    runbook = ""
    examples = ()

    def detect(self, calls: Sequence[Call]) -> Iterator[Finding]:
        raise RuntimeError("boom")


def test_a_crashing_detector_does_not_stop_ingestion(tmp_path: Path) -> None:
    events = [
        *routine(30),
        call(
            ts=T0_MS + 30 * HOUR_MS, token_id="tok-1", source_ip="198.51.100.9", event_id="replay"
        ),
    ]
    store = Store.open(tmp_path / "t.duckdb")
    engine = Detection(store, detectors=[Broken(), DETECTORS["token_replay"]()])
    feed(store, engine, lines_of(events), 50)
    assert store.stats()["events"] == len(events)
    assert [a.detector for a in list_alerts(store.conn)] == ["token_replay"]
    assert engine.totals.errors["broken"] >= 1
    (count,) = store.conn.execute("SELECT count(*) FROM detect_errors").fetchall()[0]
    assert count == engine.totals.errors["broken"]


def test_custom_sql_rule(tmp_path: Path) -> None:
    rules = parse_rules(
        '[[rule]]\nid = "custom.hr_reads"\ntitle = "HR read"\nseverity = "low"\n'
        'key = ["identity"]\nsql = "SELECT * FROM window_events WHERE target = \'hr-db\'"\n'
    )
    events = [call(ts=T0_MS + n * 1000, target="hr-db", event_id=f"hr-{n}") for n in range(3)]
    store = run(tmp_path, events, rules=rules)
    (alert,) = [a for a in list_alerts(store.conn) if a.detector == "custom.hr_reads"]
    assert alert.occurrences == 3 and alert.event_ids == ["hr-0", "hr-1", "hr-2"]


def test_late_events_are_still_detected(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "t.duckdb")
    engine = Detection(store)
    feed(store, engine, lines_of(routine(30)), 1_000)
    late = call(
        ts=T0_MS + 29 * HOUR_MS, token_id="tok-1", source_ip="198.51.100.9", event_id="late"
    )
    feed(store, engine, lines_of([late]), 1_000)
    (alert,) = list_alerts(store.conn)
    assert alert.event_ids == ["late"]
    assert engine.totals.late == 1


@pytest.mark.parametrize("severity", ["high", "critical"])
def test_evaluate_meets_the_recall_target(world: Path, tmp_path: Path, severity: str) -> None:
    from tokentrail.detect.evaluate import evaluate, load_labels

    store = Store.open(tmp_path / "e.duckdb")
    feed(store, Detection(store, catalog=load_catalog(world / "catalog.toml")),
         (world / "events.jsonl").read_bytes().splitlines(), 50_000)  # fmt: skip
    result = evaluate(store.conn, labels=load_labels(world / "labels.json"))
    assert result.tokentrail.recall >= 0.95
    assert result.tokentrail.false_per_day_by_severity[severity] == 0
    assert result.tokentrail.false_per_day <= 3
    assert all(c.max_severity in (None, "info", "low") for c in result.benign_changes)


def test_a_failed_pass_is_one_log_line_and_ingestion_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.duckdb"
    with Store.open(path) as store:
        feed(store, None, lines_of(routine(24 * 30)), 10_000)
    # Too little memory for a pass: it fails as a whole, the events stay pending.
    with Store.open(path, memory_limit="8MB") as store:
        engine = Detection(store)
        caplog.set_level("DEBUG", logger="tokentrail.detect.engine")
        engine.on_batch(Batch("file", "test"), BatchResult(1, 0, 0, 0))
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.getMessage().startswith("detection pass failed, events stay pending: ")
    assert "Out of Memory Error" in error.getMessage()
    assert "\n" not in error.getMessage()
    assert error.exc_info is None
    assert any(r.levelname == "DEBUG" and r.exc_info for r in caplog.records)
    assert engine.totals.errors == {"engine": 1}


def _shared_token_world() -> list[dict[str, Any]]:
    """A personal access token pasted into three workloads (one identity each, so three Kafka
    partitions), next to a busy service whose traffic moves the watermark on."""
    pat = {"kind": "personal-access-token"}  # no expiry: a lifetime finding on its first use
    users = [
        ("spiffe://dev/ns/inventory/sa/inventory-api", "dev", "10.40.0.6", 10),
        ("spiffe://prod/ns/analytics/sa/reports-worker", "prod", "10.20.0.13", 14),
        ("spiffe://staging/ns/notifications/sa/notifications", "staging", "10.30.0.8", 16),
    ]
    events = [
        call(ts=T0_MS + m * 60_000, token_id="tok-busy", source_ip="10.0.0.1", event_id=f"b-{m}")
        for m in range(0, 180, 3)
    ]
    for identity, env, ip, start in users:
        name = identity.rsplit("/", 1)[1]
        events += [
            call(
                ts=T0_MS + (start + 20 * n) * 60_000,
                event_id=f"{name}-{n}",
                token_id="pat-1",
                identity=identity,
                source=name,
                environment=env,
                source_ip=ip,
                target="orders-api",
                **({"token": pat} if n == 0 else {}),
            )
            for n in range(8)
        ]
    # A token idle for 40 days, then picked up by two other workloads: dormancy is judged on the
    # use right after the gap, whichever partition brings it.
    for n, (identity, env, ip, _) in enumerate(users[1:], start=1):
        events.append(
            call(
                ts=T0_MS + (18 + 2 * n) * 60_000,
                event_id=f"old-{n}",
                token_id="tok-old",
                identity=identity,
                environment=env,
                source_ip=ip,
            )
        )
    events.append(call(ts=T0_MS - 40 * 86_400_000, event_id="old-0", token_id="tok-old"))
    return events


def _partitions(events: list[dict[str, Any]], *ahead: str) -> list[dict[str, Any]]:
    """The events as a consumer reads a topic keyed by identity when the partitions of the
    identities named in `ahead` are read first, one after the other, and the others lag by
    hours: each identity's events stay in order, across identities they do not."""
    parts = [[e for e in events if name in e["identity"]] for name in ahead]
    rest = [e for e in events if not any(name in e["identity"] for name in ahead)]
    return [e for part in [*parts, rest] for e in sorted(part, key=lambda e: e["ts"])]


@pytest.mark.parametrize(
    ("ahead", "size"),
    [
        # The token's last user read first: its first use comes late.
        pytest.param(("notifications",), 8, id="last-user-ahead"),
        # The middle one: an earlier use and a later one come late.
        pytest.param(("reports-worker",), 8, id="middle-user-ahead"),
        pytest.param(("notifications", "reports-worker"), 5, id="two-ahead"),
        # Late events, but the token's uses in order among themselves.
        pytest.param(("invoicer",), 9, id="other-identity-ahead"),
    ],
)
def test_first_use_findings_do_not_depend_on_partition_order(
    tmp_path: Path, ahead: tuple[str, ...], size: int
) -> None:
    events = _shared_token_world()
    in_order = sorted(events, key=lambda e: (e["ts"], e["event_id"]))
    stores = []
    for name, order, batch in (("sorted", in_order, len(events)),
                               ("skewed", _partitions(events, *ahead), size)):  # fmt: skip
        store = Store.open(tmp_path / f"{name}.duckdb")
        engine = Detection(store)
        feed(store, engine, lines_of(order), batch)
        stores.append((store, engine))
    (reference, _), (skewed, engine) = stores
    expected = comparable(reference)
    assert {a[2] for a in expected} >= {"pat-1", "pat-1|ttl", "tok-old", "tok-old|dormant"}
    assert engine.totals.late > 0  # the lagging partitions were processed late
    assert comparable(skewed) == expected


def test_a_re_decided_alert_keeps_its_triage(tmp_path: Path) -> None:
    order = _partitions(_shared_token_world(), "notifications")
    store = Store.open(tmp_path / "t.duckdb")
    engine = Detection(store)
    feed(store, engine, lines_of(order[:8]), 8)  # only the notifications partition so far
    (ttl,) = [a for a in list_alerts(store.conn) if a.dedupe_key == "pat-1|ttl"]
    assert ttl.event_ids == ["notifications-0"]
    set_status(store.conn, alert_id=ttl.alert_id, status="acknowledged")
    feed(store, engine, lines_of(order[8:]), 8)  # the lagging partitions, inventory's first use
    first = ttl.alert_id
    superseded = superseded_alerts(store.conn)
    (ttl,) = [
        a
        for a in list_alerts(store.conn)
        if a.dedupe_key == "pat-1|ttl" and a.alert_id not in superseded
    ]
    assert ttl.event_ids == ["inventory-api-0"]
    assert ttl.status == "acknowledged"
    # The alert an analyst saw first is closed, not gone: sinks and the history say why.
    assert first != ttl.alert_id and first in superseded
    (old,) = [a for a in list_alerts(store.conn) if a.alert_id == first]
    assert old.status == "closed"
