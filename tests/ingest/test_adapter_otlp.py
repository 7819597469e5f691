"""OpenTelemetry OTLP/JSON trace exports as contract events.

The encoding follows the OTLP specification, "JSON Protobuf Encoding"
(https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding): lowerCamelCase keys,
`traceId`/`spanId` as case-insensitive hex (not base64), enums as integers, 64-bit integers as
decimal strings or numbers. The fixtures are the specification's own example and a hand-written
trace across four services (tests/fixtures/otlp, see NOTICE.md).
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_adapter_support import FIXTURES, mapped, one, run, stats, unmapped

from tokentrail.config import AdapterSettings
from tokentrail.events import InvalidEventError
from tokentrail.ingest.adapters import (
    FLAG_IDENTITY_FALLBACK,
    FLAG_PARENT_RELINKED,
    FLAG_PEER_FROM_TRACE,
    FLAG_PEER_UNKNOWN,
    FLAG_TOKEN_FALLBACK,
    otlp,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
T0_NS = 1_772_442_000_000_000_000  # 2026-03-02T09:00:00Z
SERVER, CLIENT, INTERNAL = 2, 3, 1
_ids = itertools.count(1)


def values(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    """Python values as OTLP `KeyValue`s (ints as decimal strings, as OTLP/JSON sends them)."""

    def any_value(value: Any) -> dict[str, Any]:
        if isinstance(value, bool):
            return {"boolValue": value}
        if isinstance(value, int):
            return {"intValue": str(value)}
        if isinstance(value, float):
            return {"doubleValue": value}
        if isinstance(value, list):
            return {"arrayValue": {"values": [any_value(v) for v in value]}}
        return {"stringValue": value}

    return [{"key": k, "value": any_value(v)} for k, v in attributes.items()]


def span(attributes: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """A span (by default a CLIENT call from the resource's service); override any field."""
    n = next(_ids)
    base: dict[str, Any] = {
        "traceId": TRACE,
        "spanId": f"{n:016x}",
        "name": "GET",
        "kind": CLIENT,
        "startTimeUnixNano": str(T0_NS + n * 1000),
        "endTimeUnixNano": str(T0_NS + n * 1000 + 2_500_000),
        "attributes": values(attributes or {}),
    }
    return base | overrides


def request(
    *spans: dict[str, Any], service: str = "checkout", resource: dict[str, Any] | None = None
) -> dict[str, Any]:
    attributes = {"service.name": service, **(resource or {})}
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": values(attributes)},
                "scopeSpans": [{"scope": {"name": "io.opentelemetry.httpx"}, "spans": list(spans)}],
            }
        ]
    }


def event(*spans: dict[str, Any], **settings: Any) -> Any:
    return one(otlp.adapt, request(*spans), **settings)


def test_a_client_span_maps_field_by_field() -> None:
    call = span(
        {
            "http.request.method": "GET",
            "http.route": "/orders/{id}",
            "url.path": "/orders/42?expand=lines",
            "server.address": "orders-api",
            "http.response.status_code": 200,
            "http.response.body.size": 512,
            "tokentrail.token_id": "tok-checkout-7",
            "tokentrail.identity": "spiffe://prod/ns/shop/sa/checkout",
            "enduser.scope": "orders:read",
        },
        spanId="00f067aa0ba902b7",
        parentSpanId="53995c3f42cd8ad8",
    )
    req = request(call, resource={"deployment.environment.name": "prod"})
    assert one(otlp.adapt, req) == {
        "event_id": f"otlp:{TRACE}:00f067aa0ba902b7",
        "ts": "2026-03-02T09:00:00.000001Z",
        "token_id": "tok-checkout-7",
        "identity": "spiffe://prod/ns/shop/sa/checkout",
        "source": "checkout",
        "target": "orders-api",
        "operation": "GET /orders/{id}",
        "outcome": "success",
        "trace_id": TRACE,
        "span_id": "00f067aa0ba902b7",
        "parent_span_id": "53995c3f42cd8ad8",
        "status": 200,
        "scope": "orders:read",
        "environment": "prod",
        "resource": "/orders/42",
        "bytes_out": 512,
        "attributes": {
            "otel.span.kind": "client",
            "otel.span.name": "GET",
            "otel.scope.name": "io.opentelemetry.httpx",
            "otel.duration_us": 2500,
            # The credential is kept only as token_id (where ingest hashes raw secrets).
            "span": {
                "http.request.method": "GET",
                "http.route": "/orders/{id}",
                "url.path": "/orders/42?expand=lines",
                "server.address": "orders-api",
                "http.response.status_code": 200,
                "http.response.body.size": 512,
                "tokentrail.identity": "spiffe://prod/ns/shop/sa/checkout",
                "enduser.scope": "orders:read",
            },
            "resource": {"service.name": "checkout", "deployment.environment.name": "prod"},
        },
    }


