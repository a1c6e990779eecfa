"""Verify a compiled library against XGBoost itself: the same scores (max |Δ| ≤ 1e-5) on the stored test sample
and on rows generated from the model's own split thresholds, built so that every branch of every tree is taken.

For each tree the generator walks every root-to-leaf path and writes one row satisfying it (values at a
threshold go right, values just below it go left), plus one row per split node that a missing value of its
feature can reach, with that feature missing (the default branch). Per feature it adds rows just below, at
and above each threshold, NaN and float32 extremes. Features a row does not constrain get values drawn from those same
candidates, so other trees are exercised along the way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb

from ml_pipeline.compiler.codegen import XGBoostModel
from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.native.compiled_model import CompiledModel

TOLERANCE = 1e-5
FLOAT32_MAX = float(np.finfo(np.float32).max)
EXTREMES = np.array([-FLOAT32_MAX, -1e30, -1.0, 0.0, 1.0, 1e30, FLOAT32_MAX, np.nan], dtype=np.float32)


class VerificationFailed(JobFailed):
    """The compiled library's scores differ from XGBoost's by more than the tolerance; the artifact is refused."""


@dataclass(frozen=True)
class Verification:
    """Outcome of a successful verification: rows compared (by source) and the largest difference seen."""

    rows: int
    test_rows: int
    threshold_rows: int
    max_abs_diff: float


def feature_candidates(model: XGBoostModel) -> list[np.ndarray]:
    """Per feature: every split threshold, the float32 values just below and above it, NaN and extremes."""
    thresholds: list[list[float]] = [[] for _ in range(model.num_features)]
    for tree in model.trees:
        for node, left in enumerate(tree["left_children"]):
            if left != -1:
                thresholds[tree["split_indices"][node]].append(tree["split_conditions"][node])
    candidates = []
    for values in thresholds:
        at = np.unique(np.asarray(values, dtype=np.float32))
        below = np.nextafter(at, np.float32(-np.inf))
        above = np.nextafter(at, np.float32(np.inf))
        candidates.append(np.concatenate([below, at, above, EXTREMES]))
    return candidates


def _path_constraints(model: XGBoostModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, missing) per generated row: each feature's value in [low, high), or NaN where `missing`.

    One row per root-to-leaf path, and one per split node whose missing (default) branch a NaN can reach: the
    node's feature is NaN and every earlier split on that feature sent missing values the way the path goes.
    """
    lows: list[list[float]] = []
    highs: list[list[float]] = []
    missing_feature: list[int] = []
    n = model.num_features
    for tree in model.trees:
        left, right, default_left = tree["left_children"], tree["right_children"], tree["default_left"]
        feature, condition = tree["split_indices"], tree["split_conditions"]
        stack = [(0, [-np.inf] * n, [np.inf] * n, [True] * n)]
        while stack:
            node, low, high, nan_reaches = stack.pop()
            if left[node] == -1:
                lows.append(low)
                highs.append(high)
                missing_feature.append(-1)
                continue
            f, t = feature[node], np.float32(condition[node])
            if nan_reaches[f]:
                lows.append(low)
                highs.append(high)
                missing_feature.append(f)
            left_high, left_nan = high.copy(), nan_reaches.copy()
            left_high[f] = min(high[f], t)
            left_nan[f] = nan_reaches[f] and bool(default_left[node])
            right_low, right_nan = low.copy(), nan_reaches.copy()
            right_low[f] = max(low[f], t)
            right_nan[f] = nan_reaches[f] and not default_left[node]
            stack.append((left[node], low, left_high, left_nan))
            stack.append((right[node], right_low, high, right_nan))
    missing = np.zeros((len(lows), n), dtype=bool)
    rows_with_nan = np.flatnonzero(np.asarray(missing_feature) >= 0)
    missing[rows_with_nan, np.asarray(missing_feature)[rows_with_nan]] = True
    return (
        np.asarray(lows, dtype=np.float64).reshape(-1, n),
        np.asarray(highs, dtype=np.float64).reshape(-1, n),
        missing,
    )


