"""Request lanes: heavy reads run at a lower OS priority than the rest of serve, so that with
the CPU short the consumer and the interactive reads run first (tokentrail.api.lanes)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest
from anyio import to_thread

from tokentrail.api.lanes import Lane, lower_workers

linux = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")


def nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@linux
def test_general_threads_are_lowered_and_the_interactive_lane_is_not() -> None:
    async def observed() -> tuple[int, int, int]:
        lowering = asyncio.create_task(lower_workers(5, every_s=0.01))
        lane = Lane("test", threads=1)
        try:
            await to_thread.run_sync(nice)  # starts a worker thread
            await asyncio.sleep(0.1)  # the lowering finds it
            general = await to_thread.run_sync(nice)
            interactive = await lane.run(nice)
            return nice(), general, interactive
        finally:
            lowering.cancel()
            lane.close()

    loop_thread, general, interactive = asyncio.run(observed())
    assert general == min(loop_thread + 5, 19)
    assert interactive == loop_thread


@linux
def test_no_lowering_leaves_every_thread_alone() -> None:
    async def observed() -> tuple[int, int]:
        await lower_workers(0)  # returns at once: nothing to do
        return nice(), await to_thread.run_sync(nice)

    loop_thread, general = asyncio.run(observed())
    assert general == loop_thread


def test_a_lane_runs_on_threads_of_its_own() -> None:
    async def run() -> list[str]:
        lane = Lane("order", threads=1)
        try:
            names = await asyncio.gather(
                *(lane.run(lambda: threading.current_thread().name) for _ in range(3))
            )
        finally:
            lane.close()
        return list(names)

    assert all(name.startswith("tt-order") for name in asyncio.run(run()))
