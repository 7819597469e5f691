"""A simulated world written to disk and read back, with the questions the tests ask of it."""

from __future__ import annotations

import json
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from tokentrail.simulate import World, WorldSpec, write_world
from tokentrail.simulate.estate import CI

Event = dict[str, Any]


def ms(ts: str) -> int:
    """Epoch milliseconds of an RFC 3339 time as the simulator writes it."""
    return int(datetime.fromisoformat(ts).timestamp() * 1000)


def build(path: Path, **spec: Any) -> Sim:
    """Simulate `WorldSpec(**spec)` into `path` and load what was written."""
    world = World(WorldSpec(**spec))
    write_world(world, path)
    return Sim.load(path, world)


@dataclass
class Sim:
    path: Path
    world: World
    events: list[Event]
    labels: dict[str, Any]
    catalog: dict[str, Any]
    family_of: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, world: World) -> Sim:
        with (path / "events.jsonl").open("rb") as lines:
            events = [json.loads(line) for line in lines]
        labels = json.loads((path / "labels.json").read_text())
        catalog = tomllib.loads((path / "catalog.toml").read_text())
        family_of = {
            event_id: attack["family"]
            for attack in labels["attacks"]
            for event_id in attack["event_ids"]
        }
        return cls(path, world, events, labels, catalog, family_of)

    @cached_property
    def benign(self) -> list[Event]:
        return [e for e in self.events if e["event_id"] not in self.family_of]

    def attack(self, family: str) -> tuple[dict[str, Any], list[Event]]:
        """The label of the (single) attack of `family` and its malicious events, in order."""
        (label,) = [a for a in self.labels["attacks"] if a["family"] == family]
        ids = set(label["event_ids"])
        return label, [e for e in self.events if e["event_id"] in ids]

    @cached_property
    def tokens(self) -> dict[str, dict[str, Any]]:
        """Token metadata as a registry would merge it: any event's `token` object."""
        registry: dict[str, dict[str, Any]] = {}
        for event in self.events:
            if "token" in event:
                registry.setdefault(event["token_id"], event["token"])
        return registry

    @cached_property
    def declared(self) -> dict[str, dict[str, Any]]:
        return {i["name"]: i for i in self.catalog["identity"]}

    @cached_property
    def services(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in self.catalog["service"]}

    def policy(self, identity: str) -> tuple[set[str], set[str]]:
        """Allowed targets and scopes: declared in the catalog, or the estate's own record
        for identities the catalog leaves undeclared (dev workloads, partners, people)."""
        declared = self.declared.get(identity)
        if declared is not None:
            return set(declared["allowed_targets"]), set(declared["allowed_scopes"])
        known = self.world.estate.identities[identity]
        return set(known.targets), set(known.scopes)

    def environment_of(self, identity: str) -> str:
        return self.world.estate.identities[identity].environment

    @cached_property
    def benign_targets(self) -> dict[str, set[str]]:
        reach: dict[str, set[str]] = defaultdict(set)
        for event in self.benign:
            reach[event["identity"]].add(event["target"])
        return reach

    def ci_infrastructure(self) -> set[str]:
        return {name for name, s in self.services.items() if s["environment"] == CI}
