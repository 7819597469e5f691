"""A world is deterministic, valid against the contract, ordered, labelled and streamed lazily."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tracemalloc
from collections import defaultdict
from pathlib import Path

import pytest
from simulated import Sim, build

from tokentrail.events import EventDecoder
from tokentrail.simulate import (
    FAMILIES,
    SimulationError,
    World,
    WorldSpec,
    parse_attacks,
    write_world,
)

FILES = ("events.jsonl", "labels.json", "catalog.toml")
SMALL = {"days": 1.0, "scale": 0.1}


def written(path: Path, **spec: object) -> dict[str, bytes]:
    write_world(World(WorldSpec(**{**SMALL, **spec})), path)  # type: ignore[arg-type]
    return {name: (path / name).read_bytes() for name in FILES}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    first = written(tmp_path / "a", seed=11)
    assert written(tmp_path / "b", seed=11) == first
    other = written(tmp_path / "c", seed=12)
    assert other["events.jsonl"] != first["events.jsonl"]
    assert other["labels.json"] != first["labels.json"]


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_output_does_not_depend_on_string_hashing(tmp_path: Path, hash_seed: str) -> None:
    here = written(tmp_path / "here", seed=5)
    script = (
        "import sys; from pathlib import Path;"
        "from tokentrail.simulate import World, WorldSpec, write_world;"
        "write_world(World(WorldSpec(seed=5, days=1.0, scale=0.1)), Path(sys.argv[1]))"
    )
    there = tmp_path / "there"
    env = os.environ | {"PYTHONHASHSEED": hash_seed}
    subprocess.run([sys.executable, "-c", script, str(there)], check=True, env=env, timeout=120)
    assert {name: (there / name).read_bytes() for name in FILES} == here


def test_every_event_meets_the_contract(sim: Sim) -> None:
    decoder = EventDecoder(salt=b"x")
    with (sim.path / "events.jsonl").open("rb") as lines:
        decoded = [decoder.decode(line.rstrip(b"\n")) for line in lines]
    assert len(decoded) == len(sim.events)
    # Token ids are fingerprints and key ids, never shapes the redactor mistakes for secrets.
    assert [e.wire.event_id for e in decoded if e.flags] == []


def test_events_are_in_time_order_with_unique_ids(sim: Sim) -> None:
    stamps = [e["ts"] for e in sim.events]
    assert stamps == sorted(stamps)
    assert len({e["event_id"] for e in sim.events}) == len(sim.events)
    assert sim.labels["events"] == len(sim.events)


def test_labels_point_at_events_that_exist(sim: Sim) -> None:
    ids = {e["event_id"] for e in sim.events}
    labelled = [i for a in sim.labels["attacks"] for i in a["event_ids"]]
    assert labelled and set(labelled) <= ids
    assert len(labelled) == len(set(labelled)), "an event belongs to one attack"
    assert [a["family"] for a in sim.labels["attacks"]] == list(FAMILIES)
    starts = [a["start"] for a in sim.labels["attacks"]]
    assert len(set(starts)) == len(starts), "distinct times"


def test_labels_have_the_documented_shape(sim: Sim) -> None:
    assert set(sim.labels) >= {
        "seed", "start", "end", "days", "scale", "attacks", "benign_changes",
    }  # fmt: skip
    for attack in sim.labels["attacks"]:
        assert set(attack) >= {
            "id", "family", "title", "start", "end", "event_ids", "token_ids", "identities",
            "mitre",
        }  # fmt: skip
    for change in sim.labels["benign_changes"]:
        assert set(change) == {"id", "kind", "title", "start", "end", "identities", "targets"}
        assert sim.labels["warmup_end"] <= change["start"] < change["end"] <= sim.labels["end"]


def test_chains_carry_complete_trace_context(sim: Sim) -> None:
    spans: dict[str, set[str]] = defaultdict(set)
    for event in sim.events:
        if "trace_id" in event:
            spans[event["trace_id"]].add(event["span_id"])
    dangling = [
        e["event_id"]
        for e in sim.events
        if "parent_span_id" in e and e["parent_span_id"] not in spans[e["trace_id"]]
    ]
    assert dangling == []
    mesh = [e for e in sim.benign if e["identity"].startswith("spiffe://")]
    assert all("trace_id" in e and "span_id" in e for e in mesh)
    multi_hop = {e["trace_id"] for e in sim.events if "parent_span_id" in e}
    assert len(multi_hop) > 100


def test_tokens_rotate_and_each_hop_uses_its_own(sim: Sim) -> None:
    by_trace: dict[str, set[str]] = defaultdict(set)
    for event in sim.benign:
        if "parent_span_id" in event and event["identity_kind"] == "service":
            by_trace[event["trace_id"]].add(event["token_id"])
    assert max(len(tokens) for tokens in by_trace.values()) >= 3
    orders = [e for e in sim.benign if e["identity"] == "spiffe://prod/ns/orders/sa/orders-api"]
    assert len({e["token_id"] for e in orders}) > 3 * 24  # every 45 min per instance


def test_catalog_describes_every_target_and_most_identities(sim: Sim) -> None:
    assert sim.catalog["privilege"] == {"read": 1.0, "write": 3.0, "admin": 10.0}
    assert {e["target"] for e in sim.events} <= set(sim.services)
    assert all(1 <= s["sensitivity"] <= 10 for s in sim.services.values())
    assert sim.services["payments-db"]["sensitivity"] > sim.services["status-page"]["sensitivity"]
    identities = {e["identity"] for e in sim.events}
    declared = identities & set(sim.declared)
    assert 0.5 * len(identities) < len(declared) < len(identities), "most, not all"
    kinds = {i["kind"] for i in sim.catalog["identity"]}
    assert kinds == {"agent", "ci", "service"}


def test_every_identity_kind_of_the_contract_appears(sim: Sim) -> None:
    assert {e["identity_kind"] for e in sim.events} == {"agent", "ci", "service", "user"}
    kinds = {meta["kind"] for meta in sim.tokens.values()}
    assert {"jwt-svid", "agent-task", "exchanged", "ci-job", "api-key"} <= kinds
    legacy = [m for m in sim.tokens.values() if m["kind"] == "api-key"]
    assert legacy and all("expires_at" not in m for m in legacy)


def test_one_day_at_scale_one_is_tens_of_thousands_of_events() -> None:
    count = sum(1 for _ in World(WorldSpec(days=1, scale=1, attacks=())).items())
    assert 20_000 <= count <= 60_000


def test_large_worlds_stream_without_being_held_in_memory() -> None:
    world = World(WorldSpec(days=3, scale=100))
    tracemalloc.start()
    try:
        head = list(itertools.islice(world.items(), 20_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(head) == 20_000
    assert peak < 150 * 1024 * 1024


def test_no_attacks_means_no_labels(tmp_path: Path) -> None:
    quiet = build(tmp_path, attacks=parse_attacks("none"), **SMALL)
    assert quiet.labels["attacks"] == [] and quiet.family_of == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("token_replay,nonsense", "unknown attack family 'nonsense'"),
        ("token_replay@2026-03-01T00:00:00", "needs an offset"),
        ("token_replay@yesterday", "not an RFC 3339 time"),
    ],
)
def test_bad_attack_lists_are_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        parse_attacks(text)


def test_attacks_outside_the_world_are_refused() -> None:
    with pytest.raises(SimulationError, match="outside the world"):
        World(WorldSpec(days=1, attacks=parse_attacks("expired_token@30h")))
