"""The event contract: one JSON object per API call (DESIGN.md §2), decoded and validated.

Decoding is done by msgspec in C against typed structs, which both checks the contract and gives
a precise reason (`Expected `str`, got `int` - at `$.token_id``) for every rejection. What a
schema cannot say (a timestamp without an offset, epoch seconds sent as milliseconds, a raw secret
in `token_id`) is checked by `EventDecoder` afterwards.

>>> decoder = EventDecoder(salt=b"demo")
>>> event = decoder.decode(b'{"event_id":"e1","ts":1700000000000,"token_id":"k1",'
...     b'"identity":"svc-a","source":"svc-a","target":"db","operation":"GET /"}')
>>> event.ts_us
1700000000000000
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

import msgspec

# Lengths are generous for real values and small enough that one event cannot bloat the store.
# (Blank values are refused in `EventDecoder.validate`: a regex here would cost 3x the decode.)
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
# A raw secret (a long JWT) may arrive here; it must reach the redactor, not be rejected as long.
TokenId = Annotated[str, msgspec.Meta(min_length=1, max_length=16384)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Timestamp = int | datetime

Outcome = Literal["success", "denied", "error"]
IdentityKind = Literal["agent", "ci", "service", "user", "unknown"]

OUTCOMES: Final = ("success", "denied", "error")
IDENTITY_KINDS: Final = ("agent", "ci", "service", "user", "unknown")

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US: Final = timedelta(microseconds=1)
# Epoch values below this are almost surely seconds, not milliseconds (it is 1973-03-03).
MIN_EPOCH_MS: Final = 100_000_000_000
MAX_EPOCH_MS: Final = 32_503_680_000_000  # year 3000

FLAG_TOKEN_REDACTED: Final = "token_id_redacted"
FLAG_PARENT_REDACTED: Final = "parent_token_id_redacted"


class TokenMeta(msgspec.Struct, frozen=True):
    """Credential metadata carried by an event and merged into the token registry."""

    kind: Text | None = None
    scopes: list[Text] | None = None
    issued_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    parent_token_id: TokenId | None = None
    audience: Text | list[Text] | None = None


class WireEvent(msgspec.Struct, frozen=True):
    """An event exactly as the contract allows it on the wire (field names are the contract)."""

    event_id: Id
    ts: Timestamp
    token_id: TokenId
    identity: Name
    source: Name
    target: Name
    operation: Name
    scope: Text | None = None
    outcome: Outcome = "success"
    status: Annotated[int, msgspec.Meta(ge=0, le=999)] | None = None
    trace_id: Id | None = None
    span_id: Id | None = None
    parent_span_id: Id | None = None
    environment: Text | None = None
    identity_kind: IdentityKind | None = None
    resource: Text | None = None
    source_ip: Text | None = None
    user_agent: Text | None = None
    bytes_out: Annotated[int, msgspec.Meta(ge=0)] | None = None
    task_id: Text | None = None
    actor: Text | None = None
    token: TokenMeta | None = None
    # Kept as the producer's own JSON bytes: no re-encoding on the hot path.
    attributes: msgspec.Raw = msgspec.Raw()


class Event(msgspec.Struct, frozen=True):
    """A validated event: the wire form plus what ingest derived from it (UTC micros, flags)."""

    wire: WireEvent
    ts_us: int
    token_id: str
    parent_token_id: str | None
    issued_at_us: int | None
    expires_at_us: int | None
    flags: tuple[str, ...]

    def sameness(self) -> tuple[object, ...]:
        """What two copies of one `event_id` must share to be a retry rather than a conflict."""
        w = self.wire
        return (self.ts_us, self.token_id, w.identity, w.source, w.target, w.operation, w.outcome)


# The stored columns that `Event.sameness` compares, for the same check against stored events.
SAMENESS_COLUMNS: Final = ("ts", "token_id", "identity", "source", "target", "operation", "outcome")


class InvalidEventError(ValueError):
    """An input that does not meet the contract; `reason` is one line for the dead-letter table."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Shapes of raw credentials that must never be stored: JWTs, GitHub, OpenAI-style, Slack, GitLab,
# Stripe keys, and an AWS secret access key (40 base64 chars). A key *id* such as `AKIA…` (20
# upper-case chars) is an identifier, not a secret, and is kept; with a secret appended it is not.
_SECRET_SHAPES: Final = re.compile(
    r"""^(?:
        eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*   # JWT (header.payload.sig)
      | gh[pousr]_[A-Za-z0-9]{20,}                             # GitHub tokens
      | github_pat_[A-Za-z0-9_]{20,}
      | sk-[A-Za-z0-9_-]{16,}                                  # OpenAI-style secret keys
      | xox[abposr]-[A-Za-z0-9-]{10,}                          # Slack tokens
      | glpat-[A-Za-z0-9_-]{16,}                               # GitLab personal tokens
      | [rs]k_(?:live|test)_[A-Za-z0-9]{16,}                   # Stripe keys
      | (?:AKIA|ASIA)[A-Z0-9]{16}[^A-Za-z0-9]?[A-Za-z0-9/+=]{40}  # AWS key id with its secret
      | [A-Za-z0-9/+]{40}                                      # AWS secret access key alone
    )$""",
    re.VERBOSE,
)


