"""Drift measures: the training-time reference (quantile bins) and PSI, KS and Wasserstein against live data.

Binning, the same in Python and in the native core: a feature has up to MAX_EDGES ascending inner edges
(float32 quantiles of the training split, duplicates removed); a value x falls in bin
`searchsorted(edges, x, side="right")` (the number of edges <= x), so k edges give k + 1 value bins, and one
more, the last, counts missing values (NaN). Proportions are stored per bin in that order.

PSI (population stability index) = sum over bins of (live - ref) * ln(live / ref), both proportions floored at
PSI_EPSILON so an empty bin gives a large but finite term instead of infinity. How to read it (the usual
credit-scoring rule of thumb, also used by the alerts): below 0.1 no meaningful shift; 0.1 to 0.25 WATCH (a
moderate shift, look at the histograms); 0.25 or more ACT (the population changed: investigate, retrain).
KS (Kolmogorov-Smirnov statistic, 0..1) and the Wasserstein distance (in the feature's own unit) come from
scipy.stats and compare raw samples (the registry's test sample against the live rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

N_BINS = 10
MAX_EDGES = 15  # the native core pads to 16 slots with +Inf (four branch-free search steps)
PSI_EPSILON = 1e-4
PSI_WATCH = 0.1
PSI_ACT = 0.25
REFERENCE_VERSION = 1


def quantile_edges(values: np.ndarray, n_bins: int = N_BINS) -> list[float]:
    """Inner edges of `n_bins` equal-frequency bins of the finite values (float32, ascending, no duplicates)."""
    if not 1 <= n_bins <= MAX_EDGES + 1:
        raise ValueError(f"n_bins must be in [1, {MAX_EDGES + 1}], got {n_bins}")
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0 or n_bins == 1:
        return []
    quantiles = np.quantile(finite, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    edges = np.unique(quantiles.astype(np.float32))
    # An edge equal to the minimum would leave the first bin empty by construction.
    edges = edges[edges > np.float32(finite.min())]
    return [float(e) for e in edges]


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts per bin (len(edges) + 1 value bins, then the missing bin), binning as the native core does."""
    x = np.asarray(values, dtype=np.float32)
    missing = np.isnan(x)
    index = np.searchsorted(np.asarray(edges, dtype=np.float32), x[~missing], side="right")
    counts = np.bincount(index, minlength=len(edges) + 1).astype(np.int64)
    return np.append(counts, np.int64(missing.sum()))


def proportions(counts: np.ndarray) -> np.ndarray:
    """Counts as proportions (all zero when there are no counts)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def psi(
    reference: Sequence[float] | np.ndarray, live_counts: Sequence[float] | np.ndarray, epsilon: float = PSI_EPSILON
) -> float:
    """Population stability index of live counts against reference proportions (NaN without live data)."""
    ref = np.asarray(reference, dtype=np.float64)
    live = np.asarray(live_counts, dtype=np.float64)
    if ref.shape != live.shape:
        raise ValueError(f"reference has {ref.size} bins, live data {live.size}")
    if live.sum() <= 0:
        return float("nan")
    expected = np.maximum(proportions(ref), epsilon)
    actual = np.maximum(proportions(live), epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_level(value: float) -> str:
    """ "ok" below PSI_WATCH, "watch" below PSI_ACT, else "act" ("n/a" for NaN)."""
    if not np.isfinite(value):
        return "n/a"
    return "ok" if value < PSI_WATCH else "watch" if value < PSI_ACT else "act"


def ks_statistic(reference: np.ndarray, live: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of the non-missing values (NaN if either side is empty)."""
    a, b = _finite(reference), _finite(live)
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(stats.ks_2samp(a, b).statistic)


def wasserstein(reference: np.ndarray, live: np.ndarray) -> float:
    """Earth mover's distance between the non-missing values, in the values' unit (NaN if a side is empty)."""
    a, b = _finite(reference), _finite(live)
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(stats.wasserstein_distance(a, b))


def _finite(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


@dataclass(frozen=True)
class BinnedReference:
    """Edges and reference proportions of one distribution (a feature or the score)."""

    edges: list[float]
    proportions: list[float]
    count: int

    @classmethod
    def fit(cls, values: np.ndarray, n_bins: int = N_BINS) -> BinnedReference:
        """Quantile edges and proportions of `values`."""
        edges = quantile_edges(values, n_bins)
        counts = bin_counts(values, edges)
        return cls(edges, [float(p) for p in proportions(counts)], int(np.asarray(values).size))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BinnedReference:
        """Inverse of `to_dict()`; ValueError when the proportions do not fit the edges."""
        edges = [float(e) for e in data["edges"]]
        props = [float(p) for p in data["proportions"]]
        if len(props) != len(edges) + 2 or len(edges) > MAX_EDGES or sorted(edges) != edges:
            raise ValueError(f"{len(edges)} edges need {len(edges) + 2} proportions, got {len(props)}")
        return cls(edges, props, int(data.get("count", 0)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in training.json and the registry."""
        return {"edges": self.edges, "proportions": self.proportions, "count": self.count}

    def psi(self, live_values: np.ndarray) -> float:
        """PSI of live values against this reference."""
        return psi(self.proportions, bin_counts(live_values, self.edges))


@dataclass(frozen=True)
class DriftReference:
    """Per-feature references (from the training split) and the score reference (from the test split)."""

    features: dict[str, BinnedReference]
    score: BinnedReference
    n_bins: int = N_BINS

    @classmethod
    def fit(
        cls, X_train: np.ndarray, feature_names: Sequence[str], test_scores: np.ndarray, n_bins: int = N_BINS
    ) -> DriftReference:
        """Reference of each column of X_train and of the model's scores on the test split."""
        X = np.asarray(X_train, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(feature_names):
            raise ValueError(f"X_train must have {len(feature_names)} columns")
        features = {name: BinnedReference.fit(X[:, i], n_bins) for i, name in enumerate(feature_names)}
        return cls(features, BinnedReference.fit(np.asarray(test_scores, dtype=np.float32), n_bins), n_bins)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReference:
        """Inverse of `to_dict()` (the `drift_reference` of training.json / ModelMetadata)."""
        return cls(
            {name: BinnedReference.from_dict(ref) for name, ref in data["features"].items()},
            BinnedReference.from_dict(data["score"]),
            int(data.get("bins", N_BINS)),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: version, bins, epsilon, binning rule, per-feature and score references."""
        return {
            "version": REFERENCE_VERSION,
            "bins": self.n_bins,
            "epsilon": PSI_EPSILON,
            "binning": "bin = number of edges <= x; last bin = missing (NaN)",
            "features": {name: ref.to_dict() for name, ref in self.features.items()},
            "score": self.score.to_dict(),
        }
