"""Coverage-guided fuzzing (atheris) of the event decoder and the adapters' record mapping.

    .venv/bin/python bench/fuzz/fuzz_events.py -runs=1000                      # smoke run
    .venv/bin/python bench/fuzz/fuzz_events.py bench/fuzz/corpus/events -max_total_time=300
    FUZZ_TARGET=adapters .venv/bin/python bench/fuzz/fuzz_events.py bench/fuzz/corpus/adapters \\
        -max_total_time=300
    .venv/bin/python bench/fuzz/fuzz_events.py --seed-corpus   # (re)write the seed corpus

A target may raise `InvalidEventError` (the input is rejected with a reason); anything else is a
crash, which libFuzzer saves as `crash-<sha1>`: copy it into the corpus as a regression input
(tests/hardening/test_fuzz_corpus.py replays the corpus in CI, without atheris).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import msgspec

    from tokentrail.config import AdapterSettings
    from tokentrail.events import EventDecoder, InvalidEventError
    from tokentrail.ingest.adapters import Mapped
    from tokentrail.ingest.formats import FORMATS, detect

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
FIXTURES = HERE.parent.parent / "tests" / "fixtures"
DECODER = EventDecoder(salt=b"atheris", max_bytes=64 * 1024)
ADAPTERS = {name: f.build(AdapterSettings()) for name, f in FORMATS.items() if f.adapter}


def events_target(data: bytes) -> None:
    """The decoder and validation on raw bytes; what it accepts must re-encode and redecode."""
    try:
        event = DECODER.decode(data)
    except InvalidEventError:
        return
    if event.redacted_raw is not None:
        DECODER.decode(event.redacted_raw)
    msgspec.json.encode(event.wire)


def adapters_target(data: bytes) -> None:
    """Format detection, then the adapter (the detected one, else by the first byte)."""
    found = detect(data)
    names = sorted(ADAPTERS)
    name = found.name if found and found.adapter else names[data[0] % len(names) if data else 0]
    adapter = ADAPTERS[name]
    assert adapter is not None
    try:
        items = adapter(data)
    except InvalidEventError:
        return
    for item in items:
        if isinstance(item, Mapped):
            with contextlib.suppress(InvalidEventError):
                DECODER.decode(item.event)


TARGETS = {"events": events_target, "adapters": adapters_target}


def seed_corpus() -> None:
    """A few dozen small seeds: factory events and odd edges, and cut-down real fixtures."""
    sys.path.insert(0, str(HERE.parent.parent / "tests"))
    from factories import call, encode

    seeds = [
        encode(call()),
        encode(call(token={"kind": "oauth", "scopes": ["a:read"], "parent_token_id": "t0"})),
        encode(call(token={"expires_at": "2026-03-02T10:00:00+05:45", "audience": ["a", "b"]})),
        encode(call(attributes={"password": "p", "h": {"x": "Bearer ghp_" + "a" * 36}})),
        encode(call(ts="2026-03-02T09:00:00.123456Z", status=403, outcome="denied")),
        encode(call(ts=100_000_000_000)),
        encode(call(ts="2999-12-31T23:59:59Z")),
        encode(call(token_id="AKIAIOSFODNN7EXAMPLE", bytes_out=2**63 - 1)),
        encode(call(source="\u202eevil", target="\U0001f600", identity="a\x00b")),
        encode(call(attributes={"k": "QQ"})).replace(b'"QQ"', b'"\\ud800"'),
        encode(call(attributes={"k": "QQ"})).replace(b"QQ", b"\xff"),
        b"[" * 1200 + b"]" * 1200,
        b'{"event_id": "x", "ts": 1',
        b"",
    ]
    for fmt in ("cloudtrail", "otlp", "zipkin"):
        for path in sorted((FIXTURES / fmt).glob("*.json"))[:6]:
            data = path.read_bytes()
            if len(data) <= 16_384:
                seeds.append(msgspec.json.encode(msgspec.json.decode(data)))
    for name, target in (("events", seeds[:14]), ("adapters", seeds[:3] + seeds[11:])):
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for seed in target:
            (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def main() -> None:
    if "--seed-corpus" in sys.argv:
        seed_corpus()
        return
    target = TARGETS[os.environ.get("FUZZ_TARGET", "events")]
    sys.setrecursionlimit(1000)  # what production runs with: deep input must not need more
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
