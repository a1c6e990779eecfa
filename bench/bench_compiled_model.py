"""Compiled-model budgets, each a ratio of two figures measured in the same run:

- `CompiledModel.score` on one row: at least 50x faster than `Booster.inplace_predict` on one row, and at most
  2x the per-row cost of the pure C loop inside `score_batch` (the Python-call overhead budget);
- `score_batch` on 100,000 rows: per row within 1.2x of the pure C loop; 2 threads at least 1.6x faster than 1.

Reported without a budget, as figures after the tests (bench/reporting.py; not tests, since no number fails
them): compiled batch scoring per row versus XGBoost's single-threaded batch `inplace_predict` (a target, not a
budget) for TL2cgen/gcc variants, and the compile times of the reference model (100 trees, depth 6, 8 features)
and of a 1,000-tree depth-8 model. The budget tests report the one-row and batch timings they compare.
Run with `make bench` (or `.venv/bin/pytest bench/bench_compiled_model.py`).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tl2cgen
import treelite
import xgboost as xgb
from reporting import Report, figures
from timing import interleaved_best, wall

from ml_pipeline.compiler import CompileResult, VerificationFailed, compile_model
from ml_pipeline.compiler.build import DEFAULT_FLAGS
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.native.compiled_model import CompiledModel

VS_XGBOOST_ONE_ROW = 50.0
SCORE_OVER_C_LOOP = 2.0
BATCH_OVER_C_LOOP = 1.2
TWO_THREAD_SPEEDUP = 1.6
BATCH_ROWS = 100_000
SINGLE_ROWS = 10_000


@dataclass(frozen=True)
class Reference:
    """The reference model (100 trees, depth 6, 8 features), compiled, with scoring rows it has not seen."""

    booster: xgb.Booster
    model_json: Path
    test_sample: Path
    compiled: CompiledModel
    result: CompileResult
    compile_seconds: float
    training_rows: np.ndarray
    rows: np.ndarray


def _features(frame) -> np.ndarray:
    return np.ascontiguousarray(frame[FEATURE_NAMES].to_numpy(np.float32))


def _train(rows: int, trees: int, depth: int, seed: int) -> tuple[xgb.Booster, np.ndarray]:
    frame = generate_alerts(rows, seed=seed)
    x = _features(frame)
    params = {"objective": "binary:logistic", "max_depth": depth, "eta": 0.1, "nthread": os.cpu_count() or 1}
    return xgb.train(params, xgb.DMatrix(x, frame[LABEL].to_numpy()), trees), x


def _timed_compile(model_json: Path, out: Path, model_id: str, **options) -> tuple[CompileResult, float]:
    start = time.perf_counter()
    result = compile_model(model_json, out, model_id, expected_features=len(FEATURE_NAMES), **options)
    return result, time.perf_counter() - start


def _write_test_sample(path: Path, booster: xgb.Booster, seed: int) -> Path:
    """A test sample as training writes it: held-out rows of one distribution (they also guide the compiler's PGO)."""
    frame = generate_alerts(5_000, seed=seed)
    x = _features(frame)
    np.savez(path, X=x, y=frame[LABEL].to_numpy(np.int8), proba=booster.inplace_predict(x))
    return path


@functools.cache
def _reference() -> Reference:
    """Train and compile the reference model once per run (with its test sample, as the CLI does); the tests and
    the figures share it, and it stays loaded until the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="vg-bench-reference-"))
    atexit.register(shutil.rmtree, folder, True)
    booster, training_rows = _train(50_000, trees=100, depth=6, seed=1)
    model_json = folder / "model.json"
    booster.save_model(model_json)
    sample = _write_test_sample(folder / "test_sample.npz", booster, seed=11)
    result, seconds = _timed_compile(model_json, folder, "reference", test_sample=sample)
    rows = _features(generate_alerts(BATCH_ROWS, seed=2))
    compiled = CompiledModel(result.path, sha256=result.sha256)
    return Reference(booster, model_json, sample, compiled, result, seconds, training_rows, rows)


@pytest.fixture(scope="module")
def reference() -> Reference:
    """The reference model, compiled and loaded."""
    return _reference()


def _score_each(compiled: CompiledModel, rows: list[np.ndarray]):
    score = compiled.score

    def run() -> None:
        for row in rows:
            score(row)

    return run


def test_one_row_is_50x_faster_than_xgboost(reference: Reference, bench_report) -> None:
    rows = list(reference.rows[:1000])
    one_row = reference.rows[:1]
    best = interleaved_best(
        {
            "score": wall(_score_each(reference.compiled, rows)),
            "inplace_predict": wall(lambda: [reference.booster.inplace_predict(one_row) for _ in range(20)]),
        },
        repeat=5,
    )
    score_us, xgb_us = best["score"] / len(rows) * 1e6, best["inplace_predict"] / 20 * 1e6
    bench_report("compiled model, one row", f"score {score_us:.2f} µs, inplace_predict {xgb_us:.1f} µs")
    assert xgb_us / score_us >= VS_XGBOOST_ONE_ROW, (
        f"score is only {xgb_us / score_us:.1f}x faster than inplace_predict (budget {VS_XGBOOST_ONE_ROW}x)"
    )


def test_one_row_python_overhead_within_2x_of_c_loop(reference: Reference, bench_report) -> None:
    matrix = reference.rows[:SINGLE_ROWS]
    rows = list(matrix)
    best = interleaved_best(
        {
            "score": wall(_score_each(reference.compiled, rows)),
            "c_loop": lambda: reference.compiled.c_loop_seconds(matrix),
        }
    )
    ratio = best["score"] / best["c_loop"]
    per_row = {name: seconds / len(rows) * 1e9 for name, seconds in best.items()}
    bench_report(
        "compiled model, one row",
        f"score {per_row['score']:.0f} ns/row (incl. the Python for loop) vs C loop {per_row['c_loop']:.0f} "
        f"ns/row: {ratio:.2f}x (budget {SCORE_OVER_C_LOOP}x)",
    )
    assert ratio <= SCORE_OVER_C_LOOP, f"score costs {ratio:.2f}x the C loop per row (budget {SCORE_OVER_C_LOOP}x)"


def test_batch_within_1_2x_of_c_loop(reference: Reference, bench_report) -> None:
    best = interleaved_best(
        {
            "score_batch": wall(lambda: reference.compiled.score_batch(reference.rows)),
            "c_loop": lambda: reference.compiled.c_loop_seconds(reference.rows),
        },
        repeat=5,
    )
    ratio = best["score_batch"] / best["c_loop"]
    per_row = {name: seconds / BATCH_ROWS * 1e9 for name, seconds in best.items()}
    bench_report(
        "compiled model, 100,000 rows",
        f"score_batch {per_row['score_batch']:.0f} ns/row, C loop {per_row['c_loop']:.0f} ns/row: "
        f"{ratio:.3f}x (budget {BATCH_OVER_C_LOOP}x)",
    )
    assert ratio <= BATCH_OVER_C_LOOP, f"score_batch costs {ratio:.3f}x the C loop (budget {BATCH_OVER_C_LOOP}x)"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs at least 2 CPUs to measure a 2-thread speed-up")
def test_two_threads_at_least_1_6x_faster(reference: Reference, bench_report) -> None:
    best = interleaved_best(
        {
            "1 thread": wall(lambda: reference.compiled.score_batch(reference.rows, nthreads=1)),
            "2 threads": wall(lambda: reference.compiled.score_batch(reference.rows, nthreads=2)),
        },
        repeat=9,
    )
    speedup = best["1 thread"] / best["2 threads"]
    bench_report(
        "compiled model, 100,000 rows",
        f"1 thread {best['1 thread'] * 1e3:.1f} ms, 2 threads {best['2 threads'] * 1e3:.1f} ms: "
        f"{speedup:.2f}x (budget >= {TWO_THREAD_SPEEDUP}x)",
    )
    assert speedup >= TWO_THREAD_SPEEDUP, f"2 threads are {speedup:.2f}x faster than 1 (budget {TWO_THREAD_SPEEDUP}x)"


def _variants(reference: Reference, folder: Path) -> dict[str, dict]:
    """Compiler options tried against the default (-O3 with PGO from the test sample), each compiled and verified."""
    annotation = folder / "annotation.json"
    tl2cgen.annotate_branch(
        treelite.frontend.load_xgboost_model(reference.model_json), tl2cgen.DMatrix(reference.training_rows), annotation
    )
    portable = ("-fPIC", "-std=c99", "-fno-semantic-interposition")
    plain = {"profile_guided": False}
    return {
        "-O3, no PGO (TL2cgen's usual build)": plain,
        "-O1 + PGO": {"flags": ("-O1", *portable)},
        "-O1, no PGO": {"flags": ("-O1", *portable), **plain},
        "-Os, no PGO": {"flags": ("-Os", *portable), **plain},
        "-O3 -march=native + PGO (not portable)": {"flags": (*DEFAULT_FLAGS, "-march=native")},
        "branch annotation (training data), no PGO": {"codegen_params": {"annotate_in": str(annotation)}, **plain},
        "quantize": {"codegen_params": {"quantize": 1}, **plain},
    }


@figures
def compiled_vs_xgboost_batch(bench_report: Report, tmp_path: Path) -> None:
    """Compiled batch scoring per row vs XGBoost's single-threaded batch, for TL2cgen/gcc variants (no budget)."""
    reference = _reference()
    booster = reference.booster.copy()
    booster.set_param({"nthread": 1})
    section = "vs XGBoost batch: C loop per row / XGBoost 1-thread batch per row (100,000 rows; < 1 means faster)"
    loaded = {"default: -O3 + PGO (test sample)": reference.compiled}
    for index, (name, options) in enumerate(_variants(reference, tmp_path).items()):
        try:
            result, seconds = _timed_compile(
                reference.model_json, tmp_path, f"variant{index}", test_sample=reference.test_sample, **options
            )
        except VerificationFailed as exc:
            bench_report(section, f"{name}: REFUSED by verification ({str(exc)[:90]}...)")
            continue
        loaded[name] = CompiledModel(result.path)
        bench_report("compile time", f"reference, {name}: {seconds:.1f} s")
    candidates = {"xgboost": wall(lambda: booster.inplace_predict(reference.rows))}
    candidates |= {name: (lambda m=model: m.c_loop_seconds(reference.rows)) for name, model in loaded.items()}
    best = interleaved_best(candidates, repeat=7)
    xgb_ns = best.pop("xgboost") / BATCH_ROWS * 1e9
    bench_report(section, f"XGBoost inplace_predict, 1 thread: {xgb_ns:.0f} ns/row")
    for name, seconds in best.items():
        per_row = seconds / BATCH_ROWS * 1e9
        bench_report(section, f"{name}: {per_row:.0f} ns/row, {per_row / xgb_ns:.2f}x XGBoost")
        if loaded[name] is not reference.compiled:
            loaded[name].close()


@figures
def compile_times(bench_report: Report, tmp_path: Path) -> None:
    """Compile time of the reference model and of a 1,000-tree depth-8 model, and how the big one scores."""
    reference = _reference()
    timings = ", ".join(f"{stage} {s:.1f} s" for stage, s in reference.result.timings.items())
    bench_report(
        "compile time",
        f"reference (100 trees, depth 6, 8 features), -O3 + PGO: {reference.compile_seconds:.1f} s ({timings})",
    )
    booster, _ = _train(20_000, trees=1000, depth=8, seed=3)
    model_json = tmp_path / "model.json"
    booster.save_model(model_json)
    sample = _write_test_sample(tmp_path / "test_sample.npz", booster, seed=12)
    result, seconds = _timed_compile(model_json, tmp_path, "thousand", test_sample=sample)
    timings = ", ".join(f"{stage} {s:.1f} s" for stage, s in result.timings.items())
    bench_report(
        "compile time",
        f"1,000 trees, depth 8, -O3 + PGO: {seconds:.1f} s ({timings}; {result.translation_units} translation units, "
        f"{result.path.stat().st_size / 1e6:.1f} MB, {result.verification.rows} verification rows)",
    )
    rows = reference.rows[:10_000]
    booster.set_param({"nthread": 1})
    with CompiledModel(result.path) as compiled:
        best = interleaved_best(
            {"xgboost": wall(lambda: booster.inplace_predict(rows)), "compiled": lambda: compiled.c_loop_seconds(rows)},
            repeat=3,
        )
    per_row = {name: seconds / len(rows) * 1e6 for name, seconds in best.items()}
    bench_report(
        "1,000 trees, depth 8, 1 thread",
        f"compiled C loop {per_row['compiled']:.1f} µs/row, XGBoost batch {per_row['xgboost']:.1f} µs/row",
    )
