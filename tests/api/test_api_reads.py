"""Answers kept in memory (tokentrail.api.reads) are the store's answers: after every write that
`serve` makes (consumer batches, detection passes, triage) the API with the read model answers
as one that reads the store every time, and a write that touches nothing an answer was read
from leaves it kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import T0_MS, call, encode, ingest
from fastapi.testclient import TestClient

from tokentrail.api import api_settings, create_app
from tokentrail.api.auth import Role, create_key
from tokentrail.api.consumer import BackgroundConsumer
from tokentrail.api.reads import Changes, Entry, ReadModel
from tokentrail.batch import Batch
from tokentrail.config import Settings
from tokentrail.store import Store

MINUTE_MS = 60_000
SVC = "spiffe://prod/ns/billing/sa/invoicer"


# --- the model alone -------------------------------------------------------------------------


def test_an_answer_is_dropped_by_a_change_to_what_it_was_read_from() -> None:
    reads = ReadModel(max_bytes=1 << 20)
    entries = {
        "chain": Entry(b"1", traces=frozenset({"t1"}), tokens=frozenset({"a", "b"})),
        "alert": Entry(b"2", alerts=frozenset({"al-1"})),
        "list": Entry(b"3", every_alert=True),
    }
    changes = [
        (Changes(traces=frozenset({"t2"}), tokens=frozenset({"c"})), set()),
        (Changes(alerts=frozenset({"al-2"})), {"list"}),
        (Changes(tokens=frozenset({"b"})), {"chain"}),
        (Changes(traces=frozenset({"t1"})), {"chain"}),
        (Changes(alerts=frozenset({"al-1"})), {"alert", "list"}),
    ]
    for change, dropped in changes:
        for name, entry in entries.items():
            reads.put(("k", name), entry, reads.ticket())
        reads.changed(change)
        kept = {name for name in entries if reads.get(("k", name)) is not None}
        assert kept == set(entries) - dropped, change


def test_a_read_in_flight_when_a_change_lands_is_not_kept() -> None:
    reads = ReadModel(max_bytes=1 << 20)
    ticket = reads.ticket()
    reads.changed(Changes(tokens=frozenset({"unrelated"})))  # committed while it was reading
    reads.put(("chain", "t1"), Entry(b"old", traces=frozenset({"t1"})), ticket)
    assert reads.get(("chain", "t1")) is None
    reads.put(("chain", "t1"), Entry(b"new", traces=frozenset({"t1"})), reads.ticket())
    assert reads.get(("chain", "t1")) == b"new"


def test_the_least_recently_used_answers_go_beyond_the_byte_budget() -> None:
    reads = ReadModel(max_bytes=10)
    for name in "abc":
        reads.put(("chain", name), Entry(b"xxxx"), reads.ticket())
        reads.get(("chain", "a"))  # a stays the most recently used
    assert [n for n in "abc" if reads.get(("chain", n)) is not None] == ["a", "c"]
    assert reads.size() == (2, 8)
    reads.put(("chain", "big"), Entry(b"x" * 11), reads.ticket())  # larger than the budget
    assert reads.get(("chain", "big")) is None and reads.size() == (2, 8)
    nothing = ReadModel(max_bytes=0)
    nothing.put(("chain", "a"), Entry(b"x"), nothing.ticket())
    assert nothing.get(("chain", "a")) is None


# --- through serve's own write path ----------------------------------------------------------


class Served:
    """A store written by serve's consumer pipeline (no broker needed to call it), read through
    an app with the read model and one without."""

    def __init__(self, tmp_path: Path) -> None:
        catalog = tmp_path / "catalog.toml"
        catalog.write_text(f'[[identity]]\nname = "{SVC}"\nallowed_targets = ["ledger-api"]\n')
        self.store = Store.open(tmp_path / "live.duckdb")
        self.consumer = BackgroundConsumer(
            self.store,
            Settings(),
            bootstrap="127.0.0.1:9",  # never started: batches are written below
            topic="api-calls",
            group="g",
            catalog_path=catalog,
        )
        key = create_key(self.store.conn, name="t", role=Role.analyst).key
        self.headers = {"Authorization": f"Bearer {key}"}
        self.app = create_app(self.store, api_settings(), consumer=self.consumer)
        self.cached = TestClient(self.app)
        self.fresh = TestClient(create_app(self.store, api_settings(read_cache_mb=0)))
        self.offset = 0

    def write(self, *events: dict[str, Any]) -> None:
        batch = Batch("kafka", "api-calls")
        for event in events:
            self.offset += 1
            self.consumer.pipeline.feed(batch, encode(event), 0, self.offset)
        self.consumer.pipeline.write(batch)

    def hits(self) -> dict[str, int]:
        return dict(self.app.state.tokentrail.reads.hits)

    def same(self, path: str) -> Any:
        """The cached app's answer, checked against a read of the store."""
        got = self.cached.get(path, headers=self.headers)
        want = self.fresh.get(path, headers=self.headers)
        assert got.status_code == want.status_code == 200, (path, got.text, want.text)
        assert got.json() == want.json(), path
        return got.json()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    parts = Served(tmp_path)
    yield parts
    parts.store.close()