def _random_rows(candidates: list[np.ndarray], count: int, rng: np.random.Generator) -> np.ndarray:
    return np.column_stack([rng.choice(values, size=count) for values in candidates]).astype(np.float32)


def threshold_rows(model: XGBoostModel, seed: int = 0) -> np.ndarray:
    """Rows (float32, NaN = missing) that take every branch of every tree and every threshold neighbourhood."""
    rng = np.random.default_rng(seed)
    candidates = feature_candidates(model)
    low, high, missing = _path_constraints(model)
    constrained = np.isfinite(low) | np.isfinite(high)
    with np.errstate(invalid="ignore"):
        value = np.where(np.isfinite(low), low, np.nextafter(high.astype(np.float32), np.float32(-np.inf)))
    paths = np.where(constrained, value, _random_rows(candidates, len(low), rng)).astype(np.float32)
    paths[missing] = np.nan
    reachable = np.all(~constrained | (low < high), axis=1)
    sweeps = []
    for f, values in enumerate(candidates):
        rows = _random_rows(candidates, len(values), rng)
        rows[:, f] = values
        sweeps.append(rows)
    all_missing = np.full((1, model.num_features), np.nan, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([paths[reachable], *sweeps, all_missing]))


def load_test_sample(path: Path, num_features: int) -> np.ndarray:
    """The `X` array of a training output's test_sample.npz as float32 C-contiguous; UsageError when it does not fit."""
    try:
        with np.load(path) as sample:
            rows = np.ascontiguousarray(sample["X"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path}: not a readable test sample with an X array ({exc})") from None
    if rows.ndim != 2 or rows.shape[1] != num_features:
        raise UsageError(f"{path}: test sample X has shape {rows.shape}; the model expects {num_features} features")
    return rows


def _describe(row: np.ndarray) -> str:
    return "[" + ", ".join("nan" if np.isnan(v) else f"{v:.9g}" for v in row) + "]"


def verify_library(
    library: Path,
    reference: xgb.Booster,
    generated: np.ndarray,
    test_sample: np.ndarray | None = None,
    tolerance: float = TOLERANCE,
) -> Verification:
    """Score the generated rows and the test sample with the compiled `library` and with XGBoost's `reference`;
    VerificationFailed (worst row shown) when any |Δ| exceeds `tolerance`."""
    threads = os.cpu_count() or 1
    reference.set_param({"nthread": threads})
    empty = np.empty((0, generated.shape[1]), dtype=np.float32)
    rows_by_source = {"test sample": empty if test_sample is None else test_sample, "threshold rows": generated}
    worst = (0.0, "", -1)
    with CompiledModel(library) as compiled:
        if compiled.num_features != reference.num_features():
            raise VerificationFailed(
                f"{library}: {compiled.num_features} features, the XGBoost reference has {reference.num_features()}"
            )
        for source, rows in rows_by_source.items():
            if len(rows) == 0:
                continue
            ours = compiled.score_batch(rows, nthreads=threads)
            theirs = reference.inplace_predict(rows).astype(np.float32)
            diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
            index = int(np.argmax(diff))
            if diff[index] > worst[0] or worst[2] < 0:
                worst = (float(diff[index]), source, index)
                if diff[index] > tolerance:
                    raise VerificationFailed(
                        f"{library.name} disagrees with XGBoost by {diff[index]:.3g} (> {tolerance:g}) on {source} "
                        f"row {index}: compiled {ours[index]:.9g}, XGBoost {theirs[index]:.9g}, "
                        f"features {_describe(rows[index])}; the artifact was refused"
                    )
    return Verification(
        rows=sum(len(r) for r in rows_by_source.values()),
        test_rows=len(rows_by_source["test sample"]),
        threshold_rows=len(generated),
        max_abs_diff=worst[0],
    )
