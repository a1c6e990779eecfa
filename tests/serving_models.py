"""Real compiled models and registries for the serving tests: tiny XGBoost models built by gcc via TL2cgen.

Two models of different seeds give different probabilities for the same row, so a test can tell which one
answered; `register_compiled` puts a model into a real registry with its compiled library and sha256.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import tl2cgen
import treelite
import xgboost as xgb

from ml_pipeline.model_registry import ModelMetadata, ModelRegistry

NUM_FEATURES = 8


@dataclass(frozen=True)
class BuiltModel:
    """A trained booster, its JSON file and the shared library compiled from it."""

    model_id: str
    booster: xgb.Booster
    json_path: Path
    so_path: Path
    sha256: str


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_model(folder: Path, model_id: str, seed: int, rounds: int = 8) -> BuiltModel:
    """Train a small binary classifier on seeded random data (NaNs included) and compile it with gcc."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, NUM_FEATURES)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=400) > 0.3).astype(np.int8)
    x[rng.random(x.shape) < 0.05] = np.nan
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "seed": seed, "nthread": 1},
        xgb.DMatrix(x, label=y),
        num_boost_round=rounds,
    )
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"{model_id}.json"
    booster.save_model(json_path)
    so_path = folder / f"{model_id}.so"
    logging.getLogger("tl2cgen").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl_model = treelite.frontend.load_xgboost_model(str(json_path))
        tl2cgen.export_lib(tl_model, toolchain="gcc", libpath=str(so_path), params={}, verbose=False)
    return BuiltModel(model_id, booster, json_path, so_path, sha256_of(so_path))


def xgboost_proba(model: BuiltModel, rows: np.ndarray) -> np.ndarray:
    """XGBoost's own probabilities for rows (the reference a compiled model must match)."""
    return model.booster.inplace_predict(np.asarray(rows, dtype=np.float32))


def register_compiled(registry: ModelRegistry, model: BuiltModel, threshold: float = 0.5) -> None:
    """Register and approve `model`, and record its compiled library, as `ml-pipeline compile` would."""
    now = datetime.now(UTC).isoformat()
    meta = ModelMetadata(model_id=model.model_id, version=model.model_id, created_at=now, threshold=threshold)
    registry.register_model(model.json_path, meta, actor="test")
    registry.approve_model(model.model_id, actor="test")
    registry.record_compiled(
        model.model_id,
        {"path": str(model.so_path), "sha256": model.sha256, "compiler": "gcc", "compiled_at": now},
        actor="test",
    )