def looks_like_secret(value: str) -> bool:
    """True when `value` has the shape of a raw credential rather than a fingerprint of one.

    >>> looks_like_secret("ghp_" + "a" * 36), looks_like_secret("AKIAIOSFODNN7EXAMPLE")
    (True, False)
    """
    # A 40-char hex string is a SHA-1 fingerprint, the very thing producers should send.
    if len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return False
    return _SECRET_SHAPES.match(value) is not None


class SecretRedactor:
    """Replaces raw secrets by a keyed hash, so the same secret always maps to the same id.

    Token ids repeat across millions of events, so each distinct value is classified once.
    """

    _CACHE_LIMIT: Final = 200_000

    def __init__(self, salt: bytes) -> None:
        self._salt = salt
        self._cache: dict[str, tuple[str, bool]] = {}

    def redact(self, token_id: str) -> tuple[str, bool]:
        """Return (the id to store, whether it was a secret that got hashed)."""
        hit = self._cache.get(token_id)
        if hit is not None:
            return hit
        if looks_like_secret(token_id):
            digest = hmac.new(self._salt, token_id.encode(), hashlib.sha256).hexdigest()
            hit = (f"redacted:{digest[:32]}", True)
        else:
            hit = (token_id, False)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[token_id] = hit
        return hit


def timestamp_us(value: Timestamp, field: str) -> int:
    """UTC microseconds since the epoch from RFC 3339 (with offset) or epoch milliseconds."""
    if isinstance(value, int):
        if not MIN_EPOCH_MS <= value < MAX_EPOCH_MS:
            hint = " (epoch seconds? expected milliseconds)" if 0 < value < MIN_EPOCH_MS else ""
            raise InvalidEventError(f"`{field}` epoch value {value} out of range{hint}")
        return value * 1000
    if value.tzinfo is None:
        raise InvalidEventError(f"`{field}` has no UTC offset (RFC 3339 needs `Z` or `+hh:mm`)")
    return (value - EPOCH) // ONE_US


_REQUIRED_TEXT: Final = ("event_id", "token_id", "identity", "source", "target", "operation")


class EventDecoder:
    """Turns raw bytes into a validated `Event` or raises `InvalidEventError` with the reason."""

    def __init__(self, *, salt: bytes, max_bytes: int = 1 << 20) -> None:
        self._decoder = msgspec.json.Decoder(WireEvent)
        self._redactor = SecretRedactor(salt)
        self.max_bytes = max_bytes

    def decode(self, raw: bytes) -> Event:
        """Decode and validate one JSON event."""
        if len(raw) > self.max_bytes:
            raise InvalidEventError(
                f"event is {len(raw)} bytes, over the {self.max_bytes}-byte limit"
            )
        if not raw.strip():
            raise InvalidEventError("empty message")
        try:
            wire = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise InvalidEventError(f"invalid event: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidEventError(f"unparsable JSON: {exc}") from None
        except UnicodeDecodeError as exc:
            raise InvalidEventError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
        return self.validate(wire)

    def validate(self, wire: WireEvent) -> Event:
        """The checks the decoder does not make; derives the stored form."""
        for name in _REQUIRED_TEXT:
            if getattr(wire, name).isspace():
                raise InvalidEventError(f"invalid event: `{name}` is blank - at `$.{name}`")
        ts_us = timestamp_us(wire.ts, "ts")
        flags: list[str] = []
        token_id, redacted = self._redactor.redact(wire.token_id)
        if redacted:
            flags.append(FLAG_TOKEN_REDACTED)
        parent = issued = expires = None
        if wire.token is not None:
            if wire.token.parent_token_id is not None:
                parent, parent_redacted = self._redactor.redact(wire.token.parent_token_id)
                if parent_redacted:
                    flags.append(FLAG_PARENT_REDACTED)
            if wire.token.issued_at is not None:
                issued = timestamp_us(wire.token.issued_at, "token.issued_at")
            if wire.token.expires_at is not None:
                expires = timestamp_us(wire.token.expires_at, "token.expires_at")
        attributes = wire.attributes
        if len(attributes) and not bytes(attributes).lstrip().startswith((b"{", b"null")):
            raise InvalidEventError(
                "invalid event: `attributes` must be an object - at `$.attributes`"
            )
        return Event(wire, ts_us, token_id, parent, issued, expires, tuple(flags))
