"""Simulated machine-identity traffic with attacks whose ground truth is known.

The estate (`estate.py`) declares services, identities and their policy; benign generators
(`traffic.py`) and attack scenarios (`attacks.py`) write into lanes that `world.py` merges in
event-time order; `output.py` writes the files or produces to Kafka.

Example::

    from tokentrail.simulate import World, WorldSpec, write_world
    summary = write_world(World(WorldSpec(days=3, scale=1, seed=7)), Path("sim"))
"""

from tokentrail.simulate.attacks import FAMILIES, Attack
from tokentrail.simulate.core import SimulationError
from tokentrail.simulate.output import Summary, stream_kafka, write_world
from tokentrail.simulate.world import AttackPlan, World, WorldSpec, parse_attacks

__all__ = [
    "FAMILIES",
    "Attack",
    "AttackPlan",
    "SimulationError",
    "Summary",
    "World",
    "WorldSpec",
    "parse_attacks",
    "stream_kafka",
    "write_world",
]
