"""One simulated world for the whole session: three days with every attack, small scale."""

from __future__ import annotations

import pytest
from simulated import Sim, build


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Sim:
    return build(tmp_path_factory.mktemp("sim"), seed=7, days=3, scale=0.2)
