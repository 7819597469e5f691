"""Prometheus text exposition, by hand: a few counters and one latency histogram.

Store counts (events, dead letters, alerts) are read at scrape time; request counts and
latencies are kept in process since start.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Final

BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}"


class Metrics:
    """Request counts by (method, route, status) and a latency histogram by route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def observe(self, *, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            buckets = self._buckets.setdefault(route, [0] * len(BUCKETS))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self._sums[route] += seconds
            self._counts[route] += 1

    def lines(self) -> Iterable[str]:
        with self._lock:
            requests = dict(self._requests)
            buckets = {r: list(b) for r, b in self._buckets.items()}
            sums, counts = dict(self._sums), dict(self._counts)
        yield "# HELP tokentrail_api_requests_total API requests by method, route and status."
        yield "# TYPE tokentrail_api_requests_total counter"
        for (method, route, status), n in sorted(requests.items()):
            labels = _labels({"method": method, "route": route, "status": str(status)})
            yield f"tokentrail_api_requests_total{labels} {n}"
        yield "# HELP tokentrail_api_request_duration_seconds API request latency by route."
        yield "# TYPE tokentrail_api_request_duration_seconds histogram"
        name = "tokentrail_api_request_duration_seconds"
        for route in sorted(buckets):
            for bound, n in zip(BUCKETS, buckets[route], strict=True):
                yield f"{name}_bucket{_labels({'route': route, 'le': f'{bound:g}'})} {n}"
            yield f"{name}_bucket{_labels({'route': route, 'le': '+Inf'})} {counts[route]}"
            yield f"{name}_sum{_labels({'route': route})} {sums[route]:.6f}"
            yield f"{name}_count{_labels({'route': route})} {counts[route]}"


def gauge(name: str, help_text: str, values: dict[tuple[tuple[str, str], ...], float]) -> list[str]:
    """One gauge family; `values` maps label pairs to the value."""
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for pairs, value in sorted(values.items()):
        out.append(f"{name}{_labels(dict(pairs)) if pairs else ''} {value:g}")
    return out