def hop(span: str, parent: str | None, token: str, minute: int, **extra: Any) -> dict[str, Any]:
    return call(
        event_id=f"{span}-{minute}",
        ts=T0_MS + minute * MINUTE_MS,
        trace_id="t1",
        span_id=span,
        parent_span_id=parent,
        token_id=token,
        **extra,
    )


def a_calls_on_with_b() -> list[dict[str, Any]]:
    """Trace t1: tok-a calls the invoicer, which calls on with tok-b."""
    return [
        hop("s1", None, "tok-a", 0, source="gateway", target="invoicer"),
        hop("s2", "s1", "tok-b", 1, source="invoicer", target="ledger-api"),
    ]


def switch(chain: Any) -> dict[str, Any]:
    (found,) = [s for s in chain["token_switches"] if s["to_token"] == "tok-b"]
    return dict(found)


def test_chains_stay_the_stores_answer_through_trace_scope_and_lineage_changes(
    served: Served,
) -> None:
    # Lineage so far: tok-a -> tok-x and tok-y -> tok-b, so tok-b is not (yet) derived from tok-a.
    served.write(
        *a_calls_on_with_b(),
        call(ts=T0_MS, token_id="tok-x", token={"parent_token_id": "tok-a"}),
        call(ts=T0_MS, token_id="tok-b", token={"parent_token_id": "tok-y"}),
    )
    path = "/v1/chains/t1"
    before = served.same(path)
    assert switch(before)["derived"] is False
    served.same(path)
    assert served.hits().get("chain") == 1  # kept

    # Nothing the chain was read from: still kept, still right.
    served.write(call(ts=T0_MS + 2 * MINUTE_MS, token_id="tok-other", trace_id="t9"))
    assert served.same(path) == before
    assert served.hits().get("chain") == 2

    # A link between two tokens outside the chain (tok-x -> tok-y) makes tok-b tok-a's heir.
    served.write(
        call(ts=T0_MS + 3 * MINUTE_MS, token_id="tok-y", token={"parent_token_id": "tok-x"})
    )
    assert switch(served.same(path))["derived"] is True

    # Granted scopes become known for both tokens: compared by scopes, not observed reach.
    served.write(
        call(ts=T0_MS + 4 * MINUTE_MS, token_id="tok-a", token={"scopes": ["ledger:read"]}),
        call(ts=T0_MS + 4 * MINUTE_MS, token_id="tok-b", token={"scopes": ["ledger:write"]}),
    )
    assert switch(served.same(path))["basis"] == "scopes"

    # The trace takes one more hop.
    served.write(hop("s3", "s2", "tok-b", 5, source="ledger-api", target="payments-db"))
    assert len(served.same(path)["spans"]) == 3


def test_alerts_stay_the_stores_answer_through_detection_and_triage(served: Served) -> None:
    # A call outside the invoicer's allowed targets, then a later batch that moves the
    # detection watermark past it (lateness 5 minutes).
    served.write(call(ts=T0_MS, event_id="p-0", target="payments-db"))
    served.write(call(ts=T0_MS + 10 * MINUTE_MS, event_id="later-0"))
    alerts = served.same("/v1/alerts")
    (alert,) = [a for a in alerts["data"] if a["detector"] == "unexpected_reach"]
    detail_path = f"/v1/alerts/{alert['alert_id']}"
    assert served.same(detail_path)["count"] == 1
    served.same(detail_path)
    served.same("/v1/alerts")
    assert served.hits().get("alert") == 1 and served.hits().get("alerts") == 1

    # The same reach again: detection updates the alert (one more occurrence).
    served.write(call(ts=T0_MS + 11 * MINUTE_MS, event_id="p-1", target="payments-db"))
    served.write(call(ts=T0_MS + 20 * MINUTE_MS, event_id="later-1"))
    assert served.same(detail_path)["count"] == 2
    assert served.same("/v1/alerts") != alerts

    # Triage through the API.
    change = {"status": "acknowledged", "assignee": "ana", "note": "looking"}
    patched = served.cached.patch(detail_path, json=change, headers=served.headers)
    assert patched.status_code == 200
    detail = served.same(detail_path)
    assert (detail["status"], detail["assignee"]) == ("acknowledged", "ana")
    assert [a["status"] for a in served.same("/v1/alerts")["data"]] == ["acknowledged"]


