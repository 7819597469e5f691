"""Zipkin v2 JSON spans as contract events; the field mapping is in docs/ADAPTERS.md.

One input record is a span array (a trace as the Zipkin API returns it, one POST to
`/api/v2/spans`, one Kafka message from a Zipkin reporter) or a single span (a JSON line).
Every span is one event, and `traceId`/`id`/`parentId` become the chain fields unchanged
(lowercase hex), so a chain rebuilt from the events has exactly the file's parent/child edges.

Within one array the adapter also reads the trace around a span:
- a span reported in pieces (a piece with no timestamp and no kind, same id and host) is merged
  into the piece that has them, as Zipkin's own merge does;
- a CLIENT span without `remoteEndpoint` is pointed at the SERVER half that shares its id, and a
  SERVER span without one at the CLIENT half or parent that called it (flag `peer_from_trace`).
A span with no kind, or with no peer anywhere, is an internal hop of its local service.

>>> from tokentrail.config import AdapterSettings
>>> spans = (b'[{"traceId": "a1", "id": "b2", "kind": "CLIENT", "name": "get /users",'
...     b' "timestamp": 1543549825648375, "localEndpoint": {"serviceName": "web"},'
...     b' "remoteEndpoint": {"serviceName": "users"}}]')
>>> [item] = adapt(spans, AdapterSettings())
>>> event = msgspec.json.decode(item.event)
>>> event["source"], event["target"], event["span_id"], event["token_id"]
('web', 'users', '00000000000000b2', 'service:web')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, cast
from zlib import crc32

import msgspec

from tokentrail.config import AdapterSettings
from tokentrail.events import IDENTITY_KINDS, MAX_BIGINT, InvalidEventError
from tokentrail.ingest.adapters import (
    DECODE_ERRORS,
    FLAG_IDENTITY_FALLBACK,
    FLAG_PEER_FROM_TRACE,
    FLAG_PEER_UNKNOWN,
    FLAG_TOKEN_FALLBACK,
    MAX_MICROS,
    MIN_MICROS,
    Item,
    Mapped,
    Picker,
    Unmapped,
    clip,
    configured_fields,
    encode,
    rfc3339,
    why,
)

NAME: Final = "zipkin"

_CALLS_OUT: Final = frozenset({"CLIENT", "PRODUCER"})
_CALLED: Final = frozenset({"SERVER", "CONSUMER"})
_HEX: Final = frozenset("0123456789abcdef")
_CANONICAL_ID: Final = re.compile(r"[0-9a-f]{16}(?:[0-9a-f]{16})?\Z")
_USER_AGENT: Final = ["http.user_agent", "user_agent"]
_BYTES_OUT: Final = ["http.response.size", "response_size"]
_ENVIRONMENT: Final = ["deployment.environment.name", "deployment.environment", "environment"]
_PATH: Final = ["tokentrail.resource", "http.path"]
_TASK: Final = ["tokentrail.task_id"]
_ACTOR: Final = ["tokentrail.actor"]


class Endpoint(msgspec.Struct, omit_defaults=True, gc=False):
    serviceName: str | None = None  # noqa: N815 (Zipkin's names)
    ipv4: str | None = None
    ipv6: str | None = None
    port: int | None = None


class Annotation(msgspec.Struct, omit_defaults=True, gc=False):
    timestamp: int
    value: str = ""


class Span(msgspec.Struct, gc=False):
    """A Zipkin v2 span (zipkin2-api.yaml); unknown fields are ignored."""

    traceId: str  # noqa: N815
    id: str
    parentId: str | None = None  # noqa: N815
    kind: str | None = None
    name: str | None = None
    timestamp: int | None = None
    duration: int | None = None
    localEndpoint: Endpoint | None = None  # noqa: N815
    remoteEndpoint: Endpoint | None = None  # noqa: N815
    annotations: list[Annotation] = []
    tags: dict[str, str] = {}
    shared: bool | None = None
    debug: bool | None = None


class _LaxSpan(Span, gc=False):
    """A span whose tags are not all strings, as some reporters send them."""

    tags: dict[str, str | int | float | bool] = {}  # type: ignore[assignment]


_decode_top: Final = msgspec.json.Decoder(list[msgspec.Raw] | _LaxSpan).decode
_decode_span: Final = msgspec.json.Decoder(Span).decode
_decode_lax: Final = msgspec.json.Decoder(_LaxSpan).decode


class _Part(msgspec.Struct, gc=False):
    """One span of the record, normalised, with what merging added to it."""

    span: Span
    source: bytes
    trace_id: str
    span_id: str
    parent_id: str | None
    tags: dict[str, str]
    # The local service (name, else address): read for the span and for its neighbours in the
    # trace, so worked out once. Merging never changes `localEndpoint`.
    service: str | None
    merged: int = 0


class Event(msgspec.Struct, omit_defaults=True, gc=False):
    """One span as a contract event, fields in the order the JSON has them (None: left out).

    A Struct rather than a dict: built in one call and encoded in C with its keys pre-encoded,
    which matters at one event per span.
    """

    event_id: str
    ts: str
    token_id: str
    identity: str
    source: str
    target: str
    operation: str
    outcome: str
    trace_id: str
    span_id: str
    attributes: dict[str, Any]
    parent_span_id: str | None = None
    status: int | None = None
    identity_kind: str | None = None
    source_ip: str | None = None
    scope: str | None = None
    environment: str | None = None
    resource: str | None = None
    user_agent: str | None = None
    task_id: str | None = None
    actor: str | None = None
    bytes_out: int | None = None


def adapt(record: bytes, settings: AdapterSettings) -> list[Item]:
    """The events in one span array (or single span)."""
    try:
        top = _decode_top(record)
    except DECODE_ERRORS as exc:
        raise InvalidEventError(f"{NAME}: {why(exc)}") from None
    items: list[Item] = []
    parts: list[_Part] = []
    if isinstance(top, _LaxSpan):
        _add(parts, items, top, record, "")
    else:
        for n, raw in enumerate(top):
            source = bytes(raw)
            try:
                span = _decode_span(source)
            except DECODE_ERRORS:
                try:
                    span = _decode_lax(source)
                except DECODE_ERRORS as exc:
                    items.append(Unmapped(source, f"{NAME}: [{n}]: {why(exc)}"))
                    continue
            _add(parts, items, span, source, f"[{n}]: ")
    parts, orphans = _merge_pieces(parts)
    items.extend(orphans)
    trace = _Trace(parts)
    options = Options.of(settings)
    for part in parts:
        try:
            event, flags = event_of(part, trace, options)
        except InvalidEventError as exc:
            items.append(Unmapped(part.source, exc.reason))
        else:
            items.append(Mapped(encode(event), part.source, flags))
    return items


def _add(parts: list[_Part], items: list[Item], span: Span, source: bytes, where: str) -> None:
    try:
        trace_id = zipkin_id(span.traceId, "traceId")
        span_id = zipkin_id(span.id, "id")
        parent_id = zipkin_id(span.parentId, "parentId") if span.parentId else None
    except InvalidEventError as exc:
        items.append(Unmapped(source, exc.reason.replace(": ", f": {where}", 1)))
        return
    if isinstance(span, _LaxSpan):
        # The format says strings; some reporters send numbers and booleans.
        lax = cast(dict[str, object], span.tags)
        tags = {k: v if isinstance(v, str) else str(v).lower() for k, v in lax.items()}
    else:
        tags = span.tags
    local = span.localEndpoint
    service = _text(local.serviceName) or _address(local) if local else None
    parts.append(_Part(span, source, trace_id, span_id, parent_id, tags, service))


def zipkin_id(value: str, field: str) -> str:
    """A Zipkin id as lowercase hex, left-padded to 16 (or 32) digits as Zipkin does.

    >>> zipkin_id("A1B2", "id"), zipkin_id("14b60fd9ae504820", "traceId")
    ('000000000000a1b2', '14b60fd9ae504820')
    """
    if _CANONICAL_ID.match(value):
        return value
    lowered = value.lower()
    if not lowered or len(lowered) > 32 or not _HEX.issuperset(lowered):
        raise InvalidEventError(f"{NAME}: `{field}` {value[:64]!r} is not a hex id")
    return lowered.zfill(16 if len(lowered) <= 16 else 32)


def _address(endpoint: Endpoint) -> str | None:
    return endpoint.ipv4 or endpoint.ipv6


def _merge_pieces(parts: list[_Part]) -> tuple[list[_Part], list[Unmapped]]:
    """Fold pieces without a timestamp into the piece of the same span that has one."""
    if all(p.span.timestamp for p in parts):
        return parts, []
    by_id: dict[tuple[str, str], list[_Part]] = {}
    for part in parts:
        by_id.setdefault((part.trace_id, part.span_id), []).append(part)
    kept: list[_Part] = []
    orphans: list[Unmapped] = []
    for part in parts:
        if part.span.timestamp:
            kept.append(part)
            continue
        whole = next((o for o in by_id[(part.trace_id, part.span_id)] if _same_span(o, part)), None)
        if whole is not None:
            _fold(whole, part)
            continue
        times = [a.timestamp for a in part.span.annotations if a.timestamp > 0]
        if times:
            part.span = msgspec.structs.replace(part.span, timestamp=min(times))
            kept.append(part)
            continue
        orphans.append(
            Unmapped(
                part.source,
                f"{NAME}: span {part.span_id} has no timestamp, no annotation and no other"
                " piece in this record (send the whole trace as one array)",
            )
        )
    return kept, orphans


def _same_span(whole: _Part, piece: _Part) -> bool:
    """Whether `piece` is more of `whole`: same host, and nothing in them disagrees."""
    if whole is piece or not whole.span.timestamp:
        return False
    if piece.span.kind is not None and piece.span.kind != whole.span.kind:
        return False
    if piece.parent_id is not None and whole.parent_id not in (None, piece.parent_id):
        return False
    mine, theirs = whole.span.localEndpoint, piece.span.localEndpoint
    if mine is None or theirs is None:
        return True
    return all(
        a is None or b is None or a == b
        for a, b in (
            (mine.serviceName, theirs.serviceName),
            (mine.ipv4, theirs.ipv4),
            (mine.ipv6, theirs.ipv6),
            (mine.port, theirs.port),
        )
    )


def _fold(whole: _Part, piece: _Part) -> None:
    span, extra = whole.span, piece.span
    whole.span = msgspec.structs.replace(
        span,
        name=span.name or extra.name,
        duration=span.duration or extra.duration,
        remoteEndpoint=span.remoteEndpoint or extra.remoteEndpoint,
        annotations=span.annotations + extra.annotations,
    )
    whole.parent_id = whole.parent_id or piece.parent_id
    whole.tags = piece.tags | whole.tags
    whole.merged += 1


class _Trace:
    """The spans of one record, looked up by id: who shares a span id, who calls whom."""

    def __init__(self, parts: list[_Part]) -> None:
        self._by_id: dict[tuple[str, str], list[_Part]] = {}
        self._children: dict[tuple[str, str], list[_Part]] = {}
        for part in parts:
            self._by_id.setdefault((part.trace_id, part.span_id), []).append(part)
            if part.parent_id is not None:
                self._children.setdefault((part.trace_id, part.parent_id), []).append(part)

    def callee(self, part: _Part) -> str | None:
        """The service a CLIENT/PRODUCER span called: its shared SERVER half, or a child."""
        key = (part.trace_id, part.span_id)
        for others in (self._by_id.get(key, ()), self._children.get(key, ())):
            for other in others:
                if other.span.kind in _CALLED and other.service:
                    return other.service
        return None

    def caller(self, part: _Part) -> str | None:
        """The service that called a SERVER/CONSUMER span: its CLIENT half, or its parent."""
        for other in self._by_id.get((part.trace_id, part.span_id), []):
            if other.span.kind in _CALLS_OUT and other.service:
                return other.service
        if part.parent_id is None:
            return None
        parents = self._by_id.get((part.trace_id, part.parent_id), [])
        ranked = sorted(parents, key=lambda p: p.span.kind not in _CALLS_OUT)
        return next((p.service for p in ranked if p.service), None)

    def name(self, part: _Part) -> str | None:
        """The name another piece of the same span gives (a nameless shared SERVER span)."""
        for other in self._by_id.get((part.trace_id, part.span_id), []):
            if _text(other.span.name):
                return other.span.name
        return None


@dataclass(frozen=True, slots=True)
class Options:
    """What one AdapterSettings means for Zipkin tags, worked out once."""

    picker: Picker
    # Tags that carry the credential: kept only as token_id.
    token_names: frozenset[str]

    @classmethod
    def of(cls, settings: AdapterSettings) -> Options:
        key = (
            tuple(settings.token_attributes),
            tuple(settings.identity_attributes),
            tuple(settings.scope_attributes),
        )
        found = _OPTIONS.get(key)
        if found is None:
            fields = {
                **configured_fields(settings),
                "environment": _ENVIRONMENT,
                "resource": _PATH,
                "user_agent": _USER_AGENT,
                "bytes_out": _BYTES_OUT,
                "task_id": _TASK,
                "actor": _ACTOR,
            }
            found = _OPTIONS[key] = cls(Picker(fields), frozenset(settings.token_attributes))
        return found


_OPTIONS: Final[dict[tuple[tuple[str, ...], ...], Options]] = {}


# Event fields filled as they are from the tags found (`_copied`).
def event_of(part: _Part, trace: _Trace, options: Options) -> tuple[Event, tuple[str, ...]]:
    """One span as a contract event; `trace` holds the other spans of the record."""
    span = part.span
    tags = part.tags
    timestamp = span.timestamp
    if timestamp is None or timestamp <= 0:
        raise InvalidEventError(f"{NAME}: span {part.span_id} has no timestamp")
    if not MIN_MICROS <= timestamp < MAX_MICROS:
        raise InvalidEventError(
            f"{NAME}: span {part.span_id} `timestamp` {timestamp} is out of range"
            " (epoch microseconds expected)"
        )
    flags: list[str] = []
    local = part.service or "unknown"
    source, target = _ends(part, local, trace, flags)
    found = options.picker.pick(tags) if tags else {}
    get = found.get
    token = get("token")
    if token is None:
        token = f"service:{source}"
        flags.append(FLAG_TOKEN_FALLBACK)
    identity = get("identity")
    identity_kind = get("identity_kind")
    if identity_kind not in IDENTITY_KINDS:
        identity_kind = None
    if identity is None:
        identity = source
        identity_kind = identity_kind or "service"
        flags.append(FLAG_IDENTITY_FALLBACK)
    status = _status(tags.get("http.status_code"))
    where = span.localEndpoint
    host = f"{local}|{where.ipv4}|{where.ipv6}|{where.port}" if where else local
    kind = span.kind.lower() if span.kind else "local"
    remote = span.remoteEndpoint
    address = _address(remote) if remote is not None and span.kind in _CALLED else None
    size = get("bytes_out")
    attributes: dict[str, Any] = {}
    if span.kind:
        attributes["zipkin.kind"] = span.kind
    if span.name:
        attributes["zipkin.name"] = span.name
    if span.duration is not None:
        attributes["zipkin.duration_us"] = span.duration
    if span.shared is not None:
        attributes["zipkin.shared"] = span.shared
    if where is not None:
        attributes["zipkin.local_endpoint"] = where
    if remote is not None:
        attributes["zipkin.remote_endpoint"] = remote
    if span.annotations:
        attributes["zipkin.annotations"] = span.annotations
    if part.merged:
        attributes["zipkin.merged_pieces"] = part.merged
    if tags:
        # The credential is kept only as token_id, where ingest hashes raw secrets.
        attributes["tags"] = _without(tags, options.token_names)
    event = Event(
        # Client and server halves share a span id, and one message may reach several hosts.
        f"zipkin:{part.trace_id}:{part.span_id}:{kind}:"
        + f"{crc32(f'{host}|{timestamp}'.encode()):08x}",
        rfc3339(timestamp),
        token,
        clip(identity, 1024),
        clip(source, 1024),
        clip(target, 1024),
        clip(_operation(part, trace), 1024),
        _outcome(tags, status),
        part.trace_id,
        part.span_id,
        attributes,
        part.parent_id,
        status,
        identity_kind or None,
        address or None,
        _copied(get("scope")),
        _copied(get("environment")),
        _copied(get("resource")),
        _copied(get("user_agent")),
        _copied(get("task_id")),
        _copied(get("actor")),
        None if size is None else _size(size),
    )
    return event, tuple(flags)


def _copied(value: str | None) -> str | None:
    return value if value is None or len(value) <= 4096 else clip(value, 4096)


def _without(values: dict[str, str], names: frozenset[str]) -> dict[str, str]:
    if names.isdisjoint(values):
        return values
    return {k: v for k, v in values.items() if k not in names}


def _ends(part: _Part, local: str, trace: _Trace, flags: list[str]) -> tuple[str, str]:
    """(source, target) from the span's kind, its remote endpoint, or the trace around it."""
    kind = part.span.kind
    if kind not in _CALLS_OUT and kind not in _CALLED:
        return local, local
    remote = part.span.remoteEndpoint
    peer = _text(remote.serviceName) if remote else None
    if peer is None:
        peer = trace.callee(part) if kind in _CALLS_OUT else trace.caller(part)
        if peer is not None:
            flags.append(FLAG_PEER_FROM_TRACE)
        elif remote is not None:
            peer = _address(remote)
    if peer is None:
        flags.append(FLAG_PEER_UNKNOWN)
        return local, local
    return (local, peer) if kind in _CALLS_OUT else (peer, local)


def _operation(part: _Part, trace: _Trace) -> str:
    tags = part.tags
    method = tags.get("http.method")
    route = tags.get("http.route")
    if method and route:
        return f"{method.upper()} {route}"
    name = _text(part.span.name) or _text(trace.name(part))
    if name and (not method or name.lower() != method.lower()):
        return name
    path = tags.get("http.path")
    if method and path:
        return f"{method.upper()} {path}"
    return name or method or "unknown"


def _status(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        status = int(value)
    except ValueError:
        return None
    return status if 0 <= status <= 999 else None


def _outcome(tags: dict[str, str], status: int | None) -> str:
    if status in (401, 403):
        return "denied"
    if "error" in tags or (status is not None and status >= 400):
        return "error"
    return "success"


def _size(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    try:
        size = int(value)
    except ValueError:  # `²` is a digit to isdigit() but not to int(); so is a 5000-digit number
        return None
    return size if size <= MAX_BIGINT else None


def _text(value: str | None) -> str | None:
    """`value` without surrounding blanks, or None if nothing is left (names of `\\n` exist)."""
    stripped = value.strip() if value else None
    return stripped or None
