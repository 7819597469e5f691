"""OpenTelemetry OTLP/JSON trace exports as contract events; the mapping is in docs/ADAPTERS.md.

One input record is an `ExportTraceServiceRequest` (`resourceSpans` -> `scopeSpans` -> `spans`),
as an OTLP/HTTP JSON body, a line of the collector's file exporter or one Kafka message
(`otlp_json` encoding). Each span is one event, unless its kind is not in the
`otlp_span_kinds` setting: then it is skipped and the spans under it are linked to the nearest
kept ancestor in the same request, so chains stay connected.

IDs are hex as the OTLP/JSON encoding requires; base64 (the plain protobuf JSON mapping some
exporters use) is accepted and converted to lowercase hex.

>>> from tokentrail.config import AdapterSettings
>>> request = (b'{"resourceSpans": [{"resource": {"attributes": [{"key": "service.name",'
...     b' "value": {"stringValue": "checkout"}}]}, "scopeSpans": [{"spans": [{"traceId":'
...     b' "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "GET",'
...     b' "kind": 3, "startTimeUnixNano": "1544712660000000000", "attributes": [{"key":'
...     b' "server.address", "value": {"stringValue": "payments"}}]}]}]}]}')
>>> [item] = adapt(request, AdapterSettings())
>>> event = msgspec.json.decode(item.event)
>>> event["source"], event["target"], event["ts"]
('checkout', 'payments', '2018-12-13T14:51:00.000000Z')
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from tokentrail.config import AdapterSettings
from tokentrail.events import IDENTITY_KINDS, MAX_BIGINT, InvalidEventError
from tokentrail.ingest.adapters import (
    DECODE_ERRORS,
    FLAG_IDENTITY_FALLBACK,
    FLAG_PARENT_RELINKED,
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

NAME: Final = "otlp"

# SpanKind enum values (trace.proto), and the names some exporters send instead.
KINDS: Final = ("unspecified", "internal", "server", "client", "producer", "consumer")
_KIND_NAMES: Final = {f"SPAN_KIND_{kind.upper()}": kind for kind in KINDS}
_CALLS_OUT: Final = frozenset({"client", "producer"})
_CALLED: Final = frozenset({"server", "consumer"})

# Where the other side of a call is named, in order of preference (semantic conventions, with
# the names older instrumentation still sends).
_CALLEE: Final = [
    "peer.service",
    "server.address",
    "rpc.service",
    "net.peer.name",
    "messaging.destination.name",
    "db.system",
]
_CALLER: Final = ["peer.service"]
_CALLER_ADDRESS: Final = ["client.address", "net.sock.peer.addr", "net.peer.ip", "net.peer.name"]
_METHOD: Final = ["http.request.method", "http.method"]
_STATUS: Final = ["http.response.status_code", "http.status_code"]
_PATH: Final = ["tokentrail.resource", "url.path", "http.target"]
_USER_AGENT: Final = ["user_agent.original", "http.user_agent"]
_BYTES_OUT: Final = ["http.response.body.size", "http.response_content_length"]
_ENVIRONMENT: Final = ["deployment.environment.name", "deployment.environment"]
_TASK: Final = ["tokentrail.task_id"]
_ACTOR: Final = ["tokentrail.actor"]
# gRPC PERMISSION_DENIED and UNAUTHENTICATED.
_GRPC_DENIED: Final = frozenset({7, 16})
_STATUS_ERROR: Final = frozenset({2, "STATUS_CODE_ERROR"})


class _AnyValue(msgspec.Struct, gc=False):
    stringValue: str | None = None  # noqa: N815 (OTLP/JSON names)
    boolValue: bool | None = None  # noqa: N815
    intValue: int | str | None = None  # noqa: N815
    doubleValue: float | str | None = None  # noqa: N815
    bytesValue: str | None = None  # noqa: N815
    arrayValue: _ArrayValue | None = None  # noqa: N815
    kvlistValue: _KeyValueList | None = None  # noqa: N815


class _ArrayValue(msgspec.Struct, gc=False):
    values: list[_AnyValue] = []


class _KeyValue(msgspec.Struct, gc=False):
    key: str
    value: _AnyValue | None = None


class _KeyValueList(msgspec.Struct, gc=False):
    values: list[_KeyValue] = []


class _Status(msgspec.Struct, gc=False):
    code: int | str = 0
    message: str = ""


class Span(msgspec.Struct, gc=False):
    """The parts of an OTLP span the mapping reads."""

    traceId: str = ""  # noqa: N815
    spanId: str = ""  # noqa: N815
    parentSpanId: str = ""  # noqa: N815
    name: str = ""
    kind: int | str = 0
    startTimeUnixNano: int | str = 0  # noqa: N815
    endTimeUnixNano: int | str = 0  # noqa: N815
    attributes: list[_KeyValue] = []
    status: _Status | None = None


class _Attributed(msgspec.Struct, gc=False):
    name: str = ""
    attributes: list[_KeyValue] = []


class _ScopeSpans(msgspec.Struct, gc=False):
    scope: msgspec.Raw = msgspec.Raw()
    spans: list[msgspec.Raw] = []


class _ResourceSpans(msgspec.Struct, gc=False):
    resource: msgspec.Raw = msgspec.Raw()
    scopeSpans: list[_ScopeSpans] = []  # noqa: N815


class _Request(msgspec.Struct, gc=False):
    resourceSpans: list[_ResourceSpans]  # noqa: N815


_decode_request: Final = msgspec.json.Decoder(_Request).decode
_decode_span: Final = msgspec.json.Decoder(Span).decode
_decode_attributed: Final = msgspec.json.Decoder(_Attributed).decode


class Event(msgspec.Struct, omit_defaults=True, gc=False):
    """One span as a contract event, fields in the order the JSON has them (None: left out).

    A Struct rather than a dict: built in one call and encoded in C with its keys pre-encoded,
    which matters at one event per span; it also fixes the order of the optional fields.
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
    parent_span_id: str | None = None
    status: int | None = None
    identity_kind: str | None = None
    scope: str | None = None
    environment: str | None = None
    task_id: str | None = None
    actor: str | None = None
    user_agent: str | None = None
    resource: str | None = None
    source_ip: str | None = None
    bytes_out: int | None = None
    attributes: dict[str, Any] | None = None


