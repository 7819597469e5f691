"""Incident response: from an alert to its evidence, reach before and after, and containment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from factories import T0_MS, call, write_events
from incident import NEWSLETTER, PAYMENTS, ingest_with_catalog, pivot_db, simulated_db
from typer.testing import CliRunner

from tokentrail.catalog import load_catalog
from tokentrail.cli import app
from tokentrail.graph.blast import blast_radius, rank_tokens
from tokentrail.investigate import (
    Containment,
    ExposedCredential,
    RevokeToken,
    RotateIdentity,
    UnknownAlertError,
    containment,
    investigate,
    pick_alert,
    records,
    stored_catalog,
)
from tokentrail.store import Store

T0 = datetime.fromtimestamp(T0_MS / 1000, UTC)


def minute(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


@pytest.fixture(scope="module")
def pivot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pivot_db(tmp_path_factory.mktemp("pivot"))


@pytest.fixture
def store(pivot: Path) -> Iterator[Store]:
    with Store.open(pivot) as opened:
        yield opened


def _alert(store: Store, detector: str) -> str:
    rows = store.conn.execute(
        "SELECT alert_id FROM alerts WHERE detector = ?", [detector]
    ).fetchall()
    assert len(rows) == 1
    return str(rows[0][0])


def test_blast_radius_before_a_time_counts_only_what_was_reached_by_then(store: Store) -> None:
    catalog = stored_catalog(store.conn)
    before = blast_radius(store.conn, catalog=catalog, token_id="svid-1", until=minute(11))
    # The AssumeRole at 09:11 itself counts (until is inclusive); nothing derived existed yet.
    assert [(c.target, c.via) for c in before.breakdown] == [
        ("sts", "direct"), ("email-relay", "direct"), ("secrets-vault", "direct"),
    ]  # fmt: skip
    earlier = blast_radius(store.conn, catalog=catalog, token_id="svid-1", until=minute(10.5))
    assert {c.target for c in earlier.breakdown} == {"email-relay", "secrets-vault"}
    now = blast_radius(store.conn, catalog=catalog, token_id="svid-1")
    assert {c.target: c.via for c in now.breakdown} == {
        "iam": "derived", "sts": "direct", "email-relay": "direct", "hr-db": "derived",
        "payments-db": "chain", "payments-api": "derived", "secrets-vault": "direct",
    }  # fmt: skip


def test_the_credential_pivot_is_reconstructed_from_its_alert(store: Store) -> None:
    alert_id = pick_alert(store.conn)
    found = investigate(store.conn, alert_id=alert_id)
    assert (found.alert.detector, found.alert.token_id) == ("credential_pivot", "ASIA1")
    assert [(e.event_id, e.role) for e in found.evidence.events] == [
        ("secret", "credential_step"), ("assume", "credential_step"),
        ("charges", "finding"), ("newkey", "finding"), ("hr", "finding"),
    ]  # fmt: skip
    assert found.evidence.tokens == ["svid-1", "ASIA1", "AKIA1"]
    assert [(t.token_id, t.relation) for t in found.lineage.tokens] == [
        ("svid-1", "ancestor"), ("ASIA1", "self"), ("AKIA1", "descendant"),
    ]  # fmt: skip
    # ASIA1 reached nothing before its first call; now it reaches what it and AKIA1 did.
    assert found.blast.before.score == 0
    assert found.blast.gained == ["iam", "hr-db", "payments-db", "payments-api"]
    assert found.blast.growth == found.blast.after.score
    assert found.entry == "newsletter"
    assert found.path is not None and found.path.target == "hr-db"
    assert found.path.paths[0].services == ["newsletter", "hr-db"]
    assert [(e.event_id, e.role) for e in found.timeline] == [
        ("warm-0", "context"), ("warm-1", "context"), ("warm-2", "context"),
        ("secret", "credential_step"), ("assume", "credential_step"),
        ("charges", "finding"), ("newkey", "finding"), ("hr", "finding"),
    ]  # fmt: skip
    edges = {(e.target, e.token_id): (e.evidence, e.new) for e in found.reach.edges}
    assert edges[("email-relay", "svid-1")] == (False, False)
    assert edges[("sts", "svid-1")] == (True, False)  # before ASIA1's first call
    assert edges[("hr-db", "AKIA1")] == (True, True)
    assert found.containment == containment(store.conn, alert_id=alert_id)


def test_containment_of_the_pivot_names_every_credential_with_its_reason(store: Store) -> None:
    found = containment(store.conn, alert_id=_alert(store, "credential_pivot"))
    assert found == Containment(
        alert_id=found.alert_id,
        as_of=minute(120),  # the newest stored event: validity is judged in event time
        tokens=[
            RevokeToken(
                token_id="ASIA1", identity=NEWSLETTER, kind="sts-session", relation="alerted",
                action="expired", expires_at=minute(60), last_seen=minute(13),
                reason="the alerted token (credential_pivot, critical);"
                " expired 2026-03-02 10:00Z, confirm only",
            ),
            RevokeToken(
                token_id="svid-1", identity=NEWSLETTER, kind=None, relation="ancestor",
                action="revoke", expires_at=None, last_seen=minute(11),
                reason="minted or exchanged into ASIA1: its holder pivoted",
            ),
            RevokeToken(
                token_id="AKIA1", identity=NEWSLETTER, kind="access-key", relation="descendant",
                action="revoke", expires_at=None, last_seen=minute(14),
                reason="derived from ASIA1 at 2026-03-02 09:14:00Z (token.parent_token_id)",
            ),
        ],
        identities=[
            RotateIdentity(
                identity=NEWSLETTER, tokens=["ASIA1", "svid-1", "AKIA1"],
                reason="the alert's identity; holds ASIA1, svid-1, AKIA1",
            ),
            RotateIdentity(
                identity=PAYMENTS, tokens=["tok-pay"],
                reason="acted with its token tok-pay below ASIA1 at payments-api (trace t1)",
            ),
        ],
        credentials=[
            ExposedCredential(
                credential="prod/payments/creds", target="secrets-vault",
                operation="secretsmanager:GetSecretValue", token_id="svid-1", event_id="secret",
                ts=minute(10), action="rotate the secret",
                reason="secretsmanager:GetSecretValue on secrets-vault with svid-1"
                " at 2026-03-02 09:10:00Z",
            ),
            ExposedCredential(
                credential="role/payments-operator", target="sts", operation="sts:AssumeRole",
                token_id="svid-1", event_id="assume", ts=minute(11),
                action="revoke the role's sessions",
                reason="sts:AssumeRole on sts with svid-1 at 2026-03-02 09:11:00Z",
            ),
            ExposedCredential(
                credential="user/ops", target="iam", operation="iam:CreateAccessKey",
                token_id="ASIA1", event_id="newkey", ts=minute(13),
                action="delete the key it created",
                reason="iam:CreateAccessKey on iam with ASIA1 at 2026-03-02 09:13:00Z",
            ),
        ],
    )  # fmt: skip


def test_an_alert_on_the_workload_token_revokes_its_derived_family(store: Store) -> None:
    found = investigate(store.conn, alert_id=_alert(store, "unexpected_reach"))
    assert found.alert.token_id == "svid-1"
    assert [(t.token_id, t.relation, t.action) for t in found.containment.tokens] == [
        ("svid-1", "alerted", "revoke"),
        ("ASIA1", "descendant", "expired"),
        ("AKIA1", "descendant", "revoke"),
    ]
    # Before the alert's first event (the AssumeRole) the token reached its declared targets.
    assert [(t.target, t.before) for t in found.blast.targets if not t.new] == [
        ("email-relay", 9.0), ("secrets-vault", 3.0),
    ]  # fmt: skip
    assert found.blast.before.score == 12.0


def test_a_confused_deputy_names_the_caller_that_drove_it(tmp_path: Path) -> None:
    agent, gateway = "spiffe://prod/ns/agents/sa/assistant", "spiffe://prod/ns/gw/sa/gateway"
    events = [
        call(event_id="ask", ts=T0_MS, identity=agent, source="assistant", token_id="tt-1",
             target="tool-gateway", operation="POST /tools/hr", trace_id="t9", span_id="a"),
        call(event_id="fetch", ts=T0_MS + 200, identity=gateway, source="tool-gateway",
             token_id="gwk-1", target="hr-api", operation="GET /people", trace_id="t9",
             span_id="b", parent_span_id="a"),
    ]  # fmt: skip
    (tmp_path / "catalog.toml").write_text(
        f'[[identity]]\nname = "{gateway}"\nallowed_targets = ["crm-api"]\n'
    )
    db = ingest_with_catalog(
        write_events(tmp_path / "e.jsonl", events), tmp_path / "catalog.toml", tmp_path / "d.db"
    )
    with Store.open(db) as opened:
        found = investigate(opened.conn, alert_id=pick_alert(opened.conn))
    assert (found.alert.token_id, found.entry) == ("gwk-1", "assistant")
    assert found.path is not None
    assert found.path.paths[0].services == ["assistant", "tool-gateway", "hr-api"]
    assert found.reach.tokens == ["gwk-1", "tt-1"]
    assert found.containment.identities == [
        RotateIdentity(identity=gateway, tokens=["gwk-1"],
                       reason="the alert's identity; holds gwk-1"),
        RotateIdentity(identity=agent, tokens=["tt-1"],
                       reason="its token tt-1 drove gwk-1 at tool-gateway (trace t9)"),
    ]  # fmt: skip


def test_every_identity_that_used_a_shared_token_is_rotated(tmp_path: Path) -> None:
    owner, other = "spiffe://prod/ns/shop/sa/orders", "spiffe://prod/ns/shop/sa/inventory"
    events = [
        *(call(ts=T0_MS + i * 60_000, identity=owner, source="orders", token_id="tok-shared",
               target="orders-db") for i in range(3)),
        call(ts=T0_MS + 600_000, identity=other, source="inventory", token_id="tok-shared",
             target="orders-db"),
    ]  # fmt: skip
    (tmp_path / "catalog.toml").write_text("")
    db = ingest_with_catalog(
        write_events(tmp_path / "e.jsonl", events), tmp_path / "catalog.toml", tmp_path / "d.db"
    )
    with Store.open(db) as opened:
        alert = _alert(opened, "shared_token")
        found = containment(opened.conn, alert_id=alert)
    rotated = {i.identity: i for i in found.identities}
    assert set(rotated) == {owner, other}
    assert rotated[other].tokens == ["tok-shared"]
    assert "also used tok-shared" in rotated[other].reason


def test_reach_as_of_the_newest_event_is_the_stored_reach(tmp_path: Path) -> None:
    # The as-of reach is rebuilt from events (edges, chain walks, lineage links by time): at the
    # newest event it must agree exactly with what the derived tables hold, token by token.
    db = simulated_db(tmp_path)
    catalog = load_catalog(tmp_path / "catalog.toml")
    with Store.open(db) as opened:
        conn = opened.conn
        newest = conn.execute("SELECT max(ts) FROM events").fetchall()[0][0]
        family = [r[0] for r in conn.execute("SELECT child_token_id FROM token_links").fetchall()]
        ranked = [r.token_id for r in rank_tokens(conn, catalog=catalog, top=20)]
        for token in sorted({*ranked, *family}):
            stored = blast_radius(conn, catalog=catalog, token_id=token)
            assert blast_radius(conn, catalog=catalog, token_id=token, until=newest) == stored
        alert_id = pick_alert(conn)
        found = investigate(conn, alert_id=alert_id)
    assert found.alert.severity == "critical"
    assert len(found.lineage.tokens) >= 2
    assert found.blast.after.score > found.blast.before.score


def test_contain_command_prints_json_and_refuses_an_unknown_alert(pivot: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["contain", "--db", str(pivot), "--format", "json"])
    assert done.exit_code == 0, done.output
    printed = json.loads(done.stdout)
    assert [t["token_id"] for t in printed["tokens"]] == ["ASIA1", "svid-1", "AKIA1"]
    table = runner.invoke(app, ["contain", "--db", str(pivot)])
    assert table.exit_code == 0 and "AKIA1" in table.stdout and "rotate the secret" in table.stdout
    missing = runner.invoke(app, ["contain", "nope", "--db", str(pivot)])
    assert isinstance(missing.exception, UnknownAlertError)


def test_records_flatten_results_for_a_table(store: Store) -> None:
    found = containment(store.conn, alert_id=_alert(store, "credential_pivot"))
    rows = records(found.identities)
    assert rows[0] == {
        "identity": NEWSLETTER,
        "tokens": "ASIA1, svid-1, AKIA1",
        "reason": "the alert's identity; holds ASIA1, svid-1, AKIA1",
    }
