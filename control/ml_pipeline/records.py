"""Typed, versioned records of what passes between the pipeline's stages, and the one place that names their files.

- `TrainingOutput` (training → registry, compiler): the training output folder, model.json, training.json and
  test_sample.npz.
- `ModelAttachments` (`ModelTrainer.save_model` → `ModelRegistry.register_model`): what lies beside a model file,
  `<stem>.test_sample.npz` and `<stem>.drift_reference.json` (or, beside a training output's model.json, its
  test sample and the drift reference of its training.json).
- `TestSample` (training → registry attachment → compiler verification and profile): X, y, proba of test rows.
- `CompiledLibrary` (compiler → registry → servers): the `compiled` record of a model's metadata.json.
- `ServingState` (serving.json) and `HistoryEntry` (history.jsonl), registry → servers and commands: defined in
  `model_registry.records`, re-exported here.

The records written as JSON (TrainingOutput's training.json, CompiledLibrary) carry a `schema_version`: one
written by a newer version (a higher schema) is refused, one written before versions existed reads as schema 1.
`read` validates what it reads: a missing, unreadable, corrupt or mismatched file is refused with a RecordError
(a RegistryError, exit code 2) that names the file.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ml_pipeline.model_registry.errors import RegistryError
from ml_pipeline.model_registry.records import HistoryEntry, ServingState
from ml_pipeline.monitoring.drift import DriftReference

__all__ = [
    "COMPILED_LIBRARY_SCHEMA",
    "DRIFT_REFERENCE_SUFFIX",
    "MODEL_FILE",
    "RECORD_FILE",
    "TEST_SAMPLE_FILE",
    "TEST_SAMPLE_SUFFIX",
    "TRAINING_OUTPUT_SCHEMA",
    "CompiledLibrary",
    "HistoryEntry",
    "ModelAttachments",
    "RecordError",
    "ServingState",
    "TestSample",
    "TrainingOutput",
    "checked_drift_reference",
]

TRAINING_OUTPUT_SCHEMA = 1
COMPILED_LIBRARY_SCHEMA = 1

MODEL_FILE = "model.json"
"""The model of a training output folder (XGBoost JSON of the best iteration)."""
RECORD_FILE = "training.json"
"""The training record of a training output folder (everything but the model and the test sample)."""
TEST_SAMPLE_FILE = "test_sample.npz"
"""The test sample of a training output folder; also the name it is attached under in the registry."""
TEST_SAMPLE_SUFFIX = ".test_sample.npz"
"""Beside a model file saved alone (`<stem>.json`): its test sample is `<stem>.test_sample.npz`."""
DRIFT_REFERENCE_SUFFIX = ".drift_reference.json"
"""Beside a model file saved alone (`<stem>.json`): its drift reference is `<stem>.drift_reference.json`."""

_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


class RecordError(RegistryError):
    """A record passed between stages is missing, unreadable, corrupt, mismatched or of a newer schema."""


def _schema(data: Mapping[str, Any], current: int, where: object) -> int:
    version = data.get("schema_version", 1)  # written before records were versioned: schema 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordError(f"{where}: schema_version {version!r} is not a positive integer")
    if version > current:
        raise RecordError(
            f"{where} has schema_version {version}, written by a newer version of the pipeline "
            f"(this one reads up to {current}): upgrade ml_pipeline or re-create it"
        )
    return version


# ---- test sample ----


@dataclass(frozen=True, eq=False)
class TestSample:
    """Up to 5,000 held-out test rows with XGBoost's own probabilities, so a compiled library can be checked.

    `X` (rows, features) float32 with NaN for missing, `y` (rows,) int8 labels 0/1, `proba` (rows,) float32 in
    [0, 1]. Built or read, the arrays are converted to those dtypes and their shapes checked.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    X: np.ndarray
    y: np.ndarray
    proba: np.ndarray

    def __post_init__(self) -> None:
        X, y, proba = _checked_sample(self.X, self.y, self.proba, "test sample", None)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "proba", proba)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TestSample):
            return NotImplemented
        return (
            np.array_equal(self.X, other.X, equal_nan=True)
            and np.array_equal(self.y, other.y)
            and np.array_equal(self.proba, other.proba, equal_nan=True)
        )

    @property
    def rows(self) -> int:
        """Number of rows."""
        return int(self.y.size)

    def write(self, path: str | Path) -> Path:
        """Write the sample as an .npz file with arrays X, y and proba."""
        path = Path(path)
        with path.open("wb") as f:
            np.savez(f, X=self.X, y=self.y, proba=self.proba)
        return path

    @classmethod
    def read(cls, path: str | Path, num_features: int | None = None) -> TestSample:
        """Read and validate an .npz test sample; RecordError naming the file when numpy cannot load it, an array
        is missing, the shapes disagree or X does not have `num_features` columns."""
        path = Path(path)
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            with loaded as data:
                missing = [name for name in ("X", "y", "proba") if name not in data.files]
                if missing:
                    raise RecordError(f"{path} is not a test sample: it lacks the arrays {', '.join(missing)}")
                X, y, proba = data["X"], data["y"], data["proba"]
        except RecordError:
            raise
        except _UNREADABLE as exc:
            raise RecordError(f"{path} is not a readable test sample (.npz with X, y, proba): {exc}") from None
        X, y, proba = _checked_sample(X, y, proba, path, num_features)
        return cls(X, y, proba)


