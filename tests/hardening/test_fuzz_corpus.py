"""The atheris seed corpus and kept crashers (bench/fuzz/corpus), replayed without atheris.

Each input goes through the decoder and through every adapter (and format detection): nothing but
`InvalidEventError` may come out, so a fixed crasher stays fixed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tokentrail.config import AdapterSettings
from tokentrail.events import EventDecoder, InvalidEventError
from tokentrail.ingest.adapters import Mapped
from tokentrail.ingest.formats import FORMATS, detect

CORPUS = Path(__file__).resolve().parent.parent.parent / "bench" / "fuzz" / "corpus"
INPUTS = sorted(p for p in CORPUS.rglob("*") if p.is_file())
DECODER = EventDecoder(salt=b"corpus", max_bytes=64 * 1024)


def test_the_corpus_is_there_and_small() -> None:
    assert 20 <= len(INPUTS) <= 200
    assert sum(p.stat().st_size for p in INPUTS) < 512 * 1024


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name[:12]}")
def test_corpus_input_is_rejected_or_accepted_never_raised(path: Path) -> None:
    data = path.read_bytes()
    try:
        event = DECODER.decode(data)
        if event.redacted_raw is not None:
            DECODER.decode(event.redacted_raw)
    except InvalidEventError:
        pass
    detect(data)
    for fmt in FORMATS.values():
        adapter = fmt.build(AdapterSettings())
        if adapter is None:
            continue
        try:
            items = adapter(data)
        except InvalidEventError:
            continue
        for item in items:
            if isinstance(item, Mapped):
                with contextlib.suppress(InvalidEventError):
                    DECODER.decode(item.event)
