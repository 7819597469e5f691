"""Blast radius: reach weighted by what it is worth, never by how often it was used."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from factories import call, ingest

from tokentrail.catalog import Catalog
from tokentrail.graph.blast import BlastSummary, blast_radius, rank_tokens
from tokentrail.store import Store

SENSITIVE = ("payments-db", "vault", "hr-db", "ledger-api", "customer-db")

CATALOG = Catalog.model_validate(
    {
        "service": [
            {"name": "status-page", "sensitivity": 1},
            *({"name": n, "sensitivity": 9, "environment": "prod"} for n in SENSITIVE),
            {"name": "staging-db", "sensitivity": 4, "environment": "staging"},
            {"name": "ledger", "sensitivity": 6, "scopes": ["ledger:read", "ledger:write"]},
            {"name": "mail", "sensitivity": 2, "scopes": ["mail:send"]},
        ],
        "identity": [
            {
                "name": "spiffe://prod/ns/billing/sa/invoicer",
                "environment": "prod",
                "allowed_targets": ["ledger", "mail"],
                "allowed_scopes": ["ledger:read", "mail:send"],
            }
        ],
    }
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "graph.duckdb") as opened:
        yield opened


def test_ten_thousand_reads_of_a_status_page_rank_below_five_sensitive_systems(
    store: Store,
) -> None:
    noisy = [
        call(token_id="tok-noisy", target="status-page", operation="GET /status")
        for _ in range(10_000)
    ]
    quiet = [call(token_id="tok-quiet", target=t, operation="GET /records") for t in SENSITIVE]
    ingest(store, [*noisy, *quiet])
    ranked = rank_tokens(store.conn, catalog=CATALOG)
    assert [(r.token_id, r.calls) for r in ranked] == [("tok-quiet", 5), ("tok-noisy", 10_000)]
    assert ranked[0].blast_radius == BlastSummary(
        score=45.0, direct_targets=5, transitive_targets=0, environments=["prod"]
    )
    assert ranked[1].blast_radius.score == 1.0


def test_the_score_explains_itself(store: Store) -> None:
    ingest(
        store,
        [
            call(token_id="tok", target="payments-db", operation="GET /charges", scope=None),
            call(token_id="tok", target="payments-db", operation="DELETE /charges/1", scope=None),
            call(token_id="tok", target="status-page", operation="GET /", scope=None),
            call(token_id="tok", target="vault", operation="GET /secret", outcome="denied"),
        ],
    )
    radius = blast_radius(store.conn, catalog=CATALOG, token_id="tok")
    assert radius.score == 28.0
    assert [
        (c.target, c.contribution, c.sensitivity, c.privilege, c.privilege_weight, c.via)
        for c in radius.breakdown
    ] == [
        ("payments-db", 27.0, 9.0, "write", 3.0, "direct"),  # the highest privilege counts
        ("status-page", 1.0, 1.0, "read", 1.0, "direct"),
    ]  # the denied call to the vault reached nothing
    assert sum(c.contribution for c in radius.breakdown) == radius.score


def test_crossing_into_another_environment_weighs_double(store: Store) -> None:
    ingest(
        store,
        [
            *(call(token_id="tok", target="payments-db", environment="prod") for _ in range(3)),
            call(token_id="tok", target="staging-db", environment="staging"),
        ],
    )
    radius = blast_radius(store.conn, catalog=CATALOG, token_id="tok")
    assert radius.home_environment == "prod"
    assert radius.environments == ["prod", "staging"]
    staging = next(c for c in radius.breakdown if c.target == "staging-db")
    assert (staging.crossing, staging.contribution) == (True, 8.0)


def test_transitive_reach_downstream_in_chains_and_through_derived_tokens(store: Store) -> None:
    ingest(
        store,
        [
            call(trace_id="t", span_id="a", token_id="tok-gw", source="gw", target="orders"),
            call(trace_id="t", span_id="b", parent_span_id="a", token_id="tok-orders",
                 source="orders", target="payments-db", operation="POST /charges", scope=None),
            call(token_id="tok-gw-exchanged", token={"parent_token_id": "tok-gw"},
                 source="gw", target="vault", operation="GET /secret"),
        ],
    )  # fmt: skip
    radius = blast_radius(store.conn, catalog=CATALOG, token_id="tok-gw")
    got = {c.target: (c.via, c.via_token, c.contribution, c.direct) for c in radius.breakdown}
    assert got == {
        "orders": ("direct", "tok-gw", 3.0, True),
        "vault": ("derived", "tok-gw-exchanged", 9.0, False),  # a derived token is its holder's
        "payments-db": ("chain", "tok-orders", 13.5, False),  # 9 x write 3 x chain 0.5
    }
    chain = next(c for c in radius.breakdown if c.target == "payments-db")
    assert chain.evidence_trace_id == "t"
    assert (radius.direct_targets, radius.transitive_targets, radius.score) == (1, 2, 25.5)


def test_potential_reach_and_the_least_privilege_gap(store: Store) -> None:
    grant = {"scopes": ["ledger:read", "ledger:write", "mail:send"]}
    ingest(store, [call(token_id="tok", target="ledger", scope="ledger:read", token=grant)])
    potential = blast_radius(store.conn, catalog=CATALOG, token_id="tok").potential
    assert potential is not None
    assert potential.unused_scopes == ["ledger:write", "mail:send"]
    assert [(t.target, t.privilege, t.contribution, t.reached) for t in potential.targets] == [
        ("ledger", "write", 18.0, True),
        ("mail", "read", 2.0, False),
    ]
    assert (potential.unreached, potential.gap_score, potential.score) == (["mail"], 2.0, 20.0)


def test_no_potential_without_a_scope_map(store: Store) -> None:
    ingest(store, [call(token_id="tok", token={"scopes": ["ledger:read"]})])
    assert blast_radius(store.conn, catalog=Catalog(), token_id="tok").potential is None


def test_reach_outside_the_declared_policy(store: Store) -> None:
    ingest(store, [call(token_id="tok", target="payments-db", scope="payments:write")])
    policy = blast_radius(store.conn, catalog=CATALOG, token_id="tok").policy
    assert policy is not None
    assert (policy.targets_outside, policy.scopes_outside) == (["payments-db"], ["payments:write"])


def test_an_identity_adds_up_all_its_tokens(store: Store) -> None:
    ingest(
        store,
        [
            call(identity="agent-7", token_id="tok-monday", target="payments-db"),
            call(identity="agent-7", token_id="tok-tuesday", target="vault"),
            call(identity="agent-7", token_id="tok-tuesday", target="payments-db"),
            call(identity="someone-else", token_id="tok-x", target="hr-db"),
        ],
    )
    radius = blast_radius(store.conn, catalog=CATALOG, identity="agent-7")
    assert (radius.kind, radius.score, radius.direct_targets) == ("identity", 18.0, 2)
    assert [c.target for c in radius.breakdown] == ["payments-db", "vault"]


def test_the_ranking_agrees_with_each_tokens_own_score(store: Store) -> None:
    ingest(
        store,
        [
            call(trace_id="t", span_id="a", token_id="tok-a", target="orders"),
            call(trace_id="t", span_id="b", parent_span_id="a", token_id="tok-b",
                 target="payments-db", environment="staging"),
            call(token_id="tok-c", token={"parent_token_id": "tok-b"}, target="vault"),
            call(token_id="tok-d", identity="other", target="status-page"),
        ],
    )  # fmt: skip
    ranked = rank_tokens(store.conn, catalog=CATALOG)
    # tok-b: payments-db from staging (9 x 2 crossing) + vault through tok-c (9) = 27;
    # tok-c: vault 9; tok-a: orders 3 + payments-db downstream (9 x 0.5) = 7.5; tok-d: 1.
    assert [r.token_id for r in ranked] == ["tok-b", "tok-c", "tok-a", "tok-d"]
    for row in ranked:
        single = blast_radius(store.conn, catalog=CATALOG, token_id=row.token_id)
        assert row.blast_radius.score == single.score
        assert row.blast_radius.direct_targets == single.direct_targets
        assert row.blast_radius.transitive_targets == single.transitive_targets
        assert row.blast_radius.environments == single.environments
    assert [r.token_id for r in rank_tokens(store.conn, catalog=CATALOG, top=2)] == [
        "tok-b",
        "tok-c",
    ]
    assert [r.token_id for r in rank_tokens(store.conn, catalog=CATALOG, identity="other")] == [
        "tok-d"
    ]


def test_the_ranking_refreshes_only_what_changed_and_stays_exact(
    store: Store, tmp_path: Path
) -> None:
    def scores(catalog: Catalog = CATALOG) -> dict[str, float]:
        return {r.token_id: r.blast_radius.score for r in rank_tokens(store.conn, catalog=catalog)}

    def exact(catalog: Catalog = CATALOG) -> dict[str, float]:
        tokens = [r[0] for r in store.conn.execute("SELECT token_id FROM tokens").fetchall()]
        return {t: blast_radius(store.conn, catalog=catalog, token_id=t).score for t in tokens}

    ingest(store, [call(token_id="old", target="status-page", trace_id="t", span_id="a")])
    assert scores() == exact() == {"old": 1.0}
    ingest(
        store,
        [
            # A token derived from `old` reaches the vault: `old` must be rescored too.
            call(token_id="child", token={"parent_token_id": "old"}, target="vault"),
            # A late hop below `old`'s span in its trace: `old`'s chain reach grows.
            call(token_id="svc", target="payments-db", trace_id="t", span_id="b",
                 parent_span_id="a"),
        ],
    )  # fmt: skip
    assert scores() == exact() == {"old": 14.5, "child": 9.0, "svc": 9.0}
    assert scores(Catalog()) == exact(Catalog()) == {"old": 7.5, "child": 3.0, "svc": 3.0}
    store.close()
    with duckdb.connect(str(tmp_path / "graph.duckdb"), read_only=True) as reader:
        ranked = rank_tokens(reader, catalog=CATALOG)  # computed, not kept
        assert {r.token_id: r.blast_radius.score for r in ranked} == {
            "old": 14.5,
            "child": 9.0,
            "svc": 9.0,
        }


def test_the_worked_example_of_docs_graph_md(store: Store) -> None:
    ingest(
        store,
        [
            *(call(token_id="tok-gw", target="orders", operation="GET /orders", scope=None,
                   trace_id=f"t{i}", span_id="a", environment="prod") for i in range(120)),
            call(token_id="tok-orders", source="orders", target="payments-db",
                 operation="POST /charges", scope=None, trace_id="t0", span_id="b",
                 parent_span_id="a"),
            call(token_id="tok-gw-exchanged", token={"parent_token_id": "tok-gw"},
                 target="vault", operation="GET /secret", scope=None),
            call(token_id="tok-gw", target="staging-db", operation="GET /rows", scope=None,
                 environment="staging"),
        ],
    )  # fmt: skip
    radius = blast_radius(store.conn, catalog=CATALOG, token_id="tok-gw")
    assert [(c.target, c.contribution) for c in radius.breakdown] == [
        ("payments-db", 13.5),
        ("vault", 9.0),
        ("staging-db", 8.0),
        ("orders", 3.0),
    ]
    assert radius.score == 33.5
