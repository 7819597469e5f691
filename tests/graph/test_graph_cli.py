"""The graph commands' contract: `chain`, `token`, `tokens`, `identity`, `paths`, `exposure`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from factories import call, write_events
from typer.testing import CliRunner

from tokentrail.cli import app
from tokentrail.errors import StoreError, TokentrailError

CATALOG = """
[[service]]
name = "payments-db"
environment = "prod"
sensitivity = 10
scopes = ["payments:read", "payments:write"]
"""


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    events = [
        call(trace_id="t1", span_id="a", source="gateway", target="orders", token_id="tok-gw"),
        call(trace_id="t1", span_id="b", parent_span_id="a", source="orders",
             target="payments-db", token_id="tok-orders", scope="payments:write",
             token={"scopes": ["payments:read", "payments:write"]}),
        call(trace_id="t1", span_id="c", parent_span_id="gone", source="orders", target="cache",
             token_id="tok-orders"),
        *(call(token_id="tok-noisy", source="probe", target="status-page") for _ in range(50)),
    ]  # fmt: skip
    path = folder / "audit.duckdb"
    result = CliRunner().invoke(
        app, ["ingest", str(write_events(folder / "e.jsonl", events)), "--db", str(path)]
    )
    assert result.exit_code == 0, result.output
    (folder / "catalog.toml").write_text(CATALOG)
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def as_json(*args: str) -> Any:
    return json.loads(run(*args, "--format", "json"))


def test_chain_json(db: Path) -> None:
    chain = as_json("chain", "t1", "--db", str(db))
    assert {"trace_id", "spans", "paths", "token_switches", "orphans"} <= chain.keys()
    for span in chain["spans"]:
        assert {"span_id", "parent_span_id", "source", "target", "operation", "token_id", "ts",
                "depth"} <= span.keys()  # fmt: skip
    assert [(s["span_id"], s["depth"]) for s in chain["spans"]] == [("a", 0), ("b", 1), ("c", 1)]
    assert chain["spans"][0]["ts"].endswith("Z")
    assert [p["services"] for p in chain["paths"]] == [
        ["gateway", "orders", "payments-db"],
        ["orders", "cache"],
    ]
    assert [(s["from_token"], s["to_token"]) for s in chain["token_switches"]] == [
        ("tok-gw", "tok-orders")
    ]
    assert chain["orphans"] == [
        {
            "span_id": "c",
            "missing_parent_span_id": "gone",
            "event_id": chain["spans"][2]["event_id"],
        }
    ]


def test_chain_tree(db: Path) -> None:
    tree = run("chain", "t1", "--db", str(db), "--format", "tree")
    assert "gateway → orders" in tree
    assert "token switch" in tree
    assert "gap: parent span gone never arrived" in tree


def test_token_json(db: Path) -> None:
    report = as_json(
        "token", "tok-orders", "--db", str(db), "--catalog", str(db.parent / "catalog.toml")
    )
    assert {"token", "graph", "lineage", "blast_radius"} <= report.keys()
    radius = report["blast_radius"]
    assert radius["score"] == 33.0  # payments-db 10 x write 3 + cache 3
    assert [(b["target"], b["contribution"]) for b in radius["breakdown"]] == [
        ("payments-db", 30.0),
        ("cache", 3.0),
    ]
    assert radius["potential"]["unused_scopes"] == ["payments:read"]
    assert [t["target"] for t in report["graph"]["targets"]] == ["cache", "payments-db"]


def test_tokens_ranked_by_blast_radius(db: Path) -> None:
    ranked = as_json("tokens", "--db", str(db), "--catalog", str(db.parent / "catalog.toml"))
    assert [r["token_id"] for r in ranked] == ["tok-orders", "tok-gw", "tok-noisy"]
    first = ranked[0]
    assert {"token_id", "identity", "calls", "blast_radius"} <= first.keys()
    assert first["blast_radius"] == {
        "score": 33.0,
        "direct_targets": 2,
        "transitive_targets": 0,
        "environments": ["prod"],
    }
    scores = [r["blast_radius"]["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert len(as_json("tokens", "--db", str(db), "--top", "1")) == 1
    table = run("tokens", "--db", str(db), "--format", "table")
    assert "tok-orders" in table and "score" in table


def test_identity(db: Path) -> None:
    report = as_json("identity", "spiffe://prod/ns/billing/sa/invoicer", "--db", str(db))
    assert report["blast_radius"]["kind"] == "identity"
    assert len(report["tokens"]) == 3


def test_paths_and_exposure(db: Path) -> None:
    paths = as_json("paths", "--from", "gateway", "--to", "payments-db", "--db", str(db))
    assert [p["services"] for p in paths["paths"]] == [["gateway", "orders", "payments-db"]]
    none = as_json(
        "paths",
        "--from",
        "gateway",
        "--to",
        "payments-db",
        "--db",
        str(db),
        "--until",
        "2020-01-01",
    )
    assert none["paths"] == []
    exposure = as_json("exposure", "payments-db", "--db", str(db))
    assert [(t["token_id"], t["via"]) for t in exposure["tokens"]] == [
        ("tok-orders", "direct"),
        ("tok-gw", "chain"),
    ]
    assert "tok-orders" in run("exposure", "payments-db", "--db", str(db))
    assert "gateway → orders → payments-db" in run(
        "paths", "--from", "gateway", "--to", "payments-db", "--db", str(db)
    )


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (["chain", "nope"], TokentrailError, "no trace 'nope'"),
        (["token", "nope"], TokentrailError, "no token 'nope'"),
        (["paths", "--from", "a", "--to", "b", "--since", "yesterday"], TokentrailError, "--since"),
    ],
)
def test_errors_are_one_line(db: Path, args: list[str], error: type, message: str) -> None:
    result = CliRunner().invoke(app, [*args, "--db", str(db)])
    assert isinstance(result.exception, error)
    assert message in str(result.exception)


def test_a_missing_database_is_not_created(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["tokens", "--db", str(tmp_path / "none.duckdb")])
    assert isinstance(result.exception, StoreError)
    assert not (tmp_path / "none.duckdb").exists()
