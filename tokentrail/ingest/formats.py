"""Input formats: the native event contract, and the adapters that map other formats onto it.

A format recognises its own records (`detect`) and, unless it is the native `events` format,
builds an adapter that turns one record into contract events (see `tokentrail.ingest.adapters`).
Files are detected once, from their first records; Kafka messages one by one (native first, so
the native path pays nothing for detection).

>>> detect(b'{"Records": [{"eventID": "e1"}]}').name
'cloudtrail'
>>> detect(b'[{"traceId": "a1", "id": "b2"}]').name
'zipkin'
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from tokentrail.config import AdapterSettings
from tokentrail.ingest.adapters import DECODE_ERRORS, Adapter, Item, cloudtrail, otlp, zipkin
from tokentrail.ingest.files import RecordFile

__all__ = ["AUTO", "EVENTS", "FORMATS", "Format", "adapt_file", "detect", "file_records"]

AUTO: Final = "auto"
EVENTS: Final = "events"
# Records read to find a recognisable one before a file's format is settled.
SNIFF_LIMIT: Final = 100


class Probe(msgspec.Struct, gc=False):
    """The keys that tell the formats apart; everything else in a record is skipped unread."""

    event_id: msgspec.Raw = msgspec.Raw()
    Records: msgspec.Raw = msgspec.Raw()
    resourceSpans: msgspec.Raw = msgspec.Raw()  # noqa: N815 (the formats' own names)
    eventSource: msgspec.Raw = msgspec.Raw()  # noqa: N815
    eventName: msgspec.Raw = msgspec.Raw()  # noqa: N815
    detail_type: str | None = msgspec.field(default=None, name="detail-type")
    traceId: msgspec.Raw = msgspec.Raw()  # noqa: N815
    id: msgspec.Raw = msgspec.Raw()


@dataclass(frozen=True, slots=True)
class Format:
    """One input format: how to recognise a record of it, and how to map it (None: native)."""

    name: str
    description: str
    # Whether a record (as a probe; `in_array`: it is the first item of a JSON array) is ours.
    recognises: Callable[[Probe, bool], bool]
    adapter: Callable[[bytes, AdapterSettings], list[Item]] | None = None
    # A JSON array is one record (a Zipkin trace), not a list of records.
    whole_arrays: bool = False

    def build(self, settings: AdapterSettings) -> Adapter | None:
        """The adapter for this format with `settings`; None for native events."""
        adapter = self.adapter
        if adapter is None:
            return None

        def adapt(record: bytes) -> list[Item]:
            return adapter(record, settings)

        return adapt


def _has(*values: msgspec.Raw) -> bool:
    return all(len(value) and bytes(value) != b"null" for value in values)


def _is_events(probe: Probe, in_array: bool) -> bool:
    return not in_array and _has(probe.event_id)


def _is_cloudtrail(probe: Probe, in_array: bool) -> bool:
    if _has(probe.eventSource, probe.eventName):
        return True
    if in_array:
        return False
    return _has(probe.Records) or "CloudTrail" in (probe.detail_type or "")


def _is_otlp(probe: Probe, in_array: bool) -> bool:
    return not in_array and _has(probe.resourceSpans)


def _is_zipkin(probe: Probe, in_array: bool) -> bool:
    return _has(probe.traceId, probe.id)


FORMATS: Final[dict[str, Format]] = {
    f.name: f
    for f in (
        Format(EVENTS, "tokentrail events (the contract, DESIGN.md §2)", _is_events),
        Format(
            cloudtrail.NAME,
            "AWS CloudTrail records, S3 delivery files, EventBridge events",
            _is_cloudtrail,
            cloudtrail.adapt,
        ),
        Format(otlp.NAME, "OpenTelemetry OTLP/JSON trace exports", _is_otlp, otlp.adapt),
        Format(zipkin.NAME, "Zipkin v2 JSON span arrays", _is_zipkin, zipkin.adapt, True),
    )
}

_decode_probe: Final = msgspec.json.Decoder(Probe | list[msgspec.Raw]).decode
_decode_item: Final = msgspec.json.Decoder(Probe).decode


def detect(record: bytes) -> Format | None:
    """The format `record` is in, from its keys (or its first item's); None if none fits."""
    try:
        probe = _decode_probe(record)
        in_array = isinstance(probe, list)
        if isinstance(probe, list):
            if not probe:
                return None
            probe = _decode_item(probe[0])
    except DECODE_ERRORS:
        return None
    return next((f for f in FORMATS.values() if f.recognises(probe, in_array)), None)


def _first_is_zipkin(item: bytes) -> bool:
    found = detect(item)
    return found is not None and found.name == zipkin.NAME


def file_records(source: RecordFile, fmt: str) -> tuple[str, Iterator[tuple[int, bytes]]]:
    """The records of a file and their format: `fmt`, or for `auto` what its first records are.

    A file whose first records fit no format is read as native events (their dead letters then
    give the contract's reasons).
    """
    if fmt != AUTO:
        whole = FORMATS[fmt].whole_arrays
        return fmt, source.records(whole_array=(lambda _: True) if whole else None)
    records = source.records(whole_array=_first_is_zipkin)
    head = list(itertools.islice(records, SNIFF_LIMIT))
    found = next((f for f in map(detect, (raw for _, raw in head)) if f is not None), None)
    return (found.name if found else EVENTS), itertools.chain(head, records)


def adapt_records(records: Iterable[bytes], fmt: str, settings: AdapterSettings) -> list[Item]:
    """Every item the adapter of `fmt` makes of `records` (for benchmarks and notebooks)."""
    adapter = FORMATS[fmt].build(settings)
    if adapter is None:
        raise ValueError(f"{fmt} is the native format: it has no adapter")
    items: list[Item] = []
    for record in records:
        items.extend(adapter(record))
    return items


def adapt_file(
    path: str | Path, fmt: str = AUTO, settings: AdapterSettings | None = None
) -> tuple[str, list[Item]]:
    """A whole file mapped by its adapter: (format, items), as `tokentrail ingest` reads it.

    >>> fmt, items = adapt_file("tests/fixtures/zipkin/yelp.json")  # doctest: +SKIP
    """
    name, records = file_records(RecordFile(str(path)), fmt)
    return name, adapt_records((raw for _, raw in records), name, settings or AdapterSettings())
