"""Where a world goes: `events.jsonl` + `labels.json` + `catalog.toml`, or a Kafka topic.

Both paths number the events in time order and collect the labels as the stream passes, so
neither holds the events in memory: only the ids of malicious events are kept.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from tokentrail.simulate.attacks import Attack
from tokentrail.simulate.core import BENIGN, SimEvent, SimulationError, fmt_ts
from tokentrail.simulate.world import World

log = logging.getLogger(__name__)

EVENTS_FILE: Final = "events.jsonl"
LABELS_FILE: Final = "labels.json"
CATALOG_FILE: Final = "catalog.toml"

_FLUSH_BYTES: Final = 1 << 20
_PROGRESS_EVERY: Final = 1 << 14

Progress = Callable[[int, int], None]
"""Called now and then with (events so far, event time reached in ms)."""


@dataclass
class _Found:
    """What the stream showed of one attack."""

    event_ids: list[str] = field(default_factory=list)
    first_ms: int | None = None
    last_ms: int = 0
    tokens: set[str] = field(default_factory=set)
    identities: set[str] = field(default_factory=set)

    def add(self, event_id: str, ts: int, event: SimEvent) -> None:
        self.event_ids.append(event_id)
        if self.first_ms is None:
            self.first_ms = ts
        self.last_ms = ts
        self.tokens.add(event.token_id)
        self.identities.add(event.identity)


@dataclass
class Summary:
    """The outcome of one run, for the summary line and for callers of the module API."""

    events: int
    malicious: int
    attacks: int
    changes: int
    seconds: float
    labels: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.events / max(self.seconds, 1e-9)


def _labels(world: World, found: list[_Found], events: int) -> dict[str, Any]:
    spec = world.spec
    attacks = []
    for n, (attack, seen) in enumerate(zip(world.attacks, found, strict=True), start=1):
        if seen.first_ms is None:
            # Placed so late that the world ended first: nothing to label.
            log.warning("attack %s produced no event inside the world", attack.family)
            continue
        attacks.append(_attack_label(n, attack, seen))
    return {
        "seed": spec.seed,
        "start": fmt_ts(world.start_ms),
        "end": fmt_ts(world.end_ms),
        "days": spec.days,
        "scale": spec.scale,
        "warmup_end": fmt_ts(world.warm_end_ms),
        "events": events,
        "attacks": attacks,
        "benign_changes": [
            {
                "id": change.id,
                "kind": change.kind,
                "title": change.title,
                "start": fmt_ts(change.start_ms),
                "end": fmt_ts(min(change.end_ms, world.end_ms)),
                "identities": list(change.identities),
                "targets": list(change.targets),
            }
            for change in world.changes
        ],
    }


def _attack_label(n: int, attack: Attack, seen: _Found) -> dict[str, Any]:
    assert seen.first_ms is not None
    return {
        "id": f"attack-{n}",
        "family": attack.family,
        "title": attack.title,
        "start": fmt_ts(seen.first_ms),
        "end": fmt_ts(seen.last_ms),
        "event_ids": seen.event_ids,
        "token_ids": sorted(seen.tokens),
        "identities": sorted(seen.identities),
        "mitre": list(attack.mitre),
        "owasp_nhi": list(attack.owasp_nhi),
    }


def _run(
    world: World, emit: Callable[[list[SimEvent]], None], progress: Progress | None
) -> tuple[int, list[_Found]]:
    """Number and time-stamp every event, emit them a chunk at a time, and collect what each
    attack did. Runs once per event, hence the by-hand loop."""
    found = [_Found() for _ in world.attacks]
    prefix = world.id_prefix
    count = 0
    next_progress = _PROGRESS_EVERY
    for chunk in world.chunks():
        for ts, _, event, label in chunk:
            count += 1
            event.event_id = f"{prefix}{count:010d}"
            event.ts = fmt_ts(ts)
            if label != BENIGN:
                found[label].add(event.event_id, ts, event)
        emit([item[2] for item in chunk])
        if progress is not None and count >= next_progress:
            progress(count, chunk[-1][0])
            next_progress = count + _PROGRESS_EVERY
    if progress is not None:
        progress(count, world.end_ms)
    return count, found


def write_world(world: World, out: Path, *, progress: Progress | None = None) -> Summary:
    """Write `events.jsonl`, `labels.json` and `catalog.toml` into directory `out`.

    Example: ``write_world(World(WorldSpec(days=1, scale=0.2)), Path("sim"))``
    """
    started = time.perf_counter()
    _prepare(out)
    events_path = out / EVENTS_FILE
    partial = out / (EVENTS_FILE + ".partial")
    encode_lines = msgspec.json.Encoder().encode_lines
    try:
        with partial.open("wb", buffering=_FLUSH_BYTES) as sink:

            def emit(events: list[SimEvent]) -> None:
                sink.write(encode_lines(events))

            count, found = _run(world, emit, progress)
        # Readers never see half a file under the final name.
        partial.replace(events_path)
    except OSError as exc:
        raise SimulationError(f"cannot write {out}: {exc.strerror or exc}") from None
    labels = _labels(world, found, count)
    _write_sidecars(world, out, labels)
    return _summary(world, count, labels, started)


def _prepare(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimulationError(f"cannot create {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK):
        raise SimulationError(f"cannot write into {out}")


def _write_sidecars(world: World, out: Path, labels: dict[str, Any]) -> None:
    try:
        (out / LABELS_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(labels)) + b"\n")
        (out / CATALOG_FILE).write_text(world.catalog_toml())
    except OSError as exc:
        raise SimulationError(f"cannot write into {out}: {exc.strerror or exc}") from None


def _summary(world: World, count: int, labels: dict[str, Any], started: float) -> Summary:
    attacks = labels["attacks"]
    return Summary(
        events=count,
        malicious=sum(len(a["event_ids"]) for a in attacks),
        attacks=len(attacks),
        changes=len(world.changes),
        seconds=time.perf_counter() - started,
        labels=labels,
    )


def stream_kafka(
    world: World,
    bootstrap: str,
    topic: str,
    *,
    rate: float | None = None,
    out: Path | None = None,
    progress: Progress | None = None,
    connect_timeout_s: float = 10.0,
) -> Summary:
    """Produce the world to `topic`, keyed by identity, at `rate` events/s (None: flat out).

    The stream is the file's, event for event; `out`, if given, receives the labels and the
    catalog (not the events).

    Example: ``stream_kafka(World(WorldSpec()), "127.0.0.1:9092", "api-calls", rate=5000)``
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, KafkaTimeoutError

    if rate is not None and rate <= 0:
        raise SimulationError(f"--rate must be positive, got {rate:g}")
    if out is not None:
        _prepare(out)
    started = time.perf_counter()
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="tokentrail-simulate",
            acks=1,
            linger_ms=20,
            batch_size=512 * 1024,
            max_request_size=4 << 20,
            bootstrap_timeout_ms=int(connect_timeout_s * 1000),
            max_block_ms=int(max(connect_timeout_s, 30) * 1000),
        )
    except KafkaTimeoutError:
        raise SimulationError(
            f"no Kafka broker reachable at {bootstrap} after {connect_timeout_s:g} s"
        ) from None
    except KafkaError as exc:
        raise SimulationError(f"cannot connect to Kafka at {bootstrap}: {exc}") from None
    failures: list[BaseException] = []
    encode = msgspec.json.Encoder().encode
    pacer = Pacer(rate)

    def failed(exc: BaseException) -> None:
        failures.append(exc)

    def emit(events: list[SimEvent]) -> None:
        if failures:
            raise SimulationError(f"Kafka refused an event for {topic}: {failures[0]}")
        for event in events:
            future = producer.send(topic, key=event.identity.encode(), value=encode(event))
            future.add_errback(failed)
            pacer.tick()

    try:
        count, found = _run(world, emit, progress)
        producer.flush(timeout=max(60.0, connect_timeout_s))
    except KafkaError as exc:
        raise SimulationError(f"producing to Kafka at {bootstrap} failed: {exc}") from None
    finally:
        producer.close(timeout=5)
    if failures:
        raise SimulationError(f"Kafka refused {len(failures):,} events for {topic}: {failures[0]}")
    labels = _labels(world, found, count)
    if out is not None:
        _write_sidecars(world, out, labels)
    return _summary(world, count, labels, started)


class Pacer:
    """Keeps a producer at `rate` events per second on average, in steps of ~10 ms."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.sent = 0
        self.step = 1 if rate is None else max(1, int(rate / 100))
        self.started = time.monotonic()

    def tick(self) -> None:
        self.sent += 1
        if self.rate is None or self.sent % self.step:
            return
        ahead = self.sent / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)
