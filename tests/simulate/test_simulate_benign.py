"""Benign traffic (every event no label claims) contains none of the attack patterns."""

from __future__ import annotations

from collections import defaultdict

from simulated import Sim

from tokentrail.simulate.estate import CI


def test_no_benign_use_of_a_token_after_it_expired(sim: Sim) -> None:
    late = [
        e
        for e in sim.benign
        if sim.tokens[e["token_id"]].get("expires_at") is not None
        and e["ts"] >= sim.tokens[e["token_id"]]["expires_at"]
    ]
    assert late == []


def test_every_token_announces_its_metadata_on_first_use(sim: Sim) -> None:
    seen: set[str] = set()
    silent = []
    for event in sim.events:
        if event["token_id"] not in seen and "token" not in event:
            silent.append(event["event_id"])
        seen.add(event["token_id"])
    assert silent == []


def test_benign_calls_stay_within_declared_policy_and_grant(sim: Sim) -> None:
    outside = []
    for event in sim.benign:
        targets, scopes = sim.policy(event["identity"])
        granted = sim.tokens[event["token_id"]]["scopes"]
        if not (
            event["target"] in targets and event["scope"] in scopes and event["scope"] in granted
        ):
            outside.append((event["identity"], event["target"], event["scope"]))
    assert outside == []


def test_a_benign_token_has_one_holder_one_address_one_environment(sim: Sim) -> None:
    uses: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for event in sim.benign:
        uses[event["token_id"]].add((event["identity"], event["source_ip"], event["environment"]))
    assert {token: use for token, use in uses.items() if len(use) > 1} == {}


def test_benign_identities_stay_in_their_environment(sim: Sim) -> None:
    crossing = [
        (e["identity"], e["environment"])
        for e in sim.benign
        if e["environment"] != sim.environment_of(e["identity"])
        or sim.services[e["target"]]["environment"] != e["environment"]
    ]
    assert crossing == []


def test_benign_build_tokens_stay_on_the_build_path(sim: Sim) -> None:
    build_path = sim.ci_infrastructure()
    off_path = {
        (e["identity"], e["target"])
        for e in sim.benign
        if e["identity_kind"] == "ci"
        and e["target"] not in build_path
        and not e["target"].startswith("cluster-api")
    }
    assert off_path == set()
    # Build jobs (CI environment) never deploy; deploy jobs only touch their cluster.
    assert all(
        e["target"] in build_path
        for e in sim.benign
        if e["identity_kind"] == "ci" and e["environment"] == CI
    )


def test_benign_task_calls_use_the_task_token_or_its_exchanges(sim: Sim) -> None:
    task_token: dict[str, str] = {}
    for event in sim.benign:
        if event["identity_kind"] == "agent" and event["target"] == "tool-gateway":
            task_token.setdefault(event["task_id"], event["token_id"])
    stray = []
    for event in sim.benign:
        if "task_id" not in event:
            continue
        own = task_token[event["task_id"]]
        parent = sim.tokens[event["token_id"]].get("parent_token_id")
        exchange = event["target"] == "token-service" and event["identity_kind"] == "service"
        if event["token_id"] != own and parent != own and not exchange:
            stray.append(event["event_id"])
    assert stray == []


def test_benign_denials_are_rare_and_never_probe_new_scopes(sim: Sim) -> None:
    denied = [e for e in sim.benign if e.get("outcome") == "denied"]
    assert 0 < len(denied) < 0.01 * len(sim.benign)


def test_benign_changes_bring_novelty_without_breaking_policy(sim: Sim) -> None:
    kinds = {c["kind"] for c in sim.labels["benign_changes"]}
    assert kinds == {"new_pipeline", "new_dependency", "new_agent_tool", "scale_out"}
    (dependency,) = [c for c in sim.labels["benign_changes"] if c["kind"] == "new_dependency"]
    calls = [
        e
        for e in sim.benign
        if e["identity"] in dependency["identities"] and e["target"] in dependency["targets"]
    ]
    assert calls and min(e["ts"] for e in calls) >= dependency["start"]
    for identity in dependency["identities"]:
        assert set(dependency["targets"]) & sim.policy(identity)[0]
