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
# RFC 3339 times must fall in [1970, 3000) UTC too: a year-10000 instant (9999-12-31T23:59-01:00)
# cannot be read back as a Python datetime, so storing one would break every query that reads it.
MIN_TIME_US: Final = 0
MAX_TIME_US: Final = MAX_EPOCH_MS * 1000
MAX_BIGINT: Final = (1 << 63) - 1

FLAG_TOKEN_REDACTED: Final = "token_id_redacted"
FLAG_PARENT_REDACTED: Final = "parent_token_id_redacted"
FLAG_ATTRIBUTES_REDACTED: Final = "attributes_redacted"


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
    # Stored as BIGINT: a larger value would become NULL in the store without a word.
    bytes_out: Annotated[int, msgspec.Meta(ge=0, le=MAX_BIGINT)] | None = None
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
    # The JSON to store instead of the input, when validation changed it (secrets in attributes).
    redacted_raw: bytes | None = None

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
_PREFIXED_SHAPES: Final = r"""
        eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*   # JWT (header.payload.sig)
      | gh[pousr]_[A-Za-z0-9]{20,}                             # GitHub tokens
      | github_pat_[A-Za-z0-9_]{20,}
      | sk-[A-Za-z0-9_-]{16,}                                  # OpenAI-style secret keys
      | xox[abposr]-[A-Za-z0-9-]{10,}                          # Slack tokens
      | glpat-[A-Za-z0-9_-]{16,}                               # GitLab personal tokens
      | [rs]k_(?:live|test)_[A-Za-z0-9]{16,}                   # Stripe keys
      | (?:AKIA|ASIA)[A-Z0-9]{16}[^A-Za-z0-9]?[A-Za-z0-9/+=]{40}  # AWS key id with its secret
"""
# A prefixed secret anywhere in a value (`Bearer eyJ…`, `token=ghp_…`), not inside a longer word.
_EMBEDDED_SECRET: Final = re.compile(rf"(?<![A-Za-z0-9_-])(?:{_PREFIXED_SHAPES})", re.VERBOSE)
# Without a prefix, an AWS secret access key is 40 base64 characters standing alone (in a value
# of their own, or between spaces, quotes, `=` …); 40 hex digits are a SHA-1 fingerprint instead.
_BARE_AWS_SECRET: Final = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_HEX: Final = frozenset("0123456789abcdefABCDEF")


def _bare_aws_secrets(value: str) -> list[str]:
    return [m for m in _BARE_AWS_SECRET.findall(value) if not _HEX.issuperset(m)]


# `"name": "value"` in text that is not JSON (a truncated or broken input): group 1 is everything
# up to the value's opening quote, group 2 the value.
_NAMED_VALUE: Final = re.compile(r'("(?:[^"\\]|\\.)*"\s*:\s*")((?:[^"\\]|\\.)*)"')
# Attribute names whose value is a credential whatever it looks like (`Authorization: Basic …`,
# a password, a cookie), matched anywhere in the name, any case.
_SENSITIVE_KEY: Final = re.compile(
    r"authori[sz]ation|passw(?:or)?d|secret|api[-_.]?key"
    r"|(?:access|refresh|id|session|security|bearer)[-_.]?token|cookie|private[-_.]?key",
    re.IGNORECASE,
)
# A cheap first look at an event's `attributes`, lower-cased, so that only the few that may hold
# a secret are parsed and walked: a secret's prefix or a JSON escape (`\u0067`, `\/`) that could
# spell one without showing it; else a sensitive name (a substring, confirmed by `_SENSITIVE_KEY`:
# `tokentrail.token_id` is an attribute name on every adapted span, not a credential's); else a
# run of 40 base64 characters (a bare AWS secret). Substring tests on `str` cost ~50 ns each, a
# regex of all the alternatives ~5 µs (`re` tries every branch at every position).
_SECRET_PREFIXES: Final = (
    *("eyj", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "sk-", "k_live_", "k_test_"),
    *("xox", "glpat-", "akia", "asia", "\\"),
)
_SENSITIVE_PARTS: Final = ("auth", "passw", "secret", "key", "token", "cookie")
_RUN_40: Final = re.compile(r"[A-Za-z0-9/+]{40}")


