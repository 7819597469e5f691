"""A world: the estate, its benign generators and the injected attacks, merged in time order.

>>> world = World(WorldSpec(days=0.05, scale=0.1, attacks=()))
>>> first = next(iter(world.items()))
>>> first[0] >= world.start_ms
True
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from tokentrail.simulate import traffic
from tokentrail.simulate.attacks import FAMILIES, Attack, Context
from tokentrail.simulate.changes import BenignChange, describe_changes, plan_changes
from tokentrail.simulate.core import (
    DAY,
    DEFAULT_START_MS,
    HOUR,
    MINUTE,
    Chunk,
    Item,
    Lane,
    SimulationError,
    fmt_ts,
    lane_rng,
    merge_chunks,
    parse_ts,
    stable_hex,
)
from tokentrail.simulate.estate import PRIVILEGE, Estate

MAX_DAYS: Final = 366.0
Generator = Callable[[Lane, Estate, random.Random], Iterator[Chunk]]
_ATTACK_LANES: Final = 64


@dataclass(frozen=True)
class AttackPlan:
    """An attack family to inject, at a given time or (None) at its default slot."""

    family: str
    at_ms: int | None = None


ALL_ATTACKS: Final = tuple(AttackPlan(family) for family in FAMILIES)


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines a world: the same spec always gives the same bytes."""

    seed: int = 7
    days: float = 3.0
    scale: float = 1.0
    start_ms: int = DEFAULT_START_MS
    attacks: tuple[AttackPlan, ...] = field(default=ALL_ATTACKS)


def parse_attacks(text: str, *, start_ms: int = DEFAULT_START_MS) -> tuple[AttackPlan, ...]:
    """`all`, `none`, or a comma list of families, each optionally `@36h` (hours after the
    start) or `@2026-03-03T10:00:00Z`.

    >>> parse_attacks("token_replay@36h,scope_drift")[0].at_ms - DEFAULT_START_MS
    129600000
    """
    text = text.strip()
    if text in ("", "none"):
        return ()
    if text == "all":
        return ALL_ATTACKS
    plans = []
    for part in text.split(","):
        name, _, when = part.strip().partition("@")
        if name not in FAMILIES:
            known = ", ".join(FAMILIES)
            raise SimulationError(f"unknown attack family {name!r} (known: {known})")
        at = None
        if when:
            hours = re.fullmatch(r"(\d+(?:\.\d+)?)h", when)
            at = start_ms + int(float(hours.group(1)) * HOUR) if hours else parse_ts(when)
        plans.append(AttackPlan(name, at))
    return tuple(plans)


class World:
    """A simulated estate over a time span; `items()` streams its events lazily."""

    def __init__(self, spec: WorldSpec) -> None:
        if not 0 < spec.days <= MAX_DAYS:
            raise SimulationError(f"days must be in (0, {MAX_DAYS:g}], got {spec.days:g}")
        if not 0 < spec.scale <= 10_000:
            raise SimulationError(f"scale must be in (0, 10000], got {spec.scale:g}")
        self.spec = spec
        self.start_ms = spec.start_ms
        self.end_ms = spec.start_ms + int(spec.days * DAY)
        span = self.end_ms - self.start_ms
        # Detectors learn baselines per identity on the first day; nothing is injected before.
        self.warm_end_ms = self.start_ms + min(DAY, int(0.4 * span))
        self.estate = Estate(
            seed=spec.seed,
            scale=spec.scale,
            start_ms=self.start_ms,
            end_ms=self.end_ms,
            changes=plan_changes(self.warm_end_ms, self.end_ms - self.warm_end_ms),
        )
        self.changes: list[BenignChange] = describe_changes(self.estate)
        self.attacks: list[Attack] = []
        for plan in spec.attacks:
            if len(self.attacks) >= _ATTACK_LANES:
                raise SimulationError(f"at most {_ATTACK_LANES} attacks per world")
            cls = FAMILIES[plan.family]
            at = plan.at_ms
            if at is None:
                at = self.warm_end_ms + int(
                    (self.end_ms - self.warm_end_ms) * cls.default_hour / 48
                )
            if not self.start_ms <= at < self.end_ms:
                raise SimulationError(
                    f"attack {plan.family} at {fmt_ts(at)} is outside the world"
                    f" ({fmt_ts(self.start_ms)} to {fmt_ts(self.end_ms)})"
                )
            self.attacks.append(cls(at))
        # Ids differ between specs, so two simulated files never collide in one store.
        self.id_prefix = f"ev-{stable_hex(repr(spec), chars=8)}-"

    def items(self) -> Iterator[Item]:
        """Every event of the world in event-time order, with its label index."""
        for chunk in self.chunks():
            yield from chunk

    def chunks(self) -> Iterator[list[Item]]:
        """The world's events in event-time order, a minute's worth (or more) at a time."""
        estate, seed = self.estate, self.spec.seed
        start, end = self.start_ms, self.end_ms
        streams: list[Iterator[Chunk]] = []
        index = 0

        def lane() -> Lane:
            nonlocal index
            index += 1
            return Lane(index - 1, start, end)

        for env in ("prod", "staging", "dev"):
            streams.append(traffic.mesh(lane(), estate, env, lane_rng(seed, f"mesh/{env}")))
        generators: tuple[tuple[str, Generator], ...] = (
            ("housekeeping", traffic.housekeeping),
            ("agents", traffic.agents),
            ("ci", traffic.ci),
            ("batch", traffic.batch),
            ("partners", traffic.partners),
            ("operators", traffic.operators),
        )
        for name, generator in generators:
            streams.append(generator(lane(), estate, lane_rng(seed, name)))
        for label, attack in enumerate(self.attacks):
            context = Context(estate, lane(), lane_rng(seed, f"attack/{label}"), label)
            streams.append(_attack_stream(attack, context))
        return merge_chunks(streams, start, MINUTE)

    def catalog_toml(self) -> str:
        """The service catalog and declared policy, in the format `tokentrail.catalog` reads."""
        spec = self.spec
        lines = [
            f"# Simulated estate: seed {spec.seed}, scale {spec.scale:g},"
            f" {fmt_ts(self.start_ms)} to {fmt_ts(self.end_ms)}.",
            "# Written by `tokentrail simulate`; benign traffic stays within the declared policy.",
            "",
            "[privilege]",
            *(f"{name} = {weight:.1f}" for name, weight in PRIVILEGE),
        ]
        for service in self.estate.services.values():
            lines += [
                "",
                "[[service]]",
                f"name = {_toml_str(service.name)}",
                f"environment = {_toml_str(service.environment)}",
                f"sensitivity = {service.sensitivity}",
                f"scopes = {_toml_list(service.scopes)}",
            ]
        for identity in self.estate.declared_identities():
            lines += [
                "",
                "[[identity]]",
                f"name = {_toml_str(identity.name)}",
                f"kind = {_toml_str(identity.kind)}",
                f"environment = {_toml_str(identity.environment)}",
                f"allowed_targets = {_toml_list(sorted(identity.targets))}",
                f"allowed_scopes = {_toml_list(sorted(identity.scopes))}",
            ]
        return "\n".join(lines) + "\n"


def _attack_stream(attack: Attack, context: Context) -> Iterator[Chunk]:
    # Attacks are small: build the whole scenario on first demand, then release it at once.
    attack.inject(context)
    yield context.lane.release()


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _toml_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"
