"""Every attack family produces the pattern it claims, and its label describes it exactly."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from simulated import Sim, build, ms

from tokentrail.simulate import FAMILIES, parse_attacks
from tokentrail.simulate.core import HOUR, MINUTE

CREDENTIAL_ACCESS = ("secretsmanager:GetSecretValue", "sts:AssumeRole", "iam:CreateAccessKey")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_label_describes_its_events(sim: Sim, family: str) -> None:
    label, events = sim.attack(family)
    assert events, family
    assert [e["event_id"] for e in events] == label["event_ids"]
    assert (label["start"], label["end"]) == (events[0]["ts"], events[-1]["ts"])
    assert label["token_ids"] == sorted({e["token_id"] for e in events})
    assert label["identities"] == sorted({e["identity"] for e in events})
    assert label["mitre"] and label["title"]
    # Injected after the warm-up day, when detectors have baselines.
    assert label["start"] >= sim.labels["warmup_end"]


def test_token_replay_comes_from_a_new_address_minutes_after_legitimate_use(sim: Sim) -> None:
    _, events = sim.attack("token_replay")
    (token,) = {e["token_id"] for e in events}
    first = ms(events[0]["ts"])
    legit = [e for e in sim.benign if e["token_id"] == token and ms(e["ts"]) < first]
    assert legit, "the token was in legitimate use before the replay"
    assert first - ms(legit[-1]["ts"]) <= 10 * MINUTE
    assert {e["source_ip"] for e in events}.isdisjoint(e["source_ip"] for e in legit)
    assert all(e["ts"] < sim.tokens[token]["expires_at"] for e in events), "still valid"


def test_scope_drift_exercises_scopes_beyond_grant_task_and_policy(sim: Sim) -> None:
    _, events = sim.attack("scope_drift")
    agent = next(e["identity"] for e in events if e["identity_kind"] == "agent")
    _, allowed_scopes = sim.policy(agent)
    used = {e["scope"] for e in events if e["identity"] == agent}
    assert used - allowed_scopes >= {"crm:export", "crm:write", "crm:admin"}
    # A token exercising a scope its own grant lacks.
    assert any(e["scope"] not in sim.tokens[e["token_id"]]["scopes"] for e in events)
    # Exchanged tokens carry scopes their parent (the task token) never had.
    derived = {t: sim.tokens[t] for t in {e["token_id"] for e in events}}
    escalated = [
        meta
        for meta in derived.values()
        if meta.get("parent_token_id")
        and not set(meta["scopes"]) <= set(sim.tokens[meta["parent_token_id"]]["scopes"])
    ]
    assert escalated
    assert len({e["task_id"] for e in events}) == 1
    assert any(e.get("outcome") == "denied" for e in events), "probing shows as denials"


def test_credential_pivot_reads_secrets_then_derived_tokens_reach_new_systems(sim: Sim) -> None:
    _, events = sim.attack("credential_pivot")
    (identity,) = {e["identity"] for e in events}
    access = [i for i, e in enumerate(events) if e["operation"] in CREDENTIAL_ACCESS]
    derived = [
        i
        for i, e in enumerate(events)
        if sim.tokens[e["token_id"]].get("parent_token_id")
        and e["target"] not in sim.benign_targets[identity]
        and e["target"] not in sim.policy(identity)[0]
    ]
    assert access and derived
    assert min(access) < min(derived)
    reached = {events[i]["target"] for i in derived}
    assert {"payments-db", "iam", "hr-db"} <= reached
    # The lineage runs back to the identity's own workload token.
    roots = {sim.tokens[events[i]["token_id"]]["parent_token_id"] for i in derived}
    assert any(sim.tokens.get(root, {}).get("kind") == "jwt-svid" for root in roots)


def test_shared_token_is_used_by_several_identities_and_environments(sim: Sim) -> None:
    label, events = sim.attack("shared_token")
    (token,) = label["token_ids"]
    assert len({e["identity"] for e in events}) >= 2
    assert len({e["environment"] for e in events}) >= 2
    assert not [e for e in sim.benign if e["token_id"] == token]


def test_expired_token_is_used_after_expiry(sim: Sim) -> None:
    label, events = sim.attack("expired_token")
    (token,) = label["token_ids"]
    expires = sim.tokens[token]["expires_at"]
    assert all(e["ts"] > expires for e in events)
    assert all(e["token"]["expires_at"] == expires for e in events), "stateless detectable"
    legit = [e for e in sim.benign if e["token_id"] == token]
    assert legit and all(e["ts"] < expires for e in legit)
    assert any(e.get("outcome", "success") == "success" for e in events)


def test_confused_deputy_uses_a_broad_gateway_credential_for_a_narrow_task(sim: Sim) -> None:
    _, events = sim.attack("confused_deputy")
    deputy = [
        e for e in events if e["identity_kind"] == "service" and e["target"] != "token-service"
    ]
    assert deputy
    (task,) = {e["task_id"] for e in events}
    task_tokens = {
        e["token_id"]
        for e in sim.events
        if e.get("task_id") == task and e["identity_kind"] == "agent"
    }
    task_scopes = {s for t in task_tokens for s in sim.tokens[t]["scopes"]}
    for event in deputy:
        meta = sim.tokens[event["token_id"]]
        assert "parent_token_id" not in meta, "not derived from the task"
        assert event["scope"] in meta["scopes"] and event["scope"] not in task_scopes
        assert event["actor"].startswith("spiffe://prod/ns/agents/")


def test_low_and_slow_reaches_one_new_system_every_hour_or_more(sim: Sim) -> None:
    _, events = sim.attack("low_and_slow")
    (identity,) = {e["identity"] for e in events}
    first_contact: dict[str, int] = {}
    for event in events:
        first_contact.setdefault(event["target"], ms(event["ts"]))
    assert len(first_contact) >= 5
    assert not set(first_contact) & sim.benign_targets[identity]
    times = sorted(first_contact.values())
    assert all(b - a >= HOUR for a, b in itertools.pairwise(times))


def test_build_token_is_used_on_runtime_and_agent_paths(sim: Sim) -> None:
    label, events = sim.attack("build_token_on_runtime")
    (token,) = label["token_ids"]
    assert {e["identity_kind"] for e in events} == {"ci"}
    targets = {e["target"] for e in events}
    assert "tool-gateway" in targets
    assert not targets & sim.ci_infrastructure()
    (identity,) = label["identities"]
    assert not targets & sim.policy(identity)[0]
    build = [e for e in sim.benign if e["token_id"] == token]
    assert build and {e["target"] for e in build} <= sim.ci_infrastructure()


def test_cross_environment_reaches_production_from_staging(sim: Sim) -> None:
    _, events = sim.attack("cross_environment")
    (identity,) = {e["identity"] for e in events}
    assert sim.declared[identity]["environment"] == "staging"
    assert {e["environment"] for e in events} == {"prod"}
    assert {sim.services[e["target"]]["environment"] for e in events} == {"prod"}


def test_attacks_are_injected_as_chosen(tmp_path: Path) -> None:
    start = 1_772_409_600_000
    chosen = build(
        tmp_path, days=1, scale=0.1, attacks=parse_attacks("expired_token@20h,cross_environment")
    )
    assert [a["family"] for a in chosen.labels["attacks"]] == ["expired_token", "cross_environment"]
    expired = chosen.labels["attacks"][0]
    assert ms(expired["start"]) >= start + 20 * HOUR