class _Resource(msgspec.Struct, gc=False):
    """What one resource gives each of its spans, worked out once per resource."""

    service: str
    # Its attributes; the same without credentials, as events keep them; the fields they give.
    values: dict[str, Any]
    kept: dict[str, Any]
    found: dict[str, str]


class _Entry(msgspec.Struct, gc=False):
    """One decoded span with its resource, before mapping."""

    span: Span
    source: bytes
    resource: _Resource
    scope: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None


def adapt(record: bytes, settings: AdapterSettings) -> list[Item]:
    """The events in one `ExportTraceServiceRequest`; each span's dead letter is re-feedable."""
    try:
        request = _decode_request(record)
    except DECODE_ERRORS as exc:
        raise InvalidEventError(f"{NAME}: {why(exc)}") from None
    options = Options.of(settings)
    items: list[Item] = []
    entries: list[_Entry] = []
    resources = options.resources
    for block in request.resourceSpans:
        # A service sends the same resource with every request: it is worked out once.
        key = bytes(block.resource)
        resource = resources.get(key)
        if resource is None:
            try:
                attributes = _attributed(block.resource).attributes
            except DECODE_ERRORS as exc:
                reason = f"{NAME}: resource: {why(exc)}"
                items.extend(
                    Unmapped(_envelope(block.resource, s.scope, raw), reason)
                    for s in block.scopeSpans
                    for raw in s.spans
                )
                continue
            resource = _resource(attributes, options)
            if len(key) <= _CACHED_BYTES:
                if len(resources) >= _CACHED:
                    resources.clear()
                resources[key] = resource
        for scoped in block.scopeSpans:
            scope_name = _scope_name(scoped.scope)
            # The envelope's head is the same for every span of the scope: built once.
            head = _envelope_head(block.resource, scoped.scope)
            for raw in scoped.spans:
                source = b"".join((head, raw, _ENVELOPE_TAIL))
                try:
                    entries.append(_entry(raw, source, resource, scope_name))
                except InvalidEventError as exc:
                    items.append(Unmapped(source, exc.reason))
    if not entries:
        return items
    trace = Spans(entries, options.kept)
    kept = options.kept
    for entry in entries:
        if entry.kind not in kept:
            continue
        try:
            event, flags = event_of(entry, trace, options)
        except InvalidEventError as exc:
            items.append(Unmapped(entry.source, exc.reason))
        else:
            items.append(Mapped(encode(event), entry.source, flags))
    return items


