"""Hypothesis strategies for hostile input, shared by the hardening tests.

Everything a producer, a broken shipper or an attacker can put on the wire: any JSON value, valid
events with one field swapped for something odd, real records from `tests/fixtures` mutated at a
random spot, deep nesting, huge strings, odd unicode and timestamps at the edges of every range.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

from factories import T0_MS, call, encode
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# Modest and without deadlines: the machine is shared and DuckDB work varies in time.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Strings that have broken parsers before: NUL, RTL override, zero-width joiner, emoji,
# non-characters, a BOM, combining marks, the largest code point, blanks of every kind.
ODD_TEXT = [
    "",
    " ",
    "\u3000",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",
    "\u200d\u200d",
    "\U0001f600\U0001f3f3\ufe0f\u200d\U0001f308",
    "\ufffe\uffff",
    "\ufeffbom",
    "e\u0301\u0301\u0301",
    "\U0010ffff",
    "\t\n\r",
    "null",
    "x" * 5000,
]
# Escapes that are valid JSON syntax but not valid text: lone surrogates, in both halves.
RAW_ESCAPES = [b'"\\ud800"', b'"\\udfff"', b'"\\ud83d"', b'"a\\ud800b"', b'"\\u0000"']

# Event times at and beyond every edge the contract or a datetime has.
EDGE_TIMES: list[Any] = [
    0,
    -1,
    -(2**63),
    2**63,
    2**64,
    2**80,
    99_999_999_999,
    100_000_000_000,
    32_503_679_999_999,
    32_503_680_000_000,
    1.5,
    1_772_442_000_000.25,
    float("1e300"),
    True,
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-23:59",
    "2999-12-31T23:59:59.999999Z",
    "3000-01-01T00:00:00Z",
    "2026-03-02T09:00:00+14:00",
    "2026-03-02T09:00:00-12:00",
    "2026-03-02T09:00:00+05:45",
    "2026-03-02T09:00:00.123456789Z",
    "2026-03-02T09:00:00+24:00",
    "2026-03-02t09:00:00z",
    "2026-03-02 09:00:00Z",
    "2026-02-30T09:00:00Z",
    "2026-03-02T09:00:60Z",
    "2026-03-02T09:00:00",
    "",
]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
# Any JSON value, nested a few levels (deeper nesting has its own explicit cases).
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
odd_strings = st.sampled_from(ODD_TEXT) | st.text(
    st.characters(codec="utf-8", exclude_categories=()), max_size=40
)
odd_values = json_values | odd_strings | st.sampled_from(EDGE_TIMES)


def fresh_event(draw: st.DrawFn, **overrides: Any) -> dict[str, Any]:
    """A valid event whose id comes from the draw, so replays generate the same bytes."""
    number = draw(st.integers(0, 2**32))
    return call(event_id=f"fuzz-{number}", ts=T0_MS + number, **overrides)


def deep(depth: int, *, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid event with one field set to an odd value, removed, or with its attributes odd."""
    event = fresh_event(draw)
    field = draw(st.sampled_from([*event, "attributes", "token", "status", "bytes_out"]))
    action = draw(st.sampled_from(["replace", "delete", "time", "nested"]))
    if action == "delete":
        event.pop(field, None)
    elif action == "time":
        event[draw(st.sampled_from(["ts", "token"]))] = draw(st.sampled_from(EDGE_TIMES))
        if "token" in event and not isinstance(event["token"], dict):
            event["token"] = {"expires_at": event.pop("token")}
    elif action == "nested":
        event["attributes"] = {"k": draw(json_values), draw(odd_strings): draw(odd_values)}
    else:
        event[field] = draw(odd_values)
    return encode(event)


@st.composite
def broken_bytes(draw: st.DrawFn) -> bytes:
    """A valid event's bytes cut, spliced with non-UTF-8 or escape garbage, or bit-flipped."""
    raw = bytearray(encode(fresh_event(draw, attributes={"note": "QQ"})))
    how = draw(st.sampled_from(["cut", "flip", "insert", "escape"]))
    if how == "cut":
        return bytes(raw[: draw(st.integers(0, len(raw)))])
    if how == "escape":
        return bytes(raw).replace(b'"QQ"', draw(st.sampled_from(RAW_ESCAPES)))
    at = draw(st.integers(0, len(raw) - 1))
    if how == "flip":
        raw[at] ^= 1 << draw(st.integers(0, 7))
    else:
        raw[at:at] = draw(
            st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf"])
        )
    return bytes(raw)


any_record = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_events(),
    broken_bytes(),
)


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


@cache
def fixture_values(fmt: str) -> tuple[Any, ...]:
    """The real captures of a format, decoded (each file is one record of its format)."""
    return tuple(json.loads(_read(p)) for p in sorted((FIXTURES / fmt).iterdir()))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:6]):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated_records(draw: st.DrawFn, fmt: str) -> bytes:
    """A real record of `fmt` with one value, anywhere in it, swapped for an odd one or removed."""
    record = json.loads(json.dumps(draw(st.sampled_from(fixture_values(fmt)))))
    path = draw(st.sampled_from(_paths(record)[1:]))
    parent = record
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(odd_values)
    return json.dumps(record, ensure_ascii=draw(st.booleans())).encode()
