"""Small XGBoost models trained on synthetic rows, compiled once per test run (gcc costs seconds) and shared."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb

from ml_pipeline.compiler import CompileResult, compile_model

_ROOT = Path(tempfile.mkdtemp(prefix="vg-test-compiled-"))
atexit.register(shutil.rmtree, _ROOT, True)


@dataclass(frozen=True)
class ModelSpec:
    """How to train one test model."""

    name: str
    trees: int
    depth: int
    features: int = 8
    base_score: float | None = None
    scale_pos_weight: float | None = None
    early_stopping: bool = False


@dataclass(frozen=True)
class BuiltModel:
    """A trained booster, its JSON file and its verified compiled library."""

    spec: ModelSpec
    booster: xgb.Booster
    model_json: Path
    result: CompileResult

    @property
    def library(self) -> Path:
        """Path of the compiled .so."""
        return self.result.path


def synthetic_rows(n: int, features: int = 8, seed: int = 0, nan_share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Float32 rows with NaNs and labels that depend non-linearly on a few features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    signal = x[:, 0] + x[:, 1 % features] * x[:, 2 % features] - 0.5 * np.abs(x[:, 3 % features])
    y = (signal + rng.normal(scale=0.7, size=n) > 0.4).astype(np.int8)
    x[rng.random(x.shape) < nan_share] = np.nan
    return np.ascontiguousarray(x), y


def train(spec: ModelSpec, seed: int = 0) -> xgb.Booster:
    """Train the booster `spec` describes (early-stopped models are trimmed to their best iteration)."""
    x, y = synthetic_rows(3000, spec.features, seed)
    params: dict[str, float | int | str] = {"objective": "binary:logistic", "max_depth": spec.depth, "nthread": 1}
    if spec.base_score is not None:
        params["base_score"] = spec.base_score
    if spec.scale_pos_weight is not None:
        params["scale_pos_weight"] = spec.scale_pos_weight
    if not spec.early_stopping:
        return xgb.train(params, xgb.DMatrix(x, y), spec.trees)
    train_set, valid_set = xgb.DMatrix(x[:2000], y[:2000]), xgb.DMatrix(x[2000:], y[2000:])
    params["eta"] = 0.5
    booster = xgb.train(
        params, train_set, spec.trees, evals=[(valid_set, "valid")], early_stopping_rounds=3, verbose_eval=False
    )
    return booster[: booster.best_iteration + 1]


@functools.cache
def built(spec: ModelSpec) -> BuiltModel:
    """Train, save and compile (verified) the model `spec` describes; cached for the whole test run."""
    folder = _ROOT / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    booster = train(spec)
    model_json = folder / "model.json"
    booster.save_model(model_json)
    result = compile_model(model_json, folder, spec.name, expected_features=spec.features)
    return BuiltModel(spec, booster, model_json, result)


SMALL = ModelSpec("small", trees=20, depth=4)
