"""`--format auto`: what each input is, per file (from its first records) and per Kafka message;
and the file layouts real exports come in (one document over many lines, arrays per line)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from factories import call, encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer
from test_adapter_support import DECODER, FIXTURES, read, run, stats

from tokentrail.batch import Batch
from tokentrail.broker import EmbeddedBroker
from tokentrail.config import AdapterSettings, Settings
from tokentrail.events import InvalidEventError
from tokentrail.ingest.adapters import Mapped
from tokentrail.ingest.files import RecordFile
from tokentrail.ingest.formats import FORMATS, detect, file_records
from tokentrail.ingest.pipeline import Pipeline
from tokentrail.store import Store

CLOUDTRAIL = json.loads(
    (FIXTURES / "cloudtrail" / "aws.persistence.sts-federation-token.json").read_bytes()
)
OTLP = json.loads((FIXTURES / "otlp" / "opentelemetry-proto-example-trace.json").read_bytes())
ZIPKIN = json.loads((FIXTURES / "zipkin" / "yelp.json").read_bytes())


def j(value: Any) -> bytes:
    return msgspec.json.encode(value)


@pytest.mark.parametrize(
    ("record", "name"),
    [
        (j(call()), "events"),
        (j(CLOUDTRAIL[0]), "cloudtrail"),
        (j({"Records": CLOUDTRAIL}), "cloudtrail"),
        (j(CLOUDTRAIL), "cloudtrail"),
        (j({"detail-type": "AWS API Call via CloudTrail", "detail": CLOUDTRAIL[0]}), "cloudtrail"),
        (j(OTLP), "otlp"),
        (j(ZIPKIN), "zipkin"),
        (j(ZIPKIN[0]), "zipkin"),
        (j({"message": "hello"}), None),
        (j([]), None),
        (b"\x89PNG", None),
    ],
)
def test_detect_names_the_format_of_one_record(record: bytes, name: str | None) -> None:
    found = detect(record)
    assert (found.name if found else None) == name


def records_of(path: Path, fmt: str = "auto") -> tuple[str, list[tuple[int, bytes]]]:
    name, records = file_records(RecordFile(str(path)), fmt)
    return name, list(records)


def test_a_pretty_printed_document_is_one_record(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text("\n\n" + json.dumps({"Records": CLOUDTRAIL}, indent=4))
    name, records = records_of(path)
    assert (name, [p for p, _ in records]) == ("cloudtrail", [3])
    assert json.loads(records[0][1]) == {"Records": CLOUDTRAIL}


def test_a_zipkin_array_is_one_record_and_so_is_each_line_of_arrays(tmp_path: Path) -> None:
    whole = tmp_path / "trace.json"
    whole.write_bytes(json.dumps(ZIPKIN, indent=1).encode())
    lines = tmp_path / "reporter.jsonl"
    lines.write_bytes(j(ZIPKIN[:3]) + b"\n" + j(ZIPKIN[3:]) + b"\n")
    assert [(p, json.loads(r)) for p, r in records_of(whole)[1]] == [(1, ZIPKIN)]
    assert records_of(lines) == ("zipkin", [(1, j(ZIPKIN[:3])), (2, j(ZIPKIN[3:]))])


def test_arrays_of_other_formats_are_split_into_their_items(tmp_path: Path) -> None:
    path = tmp_path / "records.json"
    path.write_bytes(j(CLOUDTRAIL))
    name, records = records_of(path)
    assert (name, [p for p, _ in records]) == ("cloudtrail", [1, 2])


def test_a_bad_first_line_does_not_hide_the_format(tmp_path: Path) -> None:
    path = tmp_path / "shipped.jsonl"
    path.write_bytes(b'{"eventID": "trunc\n' + b"".join(j(r) + b"\n" for r in CLOUDTRAIL))
    name, records = records_of(path)
    assert (name, [p for p, _ in records]) == ("cloudtrail", [1, 2, 3])


def test_a_file_no_format_recognises_is_read_as_events(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b'{"message": "hello"}\n')
    assert records_of(path)[0] == "events"


def test_auto_on_a_stream_adapts_each_message_and_native_events_pass_untouched(
    tmp_path: Path,
) -> None:
    messages = [
        j(call(event_id="native-1")),
        j(CLOUDTRAIL[0]),
        j(OTLP),
        j(ZIPKIN),
        b'{"message": "hello"}',
        j({"Records": [{"eventID": "x"}]}),
    ]
    with Store.open(tmp_path / "t.duckdb") as store:
        pipeline = Pipeline(store, Settings())
        batch = Batch("kafka", "mixed")
        feed = pipeline.feeder("auto")
        for offset, message in enumerate(messages):
            feed(batch, message, 0, offset)
    assert batch.accepted == 1 + 1 + 1 + len(ZIPKIN)
    assert [(d.origin.position, d.reason.split(":")[0]) for d in batch.dead_letters] == [
        (4, "invalid event"),
        (5, "cloudtrail"),
    ]


BAD: dict[str, tuple[bytes, str]] = {
    "cloudtrail": (
        j({"Records": [{"eventID": "e1", "eventSource": "s3.amazonaws.com"}]}),
        "cloudtrail: Records[0]: record has no `eventTime`",
    ),
    "otlp": (
        j({"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "01"}]}]}]}),
        "otlp: `spanId` '01' is neither hex nor base64 of 8 bytes",
    ),
    "zipkin": (
        j([{"traceId": "a1", "id": "b2"}]),
        "zipkin: span 00000000000000b2 has no timestamp, no annotation and no other piece"
        " in this record (send the whole trace as one array)",
    ),
}


@pytest.mark.parametrize("fmt", sorted(BAD))
def test_a_malformed_record_of_each_format_is_dead_lettered_with_its_reason_and_line(
    fmt: str, tmp_path: Path
) -> None:
    record, reason = BAD[fmt]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"not json at all\n" + record + b"\n")
    db = tmp_path / "t.duckdb"
    result = run("ingest", path, "--format", fmt, "--db", db, "--no-detect")
    assert result.returncode == 0, result.stderr
    with duckdb.connect(str(db), read_only=True) as conn:
        letters = conn.execute(
            "SELECT position, reason FROM dead_letters ORDER BY position"
        ).fetchall()
    assert letters[0][0] == 1 and letters[0][1].startswith(f"{fmt}: ")
    assert letters[1] == (2, reason)


def test_every_fixture_ingests_in_one_auto_run(tmp_path: Path) -> None:
    files = sorted(p for p in FIXTURES.rglob("*.json*"))
    db = tmp_path / "t.duckdb"
    result = run("ingest", *files, "--db", db, "--no-detect")
    assert result.returncode == 0, result.stderr
    assert stats(db)["dead_letters"] == 0
    assert stats(db)["events"] > 310 + 10 + 1000


@pytest.mark.kafka
def test_a_kafka_topic_of_mixed_formats_is_adapted_message_by_message(
    broker: EmbeddedBroker, topic: Callable[..., str], tmp_path: Path
) -> None:
    name = topic(partitions=1)
    messages = [
        encode(call(event_id="native-1")),
        j({"Records": CLOUDTRAIL}),  # one S3 delivery notification's worth
        read(FIXTURES / "otlp" / "agent-refund-trace.json"),
        j(ZIPKIN),
        b"{not json",
    ]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for message in messages:
        producer.send(name, value=message)
    producer.flush(timeout=60)
    producer.close()
    db = tmp_path / "t.duckdb"
    result = run(
        "ingest", "--kafka", broker.bootstrap, "--topic", name, "--db", db,
        "--idle-exit", "3", "--no-detect",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert stats(db)["events"] == 1 + len(CLOUDTRAIL) + 9 + len(ZIPKIN)
    with duckdb.connect(str(db), read_only=True) as conn:
        letters = conn.execute(
            "SELECT origin_kind, origin_name, partition, position FROM dead_letters"
        ).fetchall()
    assert letters == [("kafka", name, 0, 4)]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
BASES: dict[str, Any] = {
    "cloudtrail": CLOUDTRAIL[0],
    "otlp": json.loads(read(FIXTURES / "otlp" / "agent-refund-trace.json")),
    "zipkin": ZIPKIN[:4],
}


def paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value, from the root down."""
    found = [at]
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, inner in items:
        found.extend(paths(inner, (*at, key)))
    return found


def replaced(value: Any, at: tuple[Any, ...], new: Any) -> Any:
    if not at:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[at[0]] = replaced(copy[at[0]], at[1:], new)
    return copy


@pytest.mark.parametrize("fmt", sorted(BASES))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_value_anywhere_in_a_record_breaks_an_adapter(fmt: str, data: st.DataObject) -> None:
    """Whatever a field holds, an adapter maps the record or says why: nothing else escapes."""
    base = BASES[fmt]
    at = data.draw(st.sampled_from(paths(base)))
    record = j(replaced(base, at, data.draw(JSON)))
    adapter = FORMATS[fmt].build(AdapterSettings())
    assert adapter is not None
    try:
        items = adapter(record)
    except InvalidEventError:
        return
    for item in items:
        if isinstance(item, Mapped):
            with contextlib.suppress(InvalidEventError):
                DECODER.decode(item.event)
