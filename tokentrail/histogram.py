"""A latency histogram in Prometheus' shape (cumulative buckets, sum, count), thread-safe.

>>> h = Histogram(bounds=(0.1, 1.0))
>>> h.observe(0.05); h.observe(0.5)
>>> h.lines("batch_seconds", "Batch write time.")[2:]
['batch_seconds_bucket{le="0.1"} 1', 'batch_seconds_bucket{le="1"} 2', \
'batch_seconds_bucket{le="+Inf"} 2', 'batch_seconds_sum 0.550000', 'batch_seconds_count 2']
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from typing import Final

SECONDS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self, bounds: Sequence[float] = SECONDS) -> None:
        self.bounds = tuple(bounds)
        self._lock = threading.Lock()
        self._counts = [0] * len(self.bounds)  # per bucket, not cumulative
        self._sum = 0.0
        self._n = 0

    def observe(self, value: float) -> None:
        with self._lock:
            i = bisect.bisect_left(self.bounds, value)
            if i < len(self.bounds):
                self._counts[i] += 1
            self._sum += value
            self._n += 1

    def lines(self, name: str, help_text: str) -> list[str]:
        """The histogram family in the Prometheus text format."""
        with self._lock:
            counts, total, n = list(self._counts), self._sum, self._n
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip(self.bounds, counts, strict=True):
            running += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out += [f'{name}_bucket{{le="+Inf"}} {n}', f"{name}_sum {total:.6f}", f"{name}_count {n}"]
        return out