def _may_hold_secret(text: str) -> bool:
    """Whether `attributes` JSON is worth walking for secrets (no false negatives).

    >>> _may_hold_secret('{"x": "github_pat_11ABCDEFG0x9Y8z7W6v5U4t3S2r1Q0"}')
    True
    >>> _may_hold_secret('{"tokentrail.token_id": "tok-1", "http.route": "/v1/items"}')
    False
    """
    lowered = text.lower()
    for part in _SECRET_PREFIXES:
        if part in lowered:
            return True
    for part in _SENSITIVE_PARTS:
        if part in lowered:
            if _SENSITIVE_KEY.search(lowered) is not None:
                return True
            break
    return len(text) >= 42 and _RUN_40.search(text) is not None


def secret_in(value: str) -> str | None:
    """The raw credential in `value` (all of it, or the part after `Bearer `, …), else None.

    >>> secret_in("Bearer ghp_" + "a" * 36) == "ghp_" + "a" * 36, secret_in("AKIAIOSFODNN7EXAMPLE")
    (True, None)
    """
    found = _EMBEDDED_SECRET.search(value)
    if found is not None:
        return found.group()
    if len(value) >= 40:
        bare = _bare_aws_secrets(value)
        if bare:
            return bare[0]
    return None


def looks_like_secret(value: str) -> bool:
    """True when `value` holds a raw credential rather than a fingerprint of one.

    >>> looks_like_secret("ghp_" + "a" * 36), looks_like_secret("AKIAIOSFODNN7EXAMPLE")
    (True, False)
    """
    return secret_in(value) is not None


class SecretRedactor:
    """Replaces raw secrets by a keyed hash, so the same secret always maps to the same id.

    Token ids repeat across millions of events, so each distinct value is classified once. The
    hash covers the secret alone: `Bearer ghp_…` and `ghp_…` are one credential, one id.
    """

    _CACHE_LIMIT: Final = 200_000

    def __init__(self, salt: bytes) -> None:
        self._salt = salt
        self._cache: dict[str, tuple[str, bool]] = {}

    def hashed(self, secret: str) -> str:
        """The id stored in place of `secret`."""
        digest = hmac.new(self._salt, secret.encode(), hashlib.sha256).hexdigest()
        return f"redacted:{digest[:32]}"

    def redact(self, token_id: str) -> tuple[str, bool]:
        """Return (the id to store, whether it was a secret that got hashed)."""
        hit = self._cache.get(token_id)
        if hit is not None:
            return hit
        secret = secret_in(token_id)
        hit = (token_id, False) if secret is None else (self.hashed(secret), True)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[token_id] = hit
        return hit

    def redact_attributes(self, raw: str) -> bytes | None:
        """`attributes` JSON with every secret replaced by its hash; None if it held none.

        Values under sensitive names (`authorization`, `password`, `api_key` …) are hashed
        whole; elsewhere, secrets are found by shape, in keys and in values at any depth.

        >>> SecretRedactor(b"k").redact_attributes('{"password": "hunter2", "n": 1}')
        b'{"password":"redacted:0cd9cde64b418f83ab6358d5fa0fb2b0","n":1}'
        """
        if not _may_hold_secret(raw):
            return None
        value = msgspec.json.decode(raw)
        changed, clean = self._clean(value, sensitive=False)
        return msgspec.json.encode(clean) if changed else None

    def scrub(self, raw: bytes) -> bytes | None:
        """A rejected input with every secret in it hashed; None if it held none.

        Dead letters keep what arrived so it can be fixed and replayed, but never a credential:
        JSON is walked as `attributes` are; input that does not parse is searched as text (shapes,
        and string values after a sensitive name).

        >>> SecretRedactor(b"k").scrub(b'{"password": "hunter2", "ts": ')
        b'{"password": "redacted:0cd9cde64b418f83ab6358d5fa0fb2b0", "ts": '
        """
        text = raw.decode("utf-8", "surrogateescape")  # invalid UTF-8 survives the round trip
        if not _may_hold_secret(text):
            return None
        try:
            value = msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter for strings
            clean = _NAMED_VALUE.sub(
                lambda m: (
                    m.group(1) + self.hashed(m.group(2)) + '"'
                    if _SENSITIVE_KEY.search(m.group(1))
                    else m.group()
                ),
                text,
            )
            _, shaped = self._clean(clean, sensitive=False)
            assert isinstance(shaped, str)
            return None if shaped == text else shaped.encode("utf-8", "surrogateescape")
        changed, cleaned = self._clean(value, sensitive=False)
        return msgspec.json.encode(cleaned) if changed else None

    def _clean(self, value: object, *, sensitive: bool) -> tuple[bool, object]:
        if isinstance(value, str):
            if sensitive:
                return True, self.hashed(value)
            clean, found = _EMBEDDED_SECRET.subn(lambda m: self.hashed(m.group()), value)
            if len(clean) >= 40:
                for bare in _bare_aws_secrets(clean):
                    clean = clean.replace(bare, self.hashed(bare))
                    found += 1
            return bool(found), clean
        if isinstance(value, dict):
            changed, cleaned = False, {}
            for key, item in value.items():
                hide = sensitive or _SENSITIVE_KEY.search(key) is not None
                key_changed, new_key = self._clean(key, sensitive=False)
                item_changed, new_item = self._clean(item, sensitive=hide)
                changed = changed or key_changed or item_changed
                cleaned[new_key] = new_item
            return changed, cleaned
        if isinstance(value, list):
            results = [self._clean(item, sensitive=sensitive) for item in value]
            return any(c for c, _ in results), [v for _, v in results]
        if sensitive and value is not None and not isinstance(value, bool):
            return True, self.hashed(str(value))  # a numeric PIN or password
        return False, value


