"""Property-based fuzzing of the CloudTrail, OTLP and Zipkin adapters and format detection.

Properties: an adapter raises nothing but `InvalidEventError` (the record as a whole is unusable)
and otherwise returns only `Mapped` events and `Unmapped` pieces with a reason; every mapped event
is valid JSON that the decoder accepts or rejects with a reason; through the pipeline into a DuckDB
file, every item a record yields is a stored event, a skipped copy or a dead letter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fuzz_inputs import (
    EDGE_TIMES,
    FUZZ,
    any_record,
    deep,
    json_values,
    mutated_records,
    odd_strings,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrail.batch import Batch
from tokentrail.config import AdapterSettings, Settings
from tokentrail.events import EventDecoder, InvalidEventError
from tokentrail.ingest.adapters import Item, Mapped, Unmapped
from tokentrail.ingest.formats import FORMATS, detect
from tokentrail.ingest.pipeline import Pipeline
from tokentrail.store import Store

ADAPTED = ("cloudtrail", "otlp", "zipkin")
DECODER = EventDecoder(salt=b"fuzz")


def adapt(fmt: str, record: bytes) -> list[Item] | None:
    """The adapter's items, or None when it refused the whole record (with a reason)."""
    adapter = FORMATS[fmt].build(AdapterSettings())
    assert adapter is not None
    try:
        items = adapter(record)
    except InvalidEventError as rejection:
        assert rejection.reason.startswith(f"{fmt}: ")
        return None
    for item in items:
        assert isinstance(item, Mapped | Unmapped)
        if isinstance(item, Unmapped):
            assert item.reason.strip() and "\n" not in item.reason
            continue
        try:
            DECODER.decode(item.event)
        except InvalidEventError as rejection:
            assert rejection.reason.strip()
    return items


# The tag and attribute names adapters read values from (sizes, statuses, ids, times ...): odd
# values there reach parsing code that plain mutation seldom hits.
PICKED_NAMES = [
    *("http.response.size", "response_size", "http.response.body.size", "http.status_code"),
    *("http.response.status_code", "rpc.grpc.status_code", "http.response_content_length"),
    *("tokentrail.token_id", "auth.token.id", "tokentrail.identity", "tokentrail.identity_kind"),
    *("peer.service", "http.method", "http.route", "http.path", "service.name", "url.path"),
]
numberish = st.sampled_from(["\u00b2", "1" * 5000, "9" * 25, "-1", "1_000", " 7 ", "0x10", "1e3"])
picked_values = st.one_of(odd_strings, numberish.map(lambda v: json.loads(f'"{v}"')))


@st.composite
def picked_spans(draw: st.DrawFn, fmt: str) -> bytes:
    """A span (or CloudTrail record) whose read-from fields carry odd values."""
    tags = draw(st.dictionaries(st.sampled_from(PICKED_NAMES), picked_values, min_size=1))
    when = draw(st.sampled_from([1_772_442_000_000_000, 0, -1, 2**63, 2**64]))
    if fmt == "zipkin":
        kind = draw(st.sampled_from([None, "CLIENT", "SERVER", "PRODUCER", "CONSUMER", "x"]))
        span = {"traceId": "a1", "id": "b2", "kind": kind, "timestamp": when, "tags": tags}
        return json.dumps([span]).encode()
    if fmt == "otlp":
        attributes = [{"key": k, "value": {"stringValue": v}} for k, v in tags.items()]
        span = {
            "traceId": "0af7651916cd43dd8448eb211c80319c",
            "spanId": "b7ad6b7169203331",
            "kind": draw(st.integers(-1, 6)),
            "startTimeUnixNano": str(when * 1000),
            "attributes": attributes,
        }
        return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    record = {
        "eventID": "e1",
        "eventTime": draw(st.sampled_from(EDGE_TIMES)),
        "eventSource": "sts.amazonaws.com",
        "eventName": draw(st.sampled_from(["AssumeRole", "CreateAccessKey", "GetSessionToken"])),
        "userIdentity": {"type": "IAMUser", "accessKeyId": draw(picked_values)},
        "responseElements": {
            "credentials": {
                "accessKeyId": "ASIA1",
                "expiration": tags.get("http.path", "Jul 30, 2024, 9:46:15 PM"),
            }
        },
        "sourceIPAddress": draw(picked_values),
    }
    return json.dumps(record).encode()


