"""A small simulated world with every attack, shared by the detection tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokentrail.simulate import World, WorldSpec, write_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """events.jsonl, labels.json and catalog.toml of 3 days at scale 0.2 (seed 11)."""
    path = tmp_path_factory.mktemp("detect-sim")
    write_world(World(WorldSpec(seed=11, days=3, scale=0.2)), path)
    return path