def timestamp_us(value: Timestamp, field: str) -> int:
    """UTC microseconds since the epoch from RFC 3339 (with offset) or epoch milliseconds."""
    if isinstance(value, int):
        if not MIN_EPOCH_MS <= value < MAX_EPOCH_MS:
            hint = " (epoch seconds? expected milliseconds)" if 0 < value < MIN_EPOCH_MS else ""
            raise InvalidEventError(f"`{field}` epoch value {value} out of range{hint}")
        return value * 1000
    if value.tzinfo is None:
        raise InvalidEventError(f"`{field}` has no UTC offset (RFC 3339 needs `Z` or `+hh:mm`)")
    micros = (value - EPOCH) // ONE_US
    if not MIN_TIME_US <= micros < MAX_TIME_US:
        raise InvalidEventError(f"`{field}` {value.isoformat()} is out of range (1970 to 3000 UTC)")
    return micros


_REQUIRED_TEXT: Final = ("event_id", "token_id", "identity", "source", "target", "operation")


class EventDecoder:
    """Turns raw bytes into a validated `Event` or raises `InvalidEventError` with the reason."""

    def __init__(self, *, salt: bytes, max_bytes: int = 1 << 20) -> None:
        self._decoder = msgspec.json.Decoder(WireEvent)
        self._encode = msgspec.json.Encoder().encode
        self._redactor = SecretRedactor(salt)
        self.max_bytes = max_bytes

    def scrub(self, raw: bytes) -> bytes | None:
        """`raw` with its secrets hashed (None if it held none), for the dead-letter table."""
        return self._redactor.scrub(raw)

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
        except RecursionError:
            # msgspec refuses nesting deeper than its stack allows (even inside `attributes`,
            # which it only skips); an event is never legitimately that deep.
            raise InvalidEventError("unparsable JSON: nested too deeply") from None
        try:
            # msgspec skips fields outside the contract without checking their bytes; the store
            # parses the whole message and would refuse the batch it arrived in (~0.3 µs here).
            raw.decode()
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
        redacted_raw = None
        if len(wire.attributes):
            attributes = bytes(wire.attributes)
            if not attributes.lstrip().startswith((b"{", b"null")):
                raise InvalidEventError(
                    "invalid event: `attributes` must be an object - at `$.attributes`"
                )
            text = attributes.decode()  # valid: `decode` checked every byte of the message
            try:
                clean = self._redactor.redact_attributes(text)
            except RecursionError:
                raise InvalidEventError(
                    "invalid event: `attributes` nested too deeply - at `$.attributes`"
                ) from None
            if clean is not None:
                wire = msgspec.structs.replace(wire, attributes=msgspec.Raw(clean))
                redacted_raw = self._encode(wire)
                flags.append(FLAG_ATTRIBUTES_REDACTED)
        return Event(wire, ts_us, token_id, parent, issued, expires, tuple(flags), redacted_raw)
