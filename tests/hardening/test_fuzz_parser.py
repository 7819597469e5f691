"""Property-based fuzzing of the event decoder and the whole ingest path (issue #10).

Properties: nothing but `InvalidEventError` leaves `EventDecoder.decode`; every record given to the
pipeline becomes a stored event, a skipped identical copy, or a dead letter with a reason, and the
DuckDB file agrees with those counts; an accepted event is within the contract's ranges.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
from factories import call, encode
from fuzz_inputs import EDGE_TIMES, FUZZ, any_record, deep, mutated_events
from hypothesis import given
from hypothesis import strategies as st

from tokentrail.batch import Batch
from tokentrail.config import Settings
from tokentrail.events import (
    MAX_BIGINT,
    MAX_TIME_US,
    MIN_TIME_US,
    EventDecoder,
    InvalidEventError,
    looks_like_secret,
)
from tokentrail.ingest.pipeline import Pipeline
from tokentrail.store import Store

DECODER = EventDecoder(salt=b"fuzz", max_bytes=64 * 1024)


def check_decode(raw: bytes) -> None:
    """Decode `raw`: rejected with a one-line reason, or accepted within the contract."""
    try:
        event = DECODER.decode(raw)
    except InvalidEventError as rejection:
        assert rejection.reason.strip()
        assert "\n" not in rejection.reason
        return
    assert MIN_TIME_US <= event.ts_us < MAX_TIME_US
    assert not looks_like_secret(event.token_id)
    assert event.wire.bytes_out is None or 0 <= event.wire.bytes_out <= MAX_BIGINT
    if event.redacted_raw is not None:
        DECODER.decode(event.redacted_raw)  # what is stored is itself a valid event


@FUZZ
@given(any_record)
def test_decode_raises_only_invalid_event_error(raw: bytes) -> None:
    check_decode(raw)


@FUZZ
@given(st.sampled_from(EDGE_TIMES), st.sampled_from(["ts", "issued_at", "expires_at"]))
def test_timestamps_at_every_edge_are_accepted_in_range_or_rejected(
    value: object, field: str
) -> None:
    event = call(ts=value) if field == "ts" else call(token={field: value})
    check_decode(encode(event))


@pytest.mark.parametrize("depth", [10, 500, 990, 1000, 5000, 100_000])
@pytest.mark.parametrize("where", ["top", "attributes", "token"])
def test_deep_nesting_is_a_dead_letter_not_a_crash(depth: int, where: str) -> None:
    """Regression: nesting past the interpreter's recursion limit raised RecursionError out of
    `decode` (and out of every adapter and the format sniffer), which stopped the whole ingest."""
    nest = deep(depth)
    if where == "top":
        raw = nest
    elif where == "attributes":
        raw = encode(call(attributes={"k": "QQ"})).replace(b'"QQ"', nest)
    else:
        raw = encode(call(token={"kind": "QQ"})).replace(b'"QQ"', nest)
    check_decode(raw)


def test_huge_strings_are_refused_by_size_before_parsing() -> None:
    raw = encode(call(attributes={"blob": "\U0001f600" * 300_000}))
    with pytest.raises(InvalidEventError, match="over the 65536-byte limit"):
        DECODER.decode(raw)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        # Regression: stored as NULL by DuckDB's BIGINT cast, silently.
        (call(bytes_out=2**63), "invalid event: Expected `int` <= 9223372036854775807"),
        # Regression: RFC 3339 times escaped the range epoch values have; a year-10000 instant
        # was stored and then broke every read of it (Python datetimes end at year 9999).
        (call(ts="9999-12-31T23:59:59-23:59"), "`ts` 9999-12-31T23:59:59-23:59 is out of range"),
        (call(ts="1969-12-31T23:59:59Z"), "`ts` 1969-12-31T23:59:59+00:00 is out of range"),
        (call(token={"expires_at": "9999-12-31T23:59:59Z"}), "`token.expires_at` 9999"),
    ],
)
def test_values_the_store_cannot_hold_are_rejected(event: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        DECODER.decode(encode(event))
    assert caught.value.reason.startswith(reason)


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
def test_non_utf8_inside_attributes_is_a_dead_letter(bad: bytes) -> None:
    """Regression: msgspec skips `attributes` unread, so invalid UTF-8 there was accepted and
    then made DuckDB refuse the whole batch (every good event of it lost, ingest stopped)."""
    raw = encode(call(attributes={"k": "QQ"})).replace(b"QQ", bad)
    with pytest.raises(InvalidEventError, match=r"not UTF-8: .* at byte \d+"):
        DECODER.decode(raw)


# --- the whole path: pipeline, batch, DuckDB file ------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """One real DuckDB file for the module: each example checks what it added."""
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.duckdb"
    with Store.open(path) as store, Pipeline(store, Settings()) as running:
        yield running


def counts(store: Store) -> tuple[int, int]:
    row = store.conn.execute(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM dead_letters)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def ingest_and_account(pipeline: Pipeline, records: list[bytes], fmt: str = "events") -> None:
    """Feed `records` as one batch; every one must be accounted for, in the totals and the file."""
    store = pipeline.store
    events_before, letters_before = counts(store)
    totals_before = (pipeline.totals.read, pipeline.totals.duplicates)
    feed = pipeline.feeder(fmt)
    batch = Batch("file", "fuzz")
    for position, raw in enumerate(records, start=1):
        feed(batch, raw, None, position)
    result = pipeline.write(batch)
    read = pipeline.totals.read - totals_before[0]
    assert read == len(records)
    events, letters = counts(store)
    assert events - events_before == result.stored
    assert letters - letters_before == result.dead_letters
    if fmt == "events":
        assert result.stored + result.duplicates + result.dead_letters == len(records)
    reasons = store.conn.execute(
        "SELECT count(*) FROM dead_letters WHERE reason IS NULL OR trim(reason) = ''"
    ).fetchone()
    assert reasons == (0,)


@FUZZ
@given(st.lists(any_record, min_size=1, max_size=8))
def test_every_record_is_stored_or_dead_lettered(pipeline: Pipeline, records: list[bytes]) -> None:
    ingest_and_account(pipeline, records)


@FUZZ
@given(st.lists(mutated_events(), min_size=1, max_size=8), st.randoms())
def test_mutated_events_with_retries_are_accounted_for(
    pipeline: Pipeline, records: list[bytes], rng: object
) -> None:
    # Retries of the same bytes are identical copies: skipped, not stored twice.
    ingest_and_account(pipeline, records + records[:2])


def test_regressions_pass_through_the_store(pipeline: Pipeline) -> None:
    """The inputs behind each fixed defect, together in one batch with a good event."""
    records = [
        encode(call(attributes={"k": "QQ"})).replace(b'"QQ"', deep(5000)),
        encode(call(attributes={"k": "QQ"})).replace(b"QQ", b"\xff"),
        encode(call(bytes_out=2**63)),
        encode(call(ts="9999-12-31T23:59:59-23:59")),
        encode(call(token_id="Bearer ghp_" + "R" * 36)),
        encode(call()),
    ]
    ingest_and_account(pipeline, records)
    stored = pipeline.store.conn.execute(
        "SELECT token_id, flags FROM events ORDER BY ingested_at DESC, event_id DESC LIMIT 2"
    ).fetchall()
    assert all(not t.startswith(("Bearer", "ghp_")) for t, _ in stored)
    assert msgspec.json.encode(sorted(stored, key=str)).count(b"token_id_redacted") == 1


def test_a_bearer_prefix_does_not_hide_a_secret_in_token_id() -> None:
    """Regression: `Bearer <jwt>` (an Authorization header sent as token_id) was stored raw; it
    now hashes to the same id as the bare secret."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    bare = DECODER.decode(encode(call(token_id=jwt)))
    for wrapped in (f"Bearer {jwt}", f" {jwt}", f"{jwt}\n", f"token={jwt}"):
        event = DECODER.decode(encode(call(token_id=wrapped)))
        assert event.token_id == bare.token_id
        assert jwt not in event.token_id
