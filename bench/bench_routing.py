"""Routing budget: TrafficSplitter.should_use_model_b(key) may cost at most 1.5× the bare route_hash(key).

Both are measured in the same run on the same 1,000 request ids, so the budget holds on any machine; both
figures are reported after the run. Run with `make bench` (or `.venv/bin/pytest bench/bench_routing.py`).
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from ml_pipeline.ab_testing.traffic_splitter import TrafficSplitter, route_hash

ROUTING_OVER_HASHING_BUDGET = 1.5
KEYS = [f"550e8400-e29b-41d4-a716-{i:012d}" for i in range(1000)]


def _hash_all() -> None:
    for key in KEYS:
        route_hash(key)


def _route_all(splitter: TrafficSplitter) -> None:
    route = splitter.should_use_model_b
    for key in KEYS:
        route(key)


def test_routing_costs_at_most_budget_times_hashing(bench_report: Callable[[str, str], None]) -> None:
    """Best of interleaved repeats of each, so a noisy neighbour slows both alike; fails over budget."""
    splitter = TrafficSplitter(0.9, 0.1)
    hashing, routing = [], []
    for _ in range(7):
        hashing.append(timeit.timeit(_hash_all, number=20))
        routing.append(timeit.timeit(lambda: _route_all(splitter), number=20))
    ratio = min(routing) / min(hashing)
    per_key_ns = [min(t) / (20 * len(KEYS)) * 1e9 for t in (hashing, routing)]
    line = f"route_hash {per_key_ns[0]:.0f} ns/key, should_use_model_b {per_key_ns[1]:.0f} ns/key, ratio {ratio:.2f}"
    print(line)
    bench_report("routing (1,000 keys)", f"{line} (budget <= {ROUTING_OVER_HASHING_BUDGET})")
    assert ratio <= ROUTING_OVER_HASHING_BUDGET, (
        f"routing costs {ratio:.2f}× hashing (budget {ROUTING_OVER_HASHING_BUDGET}×)"
    )
