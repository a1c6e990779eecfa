"""Where data enters the registry: `register_model` refuses a corrupt test sample or drift reference naming the
file, and finds what lies beside the model file, so the design's API (`ModelTrainer` → `save_model(path)` →
`register_model(path, metadata)`) gives a model with its test sample and drift reference, which the server's
drift monitor then tracks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from model_factory import training_output

from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry, RegistryError
from ml_pipeline.monitoring.drift import DriftReference
from ml_pipeline.monitoring.live_drift import DriftMonitor
from ml_pipeline.native.serving_core import ServingCore
from ml_pipeline.records import ModelAttachments, TrainingOutput
from ml_pipeline.training.trainer import ModelTrainer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def trained() -> ModelTrainer:
    trainer = ModelTrainer(max_depth=3, learning_rate=0.3, n_estimators=10, nthread=1)
    dtrain, dval, _ = trainer.prepare_data(generate_alerts(4000, seed=9))
    trainer.train(dtrain, dval)
    return trainer


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def _nothing_registered(registry: ModelRegistry) -> bool:
    staging = registry.root / ".staging"
    return registry.list_models() == [] and (not staging.exists() or list(staging.iterdir()) == [])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage, not an npz", "not a readable test sample"),
        ({"X": np.zeros((4, 8), np.float32), "y": np.zeros(4, np.int8)}, "lacks the arrays proba"),
        ({"X": np.zeros((4, 8), np.float32), "y": np.zeros(3, np.int8), "proba": np.zeros(4)}, "same rows"),
        ({"X": np.zeros((4, 5), np.float32), "y": np.zeros(4, np.int8), "proba": np.zeros(4)}, "5 columns"),
    ],
    ids=["unreadable", "lacks-proba", "inconsistent-rows", "wrong-columns"],
)
def test_register_refuses_a_corrupt_test_sample_naming_it(
    registry: ModelRegistry, tmp_path: Path, content: bytes | dict[str, np.ndarray], message: str
) -> None:
    out = training_output(tmp_path / "out", "xgboost_v1")
    meta = ModelMetadata.from_training_output(out)  # read while the folder was still sound
    corrupt = tmp_path / "corrupt.npz"
    if isinstance(content, bytes):
        corrupt.write_bytes(content)
    else:
        np.savez(corrupt, **content)
    # given explicitly, as `ml-pipeline registry register` does
    with pytest.raises(RegistryError, match=message) as refused:
        registry.register_model(out / "model.json", meta, attachments={"test_sample.npz": corrupt})
    assert str(corrupt) in str(refused.value)
    # found beside the model file
    (out / "test_sample.npz").write_bytes(corrupt.read_bytes())
    with pytest.raises(RegistryError, match=message) as refused:
        registry.register_model(out / "model.json", meta)
    assert str(out / "test_sample.npz") in str(refused.value)
    assert _nothing_registered(registry)


def test_register_refuses_a_corrupt_drift_reference(registry: ModelRegistry, tmp_path: Path) -> None:
    out = training_output(tmp_path / "out", "xgboost_v1")
    meta = ModelMetadata.from_training_output(out)
    broken = {**(meta.drift_reference or {}), "score": {"edges": [2.0, 1.0], "proportions": [1.0]}}
    meta.drift_reference = broken
    with pytest.raises(RegistryError, match="the metadata of xgboost_v1: the drift reference is corrupt"):
        registry.register_model(out / "model.json", meta)
    assert _nothing_registered(registry)


def test_a_training_output_registers_with_its_test_sample_and_drift_reference(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    out = training_output(tmp_path / "out", "xgboost_v1")
    bare = ModelMetadata.from_training_output(out)
    bare.drift_reference = None  # metadata built by hand: the registry finds both beside the model file
    meta = registry.register_model(TrainingOutput.model_file(out), bare)
    assert set(meta.attachments) == {"test_sample.npz"}
    assert meta.drift_reference == TrainingOutput.read(out).drift_reference is not None


def test_trainer_save_model_then_register_model_gives_a_model_with_a_drift_reference(
    trained: ModelTrainer, registry: ModelRegistry, tmp_path: Path
) -> None:
    """The design's API as written (README, Manual Training): nothing but the model path and the metadata."""
    version = ModelTrainer.create_version_string(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    model_id = ModelTrainer.create_model_id(version)
    model_path = tmp_path / "models" / f"{model_id}.json"
    trained.save_model(str(model_path))
    metadata = ModelMetadata(
        model_id=model_id,
        version=version,
        created_at=datetime.now(UTC).isoformat(),
        algorithm="xgboost",
        training_samples=len(trained.splits["train"].y),
        auc_score=0.9,
        precision=0.85,
        recall=0.8,
        features=ModelTrainer.FEATURE_NAMES,
        feature_importance=trained.get_feature_importance(),
        hyperparameters=trained.params,
        status="candidate",
    )
    meta = registry.register_model(str(model_path), metadata)

    assert meta.drift_reference is not None
    reference = DriftReference.from_dict(meta.drift_reference)
    assert list(reference.features) == ModelTrainer.FEATURE_NAMES
    sample_file = registry.attachment_path(model_id, "test_sample.npz")
    assert sample_file is not None
    with np.load(sample_file) as sample:
        assert sample["X"].shape == (800, 8) and reference.score.count == len(sample["proba"])
    assert registry.get_model(model_id).drift_reference == meta.drift_reference

    # What the server does with the champion: its drift monitor sets the core's bin edges from the registry.
    core = ServingCore()
    monitor = DriftMonitor(core, registry, lambda: model_id, publish_seconds=1.0, window_seconds=10.0)
    monitor.sync_reference()
    counts = core.drift_counts()
    assert monitor.model_id == model_id and counts is not None
    assert np.asarray(counts["features"]).shape[0] == len(ModelTrainer.FEATURE_NAMES)  # every feature tracked


def test_a_model_saved_without_the_trainers_split_has_no_attachments(tmp_path: Path, trained: ModelTrainer) -> None:
    path = tmp_path / "m.json"
    trained.save_model(path)
    assert set(ModelAttachments.beside(path).files) == {"test_sample.npz"}
    bare = ModelTrainer()
    bare.model, bare.best_iteration = trained.model, trained.best_iteration  # a model set without prepare_data
    bare.save_model(path)
    assert ModelAttachments.beside(path) == ModelAttachments()  # the stale attachments of the old save are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
