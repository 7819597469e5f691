"""Lineage: token families through exchanges and issued credentials, and their reach."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import call, ingest

from tokentrail.catalog import Catalog
from tokentrail.graph.blast import blast_radius
from tokentrail.graph.lineage import token_lineage
from tokentrail.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "graph.duckdb") as opened:
        yield opened


def two_exchanges() -> list[dict[str, object]]:
    """ci's key -> (RFC 8693 exchange) tok-ci-1 -> (sts:AssumeRole) ASIA-SESSION."""
    return [
        call(token_id="AKIA-CI", identity="ci", source="runner", target="artifacts"),
        call(token_id="tok-ci-1", identity="ci", source="runner", target="registry",
             token={"parent_token_id": "AKIA-CI", "kind": "oauth:exchanged"}),
        call(token_id="tok-ci-1", identity="ci", source="runner", target="sts",
             operation="sts:AssumeRole",
             attributes={"issued_token": {"token_id": "ASIA-SESSION", "kind": "aws:session"}}),
        call(token_id="ASIA-SESSION", identity="arn:aws:sts::1:assumed-role/deploy/ci",
             source="runner", target="s3", operation="s3:PutObject", scope=None),
    ]  # fmt: skip


def test_lineage_across_two_exchanges(store: Store) -> None:
    ingest(store, two_exchanges())
    lineage = token_lineage(store.conn, token_id="ASIA-SESSION")
    assert (lineage.roots, lineage.ancestors, lineage.descendants) == (
        ["AKIA-CI"],
        ["tok-ci-1", "AKIA-CI"],
        [],
    )
    assert [(t.token_id, t.relation, t.generation, t.via) for t in lineage.tokens] == [
        ("AKIA-CI", "ancestor", 0, None),
        ("tok-ci-1", "ancestor", 1, "token.parent_token_id"),
        ("ASIA-SESSION", "self", 2, "sts:AssumeRole"),
    ]
    assert lineage.reach.targets == ["artifacts", "registry", "s3", "sts"]


def test_the_root_reaches_what_its_descendants_reached(store: Store) -> None:
    ingest(store, two_exchanges())
    root = token_lineage(store.conn, token_id="AKIA-CI")
    assert root.descendants == ["tok-ci-1", "ASIA-SESSION"]
    radius = blast_radius(store.conn, catalog=Catalog(), token_id="AKIA-CI")
    assert {c.target: (c.via, c.via_token) for c in radius.breakdown} == {
        "artifacts": ("direct", "AKIA-CI"),
        "registry": ("derived", "tok-ci-1"),
        "sts": ("derived", "tok-ci-1"),
        "s3": ("derived", "ASIA-SESSION"),
    }


def test_siblings_are_relatives_not_reach(store: Store) -> None:
    ingest(
        store,
        [
            call(token_id="root", target="a"),
            call(token_id="left", token={"parent_token_id": "root"}, target="b"),
            call(token_id="right", token={"parent_token_id": "root"}, target="c"),
        ],
    )
    lineage = token_lineage(store.conn, token_id="left")
    assert {t.token_id: t.relation for t in lineage.tokens} == {
        "root": "ancestor",
        "left": "self",
        "right": "relative",
    }
    radius = blast_radius(store.conn, catalog=Catalog(), token_id="left")
    assert [c.target for c in radius.breakdown] == ["b"]


def test_a_lineage_cycle_terminates(store: Store) -> None:
    ingest(
        store,
        [
            call(token_id="x", token={"parent_token_id": "y"}, target="a"),
            call(token_id="y", token={"parent_token_id": "x"}, target="b"),
        ],
    )
    lineage = token_lineage(store.conn, token_id="x")
    assert sorted(t.token_id for t in lineage.tokens) == ["x", "y"]
    radius = blast_radius(store.conn, catalog=Catalog(), token_id="x")
    assert sorted(c.target for c in radius.breakdown) == ["a", "b"]