def test_without_credential_attributes_the_service_stands_in_and_is_flagged() -> None:
    mapped_event = event(span({"peer.service": "orders-api"}))
    assert {k: mapped_event[k] for k in ("token_id", "identity", "identity_kind", "flags")} == {
        "token_id": "service:checkout",
        "identity": "checkout",
        "identity_kind": "service",
        "flags": [FLAG_TOKEN_FALLBACK, FLAG_IDENTITY_FALLBACK],
    }


def test_credential_attribute_names_are_settings_and_span_wins_over_resource() -> None:
    on_resource = {"app.key_id": "k-resource"}
    req = request(span({"peer.service": "db", "app.key_id": "k-span"}), resource=on_resource)
    assert one(otlp.adapt, req, token_attributes=["app.key_id"])["token_id"] == "k-span"
    req = request(span({"peer.service": "db"}), resource=on_resource)
    assert one(otlp.adapt, req, token_attributes=["app.key_id"])["token_id"] == "k-resource"


@pytest.mark.parametrize(
    ("kind", "attributes", "ends", "flags"),
    [
        (SERVER, {"peer.service": "web"}, ("web", "checkout"), []),
        (SERVER, {"client.address": "10.0.0.7"}, ("10.0.0.7", "checkout"), []),
        (SERVER, {}, ("checkout", "checkout"), [FLAG_PEER_UNKNOWN]),
        (INTERNAL, {}, ("checkout", "checkout"), []),
        (CLIENT, {"rpc.service": "payments.v1.Refunds"}, ("checkout", "payments.v1.Refunds"), []),
        (
            "SPAN_KIND_PRODUCER",
            {"messaging.destination.name": "orders"},
            ("checkout", "orders"),
            [],
        ),
    ],
)
def test_source_and_target_follow_the_kind_and_the_peer(
    kind: int | str, attributes: dict[str, Any], ends: tuple[str, str], flags: list[str]
) -> None:
    mapped_event = event(span(attributes, kind=kind))
    assert (mapped_event["source"], mapped_event["target"]) == ends
    assert [
        f for f in mapped_event["flags"] if f not in (FLAG_TOKEN_FALLBACK, FLAG_IDENTITY_FALLBACK)
    ] == flags


def test_the_other_side_of_a_call_is_taken_from_the_same_request() -> None:
    client = span({}, spanId="aaaaaaaaaaaaaaaa")
    server = span({}, spanId="bbbbbbbbbbbbbbbb", parentSpanId="aaaaaaaaaaaaaaaa", kind=SERVER)
    both = request(client)
    both["resourceSpans"] += request(server, service="orders-api")["resourceSpans"]
    out, into = mapped(otlp.adapt, both)
    assert (out["source"], out["target"], into["source"], into["target"]) == (
        "checkout",
        "orders-api",
        "checkout",
        "orders-api",
    )
    assert FLAG_PEER_FROM_TRACE in out["flags"] and FLAG_PEER_FROM_TRACE in into["flags"]


def test_ids_are_lowercase_hex_from_hex_or_base64_and_a_zero_parent_is_a_root() -> None:
    as_base64 = base64.b64encode(bytes.fromhex(TRACE)).decode()
    mapped_event = event(
        span(
            {"peer.service": "db"},
            traceId=as_base64,
            spanId="EEE19B7EC3C1B174",
            parentSpanId="0000000000000000",
        )
    )
    assert (mapped_event["trace_id"], mapped_event["span_id"]) == (TRACE, "eee19b7ec3c1b174")
    assert "parent_span_id" not in mapped_event


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"spanId": "xyz"}, "otlp: `spanId` 'xyz' is neither hex nor base64 of 8 bytes"),
        ({"traceId": "0" * 32}, "otlp: `traceId` is all zeros"),
        ({"startTimeUnixNano": "0"}, "otlp: span has no `startTimeUnixNano`"),
        ({"startTimeUnixNano": "soon"}, "otlp: `startTimeUnixNano` 'soon' is not an integer"),
        ({"kind": 9}, "otlp: span `kind` 9 is not a SpanKind"),
        ({"name": 7}, "otlp: span: Expected `str`, got `int` - at `$.name`"),
    ],
)
def test_a_bad_span_is_dead_lettered_alone_as_a_request_that_can_be_fed_again(
    overrides: dict[str, Any], reason: str
) -> None:
    bad = span({"peer.service": "db"}, **overrides)
    req = request(span({"peer.service": "db"}), bad)
    assert len(mapped(otlp.adapt, request(span({"peer.service": "db"})))) == 1
    [letter] = unmapped(otlp.adapt, req)
    assert letter.reason == reason
    again = json.loads(letter.source)
    assert again["resourceSpans"][0]["scopeSpans"][0]["spans"] == [bad]
    assert [u.reason for u in unmapped(otlp.adapt, letter.source)] == [reason]


def test_an_unusable_request_raises_with_a_reason_naming_the_format() -> None:
    with pytest.raises(InvalidEventError, match=r"^otlp: .*`resourceSpans`"):
        otlp.adapt(b'{"resourceLogs": []}', AdapterSettings())