def _attributed(raw: msgspec.Raw) -> _Attributed:
    # (`len` first: `bytes(raw)` copies the whole resource.)
    if not len(raw) or (len(raw) == 4 and bytes(raw) == b"null"):
        return _Attributed()
    return _decode_attributed(raw)


# Resources and scopes kept (per settings), and the largest one kept: odd input must not fill
# memory with its own.
_CACHED: Final = 256
_CACHED_BYTES: Final = 16_384
_SCOPES: dict[bytes, str] = {}


def _scope_name(raw: msgspec.Raw) -> str:
    key = bytes(raw)
    name = _SCOPES.get(key)
    if name is None:
        try:
            name = _attributed(raw).name
        except DECODE_ERRORS:
            name = ""
        if len(key) <= _CACHED_BYTES:
            if len(_SCOPES) >= _CACHED:
                _SCOPES.clear()
            _SCOPES[key] = name
    return name


def _resource(attributes: list[_KeyValue], options: Options) -> _Resource:
    values = _values(attributes)
    service = values.get("service.name")
    service = service.strip() if isinstance(service, str) else ""
    return _Resource(
        service or "unknown_service",
        values,
        _without(values, options.token_names),
        options.picker.pick(values),
    )


def _envelope(resource: msgspec.Raw, scope: msgspec.Raw, span: msgspec.Raw) -> bytes:
    """A request holding just this span, its resource and scope: the unit to dead-letter."""
    return b"".join((_envelope_head(resource, scope), span, _ENVELOPE_TAIL))


def _envelope_head(resource: msgspec.Raw, scope: msgspec.Raw) -> bytes:
    return b"".join(
        (
            b'{"resourceSpans":[{"resource":',
            resource if len(resource) else b"{}",
            b',"scopeSpans":[{"scope":',
            scope if len(scope) else b"{}",
            b',"spans":[',
        )
    )


_ENVELOPE_TAIL: Final = b"]}]}]}"


def _entry(raw: msgspec.Raw, source: bytes, resource: _Resource, scope: str) -> _Entry:
    try:
        span = _decode_span(raw)
    except DECODE_ERRORS as exc:
        raise InvalidEventError(f"{NAME}: span: {why(exc)}") from None
    trace_id = _TRACE_IDS.get(span.traceId)
    if trace_id is None:
        trace_id = hex_id(span.traceId, 16, "traceId")
        if trace_id is not None:
            if len(_TRACE_IDS) >= 4096:
                _TRACE_IDS.clear()
            _TRACE_IDS[span.traceId] = trace_id
    span_id = hex_id(span.spanId, 8, "spanId")
    if trace_id is None or span_id is None:
        raise InvalidEventError(f"{NAME}: span has no {'traceId' if not trace_id else 'spanId'}")
    parent_id = hex_id(span.parentSpanId, 8, "parentSpanId") if span.parentSpanId else None
    kind = _KIND_OF.get(span.kind)
    if kind is None:
        raise InvalidEventError(f"{NAME}: span `kind` {span.kind!r} is not a SpanKind")
    return _Entry(span, source, resource, scope, kind, trace_id, span_id, parent_id)


