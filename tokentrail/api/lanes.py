"""Who gets the CPU first in `serve`: request threads by kind, at their own OS priority.

On a busy 2-core host every runnable thread gets an equal share: the consumer's writer,
DuckDB's workers, the event loop, the request threads. Fifty clients asking for event pages,
rankings and blast radii (20-40 ms of CPU each) then took three of every four shares, and the
consumer stored 3-5k of the 10k events/s produced (bench/api_load.py). What a SOC needs first is
a pipeline that keeps up (alerts on time) and fast point reads (a chain, an alert); whole pages
and rankings can wait. So the heavy reads run at a lower scheduling priority (a higher nice
value) than everything else: the kernel runs them when nothing more urgent is ready.

- The interactive lane (`Lane`): threads of its own, at the process's priority, for chains,
  alerts and key checks.
- The general lane: Starlette's thread pool (AnyIO's worker threads), where FastAPI runs every
  synchronous route; `lower_workers` lowers their priority. AnyIO has no hook where its threads
  start, so they are found by name, once a second, from the event loop (a new thread runs its
  first second at the process's priority).

Linux sets a nice value per thread. Elsewhere `setpriority` would renice the whole process, so
priorities are left alone there. A process cannot raise a priority again without privileges, so
a thread's priority is set once and lanes never share threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# How AnyIO names its worker threads (anyio._backends._asyncio.WorkerThread).
_ANYIO_WORKER: Final = "AnyIO worker thread"


def lower_priority(native_id: int, nice: int) -> bool:
    """Set a thread's nice value to at least `nice` (Linux); False if not done."""
    if sys.platform != "linux":
        return False
    try:
        if os.getpriority(os.PRIO_PROCESS, native_id) < nice:
            os.setpriority(os.PRIO_PROCESS, native_id, nice)
    except OSError as exc:  # the thread ended, or a sandbox refuses: it runs unprioritised
        log.debug("thread %d priority unchanged: %s", native_id, exc)
        return False
    return True


async def lower_workers(nice: int, *, every_s: float = 1.0) -> None:
    """Keep every AnyIO worker thread `nice` steps below the calling (event loop) thread, as
    they start (runs until cancelled). A target, not a step: two apps in one process (tests)
    do not lower a thread twice."""
    if nice <= 0 or sys.platform != "linux":
        return
    target = min(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + nice, 19)
    while True:
        for thread in threading.enumerate():
            if thread.name == _ANYIO_WORKER and thread.native_id is not None:
                lower_priority(thread.native_id, target)
        await asyncio.sleep(every_s)


class Lane:
    """`threads` threads of its own, for one kind of request.

    >>> lane = Lane("doc", threads=1)
    >>> asyncio.run(lane.run(lambda: 6 * 7))
    42
    >>> lane.close()
    """

    def __init__(self, name: str, *, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"tt-{name}")

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` on one of the lane's threads, once one is free (first asked, first run)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def close(self) -> None:
        """Stop the threads once the reads running on them end."""
        self._pool.shutdown(wait=False)