def _checked_sample(
    X: np.ndarray, y: np.ndarray, proba: np.ndarray, where: object, num_features: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y, proba = np.asarray(X), np.asarray(y), np.asarray(proba)
    if X.ndim != 2:
        raise RecordError(f"{where}: X has shape {X.shape}; expected (rows, features)")
    if y.shape != (X.shape[0],) or proba.shape != (X.shape[0],):
        raise RecordError(
            f"{where}: X has {X.shape[0]} rows but y has shape {y.shape} and proba {proba.shape}; "
            "they must be the same rows"
        )
    if num_features is not None and X.shape[1] != num_features:
        raise RecordError(f"{where}: X has {X.shape[1]} columns; the model has {num_features} features")
    if not (np.issubdtype(X.dtype, np.number) and np.issubdtype(proba.dtype, np.number)):
        raise RecordError(f"{where}: X and proba must be numeric (got {X.dtype} and {proba.dtype})")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)) or not np.isin(y, (0, 1)).all():
        raise RecordError(f"{where}: y must hold labels 0 and 1")
    proba = proba.astype(np.float32)
    if not np.all((proba >= 0.0) & (proba <= 1.0)):  # also refuses NaN
        raise RecordError(f"{where}: proba must hold probabilities in [0, 1]")
    return np.ascontiguousarray(X, dtype=np.float32), y.astype(np.int8), proba


def checked_drift_reference(data: Any, where: object) -> dict[str, Any]:
    """`data` when it is a valid DriftReference dict (see monitoring.drift), else RecordError naming `where`."""
    if not isinstance(data, dict):
        raise RecordError(f"{where}: the drift reference is not a JSON object")
    try:
        DriftReference.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RecordError(f"{where}: the drift reference is corrupt ({type(exc).__name__}: {exc})") from None
    return data


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path} is not a JSON object")
    return data


# ---- the training output folder ----