# traceId as sent -> as the event has it: the spans of a trace share it, so it is converted once.
_TRACE_IDS: dict[str, str] = {}


def hex_id(value: str, size: int, field: str) -> str | None:
    """A trace or span id as lowercase hex, from hex (OTLP/JSON) or base64; None if absent.

    >>> hex_id("EEE19B7EC3C1B174", 8, "spanId"), hex_id("7uGbfsPBsXQ=", 8, "spanId")
    ('eee19b7ec3c1b174', 'eee19b7ec3c1b174')
    """
    if not value:
        return None
    # No check that it is all hex first: `fromhex` does it, in C, and `hex()` makes it lowercase.
    if len(value) == 2 * size:
        try:
            data = bytes.fromhex(value)
        except ValueError:
            data = b""
    else:
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if len(data) != size:
            data = b""
    if not data:
        raise InvalidEventError(
            f"{NAME}: `{field}` {value[:64]!r} is neither hex nor base64 of {size} bytes"
        )
    if not any(data):
        # An all-zero id is invalid; exporters send it for "no parent".
        if field == "parentSpanId":
            return None
        raise InvalidEventError(f"{NAME}: `{field}` is all zeros")
    return data.hex()


# The numbers and the names, in one table: one lookup per span.
_KIND_OF: Final[dict[int | str, str]] = {
    **{number: kind for number, kind in enumerate(KINDS)},
    **{name: kind for name, kind in _KIND_NAMES.items()},
}


def _values(attributes: list[_KeyValue]) -> dict[str, Any]:
    return {
        kv.key: value.stringValue if value.stringValue is not None else _value(value)
        for kv in attributes
        if (value := kv.value) is not None
    }


def _value(value: _AnyValue | None) -> Any:
    if value is None:
        return None
    if value.stringValue is not None:
        return value.stringValue
    if value.intValue is not None:
        return _int(value.intValue)
    if value.boolValue is not None:
        return value.boolValue
    if value.doubleValue is not None:
        return value.doubleValue
    if value.arrayValue is not None:
        return [_value(v) for v in value.arrayValue.values]
    if value.kvlistValue is not None:
        return _values(value.kvlistValue.values)
    return value.bytesValue


def _int(value: int | str) -> int | str:
    """OTLP/JSON sends 64-bit integers as decimal strings."""
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        return value


def _nanos(value: str, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidEventError(f"{NAME}: `{field}` {value!r} is not an integer") from None


class Spans:
    """The spans of one request by id, the kinds kept, and which service each call reached."""

    def __init__(self, entries: list[_Entry], kept: frozenset[str]) -> None:
        self.kept = kept
        self.by_id = {entry.span_id: entry for entry in entries}
        self.callee: dict[str, str] = {}
        for entry in entries:
            if entry.kind in _CALLED and entry.parent_id is not None:
                self.callee.setdefault(entry.parent_id, entry.resource.service)


@dataclass(frozen=True, slots=True)
class Options:
    """What one AdapterSettings means for OTLP, worked out once (settings are read per span)."""

    kept: frozenset[str]
    # The event's fields, looked up in span attributes, then resource attributes.
    picker: Picker
    # Attributes that carry the credential: kept only as token_id.
    token_names: frozenset[str]
    # Resources as sent -> what they give each span.
    resources: dict[bytes, _Resource] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, settings: AdapterSettings) -> Options:
        key = (
            tuple(settings.token_attributes),
            tuple(settings.identity_attributes),
            tuple(settings.scope_attributes),
            tuple(settings.otlp_span_kinds),
        )
        found = _OPTIONS.get(key)
        if found is None:
            fields = {**configured_fields(settings), **_FIELDS}
            found = cls(
                frozenset(settings.otlp_span_kinds),
                Picker(fields),
                frozenset(settings.token_attributes),
            )
            _OPTIONS[key] = found
        return found