@pytest.mark.parametrize(
    ("attributes", "status", "outcome"),
    [
        ({"http.response.status_code": 403}, {}, "denied"),
        ({"http.status_code": "401"}, {}, "denied"),
        ({"rpc.grpc.status_code": 16}, {"code": 2}, "denied"),
        ({"http.response.status_code": 503}, {}, "error"),
        ({}, {"code": "STATUS_CODE_ERROR", "message": "boom"}, "error"),
        ({"http.response.status_code": 404}, {"code": 1}, "success"),
        # A status code that is not a number says nothing; the span still maps.
        ({"rpc.grpc.status_code": [16]}, {}, "success"),
        ({"rpc.grpc.status_code": "PERMISSION_DENIED"}, {}, "success"),
    ],
)
def test_outcome_comes_from_http_grpc_and_span_status(
    attributes: dict[str, Any], status: dict[str, Any], outcome: str
) -> None:
    mapped_event = event(span({"peer.service": "db", **attributes}, status=status))
    assert mapped_event["outcome"] == outcome


@pytest.mark.parametrize(
    ("attributes", "name", "operation"),
    [
        ({"http.request.method": "POST", "http.route": "/refunds"}, "POST", "POST /refunds"),
        (
            {"rpc.service": "payments.v1.Refunds", "rpc.method": "Create"},
            "x",
            "payments.v1.Refunds/Create",
        ),
        ({}, "SELECT orders", "SELECT orders"),
        ({"http.method": "GET"}, "", "GET"),
    ],
)
def test_operation_is_method_and_route_or_the_rpc_method_or_the_span_name(
    attributes: dict[str, Any], name: str, operation: str
) -> None:
    assert event(span({"peer.service": "db", **attributes}, name=name))["operation"] == operation


def test_skipped_kinds_leave_the_chain_linked_across_them() -> None:
    server = span({}, spanId="a" * 16, kind=SERVER)
    plan = span({}, spanId="b" * 16, parentSpanId="a" * 16, kind=INTERNAL)
    call = span({"peer.service": "crm"}, spanId="c" * 16, parentSpanId="b" * 16)
    kept = mapped(otlp.adapt, request(server, plan, call), otlp_span_kinds=["server", "client"])
    assert [(e["span_id"], e.get("parent_span_id")) for e in kept] == [
        ("a" * 16, None),
        ("c" * 16, "a" * 16),
    ]
    assert FLAG_PARENT_RELINKED in kept[1]["flags"]


def test_the_specification_example_maps() -> None:
    path = FIXTURES / "otlp" / "opentelemetry-proto-example-trace.json"
    mapped_event = one(otlp.adapt, path.read_bytes())
    assert {k: mapped_event[k] for k in ("event_id", "ts", "trace_id", "parent_span_id")} == {
        "event_id": "otlp:5b8efff798038103d269b633813fc60c:eee19b7ec3c1b174",
        "ts": "2018-12-13T14:51:00.000000Z",
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "parent_span_id": "eee19b7ec3c1b173",
    }
    assert mapped_event["attributes"]["otel.duration_us"] == 1_000_000


def test_a_trace_across_four_services_maps_hop_by_hop() -> None:
    events = mapped(otlp.adapt, (FIXTURES / "otlp" / "agent-refund-trace.json").read_bytes())
    hops = [
        (e["span_id"][:4], e.get("parent_span_id", "")[:4], e["source"], e["target"], e["outcome"])
        for e in events
    ]
    assert hops == [
        ("00f0", "", "203.0.113.7", "chat-gateway", "success"),
        ("1a2b", "00f0", "chat-gateway", "support-agent", "success"),
        ("2b3c", "1a2b", "chat-gateway", "support-agent", "success"),
        ("3c4d", "2b3c", "support-agent", "support-agent", "success"),
        ("4d5e", "3c4d", "support-agent", "crm-api", "success"),
        ("5e6f", "3c4d", "support-agent", "payments-api", "denied"),
        ("6f70", "4d5e", "support-agent", "crm-api", "success"),
        ("7081", "6f70", "crm-api", "crm-db", "success"),
        ("8192", "5e6f", "support-agent", "payments-api", "denied"),
    ]
    agent = {e["token_id"] for e in events if e["identity"].endswith("/sa/support-agent")}
    assert agent == {"agent-tok-19"}
    refund = next(e for e in events if e["span_id"].startswith("5e6f"))
    assert (refund["scope"], refund["task_id"], refund["identity_kind"]) == (
        "refunds:write",
        "task-5531",
        "agent",
    )


def test_pretty_printed_exports_ingest_through_the_command(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    files = sorted((FIXTURES / "otlp").glob("*.json"))
    lines = tmp_path / "collector.jsonl"  # the collector's file exporter: one request per line
    lines.write_bytes(msgspec.json.encode(request(span({"peer.service": "db"}))) + b"\n")
    result = run("ingest", *files, lines, "--db", db, "--no-detect")
    assert result.returncode == 0, result.stderr
    assert (stats(db)["events"], stats(db)["dead_letters"]) == (11, 0)
