"""The suite's models, built the way the product builds them, each once per test session (gcc costs seconds).

- `training_output(directory, model_id, seed)`: a training output folder (model.json, training.json,
  test_sample.npz) written by the product's ModelTrainer and `write_training_output`, for the registry tests.
  Its metrics are stated (AUC 0.90 + 0.01 x seed, ...), not measured, so tests can compare them exactly.
- `served_model(model_id, seed)`: a model trained by ModelTrainer, registered in this session's registry,
  approved and compiled by `compile_registered` (verified against XGBoost, branch layout guided by its test
  sample), exactly as `ml-pipeline registry register`, `approve` and `compile` do.
- `built(spec)`: a model of a given shape (feature count, trees, depth, base_score, early stopping...) trained by
  XGBoost directly on synthetic rows, then registered and compiled the same way (without a test sample, so
  without profile guidance).
- `register_compiled(registry, model)`: puts a built model into a test's own registry, approved, with the
  compile record the product wrote when it built the library, so a server of the suite serves exactly the
  library the product compiled and verified.

Two models of different seeds give different probabilities for the same row, so a test can tell which one
answered.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from ml_pipeline.compiler import CompileResult
from ml_pipeline.compiler.registered import TEST_SAMPLE, compile_registered
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.training.evaluator import ModelEvaluator
from ml_pipeline.training.trainer import ModelTrainer, write_training_output

NUM_FEATURES = len(FEATURE_NAMES)
SERVED_ROWS = 2_000
SERVED_THRESHOLD = 0.5
ACTOR = "test"

_ROOT = Path(tempfile.mkdtemp(prefix="vg-test-models-"))
_OWNER = os.getpid()


def _remove_root() -> None:
    if os.getpid() == _OWNER:  # not in a forked child that happens to exit through atexit
        shutil.rmtree(_ROOT, ignore_errors=True)


atexit.register(_remove_root)


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a model trained by XGBoost directly (for the compiler and CompiledModel tests)."""

    name: str
    trees: int
    depth: int
    features: int = NUM_FEATURES
    base_score: float | None = None
    scale_pos_weight: float | None = None
    early_stopping: bool = False


SMALL = ModelSpec("small", trees=20, depth=4)


@dataclass(frozen=True)
class BuiltModel:
    """A registered model: its booster and artifact, the metadata it was registered with, and its verified library."""

    model_id: str
    booster: xgb.Booster
    model_json: Path
    metadata: ModelMetadata
    result: CompileResult
    compiled: dict[str, Any]
    attachments: dict[str, Path] = field(default_factory=dict)

    @property
    def library(self) -> Path:
        """Path of the compiled .so (as recorded in the registry)."""
        return self.result.path

    @property
    def sha256(self) -> str:
        """sha256 of the compiled .so (as recorded in the registry)."""
        return self.result.sha256

    def xgboost_proba(self, rows: np.ndarray) -> np.ndarray:
        """XGBoost's own probabilities for `rows` (the reference a compiled model must match)."""
        return self.booster.inplace_predict(np.asarray(rows, dtype=np.float32))