@dataclass(frozen=True)
class TrainingOutput:
    """What training hands the registry: the model, its test sample and its training record (training.json).

    `write(folder)` and `read(folder)` are the only code that knows the folder's files; `read` validates them.
    Keys of training.json this version does not know (a newer trainer's) are kept in `extra` and written back.
    """

    model_id: str
    version: str
    created_at: str
    model: bytes = field(repr=False)
    """XGBoost JSON of the best-iteration model, byte for byte what model.json holds."""
    test_sample: TestSample = field(repr=False)
    features: tuple[str, ...] = ()
    threshold: float = 0.7
    metrics: dict[str, Any] = field(default_factory=dict)
    split_sizes: dict[str, int] = field(default_factory=dict)
    """Rows in each split: {"train": n, "val": n, "test": n} ({} in folders written before it was recorded)."""
    training_samples: int = 0
    algorithm: str = "xgboost"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    feature_importance: dict[str, float] = field(default_factory=dict)
    data_window: dict[str, Any] = field(default_factory=dict)
    best_iteration: int | None = None
    num_trees: int | None = None
    drift_reference: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = TRAINING_OUTPUT_SCHEMA

    # ---- the folder's files ----

    @staticmethod
    def model_file(folder: str | Path) -> Path:
        """The model file of a training output folder."""
        return Path(folder) / MODEL_FILE

    @staticmethod
    def record_file(folder: str | Path) -> Path:
        """The training record (training.json) of a training output folder."""
        return Path(folder) / RECORD_FILE

    @staticmethod
    def test_sample_file(folder: str | Path) -> Path:
        """The test sample of a training output folder."""
        return Path(folder) / TEST_SAMPLE_FILE

    @staticmethod
    def attachments(folder: str | Path) -> dict[str, Path]:
        """What `ModelRegistry.register_model` attaches from a training output folder: name in the registry → file."""
        return {TEST_SAMPLE_FILE: TrainingOutput.test_sample_file(folder)}

    @staticmethod
    def is_training_output(folder: str | Path) -> bool:
        """Whether `folder` looks like a training output folder (a model file with a training record beside it)."""
        return TrainingOutput.model_file(folder).is_file() and TrainingOutput.record_file(folder).is_file()

    # ---- training.json ----

    def record(self) -> dict[str, Any]:
        """The content of training.json: every field but the model and the test sample, then the `extra` keys."""
        known = {
            "schema_version": self.schema_version,
            "model_id": self.model_id,
            "version": self.version,
            "created_at": self.created_at,
            "algorithm": self.algorithm,
            "training_samples": self.training_samples,
            "split_sizes": dict(self.split_sizes),
            "features": list(self.features),
            "hyperparameters": self.hyperparameters,
            "feature_importance": self.feature_importance,
            "threshold": self.threshold,
            "metrics": self.metrics,
            "data_window": self.data_window,
            "best_iteration": self.best_iteration,
            "num_trees": self.num_trees,
            "drift_reference": self.drift_reference,
        }
        return {**known, **{k: v for k, v in self.extra.items() if k not in known}}

    @classmethod
    def read_record(cls, folder: str | Path) -> dict[str, Any]:
        """training.json of `folder` as a dict, checked to be a JSON object of a schema this version reads."""
        path = cls.record_file(folder)
        data = _read_json_object(path)
        _schema(data, TRAINING_OUTPUT_SCHEMA, path)
        return data

    # ---- writing and reading the folder ----

    def write(self, folder: str | Path) -> Path:
        """Write model.json, test_sample.npz and, last, training.json into `folder` (created if needed)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.model_file(out).write_bytes(self.model)
        self.test_sample.write(self.test_sample_file(out))
        self.record_file(out).write_text(json.dumps(self.record(), indent=2) + "\n")
        return out

    @classmethod
    def read(cls, folder: str | Path) -> TrainingOutput:
        """Read and validate a training output folder; RecordError naming the file that is missing or wrong."""
        root = Path(folder)
        for path in (cls.model_file(root), cls.record_file(root), cls.test_sample_file(root)):
            if not path.is_file():
                raise RecordError(f"{path} is missing: pass the --out folder of `ml-pipeline train`")
        record_path = cls.record_file(root)
        info = cls.read_record(root)
        known = {f.name for f in fields(cls)} - {"model", "test_sample", "extra"}
        try:
            metrics: dict[str, Any] = dict(info.get("metrics", {}))
            features = tuple(info.get("features", []))
            if not all(isinstance(name, str) for name in features):
                raise TypeError("'features' must be a list of names")
            threshold = float(info["threshold"] if "threshold" in info else metrics.get("threshold", 0.7))
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"'threshold' {threshold} is outside [0, 1]")
            split_sizes = {str(k): int(v) for k, v in dict(info.get("split_sizes", {})).items()}
            values: dict[str, Any] = {
                "model_id": _text(info["model_id"], "model_id"),
                "version": _text(info["version"], "version"),
                "created_at": _text(info["created_at"], "created_at"),
                "algorithm": str(info.get("algorithm", "xgboost")),
                "training_samples": int(info.get("training_samples", 0)),
                "split_sizes": split_sizes,
                "features": features,
                "hyperparameters": dict(info.get("hyperparameters", {})),
                "feature_importance": {str(k): float(v) for k, v in dict(info.get("feature_importance", {})).items()},
                "threshold": threshold,
                "metrics": metrics,
                "data_window": dict(info.get("data_window", {})),
                "best_iteration": _optional_int(info.get("best_iteration")),
                "num_trees": _optional_int(info.get("num_trees")),
                "schema_version": int(info.get("schema_version", 1)),
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"{record_path} lacks or mangles {exc}: re-run `ml-pipeline train`") from None
        drift = info.get("drift_reference")
        drift_reference = None if drift is None else checked_drift_reference(drift, record_path)
        model = cls._read_model(cls.model_file(root))
        sample = TestSample.read(cls.test_sample_file(root), len(features) or None)
        return cls(
            model=model,
            test_sample=sample,
            drift_reference=drift_reference,
            extra={k: v for k, v in info.items() if k not in known},
            **values,
        )

    @staticmethod
    def _read_model(path: Path) -> bytes:
        try:
            model = path.read_bytes()
            parsed = json.loads(model)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"{path} is not an XGBoost JSON model: {exc}") from None
        if not isinstance(parsed, dict) or "learner" not in parsed:
            raise RecordError(f"{path} is not an XGBoost JSON model (no 'learner')")
        return model


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"'{name}' must be a non-empty string")
    return value


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


# ---- a model file saved alone, and what lies beside it ----


@dataclass(frozen=True)
class ModelAttachments:
    """What lies beside a model file: files to attach in the registry (name there → path) and the drift reference.

    Beside a training output's model.json: its test_sample.npz, and the drift reference of its training.json.
    Beside any other model file `<stem>.json` (`ModelTrainer.save_model`): `<stem>.test_sample.npz` and
    `<stem>.drift_reference.json`, when they exist.
    """

    files: dict[str, Path] = field(default_factory=dict)
    drift_reference: dict[str, Any] | None = None

    @staticmethod
    def test_sample_path(model_file: str | Path) -> Path:
        """Where the test sample of a model file saved alone lies: `<stem>.test_sample.npz`."""
        path = Path(model_file)
        return path.with_name(path.stem + TEST_SAMPLE_SUFFIX)

    @staticmethod
    def drift_reference_path(model_file: str | Path) -> Path:
        """Where the drift reference of a model file saved alone lies: `<stem>.drift_reference.json`."""
        path = Path(model_file)
        return path.with_name(path.stem + DRIFT_REFERENCE_SUFFIX)

    @classmethod
    def beside(cls, model_file: str | Path, num_features: int | None = None) -> ModelAttachments:
        """What lies beside `model_file`, validated (RecordError naming a corrupt or mismatched file)."""
        path = Path(model_file)
        if path.name == MODEL_FILE and TrainingOutput.is_training_output(path.parent):
            output = TrainingOutput.read(path.parent)
            if num_features is not None and output.test_sample.X.shape[1] != num_features:
                raise RecordError(
                    f"{TrainingOutput.test_sample_file(path.parent)}: X has {output.test_sample.X.shape[1]} "
                    f"columns; the model has {num_features} features"
                )
            return cls(TrainingOutput.attachments(path.parent), output.drift_reference)
        files: dict[str, Path] = {}
        sample = cls.test_sample_path(path)
        if sample.is_file():
            TestSample.read(sample, num_features)
            files[TEST_SAMPLE_FILE] = sample
        drift_file = cls.drift_reference_path(path)
        drift = checked_drift_reference(_read_json_object(drift_file), drift_file) if drift_file.is_file() else None
        return cls(files, drift)

    @classmethod
    def write_beside(
        cls, model_file: str | Path, test_sample: TestSample | None, drift_reference: dict[str, Any] | None
    ) -> ModelAttachments:
        """Write the test sample and drift reference beside `model_file`; a missing one removes a stale file."""
        files: dict[str, Path] = {}
        sample = cls.test_sample_path(model_file)
        if test_sample is None:
            sample.unlink(missing_ok=True)
        else:
            files[TEST_SAMPLE_FILE] = test_sample.write(sample)
        drift_file = cls.drift_reference_path(model_file)
        if drift_reference is None:
            drift_file.unlink(missing_ok=True)
        else:
            drift_file.write_text(json.dumps(drift_reference, indent=2) + "\n")
        return cls(files, drift_reference)


# ---- what compilation records in the registry ----


@dataclass(frozen=True, eq=False)
class CompiledLibrary(Mapping[str, Any]):
    """A verified compiled library, as `ModelRegistry.record_compiled` stores it (the `compiled` record).

    The registry stores `to_dict()` (plain JSON), so registries written before this record existed still read;
    `from_dict` reads one back, keeping keys it does not know (e.g. the compiler's `build_key`) in `extra`. The
    record also reads as a mapping of its `to_dict()` (`record["sha256"]`, `{**record, ...}`), as the dict it
    replaces did.
    """

    path: str
    sha256: str
    compiler: str = ""
    flags: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    compiled_at: str = ""
    artifact_sha256: str | None = None
    """sha256 of the model artifact (XGBoost JSON) the library was compiled from (None in older records)."""
    num_trees: int | None = None
    translation_units: int = 1
    codegen_params: dict[str, Any] = field(default_factory=dict)
    profile_rows: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    explainer: dict[str, Any] = field(default_factory=dict)
    """The packed trees for reason codes ({path, sha256, rows, max_abs_diff}) or {unavailable: why}; empty in
    records older than reason codes."""
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = COMPILED_LIBRARY_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what the registry stores); the `extra` keys come back at the top level."""
        known: dict[str, Any] = {
            "schema_version": self.schema_version,
            "path": self.path,
            "sha256": self.sha256,
            "compiler": self.compiler,
            "flags": list(self.flags),
            "versions": dict(self.versions),
            "verification": dict(self.verification),
            "compiled_at": self.compiled_at,
            "artifact_sha256": self.artifact_sha256,
            "num_trees": self.num_trees,
            "translation_units": self.translation_units,
            "codegen_params": dict(self.codegen_params),
            "profile_rows": self.profile_rows,
            "timings_s": dict(self.timings_s),
            "explainer": dict(self.explainer),
        }
        return {**known, **{k: v for k, v in self.extra.items() if k not in known}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompiledLibrary:
        """Validate and build from a stored `compiled` record; RecordError when it is not one."""
        if not isinstance(data, Mapping):
            raise RecordError("a compiled record must be a JSON object")
        version = _schema(data, COMPILED_LIBRARY_SCHEMA, "compiled record")
        known = {f.name for f in fields(cls)} - {"extra"}
        try:
            library = cls(
                path=_text(data["path"], "path"),
                sha256=_text(data["sha256"], "sha256"),
                compiler=str(data.get("compiler", "")),
                flags=tuple(str(flag) for flag in data.get("flags", ())),
                versions={str(k): str(v) for k, v in dict(data.get("versions", {})).items()},
                verification=dict(data.get("verification", {})),
                compiled_at=str(data.get("compiled_at", "")),
                artifact_sha256=None if data.get("artifact_sha256") is None else str(data["artifact_sha256"]),
                num_trees=_optional_int(data.get("num_trees")),
                translation_units=int(data.get("translation_units", 1)),
                codegen_params=dict(data.get("codegen_params", {})),
                profile_rows=int(data.get("profile_rows", 0)),
                timings_s={str(k): float(v) for k, v in dict(data.get("timings_s", {})).items()},
                explainer=dict(data.get("explainer", {})),
                extra={k: v for k, v in data.items() if k not in known},
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"compiled record lacks or mangles {exc}") from None
        return library

    # The mapping view of to_dict(), for code written against the dict this record replaces.
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
