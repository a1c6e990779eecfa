"""Timing helpers for the benchmarks: interleaved best-of rounds, so a noisy neighbour slows every candidate
alike and a ratio of two figures measured in the same run stays meaningful."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

Timed = Callable[[], float]
T = TypeVar("T")


def turns(candidates: Iterable[T], round_index: int) -> list[T]:
    """The candidates in the order they take their turn in round `round_index`: reversed every other round, so
    that whatever going first or last is worth on this machine falls to every candidate alike."""
    order = list(candidates)
    return order if round_index % 2 == 0 else order[::-1]


def wall(fn: Callable[[], object]) -> Timed:
    """Wrap a plain callable into one that returns its own wall-clock duration in seconds."""

    def timed() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return timed


def interleaved_best(candidates: dict[str, Timed], repeat: int = 7) -> dict[str, float]:
    """Best (smallest) seconds of each candidate over `repeat` rounds, candidates taking turns (see `turns`)."""
    best = dict.fromkeys(candidates, math.inf)
    for round_index in range(repeat):
        for name in turns(candidates, round_index):
            best[name] = min(best[name], candidates[name]())
    return best


def median_ratio(runs: Sequence[Any], baseline: Sequence[Any], figure: int | str) -> float:
    """The median over the rounds of one figure of `runs` (`run[figure]`, e.g. 1 for a (p50, CPU) tuple or "p50_us"
    for a dict) over the same figure of `baseline` in the same round: a slow round slows both sides alike."""
    return statistics.median(r[figure] / b[figure] for r, b in zip(runs, baseline, strict=True))
