"""Live drift in the server: the core counts bins per request, Python turns a sliding window of them into PSI.

The native core accumulates, with relaxed atomics, per-feature bin counts (edges from the champion's
drift_reference) and score bin counts of the champion's answers (`ServingCore.drift_counts()`, cumulative).
`DriftWindow` keeps the last K snapshots of those cumulative counts: the window's counts are the newest minus
the oldest, so the PSI covers about `window_seconds` of traffic. `DriftMonitor` sets the edges whenever the
champion changes and publishes every `publish_seconds`; `DriftCollector` exports ml_feature_drift{feature_name}
and ml_prediction_drift (PSI: below 0.1 fine, 0.1-0.25 watch, 0.25 or more act), and ml_drift_window_rows.
No PSI is published while the window holds fewer than `min_rows` rows (too noisy to mean anything).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ml_pipeline.errors import PipelineError
from ml_pipeline.model_registry import ModelRegistry
from ml_pipeline.monitoring.drift import DriftReference, psi

if TYPE_CHECKING:
    from ml_pipeline.native.serving_core import ServingCore, _DriftCounts

log = logging.getLogger(__name__)

MIN_ROWS = 200


@dataclass(frozen=True)
class DriftSnapshot:
    """Cumulative counts read from the core: `generation` changes whenever the edges are replaced."""

    generation: int
    rows: int
    features: np.ndarray  # (features, bins) int64
    score: np.ndarray  # (bins,) int64; only the champion's answers

    @classmethod
    def from_core(cls, counts: _DriftCounts) -> DriftSnapshot:
        """From `ServingCore.drift_counts()`."""
        return cls(
            int(counts["generation"]),
            int(counts["rows"]),
            np.asarray(counts["features"], dtype=np.int64),
            np.asarray(counts["score"], dtype=np.int64),
        )


@dataclass
class DriftValues:
    """What is published: PSI per feature, PSI of the scores, and the rows in the window."""

    features: dict[str, float] = field(default_factory=dict)
    score: float = math.nan
    rows: int = 0


class DriftWindow:
    """The last `size` + 1 snapshots of one generation; PSI of (newest - oldest) against the reference."""

    def __init__(self, reference: DriftReference, feature_names: list[str], size: int, min_rows: int = MIN_ROWS):
        self.reference = reference
        self.feature_names = feature_names
        self.min_rows = min_rows
        self._snapshots: deque[DriftSnapshot] = deque(maxlen=size + 1)

    def add(self, snapshot: DriftSnapshot) -> None:
        """Append a snapshot; the first of a generation (new edges) restarts the window from zero counts."""
        if not self._snapshots or self._snapshots[-1].generation != snapshot.generation:
            self._snapshots.clear()
            zeros = DriftSnapshot(
                snapshot.generation, 0, np.zeros_like(snapshot.features), np.zeros_like(snapshot.score)
            )
            self._snapshots.append(zeros)
        self._snapshots.append(snapshot)

    def values(self) -> DriftValues:
        """PSI over the window (no PSI while it holds fewer than min_rows rows)."""
        if not self._snapshots:
            return DriftValues()
        newest, oldest = self._snapshots[-1], self._snapshots[0]
        features, score = newest.features - oldest.features, newest.score - oldest.score
        rows = newest.rows - oldest.rows
        if rows < self.min_rows:
            return DriftValues(rows=rows)
        values = DriftValues(rows=rows)
        for i, name in enumerate(self.feature_names):
            ref = self.reference.features[name]
            values.features[name] = psi(ref.proportions, features[i, : len(ref.proportions)])
        if score.sum() >= self.min_rows:
            values.score = psi(self.reference.score.proportions, score[: len(self.reference.score.proportions)])
        return values


class DriftMonitor:
    """Keeps the core's drift edges equal to the champion's reference and publishes the window's PSI."""

    def __init__(
        self,
        core: ServingCore,
        registry: ModelRegistry,
        champion_id: Callable[[], str | None],
        publish_seconds: float = 30.0,
        window_seconds: float = 3600.0,
        min_rows: int = MIN_ROWS,
    ) -> None:
        self.core = core
        self.registry = registry
        self.champion_id = champion_id
        self.publish_seconds = publish_seconds
        self.window_size = max(1, math.ceil(window_seconds / publish_seconds))
        self.min_rows = min_rows
        self.model_id: str | None = None
        self.values = DriftValues()
        self._window: DriftWindow | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-monitor", daemon=True)

    def start(self) -> DriftMonitor:
        """Start the background thread (edges follow the champion within a second; PSI every publish_seconds)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def sync_reference(self) -> None:
        """Set the core's edges from the current champion's drift_reference (once per champion)."""
        model_id = self.champion_id()
        if model_id == self.model_id:
            return
        self.model_id = model_id
        self._window = None
        self.values = DriftValues()
        reference, order = self._reference(model_id) if model_id is not None else (None, [])
        if reference is None:
            self.core.set_drift(None, None)
            return
        names = [n for n in order if n in reference.features]
        self.core.set_drift([reference.features[n].edges for n in names], reference.score.edges)
        self._window = DriftWindow(reference, names, self.window_size, self.min_rows)
        log.info("drift: tracking %d features of %s", len(names), model_id)

    def _reference(self, model_id: str) -> tuple[DriftReference | None, list[str]]:
        try:
            meta = self.registry.get_model(model_id)
            if meta.drift_reference:
                reference = DriftReference.from_dict(meta.drift_reference)
                return reference, meta.features or list(reference.features)
        except (PipelineError, OSError, ValueError, KeyError) as exc:
            log.error("drift: cannot read the reference of %s: %s", model_id, exc)
            return None, []
        log.warning("drift: champion %s has no drift reference; ml_feature_drift is not published", model_id)
        return None, []

    def publish(self) -> DriftValues:
        """Read the core's counts into the window and recompute the published values."""
        counts = self.core.drift_counts()
        if self._window is not None and counts is not None:
            self._window.add(DriftSnapshot.from_core(counts))
            self.values = self._window.values()
        return self.values

    def _run(self) -> None:
        elapsed = self.publish_seconds
        step = min(1.0, self.publish_seconds)
        while not self._stop.is_set():
            try:
                self.sync_reference()
                if elapsed >= self.publish_seconds:
                    self.publish()
                    elapsed = 0.0
            except (PipelineError, OSError, ValueError) as exc:
                log.error("drift: %s", exc)
            self._stop.wait(step)
            elapsed += step


class DriftCollector(Collector):
    """ml_feature_drift{feature_name}, ml_prediction_drift and ml_drift_window_rows from a DriftMonitor."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        """The last published values (a series appears once its window has enough rows)."""
        values = self.monitor.values
        features = GaugeMetricFamily(
            "ml_feature_drift",
            "PSI of each feature over the drift window vs the champion's training data (0.1 watch, 0.25 act)",
            labels=["feature_name"],
        )
        for name, value in values.features.items():
            features.add_metric([name], value)
        yield features
        prediction = GaugeMetricFamily(
            "ml_prediction_drift", "PSI of the champion's scores over the drift window vs its test split"
        )
        if not math.isnan(values.score):
            prediction.add_metric([], values.score)
        yield prediction
        yield GaugeMetricFamily("ml_drift_window_rows", "Requests in the current drift window", value=values.rows)
