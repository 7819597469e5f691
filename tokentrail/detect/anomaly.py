"""Anomaly: an IsolationForest over per-identity hour windows, trained on the store's own history.

Each closed hour of event time, every identity active in it gets a feature row (calls, distinct
targets, targets new to it, their share, denials, sources, bytes, hour of day, the most
sensitive target). The model for a day is trained on the days before it (deterministic: fixed
seed, the same rows whatever the batching), and an hour fires only when it is more isolated than
every training hour *and* reached something new or was denied: an anomaly with nothing to show
an analyst is noise. The features furthest from their training median explain the score.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Final

import duckdb
import numpy as np

from tokentrail.catalog import Catalog
from tokentrail.detect.model import (
    US_PER_DAY,
    US_PER_HOUR,
    Call,
    Detector,
    Example,
    Finding,
    Severity,
    short,
)
from tokentrail.store import alerts as sql

# A trained model: the forest, the lowest training score, per-feature median and spread.
_Model = tuple[Any, float, "np.ndarray[Any, Any]", "np.ndarray[Any, Any]"]

FEATURES: Final = (
    "log_calls",
    "targets",
    "new_targets",
    "new_target_ratio",
    "denied",
    "sources",
    "log_bytes",
    "hour_sin",
    "hour_cos",
    "sensitive",
)


def features(row: sql.HourRow) -> list[float]:
    hour = (row.hour_us // US_PER_HOUR) % 24
    return [
        math.log1p(row.calls),
        float(row.targets),
        float(row.new_targets),
        row.new_targets / max(row.targets, 1),
        float(row.denied),
        float(row.sources),
        float(row.log_bytes),
        math.sin(2 * math.pi * hour / 24),
        math.cos(2 * math.pi * hour / 24),
        float(row.sensitive),
    ]


class Anomaly(Detector):
    id = "anomaly"
    title = "Anomalous hour of an identity"
    severity: ClassVar[Severity] = "low"
    mitre = ("T1078.004",)
    owasp_nhi = ("NHI5",)
    runbook = (
        "Read the features that drove the score against the identity's usual hours; confirm"
        " with its owner before acting. A signal, not a verdict."
    )
    # Days of history a model learns from, and the least it needs before it may fire.
    history_days = 7.0
    min_history_hours = 20.0
    trees = 100
    seed = 7
    examples: ClassVar[
        tuple[Example, ...]
    ] = ()  # works on hour windows: tests/detect/test_anomaly.py

    def __init__(self, **tuning: Any) -> None:
        super().__init__(**tuning)
        self._models: dict[int, _Model | None] = {}
        # Feature rows of the hours [start, end) already computed, by hour.
        self._span: tuple[int, int] = (0, 0)
        self._hours: dict[int, list[sql.HourRow]] = {}

    def _features(
        self, conn: duckdb.DuckDBPyConnection, lo: int, hi: int, sensitivity: float
    ) -> list[sql.HourRow]:
        """Feature rows of the closed hours [lo, hi), each hour computed once per process."""
        start, end = self._span
        if start < end and start <= lo and hi <= end:
            return [r for h in range(lo, hi, US_PER_HOUR) for r in self._hours.get(h, [])]
        rows = sql.hour_features(conn, lo_us=lo, hi_us=hi, default_sensitivity=sensitivity)
        if start < end and (hi < start or lo > end):
            self._hours.clear()
            start = end = 0
        for row in rows:
            if not start <= row.hour_us < end:
                self._hours.setdefault(row.hour_us, []).append(row)
        start, end = (lo, hi) if start == end else (min(start, lo), max(end, hi))
        # Keep what the next model needs: its history and the day being scored.
        keep = end - int((self.history_days + 1) * US_PER_DAY)
        if start < keep:
            for hour in [h for h in self._hours if h < keep]:
                del self._hours[hour]
            start = (keep // US_PER_HOUR) * US_PER_HOUR
        self._span = (start, end)
        return rows

    def detect(self, calls: Sequence[Call]) -> Iterator[Finding]:
        return iter(())

    def score_hours(
        self, conn: duckdb.DuckDBPyConnection, catalog: Catalog, lo_us: int, hi_us: int
    ) -> Iterator[Finding]:
        """Findings for the hours that closed between the progress marks `lo` and `hi`."""
        first = (lo_us // US_PER_HOUR) * US_PER_HOUR
        end = (hi_us // US_PER_HOUR) * US_PER_HOUR
        if end <= first:
            return
        sensitivity = float(catalog.score.default_sensitivity)
        rows = self._features(conn, first, end, sensitivity)
        by_day: dict[int, list[sql.HourRow]] = {}
        for row in rows:
            by_day.setdefault((row.hour_us // US_PER_DAY) * US_PER_DAY, []).append(row)
        for day, hours in sorted(by_day.items()):
            model = self._model(conn, day, sensitivity)
            if model is None:
                continue
            forest, floor, median, spread = model
            candidates = [r for r in hours if r.new_targets > 0 or r.denied > 0]
            if not candidates:
                continue
            matrix = np.array([features(r) for r in candidates])
            scores = forest.score_samples(matrix)
            for row, x, value in zip(candidates, matrix, scores, strict=True):
                if value >= floor:
                    continue
                z = np.abs(x - median) / spread
                drivers = sorted(zip(FEATURES, z, x, strict=True), key=lambda t: -t[1])[:3]
                yield Finding(
                    detector=self.id,
                    key=row.identity,
                    severity=self.severity,
                    score=round(float(-value), 3),
                    title=f"Unusual hour for {short(row.identity)}: "
                    + ", ".join(f"{name} {val:.3g}" for name, _, val in drivers),
                    ts_us=row.hour_us,
                    last_us=row.hour_us + US_PER_HOUR - 1,
                    event_ids=tuple(
                        sql.hour_event_ids(
                            conn, identity=row.identity, hour_us=row.hour_us, limit=20
                        )
                    ),
                    token_id=row.token_id,
                    identity=row.identity,
                    evidence={
                        "hour_us": row.hour_us,
                        "anomaly_score": round(float(-value), 4),
                        "threshold": round(float(-floor), 4),
                        "drivers": [
                            {
                                "feature": name,
                                "value": round(float(val), 3),
                                "deviation": round(float(dev), 2),
                            }
                            for name, dev, val in drivers
                        ],
                        "baseline": f"isolation forest on this store's hours before {day}",
                    },
                )

    def _model(
        self, conn: duckdb.DuckDBPyConnection, day: int, sensitivity: float
    ) -> _Model | None:
        if day in self._models:
            return self._models[day]
        lo = day - int(self.history_days * US_PER_DAY)
        history = self._features(conn, lo, day, sensitivity)
        model: _Model | None = None
        span = {r.hour_us for r in history}
        if len(span) >= self.min_history_hours:
            # Imported only once there is a model to train: scikit-learn costs ~80 MB of RSS
            # (~950 modules), which an ingest with less history than that never needs.
            from sklearn.ensemble import IsolationForest  # type: ignore[import-untyped]

            matrix = np.array([features(r) for r in history])
            forest = IsolationForest(n_estimators=self.trees, random_state=self.seed)
            forest.fit(matrix)
            floor = float(forest.score_samples(matrix).min())
            median = np.median(matrix, axis=0)
            q75, q25 = np.percentile(matrix, [75, 25], axis=0)
            spread = np.maximum(q75 - q25, 1e-3)
            model = (forest, floor, median, spread)
        self._models[day] = model
        return model
