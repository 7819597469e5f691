"""Request lanes: heavy reads run at a lower OS priority than the rest of serve, so that with
the CPU short the consumer and the interactive reads run first (tokentrail.api.lanes)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest
from anyio import to_thread

from tokentrail.api.lanes import Lane, lower_priority, lower_workers

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
    # At least: an app left running by another test lowers every AnyIO worker of the process.
    assert general >= min(loop_thread + 5, 19)
    assert interactive == loop_thread


@linux
def test_a_thread_is_lowered_to_a_target_not_by_a_step_each_time() -> None:
    # A plain thread: no app's lowering task looks at it (they look for AnyIO's workers).
    release, seen = threading.Event(), []
    thread = threading.Thread(target=lambda: (release.wait(5), seen.append(nice())))
    thread.start()
    assert thread.native_id is not None
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    target = min(base + 3, 19)
    assert lower_priority(thread.native_id, target)
    assert lower_priority(thread.native_id, target)  # twice: still the target
    assert lower_priority(thread.native_id, base)  # never raised again (needs privileges)
    release.set()
    thread.join()
    assert seen == [target]


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