def test_kept_answers_go_only_to_keys_that_may_read_and_are_logged(served: Served) -> None:
    served.write(hop("s1", None, "tok-a", 0), hop("s2", "s1", "tok-b", 1))
    admin = create_key(served.store.conn, name="admin", role=Role.admin)
    as_admin = {"Authorization": f"Bearer {admin.key}"}
    client, path = served.cached, "/v1/chains/t1"
    chain = client.get(path, headers=served.headers).json()
    before = served.hits().get("chain", 0)
    # A kept answer, answered before routing: the same bytes, logged and counted by route.
    assert client.get(path, headers=served.headers).json() == chain
    assert served.hits()["chain"] == before + 1
    log = client.get("/v1/requests", params={"limit": 5}, headers=as_admin).json()["data"]
    analyst_id = served.headers["Authorization"].split("_")[1]
    assert any(r["path"] == path and r["key_id"] == analyst_id for r in log)
    metrics = client.get("/metrics", headers=served.headers).text
    assert 'tokentrail_api_requests_total{method="GET",route="/v1/chains/{trace_id}"' in metrics
    # Whoever the app would refuse is refused, kept answer or not.
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer tt_nope"}):
        assert client.get(path, headers=headers).status_code == 401
    assert client.delete(f"/v1/keys/{analyst_id}", headers=as_admin).status_code == 200
    assert client.get(path, headers=served.headers).status_code == 401
    assert client.get(path, headers=as_admin).json() == chain
    # Paths below a kept one are the app's.
    assert client.get("/v1/alerts/none/containment", headers=as_admin).status_code == 404


def test_no_cache_reads_the_store(served: Served) -> None:
    served.write(hop("s1", None, "tok-a", 0))
    path = "/v1/chains/t1"
    kept = served.same(path)
    # Written around serve's write path (nothing reports it): the kept answer is not dropped...
    ingest(served.store, [hop("s2", "s1", "tok-a", 1)])
    assert served.cached.get(path, headers=served.headers).json() == kept
    # ...but a client that asks for a fresh read gets the store's answer, and it is kept.
    fresh = {**served.headers, "Cache-Control": "max-age=0, No-Cache"}
    assert len(served.cached.get(path, headers=fresh).json()["spans"]) == 2
    assert served.cached.get(path, headers=served.headers).json() == served.same(path)


def test_blast_radius_stays_the_stores_answer_through_chain_and_lineage_reach(
    served: Served,
) -> None:
    served.write(*a_calls_on_with_b())
    path = "/v1/tokens/tok-a/blast-radius"
    radius = served.same(path)
    served.same(path)
    hits = served.hits().get("blast-radius", 0)
    assert hits == 1
    served.write(call(ts=T0_MS + 2 * MINUTE_MS, token_id="tok-other", trace_id="t9"))
    assert served.same(path) == radius
    assert served.hits()["blast-radius"] == hits + 1  # nothing it was read from: kept
    steps = [
        # Downstream of tok-a's call in its trace, with another token (chain reach).
        hop("s3", "s2", "tok-b", 3, source="ledger-api", target="payments-db"),
        # A token derived from tok-a reaches further (derived reach)...
        call(ts=T0_MS + 4 * MINUTE_MS, token_id="tok-d", target="secrets-vault",
             token={"parent_token_id": "tok-a"}),
        # ...and one derived from that one, further still.
        call(ts=T0_MS + 5 * MINUTE_MS, token_id="tok-e", target="hr-db",
             token={"parent_token_id": "tok-d"}),
    ]  # fmt: skip
    for step in steps:
        served.write(step)
        now = served.same(path)
        assert now != radius, step
        radius = now