def synthetic_rows(
    n: int, features: int = NUM_FEATURES, seed: int = 0, nan_share: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 rows with NaNs and labels that depend non-linearly on a few features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    signal = x[:, 0] + x[:, 1 % features] * x[:, 2 % features] - 0.5 * np.abs(x[:, 3 % features])
    y = (signal + rng.normal(scale=0.7, size=n) > 0.4).astype(np.int8)
    x[rng.random(x.shape) < nan_share] = np.nan
    return np.ascontiguousarray(x), y


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _registry() -> ModelRegistry:
    """This session's registry: every compiled model of the suite was compiled from it."""
    return ModelRegistry(_ROOT / "registry")


# ---- training outputs (ModelTrainer + write_training_output) ----


def stated_metrics(seed: int) -> dict[str, Any]:
    """The metrics written into a registry test's training output: fixed, except an AUC that grows with `seed`."""
    return {
        "auc_score": 0.90 + 0.01 * seed,
        "precision": 0.85,
        "recall": 0.80,
        "f1_score": 0.82,
        "accuracy": 0.9,
        "specificity": 0.95,
        "fpr": 0.05,
        "fnr": 0.2,
        "confusion_matrix": [[50, 3], [2, 5]],
        "threshold": 0.7,
    }


def _train(seed: int, rounds: int, rows: int) -> tuple[ModelTrainer, np.ndarray]:
    """ModelTrainer (70/10/20 split, early stopping, best iteration) on synthetic rows; it and its test scores."""
    x, y = synthetic_rows(rows, NUM_FEATURES, seed)
    frame = pd.DataFrame(x, columns=FEATURE_NAMES)
    frame[LABEL] = y
    trainer = ModelTrainer(max_depth=3, learning_rate=0.3, n_estimators=rounds, random_state=seed, nthread=1)
    dtrain, dval, dtest = trainer.prepare_data(frame)
    trainer.train(dtrain, dval)
    return trainer, trainer.predict_from_dmatrix(dtest)


def _write(folder: Path, model_id: str, seed: int, rounds: int, rows: int, stated: bool) -> Path:
    """Train and write a training output folder named `model_id` (stated or measured metrics)."""
    trainer, test_proba = _train(seed, rounds, rows)
    if stated:
        metrics = stated_metrics(seed)
    else:
        metrics = ModelEvaluator(SERVED_THRESHOLD).evaluate(trainer.splits["test"].y, test_proba).to_dict()
    window = {"source": "file:synthetic", "lookback_days": None, "start": None, "end": None, "rows": rows}
    record = write_training_output(folder, trainer, metrics, window, version=model_id.rsplit("_v", 1)[-1])
    record["model_id"] = model_id  # the trainer names models xgboost_v<version>; tests name their own
    if stated:
        record["trainer_note"] = "a key this registry version does not know"
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return folder


@functools.cache
def _training_output(model_id: str, seed: int, rounds: int) -> Path:
    return _write(_ROOT / "training" / f"{model_id}-s{seed}-r{rounds}", model_id, seed, rounds, 300, stated=True)


def training_output(directory: Path, model_id: str, seed: int = 0, rounds: int = 4) -> Path:
    """A training output folder at `directory` (300 synthetic rows, up to `rounds` trees), with stated metrics and
    one key a newer trainer might write (`trainer_note`); trained once per session, copied for each caller."""
    shutil.copytree(_training_output(model_id, seed, rounds), directory, dirs_exist_ok=True)
    return directory


# ---- compiled models (registered, then compile_registered) ----


def _register_and_compile(
    model_json: Path, metadata: ModelMetadata, attachments: dict[str, Path], booster: xgb.Booster
) -> BuiltModel:
    registry = _registry()
    registry.register_model(model_json, metadata, attachments=attachments, actor=ACTOR)
    registry.approve_model(metadata.model_id, actor=ACTOR)
    result = compile_registered(registry, metadata.model_id, _ROOT / "compiled", progress=lambda _line: None)
    compiled = registry.get_model(metadata.model_id).compiled or {}
    return BuiltModel(metadata.model_id, booster, model_json, metadata, result, compiled, attachments)


@functools.cache
def served_model(model_id: str, seed: int, rounds: int = 8) -> BuiltModel:
    """A model as the product trains, registers and compiles it (with its test sample), cached per session."""
    folder = _write(_ROOT / "served" / model_id, model_id, seed, rounds, SERVED_ROWS, stated=False)
    metadata = replace(ModelMetadata.from_training_output(folder), threshold=SERVED_THRESHOLD)
    booster = xgb.Booster(model_file=str(folder / "model.json"))
    return _register_and_compile(folder / "model.json", metadata, {TEST_SAMPLE: folder / TEST_SAMPLE}, booster)


def _train_shape(spec: ModelSpec, seed: int = 0) -> xgb.Booster:
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
    """The model `spec` describes, trained, registered and compiled (verified), cached per session."""
    folder = _ROOT / "shaped" / spec.name
    folder.mkdir(parents=True)
    booster = _train_shape(spec)
    model_json = folder / "model.json"
    booster.save_model(model_json)
    metadata = ModelMetadata(
        model_id=spec.name,
        version="1",
        created_at=_now(),
        features=[f"f{i}" for i in range(spec.features)],
        num_trees=booster.num_boosted_rounds(),
        threshold=SERVED_THRESHOLD,
    )
    return _register_and_compile(model_json, metadata, {}, booster)


def register_compiled(registry: ModelRegistry, model: BuiltModel, threshold: float = SERVED_THRESHOLD) -> ModelMetadata:
    """Register and approve `model` in `registry` and record its compiled library: the very record
    `compile_registered` wrote into this session's registry when it built and verified the library."""
    metadata = replace(model.metadata, threshold=threshold)
    registry.register_model(model.model_json, metadata, attachments=model.attachments, actor=ACTOR)
    registry.approve_model(model.model_id, actor=ACTOR)
    return registry.record_compiled(model.model_id, dict(model.compiled), actor=ACTOR)


@functools.cache
def inverted_model(model_id: str, seed: int = 1) -> BuiltModel:
    """A deliberately bad model: trained on the synthetic rows with every label flipped (its scores are inverted),
    registered and compiled like a served one."""
    x, y = synthetic_rows(SERVED_ROWS, seed=seed)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "nthread": 1}, xgb.DMatrix(x, 1 - y), 8)
    folder = _ROOT / "served" / model_id
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(folder / "model.json")
    metadata = ModelMetadata(
        model_id=model_id, version="1", created_at=_now(), features=list(FEATURE_NAMES), threshold=SERVED_THRESHOLD
    )
    return _register_and_compile(folder / "model.json", metadata, {}, booster)
