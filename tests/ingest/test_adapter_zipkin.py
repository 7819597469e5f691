"""Zipkin v2 spans as contract events: factory spans, then the real traces in
tests/fixtures/zipkin (openzipkin/zipkin `zipkin-lens/testdata`, see NOTICE.md), among them
production traces of 1,041 and 175 spans."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any
from zlib import crc32

import pytest
from test_adapter_support import FIXTURES, mapped, one, read, run, stats, unmapped

from tokentrail.config import AdapterSettings
from tokentrail.events import InvalidEventError
from tokentrail.ingest.adapters import (
    FLAG_IDENTITY_FALLBACK,
    FLAG_PEER_FROM_TRACE,
    FLAG_PEER_UNKNOWN,
    FLAG_TOKEN_FALLBACK,
    zipkin,
)

TRACES = sorted((FIXTURES / "zipkin").glob("*.json*"))
TRACE = "463ac35c9f6413ad"
T0_US = 1_543_549_825_648_375
FALLBACKS = [FLAG_TOKEN_FALLBACK, FLAG_IDENTITY_FALLBACK]
_ids = itertools.count(1)


def span(**overrides: Any) -> dict[str, Any]:
    """A Zipkin v2 CLIENT span from `frontend` to `backend`; a field given replaces the default
    whole, None removes it."""
    n = next(_ids)
    base = {
        "traceId": TRACE,
        "id": f"{n:016x}",
        "kind": "CLIENT",
        "name": "get /api/orders/{id}",
        "timestamp": T0_US + n,
        "duration": 1500,
        "localEndpoint": {"serviceName": "frontend", "ipv4": "10.0.0.1", "port": 8080},
        "remoteEndpoint": {"serviceName": "backend"},
        "tags": {"http.method": "GET", "http.path": "/api/orders/42"},
    }
    return {k: v for k, v in (base | overrides).items() if v is not None}


def test_a_client_span_maps_field_by_field() -> None:
    call = span(id="352bff9a74ca9ad2", parentId="6b221d5bc9e6496c")
    host = crc32(f"frontend|10.0.0.1|None|8080|{call['timestamp']}".encode())
    assert one(zipkin.adapt, [call]) == {
        # The host and start tell apart the halves and the hosts that reported one span id.
        "event_id": f"zipkin:{TRACE}:352bff9a74ca9ad2:client:{host:08x}",
        "ts": "2018-11-30T03:50:25.648376Z",
        "token_id": "service:frontend",
        "identity": "frontend",
        "identity_kind": "service",
        "source": "frontend",
        "target": "backend",
        "operation": "get /api/orders/{id}",
        "outcome": "success",
        "trace_id": TRACE,
        "span_id": "352bff9a74ca9ad2",
        "parent_span_id": "6b221d5bc9e6496c",
        "resource": "/api/orders/42",
        "attributes": {
            "zipkin.kind": "CLIENT",
            "zipkin.name": "get /api/orders/{id}",
            "zipkin.duration_us": 1500,
            "zipkin.local_endpoint": {"serviceName": "frontend", "ipv4": "10.0.0.1", "port": 8080},
            "zipkin.remote_endpoint": {"serviceName": "backend"},
            "tags": {"http.method": "GET", "http.path": "/api/orders/42"},
        },
        "flags": FALLBACKS,
    }


def test_a_span_with_no_kind_or_no_peer_is_an_internal_hop() -> None:
    local = one(zipkin.adapt, span(kind=None, remoteEndpoint=None))
    lonely = one(zipkin.adapt, span(remoteEndpoint=None))
    assert (local["source"], local["target"], local["flags"]) == ("frontend", "frontend", FALLBACKS)
    assert (lonely["source"], lonely["target"]) == ("frontend", "frontend")
    assert FLAG_PEER_UNKNOWN in lonely["flags"]


def test_client_and_server_halves_are_two_events_on_the_same_edge() -> None:
    client = span(id="a" * 16, parentId="f" * 16, remoteEndpoint=None)
    server = span(
        id="a" * 16,
        parentId="f" * 16,
        kind="SERVER",
        shared=True,
        localEndpoint={"serviceName": "backend", "ipv4": "10.0.0.2"},
        remoteEndpoint={"ipv4": "10.0.0.1", "port": 51234},
    )
    out, into = mapped(zipkin.adapt, [client, server])
    assert out["event_id"] != into["event_id"]
    assert {(e["parent_span_id"], e["span_id"]) for e in (out, into)} == {("f" * 16, "a" * 16)}
    # Neither half names the other service: the trace does.
    assert (out["source"], out["target"], into["source"], into["target"]) == (
        "frontend",
        "backend",
        "frontend",
        "backend",
    )
    assert FLAG_PEER_FROM_TRACE in out["flags"] and FLAG_PEER_FROM_TRACE in into["flags"]
    assert into["source_ip"] == "10.0.0.1"


def test_a_server_span_alone_is_called_by_its_remote_endpoint() -> None:
    server = span(kind="SERVER", remoteEndpoint={"ipv4": "10.0.0.9"})
    mapped_event = one(zipkin.adapt, server)
    assert (mapped_event["source"], mapped_event["target"]) == ("10.0.0.9", "frontend")


def test_one_message_received_on_several_hosts_is_one_event_per_host() -> None:
    hosts = [
        span(
            id="c" * 16,
            kind="CONSUMER",
            timestamp=T0_US + n,
            localEndpoint={"serviceName": "pusher", "ipv4": ip},
        )
        for n, ip in enumerate(["10.0.0.5", "10.0.0.6", "10.0.0.6"])
    ]
    events = mapped(zipkin.adapt, hosts)
    assert len({e["event_id"] for e in events}) == 3
    assert mapped(zipkin.adapt, hosts[:1] * 2)[0] == mapped(zipkin.adapt, hosts[:1] * 2)[1]


def test_a_span_reported_in_pieces_is_one_event() -> None:
    whole = span(id="d" * 16, kind="SERVER", shared=True, name=None, tags={})
    piece = {
        "traceId": TRACE,
        "id": "d" * 16,
        "name": "post /app-execute",
        "localEndpoint": whole["localEndpoint"],
        "tags": {"oauth.clientId": "57a6c0a8"},
    }
    mapped_event = one(zipkin.adapt, [piece, whole])
    assert mapped_event["operation"] == "post /app-execute"
    assert mapped_event["attributes"]["tags"] == {"oauth.clientId": "57a6c0a8"}
    assert mapped_event["attributes"]["zipkin.merged_pieces"] == 1


def test_a_span_without_time_takes_its_first_annotation_or_is_dead_lettered() -> None:
    annotated = span(timestamp=None, annotations=[{"timestamp": T0_US + 99, "value": "ws"}])
    assert one(zipkin.adapt, annotated)["ts"] == "2018-11-30T03:50:25.648474Z"
    [letter] = unmapped(zipkin.adapt, [span(timestamp=None, id="e" * 16)])
    assert letter.reason == (
        f"zipkin: span {'e' * 16} has no timestamp, no annotation and no other piece in this"
        " record (send the whole trace as one array)"
    )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"id": "not-hex"}, "zipkin: [1]: `id` 'not-hex' is not a hex id"),
        ({"timestamp": "soon"}, "zipkin: [1]: Expected `int | null`, got `str` - at `$.timestamp`"),
        ({"traceId": None}, "zipkin: [1]: Object missing required field `traceId`"),
    ],
)
def test_a_bad_span_is_dead_lettered_alone_and_as_it_came(
    overrides: dict[str, Any], reason: str
) -> None:
    bad = span(**overrides)
    [letter] = unmapped(zipkin.adapt, [span(), bad])
    assert (letter.reason, json.loads(letter.source)) == (reason, bad)


def test_an_unusable_record_raises_with_a_reason_naming_the_format() -> None:
    with pytest.raises(InvalidEventError, match=r"^zipkin: "):
        zipkin.adapt(b'[{"traceId": "a1", "id": ', AdapterSettings())


@pytest.mark.parametrize(
    ("tags", "outcome", "status"),
    [
        ({"http.status_code": "403"}, "denied", 403),
        ({"http.status_code": 401}, "denied", 401),  # a number, where the format says string
        ({"http.status_code": "503", "error": "503"}, "error", 503),
        ({"error": "timeout"}, "error", None),
        ({"http.status_code": "200"}, "success", 200),
    ],
)
def test_outcome_comes_from_status_and_error_tags(
    tags: dict[str, Any], outcome: str, status: int | None
) -> None:
    mapped_event = one(zipkin.adapt, span(tags=tags))
    assert (mapped_event["outcome"], mapped_event.get("status")) == (outcome, status)


def test_credentials_come_from_configured_tags_and_are_not_kept_as_tags() -> None:
    tagged = span(tags={"oauth.clientId": "57a6c0a8", "oauth.principal": "installedapp:1"})
    mapped_event = one(
        zipkin.adapt,
        tagged,
        token_attributes=["oauth.clientId"],
        identity_attributes=["oauth.principal"],
    )
    assert (mapped_event["token_id"], mapped_event["identity"]) == ("57a6c0a8", "installedapp:1")
    assert "flags" not in mapped_event
    assert mapped_event["attributes"]["tags"] == {"oauth.principal": "installedapp:1"}


def pieces(spans: list[dict[str, Any]]) -> int:
    """Spans of a file that only add to another report of the same span on the same host."""
    timed = {
        (s["traceId"], s["id"], json.dumps(s.get("localEndpoint"), sort_keys=True))
        for s in spans
        if s.get("timestamp")
    }
    return sum(
        1
        for s in spans
        if not s.get("timestamp")
        and (s["traceId"], s["id"], json.dumps(s.get("localEndpoint"), sort_keys=True)) in timed
    )


@pytest.mark.parametrize("path", TRACES, ids=[p.name for p in TRACES])
def test_a_real_trace_keeps_exactly_its_parent_child_edges(path: Path) -> None:
    spans = json.loads(read(path))
    events = mapped(zipkin.adapt, read(path))
    assert unmapped(zipkin.adapt, read(path)) == []
    assert {(s.get("parentId"), s["id"]) for s in spans} == {
        (e.get("parent_span_id"), e["span_id"]) for e in events
    }
    assert {(s["traceId"], s["id"]) for s in spans} == {
        (e["trace_id"], e["span_id"]) for e in events
    }
    assert len(events) == len(spans) - pieces(spans)
    assert len({e["event_id"] for e in events}) == len(events)


def test_the_1041_span_production_trace_names_its_callers() -> None:
    path = FIXTURES / "zipkin" / "smartthings-mobile-web-install.json.gz"
    events = mapped(zipkin.adapt, read(path), token_attributes=["oauth.clientId"])
    assert (len(json.loads(read(path))), len(events)) == (1041, 957)
    servers = [e for e in events if e["attributes"].get("zipkin.kind") == "SERVER"]
    named = [e for e in servers if FLAG_PEER_UNKNOWN not in e.get("flags", [])]
    assert len(named) / len(servers) > 0.95
    with_client_id = {
        e["token_id"] for e in events if FLAG_TOKEN_FALLBACK not in e.get("flags", [])
    }
    assert "57a6c0a8-cac9-4921-a349-267092837d72" in with_client_id


def test_every_trace_ingests_through_the_command_with_no_dead_letter(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    lines = tmp_path / "reporter.jsonl"  # span lists, one per line, as a reporter sends them
    lines.write_bytes(b"".join(read(p).replace(b"\n", b"") + b"\n" for p in TRACES[:3]))
    result = run("ingest", *TRACES, lines, "--db", db, "--no-detect")
    assert result.returncode == 0, result.stderr
    spans = [s for p in TRACES for s in json.loads(read(p))]
    # The reporter's copies are the same spans again: stored once, counted as duplicates.
    assert (stats(db)["events"], stats(db)["dead_letters"]) == (len(spans) - pieces(spans), 0)
    assert f"{len(spans) - pieces(spans):,} stored" in result.stderr
