"""Adapters: records of other formats mapped onto the event contract (DESIGN.md §2).

An adapter is a pure function of one input record (a file line, an array item, a Kafka message):
it returns the contract events the record holds, each encoded as JSON, plus the pieces it could
not map with the reason. The events then take the same validation path as native events
(`EventDecoder.decode`), so a mapped event is held to exactly the contract a producer is.

Each adapted event keeps the input it came from (`source`): when the event fails validation, that
input, not the mapped JSON, is what goes to the dead-letter table, so it can be fed again as is.
(A later conflict on `event_id` is found by the store, which holds the mapped JSON.)

The structs adapters decode into are declared `gc=False`: they never form reference cycles, and
one trace makes thousands of them, which the garbage collector would otherwise keep scanning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final

import msgspec

from tokentrail.config import AdapterSettings
from tokentrail.events import EPOCH, MAX_EPOCH_MS, MIN_EPOCH_MS

__all__ = [
    "DECODE_ERRORS",
    "FLAG_IDENTITY_FALLBACK",
    "FLAG_PARENT_RELINKED",
    "FLAG_PEER_FROM_TRACE",
    "FLAG_PEER_UNKNOWN",
    "FLAG_TOKEN_FALLBACK",
    "MAX_MICROS",
    "MIN_MICROS",
    "Adapter",
    "Item",
    "Mapped",
    "Picker",
    "Unmapped",
    "why",
]

# Flags an adapter adds to the events' `flags` (next to the decoder's own `token_id_redacted`).
# token_id is not a credential but a stand-in (a principal's hash, `service:NAME`).
FLAG_TOKEN_FALLBACK: Final = "token_id_fallback"
# identity is a stand-in too (the calling service, or a principal without an ARN).
FLAG_IDENTITY_FALLBACK: Final = "identity_fallback"
# The span names no peer: source and target are both the local service (an assumed internal hop).
FLAG_PEER_UNKNOWN: Final = "peer_unknown"
# The peer was taken from another span of the same trace in the same record.
FLAG_PEER_FROM_TRACE: Final = "peer_from_trace"
# parent_span_id points past spans that were not kept (OTLP span kinds setting).
FLAG_PARENT_RELINKED: Final = "parent_span_relinked"


class Mapped(msgspec.Struct, frozen=True, gc=False):
    """One contract event (JSON) and the input it was mapped from."""

    event: bytes
    source: bytes
    flags: tuple[str, ...] = ()


class Unmapped(msgspec.Struct, frozen=True, gc=False):
    """A piece of input that holds no usable event, kept whole with the reason (one line)."""

    source: bytes
    reason: str


Item = Mapped | Unmapped
# Raises InvalidEventError when the record as a whole is unusable (not JSON, wrong shape).
Adapter = Callable[[bytes], list[Item]]

encode: Final = msgspec.json.Encoder().encode
# What decoding a piece of input may raise: bad JSON, a wrong type, bytes that are not UTF-8,
# and nesting deeper than msgspec's recursion allows (`[[[[…` is valid JSON of any depth).
DECODE_ERRORS: Final = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    UnicodeDecodeError,
    RecursionError,
)
# Event times the contract takes (epoch microseconds, 1973 to 3000).
MIN_MICROS: Final = MIN_EPOCH_MS * 1000
MAX_MICROS: Final = MAX_EPOCH_MS * 1000


def why(exc: Exception) -> str:
    """One line saying why a piece of input did not decode."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8: {exc.reason} at byte {exc.start}"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    return str(exc)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, so one long value cannot dead-letter a whole event."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def rfc3339(micros: int) -> str:
    """RFC 3339 UTC text for epoch microseconds; a trace's spans share seconds, so the date
    part comes from a small cache.

    >>> rfc3339(1_543_549_825_648_375)
    '2018-11-30T03:50:25.648375Z'
    """
    seconds, fraction = divmod(micros, 1_000_000)
    prefix = _SECONDS.get(seconds)
    if prefix is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        prefix = _SECONDS[seconds] = (EPOCH + timedelta(seconds=seconds)).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    return "%s.%06dZ" % (prefix, fraction)  # noqa: UP031 (once per event: cheaper than format())


_SECONDS: dict[int, str] = {}


def stable_hash(text: str, length: int = 24) -> str:
    """A short, stable hex digest: the same input gives the same id on every run and machine."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:length]


class Picker:
    """Finds several fields among attributes in one pass over them.

    Each field has attribute names in order of preference; a value in an earlier map wins over
    one in a later map (span attributes before resource attributes).

    >>> Picker({"token": ["auth.token.id"], "scope": ["enduser.scope"]}).pick(
    ...     {"enduser.scope": "read"}, {"auth.token.id": "k1", "enduser.scope": "all"})
    {'scope': 'read', 'token': 'k1'}
    """

    def __init__(self, fields: Mapping[str, Sequence[str]]) -> None:
        table: dict[str, list[tuple[str, int]]] = {}
        for field, names in fields.items():
            for rank, name in enumerate(names):
                table.setdefault(name, []).append((field, rank))
        self._table = {name: tuple(places) for name, places in table.items()}
        self._names = frozenset(table)
        self._plans: dict[tuple[str, ...], _Plan] = {}

    def pick(self, *maps: Mapping[str, Any]) -> dict[str, str]:
        if len(maps) == 1:
            return self._pick(maps[0], {})
        found: dict[str, str] = {}
        for values in maps:
            for field, value in self._pick(values, {}).items():
                found.setdefault(field, value)  # an earlier map wins, whatever the rank
        return found

    def pick_over(self, found: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, str]:
        """`found` (picked from a later map) with the fields `values` gives replaced or added:
        `found | pick(values)` without the second dict."""
        return self._pick(values, dict(found))

    def _pick(self, values: Mapping[str, Any], found: dict[str, str]) -> dict[str, str]:
        # Called once per span. Spans of one instrumentation carry the same attribute names, so
        # which names may give which field, best first, is worked out once per list of names
        # (a plan); a pick then only reads those values, the first usable one per field wins.
        names = tuple(values)
        plan = self._plans.get(names)
        if plan is None:
            plan = self._plan(names)
        for field, candidates in plan:
            for name in candidates:
                value = values[name]
                if value.__class__ is not str:
                    if value is None:
                        continue
                    value = str(value)
                if not value or value.isspace():
                    continue
                found[field] = value
                break
        return found

    def _plan(self, names: tuple[str, ...]) -> _Plan:
        ranked: dict[str, dict[str, int]] = {}
        for name in self._names.intersection(names):
            for field, rank in self._table[name]:
                best = ranked.setdefault(field, {})
                best[name] = min(rank, best.get(name, rank))
        plan = tuple(
            (field, tuple(sorted(best, key=best.__getitem__))) for field, best in ranked.items()
        )
        # Kept only for the usual few short names: odd inputs must not fill memory with theirs.
        if len(names) <= 64 and sum(map(len, names)) <= 4096:
            if len(self._plans) >= _PLANS:
                self._plans.clear()
            self._plans[names] = plan
        return plan


# Which names to read per field, in order of preference.
_Plan = tuple[tuple[str, tuple[str, ...]], ...]
# Plans kept per picker (each input with names of its own adds one).
_PLANS: Final = 1024


def configured_fields(settings: AdapterSettings) -> dict[str, Sequence[str]]:
    """The attribute (or tag) names, per event field, that the operator's settings choose."""
    return {
        "token": settings.token_attributes,
        "identity": settings.identity_attributes,
        "scope": settings.scope_attributes,
        "identity_kind": ["tokentrail.identity_kind"],
    }
