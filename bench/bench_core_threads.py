"""The serving core scales with threads: vg_core_handle from 2 pthreads gives at least 1.7x the calls of one.

No lock is taken on the request path (readers join a per-thread shard of the current epoch; counters are per
thread shard), so two threads on the machine's two cores share no cache line per request. A small C driver
(bench/core_threads.c, linked to libvoxguard) serves a compiled 100-tree model and counts answered Predict
calls over a fixed time with 1 and 2 threads, in alternating rounds; the ratio of the best rates is the budget.

A round counts only when the machine lent the driver as many cores as it ran threads (process CPU time at least
95 % of threads x wall time): on a shared 2-core machine another process may hold one core for a while, and a
2-thread round that ran on one core measures that process, not the serving core. A lock or a shared cache line
still fails the budget: threads that spin show in the rate, threads that sleep leave their rounds uncounted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from timing import turns

import ml_pipeline.native
from ml_pipeline.compiler import compile_model
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

TWO_THREAD_SPEEDUP = 1.7
SECONDS = 1.0
ROUNDS = 8  # each thread count runs once a round, first in half of them
LENT = 0.95  # a round counts when the process ran at least this share of threads x wall seconds
ROOT = Path(__file__).resolve().parents[1]
NATIVE_DIR = Path(ml_pipeline.native.__file__).parent


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(driver binary, compiled model, request file)."""
    folder = tmp_path_factory.mktemp("core_threads")
    binary = folder / "core_threads"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'native' / 'include'}",
         str(ROOT / "bench" / "core_threads.c"), "-o", str(binary), f"-L{NATIVE_DIR}", "-lvoxguard",
         f"-Wl,-rpath,{NATIVE_DIR}", "-lpthread"],
        check=True,
    )  # fmt: skip
    frame = generate_alerts(5_000, seed=7)
    X = frame[FEATURE_NAMES].to_numpy(dtype=np.float32)
    params = {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "nthread": 2, "seed": 1}
    booster = xgb.train(params, xgb.DMatrix(X, label=frame[LABEL], feature_names=FEATURE_NAMES), 100)
    booster.save_model(folder / "model.json")
    result = compile_model(folder / "model.json", folder / "compiled", "bench-threads", profile_guided=False)
    request = folder / "request.bin"
    request.write_bytes(pb.PredictionRequest(features=X[0].tolist(), request_id="call-1").SerializeToString())
    return binary, result.path, request


@dataclass(frozen=True)
class Round:
    """One run of the driver: answered calls, the wall-clock seconds they took and the process's CPU seconds."""

    threads: int
    calls: int
    wall_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        """Answered calls per second."""
        return self.calls / self.wall_s

    @property
    def lent(self) -> bool:
        """Whether the machine lent the driver a core for each of its threads during the round."""
        return self.cpu_s >= LENT * self.threads * self.wall_s


def _run(driver: tuple[Path, Path, Path], threads: int) -> Round:
    binary, library, request = driver
    out = subprocess.run(
        [str(binary), str(library), str(request), str(threads), str(SECONDS)],
        check=True,
        capture_output=True,
        text=True,
    )
    calls, wall, cpu = out.stdout.split()
    return Round(threads, int(calls), float(wall), float(cpu))


def test_two_threads_scale(driver: tuple[Path, Path, Path], bench_report: Callable[[str, str], None]) -> None:
    rounds: dict[int, list[Round]] = {1: [], 2: []}
    for round_index in range(ROUNDS):
        for threads in turns((1, 2), round_index):
            rounds[threads].append(_run(driver, threads))
    section = "serving core threads (vg_core_handle, no transport)"
    best: dict[int, float] = {}
    for threads, runs in rounds.items():
        counted = [r for r in runs if r.lent]
        cores = ", ".join(f"{r.cpu_s / r.wall_s:.2f}" for r in runs)
        bench_report(
            section, f"{threads} thread(s): cores lent per round {cores}; {len(counted)} of {len(runs)} counted"
        )
        assert counted, f"no round of {threads} thread(s) was lent {threads} core(s) (CPU/wall per round: {cores})"
        best[threads] = max(r.rate for r in counted)
    ratio = best[2] / best[1]
    bench_report(section, f"1 thread: {best[1]:,.0f} calls/s; 2 threads: {best[2]:,.0f} calls/s (best counted rounds)")
    bench_report(section, f"2 threads / 1 thread: {ratio:.2f} (budget >= {TWO_THREAD_SPEEDUP})")
    assert ratio >= TWO_THREAD_SPEEDUP, f"2 threads gave {ratio:.2f}x the calls of one (budget {TWO_THREAD_SPEEDUP}x)"
