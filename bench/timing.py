"""Timing helpers for the benchmarks: interleaved best-of rounds, so a noisy neighbour slows every candidate
alike and a ratio of two figures measured in the same run stays meaningful."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

Timed = Callable[[], float]


def wall(fn: Callable[[], object]) -> Timed:
    """Wrap a plain callable into one that returns its own wall-clock duration in seconds."""

    def timed() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return timed


def interleaved_best(candidates: dict[str, Timed], repeat: int = 7) -> dict[str, float]:
    """Best (smallest) seconds of each candidate over `repeat` rounds, candidates taking turns within a round."""
    best = dict.fromkeys(candidates, math.inf)
    for _ in range(repeat):
        for name, run in candidates.items():
            best[name] = min(best[name], run())
    return best