_OPTIONS: Final[dict[tuple[tuple[str, ...], ...], Options]] = {}
# Fields found by attribute names that no setting changes.
_FIELDS: Final = {
    "environment": _ENVIRONMENT,
    "task_id": _TASK,
    "actor": _ACTOR,
    "callee": _CALLEE,
    "caller": _CALLER,
    "caller_address": _CALLER_ADDRESS,
    "client_ip": _CALLER_ADDRESS[:3],
    "method": _METHOD,
    "status": _STATUS,
    "path": _PATH,
    "user_agent": _USER_AGENT,
    "bytes_out": _BYTES_OUT,
}

# An event's flags as bits, in the order they are listed, and every combination as one shared
# tuple: no list and tuple per span, and a shared tuple is one the garbage collector has already
# stopped tracking, so the events that carry it stay untracked too.
_PEER_FROM_TRACE, _PEER_UNKNOWN, _TOKEN_FALLBACK, _IDENTITY_FALLBACK, _RELINKED = (1, 2, 4, 8, 16)
_FLAG_ORDER: Final = (
    FLAG_PEER_FROM_TRACE,
    FLAG_PEER_UNKNOWN,
    FLAG_TOKEN_FALLBACK,
    FLAG_IDENTITY_FALLBACK,
    FLAG_PARENT_RELINKED,
)
_FLAGS: Final = tuple(
    tuple(flag for bit, flag in enumerate(_FLAG_ORDER) if bits >> bit & 1)
    for bits in range(1 << len(_FLAG_ORDER))
)


