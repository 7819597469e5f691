"""The event contract: what is accepted, what is rejected and why, and what is never stored."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema
import msgspec
import pytest
from factories import call, encode

from tokentrail.events import (
    FLAG_PARENT_REDACTED,
    FLAG_TOKEN_REDACTED,
    EventDecoder,
    InvalidEventError,
    looks_like_secret,
)

DECODER = EventDecoder(salt=b"test-salt", max_bytes=4096)


def reason(raw: bytes) -> str:
    with pytest.raises(InvalidEventError) as caught:
        DECODER.decode(raw)
    return caught.value.reason


def test_a_complete_event_is_accepted_with_utc_micros() -> None:
    event = DECODER.decode(encode(call(ts="2026-03-02T10:00:00.5+01:00", status=200)))
    assert event.ts_us == 1_772_442_000_500_000
    assert event.wire.outcome == "success"
    assert event.flags == ()


def test_epoch_milliseconds_and_rfc3339_give_the_same_instant() -> None:
    as_ms = DECODER.decode(encode(call(ts=1_772_442_000_000)))
    as_text = DECODER.decode(encode(call(ts="2026-03-02T09:00:00Z")))
    assert as_ms.ts_us == as_text.ts_us


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "empty message"),
        (b"   \n", "empty message"),
        (b'{"event_id": "x", "ts": 1', "unparsable JSON: Input data was truncated"),
        (b"\x00\x01\x02garbage", "unparsable JSON: JSON is malformed: invalid character (byte 0)"),
        (b"[1, 2]", "invalid event: Expected `object`, got `array`"),
        (
            encode({k: v for k, v in call().items() if k != "token_id"}),
            "invalid event: Object missing required field `token_id`",
        ),
        (
            encode(call(identity="")),
            "invalid event: Expected `str` of length >= 1 - at `$.identity`",
        ),
        (
            encode(call(target="   ")),
            "invalid event: `target` is blank - at `$.target`",
        ),
        (encode(call(source=42)), "invalid event: Expected `str`, got `int` - at `$.source`"),
        (
            encode(call(outcome="maybe")),
            "invalid event: Invalid enum value 'maybe' - at `$.outcome`",
        ),
        (
            encode(call(ts="yesterday")),
            "invalid event: Invalid RFC3339 encoded datetime - at `$.ts`",
        ),
        (
            encode(call(ts="2026-03-02T09:00:00")),
            "`ts` has no UTC offset (RFC 3339 needs `Z` or `+hh:mm`)",
        ),
        (
            encode(call(ts=1_772_442_000)),
            "`ts` epoch value 1772442000 out of range (epoch seconds? expected milliseconds)",
        ),
        (
            encode(call(attributes=[1, 2])),
            "invalid event: `attributes` must be an object - at `$.attributes`",
        ),
        (
            encode(call(token={"scopes": "all"})),
            "invalid event: Expected `array | null`, got `str` - at `$.token.scopes`",
        ),
        (encode(call(event_id="x" * 129)), "invalid event: Expected `str` of length <= 128"),
    ],
)
def test_every_rejection_says_why(raw: bytes, expected: str) -> None:
    assert reason(raw).startswith(expected)


def test_non_utf8_outside_the_contract_is_rejected_too() -> None:
    # A field the decoder ignores is still parsed by the store: one such event used to fail
    # its whole batch (found by tests/hardening/test_fuzz_parser.py).
    raw = encode(call()).replace(b'"scope"', b'"sco\xf0e"').replace(b"}", b',"x\xffy":1}', 1)
    assert reason(raw).startswith("not UTF-8: invalid ")


def test_non_utf8_is_rejected_with_its_position() -> None:
    raw = encode(call(identity="svc")).replace(b'"svc"', b'"sv\xff"')
    assert reason(raw).startswith("not UTF-8: invalid start byte at byte")


def test_oversize_message_is_rejected_before_parsing() -> None:
    raw = encode(call(attributes={"blob": "x" * 5000}))
    assert reason(raw) == f"event is {len(raw)} bytes, over the 4096-byte limit"


@pytest.mark.parametrize(
    "secret",
    [
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
        "ghp_" + "A1b2C3d4" * 5,
        "sk-proj-" + "q" * 40,
        "xoxb-123456789012-abcdefghij",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ],
)
def test_raw_secrets_in_token_id_are_hashed_and_flagged(secret: str) -> None:
    event = DECODER.decode(encode(call(token_id=secret, token={"parent_token_id": secret})))
    assert event.token_id.startswith("redacted:")
    assert secret not in event.token_id
    assert event.parent_token_id == event.token_id  # same secret, same stable hash
    assert event.flags == (FLAG_TOKEN_REDACTED, FLAG_PARENT_REDACTED)


@pytest.mark.parametrize(
    "fingerprint",
    ["AKIAIOSFODNN7EXAMPLE", "tok-invoicer-1", "jti-6f1c2b", "a" * 40, "sk-short"],
)
def test_fingerprints_are_kept_as_sent(fingerprint: str) -> None:
    assert not looks_like_secret(fingerprint)
    assert DECODER.decode(encode(call(token_id=fingerprint))).token_id == fingerprint


def test_the_hash_depends_on_the_database_salt() -> None:
    secret = "ghp_" + "z" * 36
    other = EventDecoder(salt=b"another-salt")
    assert (
        DECODER.decode(encode(call(token_id=secret))).token_id
        != other.decode(encode(call(token_id=secret))).token_id
    )


# The shipped JSON Schema is what producers validate against; it must agree with the decoder.
SCHEMA = json.loads(resources.files("tokentrail").joinpath("schema/event.schema.json").read_text())
AGREEMENT_CASES: list[dict[str, Any]] = [
    call(),
    call(outcome="denied", status=403, scope=None),
    call(token={"kind": "oauth", "scopes": ["a:read"], "expires_at": "2026-03-02T10:00:00Z"}),
    call(token={"audience": ["a", "b"], "parent_token_id": "tok-0"}),
    call(attributes={"k": [1, {"x": None}]}, bytes_out=10),
    call(identity_kind="robot"),
    call(outcome="ok"),
    call(status=-1),
    call(bytes_out=-5),
    call(ts="2026-03-02T09:00:00"),
    call(ts=12),
    call(ts=True),
    call(event_id=""),
    call(event_id="x" * 200),
    call(attributes="text"),
    call(token={"scopes": [1]}),
    {k: v for k, v in call().items() if k != "operation"},
]


@pytest.mark.parametrize("case", AGREEMENT_CASES, ids=lambda c: json.dumps(c)[-60:])
def test_shipped_schema_agrees_with_the_decoder(case: dict[str, Any]) -> None:
    schema_ok = jsonschema.Draft202012Validator(SCHEMA).is_valid(case)
    try:
        DECODER.decode(msgspec.json.encode(case))
        decoder_ok = True
    except InvalidEventError:
        decoder_ok = False
    assert schema_ok == decoder_ok