def record_strategy(fmt: str) -> st.SearchStrategy[bytes]:
    wrapped = {
        "cloudtrail": lambda v: {"Records": [v]},
        "otlp": lambda v: {"resourceSpans": [{"scopeSpans": [{"spans": [v]}]}]},
        "zipkin": lambda v: [v],
    }[fmt]
    return st.one_of(
        mutated_records(fmt),
        picked_spans(fmt),
        any_record,
        json_values.map(lambda v: json.dumps(wrapped(v)).encode()),
    )


@pytest.mark.parametrize("fmt", ADAPTED)
def test_adapters_take_any_input(fmt: str) -> None:
    @FUZZ
    @given(record_strategy(fmt))
    def run(record: bytes) -> None:
        adapt(fmt, record)
        found = detect(record)
        assert found is None or found.name in FORMATS

    run()


@pytest.mark.parametrize("fmt", ADAPTED)
@pytest.mark.parametrize("depth", [100, 1000, 50_000])
def test_deep_nesting_inside_a_record_is_refused_not_raised(fmt: str, depth: int) -> None:
    """Regression: RecursionError escaped every adapter and `detect` on deeply nested input."""
    nest = deep(depth)
    records = {
        "cloudtrail": b'{"Records":[{"eventID":"e","requestParameters":' + nest + b"}]}",
        "otlp": b'{"resourceSpans":[{"resource":{"attributes":' + nest + b"}}]}",
        "zipkin": b'[{"traceId":"a1","id":"b2","tags":' + nest + b"}]",
    }
    for record in (nest, records[fmt]):
        adapt(fmt, record)
        detect(record)


# --- through the pipeline into a DuckDB file -----------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    path = tmp_path_factory.mktemp("fuzz-adapters") / "fuzz.duckdb"
    with Store.open(path) as store, Pipeline(store, Settings()) as running:
        yield running


def expected_outcomes(fmt: str, record: bytes) -> int:
    """How many stored-or-skipped-or-dead-lettered outcomes `record` must give."""
    items = adapt(fmt, record)
    return 1 if items is None else len(items)


@pytest.mark.parametrize("fmt", [*ADAPTED, "auto"])
def test_every_adapted_item_is_stored_or_dead_lettered(pipeline: Pipeline, fmt: str) -> None:
    formats = ADAPTED if fmt == "auto" else (fmt,)

    @settings(FUZZ, max_examples=25)  # a DuckDB transaction per example
    @given(st.lists(st.sampled_from(formats).flatmap(record_strategy), min_size=1, max_size=4))
    def run(records: list[bytes]) -> None:
        feed = pipeline.feeder(fmt)
        batch = Batch("file", f"fuzz-{fmt}")
        for position, raw in enumerate(records, start=1):
            feed(batch, raw, None, position)
        result = pipeline.write(batch)
        if fmt != "auto":  # auto tries a native decode first: its count is per native outcome
            want = sum(expected_outcomes(fmt, r) for r in records)
            assert result.stored + result.duplicates + result.dead_letters == want
        assert all(d.reason.strip() for d in batch.dead_letters)
        assert not any("adapter failed" in d.reason for d in batch.dead_letters)

    run()


@pytest.mark.parametrize("size", ["\u00b2", "1" * 5000, "9" * 25])
def test_an_odd_size_tag_costs_the_tag_not_the_trace(size: str) -> None:
    """Regression: a Zipkin size tag of `²` (a digit to isdigit(), not to int()) or of 5000 digits
    raised ValueError out of the adapter, dead-lettering every span of the trace; one of 25 digits
    gave a `bytes_out` the store cannot hold."""
    span = {"traceId": "a1", "id": "b2", "timestamp": 1_772_442_000_000_000}
    span["tags"] = {"http.response.size": size}
    items = adapt("zipkin", json.dumps([span]).encode())
    assert items is not None and len(items) == 1 and isinstance(items[0], Mapped)
    assert "bytes_out" not in json.loads(items[0].event)
