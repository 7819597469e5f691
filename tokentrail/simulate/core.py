"""Building blocks every generator shares: time, ids, tokens, the event struct and lanes.

A *lane* is one generator's output. Generators push events in roughly increasing time and
release them in exact time order once nothing earlier can follow, so the world can merge all
lanes with `heapq.merge` and never hold more than a few minutes of traffic per lane.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import msgspec

from tokentrail.errors import TokentrailError

SECOND: Final = 1000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR

# 2026-03-02T00:00:00Z, a Monday: worlds start on a working week unless told otherwise.
DEFAULT_START_MS: Final = 1_772_409_600_000
FOREVER: Final = 1 << 62

BENIGN: Final = -1
"""Label index of an event no attack produced."""


class SimulationError(TokentrailError):
    """A world that cannot be built as asked (bad attack name or time, unusable output)."""


class TokenMeta(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """The `token` object of the event contract, with RFC 3339 times."""

    kind: str
    scopes: list[str]
    issued_at: str
    expires_at: str | None = None
    parent_token_id: str | None = None
    audience: str | None = None


class SimEvent(msgspec.Struct, omit_defaults=True, gc=False):
    """One API call in the wire shape of DESIGN.md §2; `event_id` and `ts` are set on output.

    Fields are in contract order and all have defaults, so the hot path can build events
    positionally (several times faster than by keyword); everywhere else uses keywords.
    """

    event_id: str = ""
    ts: str = ""
    token_id: str = ""
    identity: str = ""
    source: str = ""
    target: str = ""
    operation: str = ""
    scope: str | None = None
    outcome: str = "success"
    status: int | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    environment: str | None = None
    identity_kind: str | None = None
    resource: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    bytes_out: int | None = None
    task_id: str | None = None
    actor: str | None = None
    token: TokenMeta | None = None
    attributes: dict[str, str] | None = None


# (event time in ms, unique order key, event, label index or BENIGN). The order key is unique
# across lanes, so tuples never compare their events and ties resolve the same way every run.
Item = tuple[int, int, SimEvent, int]
# What a generator yields: (watermark, items earlier than it in time order); no later chunk of
# the same generator holds an item earlier than the watermark.
Chunk = tuple[int, list[Item]]

_LANE_BITS: Final = 12


class Lane:
    """One generator's events, released in time-ordered chunks; events outside the world are
    dropped. Pushing is a list append and releasing one sort: the per-event cost stays tiny."""

    __slots__ = ("_count", "_pending", "end_ms", "index", "start_ms")

    def __init__(self, index: int, start_ms: int, end_ms: int) -> None:
        if not 0 <= index < 1 << _LANE_BITS:
            raise SimulationError(f"too many generators ({index})")
        self.index = index
        self.start_ms = start_ms
        self.end_ms = end_ms
        self._pending: list[Item] = []
        self._count = 0

    def push(self, ts: int, event: SimEvent, label: int = BENIGN) -> None:
        """Queue an event; it may be earlier than events already queued."""
        if self.start_ms <= ts < self.end_ms:
            self._pending.append((ts, (self._count << _LANE_BITS) | self.index, event, label))
            self._count += 1

    def release(self, before: int = FOREVER) -> Chunk:
        """The queued events earlier than `before`, in order: the caller promises that no
        event earlier than `before` will be pushed from now on."""
        pending = self._pending
        if not pending:
            return before, pending
        pending.sort()
        cut = bisect_left(pending, (before,))
        if cut == len(pending):
            self._pending = []
            return before, pending
        self._pending = pending[cut:]
        return before, pending[:cut]


def merge_chunks(
    streams: list[Iterator[Chunk]], start_ms: int, window_ms: int
) -> Iterator[list[Item]]:
    """Merge generators' chunks into one time-ordered stream of lists, one window at a time.

    Sorting a window's items at once (in C) is several times cheaper than merging item by
    item, and memory stays at one window plus what lanes hold back."""
    marks = [start_ms] * len(streams)
    pending: list[Item] = []
    edge = start_ms + window_ms
    while True:
        for i, stream in enumerate(streams):
            while marks[i] < edge:
                mark, items = next(stream, (FOREVER, []))
                marks[i] = mark
                pending += items
        pending.sort()
        cut = bisect_left(pending, (edge,))
        if cut:
            yield pending[:cut]
            pending = pending[cut:]
        if not pending and min(marks) >= FOREVER:
            return
        # Jump over quiet stretches instead of stepping through empty windows.
        edge = max(edge + window_ms, min(min(marks), pending[0][0] if pending else FOREVER))


@dataclass(frozen=True, slots=True)
class Token:
    """A credential as the simulator knows it; `meta()` is what its first use carries."""

    token_id: str
    kind: str
    scopes: tuple[str, ...]
    issued_ms: int
    expires_ms: int | None
    parent_token_id: str | None = None
    audience: str | None = None

    def meta(self) -> TokenMeta:
        return TokenMeta(
            kind=self.kind,
            scopes=list(self.scopes),
            issued_at=fmt_ts(self.issued_ms),
            expires_at=None if self.expires_ms is None else fmt_ts(self.expires_ms),
            parent_token_id=self.parent_token_id,
            audience=self.audience,
        )


_MINUTE_PREFIX: dict[int, str] = {}
_SECONDS: Final = tuple(f"{s:02d}." for s in range(60))
_MILLIS: Final = tuple(f"{m:03d}Z" for m in range(1000))


def fmt_ts(ms: int) -> str:
    """RFC 3339 UTC with milliseconds; formatted by hand (and by the minute) because it runs
    once per event.

    >>> fmt_ts(DEFAULT_START_MS + 3_723_004)
    '2026-03-02T01:02:03.004Z'
    """
    minute, rest = divmod(ms, MINUTE)
    prefix = _MINUTE_PREFIX.get(minute)
    if prefix is None:
        if len(_MINUTE_PREFIX) > 100_000:
            _MINUTE_PREFIX.clear()
        prefix = datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:")
        _MINUTE_PREFIX[minute] = prefix
    second, milli = divmod(rest, 1000)
    return prefix + _SECONDS[second] + _MILLIS[milli]


def parse_ts(text: str) -> int:
    """Milliseconds since the epoch from an RFC 3339 time with an offset (or `Z`)."""
    try:
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise SimulationError(f"not an RFC 3339 time: {text!r}") from None
    if value.tzinfo is None:
        raise SimulationError(f"time {text!r} needs an offset, e.g. 2026-03-02T00:00:00Z")
    return int(value.timestamp() * 1000)


def stable_hex(*parts: object, chars: int = 24) -> str:
    """A hex digest of `parts`: the same in every process (unlike `hash()`)."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=(chars + 1) // 2).hexdigest()[:chars]


def lane_rng(seed: int, name: str) -> random.Random:
    """An independent random stream per generator, so lanes do not depend on merge order."""
    return random.Random(f"tokentrail-sim/{seed}/{name}")


def hex_id(rng: random.Random, bits: int) -> str:
    """A random lowercase hex id of `bits` bits (trace ids are 128, span ids 64)."""
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson-distributed count; the normal approximation is plenty for large means."""
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit = math.exp(-lam)
    count = 0
    product = rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def day_hour(ms: int) -> tuple[int, float]:
    """(weekday 0=Monday, hour of day as a float) of an epoch-ms time, in UTC."""
    days, in_day = divmod(ms, DAY)
    return (days + 3) % 7, in_day / HOUR


def office_hours(ms: int) -> bool:
    """Monday to Friday, 08:00 to 18:00 UTC: when people and their agents work."""
    weekday, hour = day_hour(ms)
    return weekday < 5 and 8 <= hour < 18
