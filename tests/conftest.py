"""Fixtures shared by every test package."""

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from tokentrail.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded Kafka-protocol broker for the whole session, stopped at its end."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def topic(broker: EmbeddedBroker, request: pytest.FixtureRequest) -> Callable[..., str]:
    """A factory for fresh topics on the session broker: ``name = topic(partitions=3)``."""
    prefix = re.sub(r"[^A-Za-z0-9._-]", "_", request.node.name)[:60]

    def make(partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        broker.create_topic(name, partitions=partitions)
        return name

    return make
