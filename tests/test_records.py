"""ml_pipeline.records: the typed, versioned records passed between stages round-trip, check their schema version,
and refuse a corrupt or mismatched file naming it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ml_pipeline import records
from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.model_registry import HistoryEntry, ModelMetadata, RegistryError, ServingState
from ml_pipeline.records import (
    COMPILED_LIBRARY_SCHEMA,
    TRAINING_OUTPUT_SCHEMA,
    CompiledLibrary,
    ModelAttachments,
    RecordError,
    TestSample,
    TrainingOutput,
)
from ml_pipeline.training.evaluator import ModelEvaluator
from ml_pipeline.training.trainer import ModelTrainer, training_output, write_training_output

pytestmark = pytest.mark.unit

WINDOW = {"source": "file:test", "lookback_days": None, "start": None, "end": None, "rows": 3000}


@pytest.fixture(scope="module")
def trainer() -> ModelTrainer:
    trainer = ModelTrainer(n_estimators=8, max_depth=3, nthread=1)
    dtrain, dval, _ = trainer.prepare_data(generate_alerts(3000, seed=4))
    trainer.train(dtrain, dval)
    return trainer


@pytest.fixture(scope="module")
def output(trainer: ModelTrainer) -> TrainingOutput:
    test = trainer.splits["test"]
    metrics = ModelEvaluator(0.7).evaluate(test.y, trainer.test_sample(len(test.y)).proba)
    return training_output(trainer, metrics.to_dict(), WINDOW, version="2026.01.02.030405")


def test_training_output_round_trips_through_its_folder(output: TrainingOutput, tmp_path: Path) -> None:
    output.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "test_sample.npz", "training.json"]
    again = TrainingOutput.read(tmp_path)
    assert again == output
    assert again.schema_version == TRAINING_OUTPUT_SCHEMA
    assert again.split_sizes == {"train": 2100, "val": 300, "test": 600}
    assert again.features == tuple(FEATURE_NAMES) and again.test_sample.X.shape == (600, 8)
    assert again.drift_reference is not None and again.model_id == "xgboost_v2026.01.02.030405"
    record = json.loads(TrainingOutput.record_file(tmp_path).read_text())
    assert record == output.record() and record["schema_version"] == TRAINING_OUTPUT_SCHEMA
    assert TrainingOutput.model_file(tmp_path).read_bytes() == output.model


def test_write_training_output_is_the_record_written(trainer: ModelTrainer, tmp_path: Path) -> None:
    metrics = ModelEvaluator(0.7).evaluate(trainer.splits["test"].y, trainer.test_sample(600).proba)
    record = write_training_output(tmp_path, trainer, metrics.to_dict(), WINDOW, version="2026.01.02.030405")
    assert TrainingOutput.read(tmp_path).record() == record


def test_unknown_keys_are_kept_and_old_folders_read_as_schema_1(output: TrainingOutput, tmp_path: Path) -> None:
    output.write(tmp_path)
    record = json.loads(TrainingOutput.record_file(tmp_path).read_text())
    del record["schema_version"], record["split_sizes"]  # a folder written before records were versioned
    record["from_a_newer_trainer"] = [1, 2]
    TrainingOutput.record_file(tmp_path).write_text(json.dumps(record))
    old = TrainingOutput.read(tmp_path)
    assert old.schema_version == 1 and old.split_sizes == {}
    assert old.extra == {"from_a_newer_trainer": [1, 2]}
    assert old.record()["from_a_newer_trainer"] == [1, 2]
    assert ModelMetadata.from_training_output(tmp_path).extra == {"from_a_newer_trainer": [1, 2]}


def test_a_newer_schema_version_is_refused(output: TrainingOutput, tmp_path: Path) -> None:
    replace(output, schema_version=TRAINING_OUTPUT_SCHEMA + 1).write(tmp_path)
    with pytest.raises(RecordError, match=r"training\.json has schema_version 2, written by a newer version"):
        TrainingOutput.read(tmp_path)
    with pytest.raises(RegistryError, match="newer version"):
        ModelMetadata.from_training_output(tmp_path)
    record = json.loads(TrainingOutput.record_file(tmp_path).read_text())
    record["schema_version"] = "one"
    TrainingOutput.record_file(tmp_path).write_text(json.dumps(record))
    with pytest.raises(RecordError, match="schema_version 'one' is not a positive integer"):
        TrainingOutput.read(tmp_path)


def _corrupt_samples(output: TrainingOutput) -> dict[str, bytes | dict[str, np.ndarray]]:
    sample = output.test_sample
    return {
        "not an npz": b"this is not a zip archive",
        "truncated": b"PK\x03\x04" + b"\x00" * 40,
        "lacks proba": {"X": sample.X, "y": sample.y},
        "7 columns": {"X": sample.X[:, :7], "y": sample.y, "proba": sample.proba},
        "rows disagree": {"X": sample.X, "y": sample.y[:-1], "proba": sample.proba},
        "labels not 0/1": {"X": sample.X, "y": sample.y + 2, "proba": sample.proba},
        "proba outside [0, 1]": {"X": sample.X, "y": sample.y, "proba": sample.proba + 2},
    }


CORRUPTIONS = [
    ("not an npz", "not a readable test sample"),
    ("truncated", "not a readable test sample"),
    ("lacks proba", "lacks the arrays proba"),
    ("7 columns", "X has 7 columns; the model has 8 features"),
    ("rows disagree", "they must be the same rows"),
    ("labels not 0/1", "y must hold labels 0 and 1"),
    ("proba outside [0, 1]", r"proba must hold probabilities in \[0, 1\]"),
]


@pytest.mark.parametrize(("kind", "message"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_read_refuses_a_corrupt_or_mismatched_test_sample(
    output: TrainingOutput, tmp_path: Path, kind: str, message: str
) -> None:
    output.write(tmp_path)
    path = TrainingOutput.test_sample_file(tmp_path)
    corrupt = _corrupt_samples(output)[kind]
    if isinstance(corrupt, bytes):
        path.write_bytes(corrupt)
    else:
        np.savez(path, **corrupt)
    with pytest.raises(RecordError, match=message) as refused:
        TrainingOutput.read(tmp_path)
    assert str(path) in str(refused.value)
    with pytest.raises(RegistryError, match=message):
        ModelMetadata.from_training_output(tmp_path)


def test_read_refuses_a_model_file_that_is_not_xgboost_json(output: TrainingOutput, tmp_path: Path) -> None:
    output.write(tmp_path)
    TrainingOutput.model_file(tmp_path).write_text('{"not": "a model"}')
    with pytest.raises(RecordError, match=r"model\.json is not an XGBoost JSON model"):
        TrainingOutput.read(tmp_path)


def test_test_sample_round_trips_and_checks_its_shapes(tmp_path: Path) -> None:
    X = np.array([[1.0, np.nan], [0.5, 2.0]])
    sample = TestSample(X, np.array([0, 1]), np.array([0.25, 0.75]))
    assert (sample.X.dtype, sample.y.dtype, sample.proba.dtype) == (np.float32, np.int8, np.float32)
    assert TestSample.read(sample.write(tmp_path / "s.npz"), num_features=2) == sample
    with pytest.raises(RecordError, match="same rows"):
        TestSample(X, np.array([0, 1, 1]), np.array([0.1, 0.2]))


def test_attachments_beside_a_model_file(output: TrainingOutput, tmp_path: Path) -> None:
    model_file = tmp_path / "xgboost_v1.json"
    model_file.write_bytes(output.model)
    assert ModelAttachments.beside(model_file) == ModelAttachments()
    written = ModelAttachments.write_beside(model_file, output.test_sample, output.drift_reference)
    assert written.files == {"test_sample.npz": tmp_path / "xgboost_v1.test_sample.npz"}
    assert ModelAttachments.beside(model_file, num_features=8) == written
    with pytest.raises(RecordError, match="X has 8 columns; the model has 9 features"):
        ModelAttachments.beside(model_file, num_features=9)
    (tmp_path / "xgboost_v1.drift_reference.json").write_text('{"features": {}}')
    with pytest.raises(RecordError, match=r"xgboost_v1\.drift_reference\.json: the drift reference is corrupt"):
        ModelAttachments.beside(model_file)
    ModelAttachments.write_beside(model_file, None, None)  # a model saved without data leaves no stale files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xgboost_v1.json"]
    output.write(tmp_path / "out")  # a training output folder: its test sample and training.json's reference
    beside = ModelAttachments.beside(TrainingOutput.model_file(tmp_path / "out"))
    assert beside.files == {"test_sample.npz": tmp_path / "out" / "test_sample.npz"}
    assert beside.drift_reference == output.drift_reference


def test_compiled_library_round_trips_keeps_unknown_keys_and_checks_its_version() -> None:
    library = CompiledLibrary(
        path="/abs/m.so",
        sha256="ab" * 32,
        compiler="gcc 13",
        flags=("-O3",),
        versions={"xgboost": "3"},
        verification={"rows": 10, "max_abs_diff": 0.0},
        compiled_at="2026-01-01T00:00:00+00:00",
        artifact_sha256="cd" * 32,
        extra={"build_key": {"artifact_sha256": "cd" * 32}},
    )
    stored = json.loads(json.dumps(library.to_dict()))
    assert stored["schema_version"] == COMPILED_LIBRARY_SCHEMA and stored["build_key"] == library.extra["build_key"]
    assert CompiledLibrary.from_dict(stored) == library
    assert {**library} == library.to_dict() and library["sha256"] == "ab" * 32  # reads as the dict it replaces
    older = {"path": "/abs/m.so", "sha256": "ab" * 32, "compiler": "gcc", "flags": ["-O3"]}  # a record before versions
    assert CompiledLibrary.from_dict(older).schema_version == 1 and CompiledLibrary.from_dict(older).flags == ("-O3",)
    with pytest.raises(RecordError, match="compiled record has schema_version 2, written by a newer version"):
        CompiledLibrary.from_dict({**stored, "schema_version": COMPILED_LIBRARY_SCHEMA + 1})
    with pytest.raises(RecordError, match="lacks or mangles 'sha256'"):
        CompiledLibrary.from_dict({"path": "/abs/m.so"})


def test_registry_records_are_reexported() -> None:
    assert records.ServingState is ServingState and records.HistoryEntry is HistoryEntry