def event_of(entry: _Entry, trace: Spans, options: Options) -> tuple[Event, tuple[str, ...]]:
    """One span as a contract event; `trace` holds the spans of its request.

    One flat function: it runs once per span, and each call it saves is ~2% of the mapping.
    """
    span = entry.span
    start = span.startTimeUnixNano
    if isinstance(start, str):
        start = _nanos(start, "startTimeUnixNano")
    if start <= 0:
        raise InvalidEventError(f"{NAME}: span has no `startTimeUnixNano`")
    start_us = start // 1000
    if not MIN_MICROS <= start_us < MAX_MICROS:
        raise InvalidEventError(
            f"{NAME}: `startTimeUnixNano` {start} is out of range (epoch nanoseconds expected)"
        )
    end = span.endTimeUnixNano
    if isinstance(end, str):
        end = _nanos(end, "endTimeUnixNano")
    attributes = _values(span.attributes) if span.attributes else {}
    resource = entry.resource
    # The span's own attributes win over the resource's.
    picker = options.picker
    found = picker.pick_over(resource.found, attributes) if attributes else resource.found
    get = found.get
    bits = 0
    # Who called whom, from the span's kind and its peer attributes.
    kind = entry.kind
    service = resource.service
    source = target = service
    if kind in _CALLS_OUT:
        peer = get("callee")
        if peer is None:
            peer = trace.callee.get(entry.span_id)
            if peer is not None:
                bits = _PEER_FROM_TRACE
        if peer is None:
            bits = _PEER_UNKNOWN
        else:
            target = peer
    elif kind in _CALLED:
        peer = get("caller")
        if peer is None and entry.parent_id in trace.by_id:
            peer = trace.by_id[entry.parent_id].resource.service
            bits = _PEER_FROM_TRACE
        if peer is None:
            peer = get("caller_address")
        if peer is None:
            bits |= _PEER_UNKNOWN
        else:
            source = peer
    token = get("token")
    if token is None:
        token = f"service:{source}"
        bits |= _TOKEN_FALLBACK
    identity = get("identity")
    identity_kind = get("identity_kind")
    if identity_kind not in IDENTITY_KINDS:
        identity_kind = None
    if identity is None:
        identity = source
        identity_kind = identity_kind or "service"
        bits |= _IDENTITY_FALLBACK
    parent = entry.parent_id
    if parent is not None:
        above = trace.by_id.get(parent)
        if above is not None and above.kind not in trace.kept:
            parent = _kept_ancestor(parent, trace.by_id, trace.kept)
            bits |= _RELINKED
    http_status = get("status")
    status = None if http_status is None else _http_status(http_status)
    path = get("path")
    kept: dict[str, Any] = {"otel.span.kind": kind}
    if span.name:
        kept["otel.span.name"] = span.name
    if entry.scope:
        kept["otel.scope.name"] = entry.scope
    if span.status is not None and span.status.message:
        kept["otel.status.message"] = span.status.message
    if end >= start:
        kept["otel.duration_us"] = (end - start) // 1000
    # The credential is kept only as token_id, where ingest hashes raw secrets.
    if attributes:
        kept["span"] = _without(attributes, options.token_names)
    if resource.values:
        kept["resource"] = resource.kept
    method = get("method")
    operation = _operation(span, attributes, method)
    grpc = attributes.get("rpc.grpc.status_code")
    # Anything but a number (an array, a map) says nothing about the outcome.
    if status in (401, 403) or (isinstance(grpc, int | str) and _int(grpc) in _GRPC_DENIED):
        outcome = "denied"
    elif (span.status is not None and span.status.code in _STATUS_ERROR) or (
        status is not None and status >= 500
    ):
        outcome = "error"
    else:
        outcome = "success"
    bytes_out = get("bytes_out")
    event = Event(
        f"otlp:{entry.trace_id}:{entry.span_id}",
        rfc3339(start_us),
        token,
        identity if len(identity) <= 1024 else clip(identity, 1024),
        source if len(source) <= 1024 else clip(source, 1024),
        target if len(target) <= 1024 else clip(target, 1024),
        operation if len(operation) <= 1024 else clip(operation, 1024),
        outcome,
        entry.trace_id,
        entry.span_id,
        parent,
        status,
        identity_kind or None,
        _copied(get("scope")),
        _copied(get("environment")),
        _copied(get("task_id")),
        _copied(get("actor")),
        _copied(get("user_agent")),
        clip(path.split("?", 1)[0], 4096) if path else None,
        _copied(get("client_ip")) if kind in _CALLED else None,
        None if bytes_out is None else _size(bytes_out),
        kept,
    )
    return event, _FLAGS[bits]


def _copied(value: str | None) -> str | None:
    return value if value is None or len(value) <= 4096 else clip(value, 4096)


def _without(values: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    if names.isdisjoint(values):
        return values
    # A copy minus the few credential names: the same order, built in C rather than key by key.
    kept = values.copy()
    for name in names.intersection(values):
        del kept[name]
    return kept


def _kept_ancestor(
    parent: str | None, by_id: dict[str, _Entry], kept: frozenset[str]
) -> str | None:
    seen: set[str] = set()
    while parent is not None and parent in by_id and by_id[parent].kind not in kept:
        if parent in seen:
            break
        seen.add(parent)
        parent = by_id[parent].parent_id
    return parent


def _operation(span: Span, attributes: dict[str, Any], method: str | None) -> str:
    route = attributes.get("http.route")
    if method and isinstance(route, str) and route:
        return f"{method} {route}"
    rpc_method = attributes.get("rpc.method")
    if isinstance(rpc_method, str) and rpc_method:
        service = attributes.get("rpc.service")
        return f"{service}/{rpc_method}" if isinstance(service, str) and service else rpc_method
    return span.name.strip() or method or "unknown"


def _http_status(value: str) -> int | None:
    try:
        status = int(value)
    except ValueError:
        return None
    return status if 0 <= status <= 999 else None


def _size(value: str) -> int | None:
    try:
        size = int(value)
    except ValueError:
        return None
    return size if 0 <= size <= MAX_BIGINT else None
