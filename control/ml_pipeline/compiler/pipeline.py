"""compile_model: XGBoost JSON → verified `<out_dir>/<model_id>.so`, each stage timed and reported.

The library is built under a temporary name in `out_dir`, verified there, and only then renamed into place
(atomic on one filesystem): a refused or interrupted compilation never leaves a `<model_id>.so` behind.
The library gets mode 0755 (storage.LIBRARY_MODE) and a folder the compiler creates 0755, whatever the umask:
servers refuse a group- or world-writable library.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tl2cgen
import treelite
import xgboost as xgb

from ml_pipeline.compiler.build import DEFAULT_FLAGS, build_shared_library
from ml_pipeline.compiler.codegen import generate_sources, read_xgboost_model
from ml_pipeline.compiler.verify import Verification, load_test_sample, threshold_rows, verify_library
from ml_pipeline.explain.artifact import TREES_SUFFIX, build_explainer
from ml_pipeline.model_registry.storage import LIBRARY_MODE, make_dirs, sha256_file
from ml_pipeline.records import CompiledLibrary

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CompileResult:
    """A verified compiled model: where it is, its hash, how it was built and how it was checked."""

    model_id: str
    path: Path
    sha256: str
    num_features: int
    num_trees: int
    compiler: str
    flags: list[str]
    versions: dict[str, str]
    verification: Verification
    timings: dict[str, float]
    compiled_at: str
    translation_units: int = 1
    codegen_params: dict[str, Any] = field(default_factory=dict)
    profile_rows: int = 0
    artifact_sha256: str | None = None
    """sha256 of the XGBoost JSON the library was compiled from."""
    explainer: dict[str, Any] = field(default_factory=dict)
    """The packed trees for reason codes beside the library (explain.artifact), or why there are none."""

    def registry_record(self) -> CompiledLibrary:
        """The model's `compiled` record, which `ModelRegistry.record_compiled` stores (as `to_dict()`); servers
        load and verify the library from it."""
        return CompiledLibrary(
            path=str(self.path.resolve()),
            sha256=self.sha256,
            compiler=self.compiler,
            flags=tuple(self.flags),
            versions=dict(self.versions),
            verification=asdict(self.verification),
            compiled_at=self.compiled_at,
            artifact_sha256=self.artifact_sha256,
            num_trees=self.num_trees,
            translation_units=self.translation_units,
            codegen_params=dict(self.codegen_params),
            profile_rows=self.profile_rows,
            timings_s={stage: round(seconds, 3) for stage, seconds in self.timings.items()},
            explainer=dict(self.explainer),
        )


def toolchain_versions() -> dict[str, str]:
    """Versions of the libraries that produce and check the artifact (recorded with it)."""
    return {"treelite": treelite.__version__, "tl2cgen": tl2cgen.__version__, "xgboost": xgb.__version__}


@contextmanager
def _stage(name: str, timings: dict[str, float], progress: Progress) -> Iterator[None]:
    progress(f"{name}...")
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    progress(f"{name}: {timings[name]:.2f} s")


def compile_model(
    model_json: Path,
    out_dir: Path,
    model_id: str,
    expected_features: int | None = None,
    test_sample: Path | None = None,
    progress: Progress | None = None,
    codegen_params: dict[str, Any] | None = None,
    flags: tuple[str, ...] = DEFAULT_FLAGS,
    profile_guided: bool = True,
) -> CompileResult:
    """Compile an XGBoost JSON binary classifier into `<out_dir>/<model_id>.so`, verified against XGBoost.

    With a test sample and `profile_guided`, gcc lays out the branches by how the sample's rows take them
    (profile-guided optimisation: faster, same scores).
    Raises UsageError for a model that cannot be compiled (objective, feature count, unreadable) and
    VerificationFailed (nothing written) when the library's scores differ from XGBoost's.
    """
    report = progress or log.info
    timings: dict[str, float] = {}
    model = read_xgboost_model(Path(model_json), expected_features)
    artifact_sha256 = sha256_file(Path(model_json))
    if model.best_iteration is not None and model.best_iteration + 1 < model.num_trees:
        log.warning(
            "%s: best_iteration is %d but the model holds %d trees; all trees are compiled, as XGBoost predicts",
            model_json,
            model.best_iteration,
            model.num_trees,
        )
    sample = load_test_sample(test_sample, model.num_features) if test_sample is not None else None
    out_dir = Path(out_dir)
    make_dirs(out_dir)
    target = out_dir / f"{model_id}.so"
    report(f"compiling {model_id}: {model.num_trees} trees, {model.num_features} features -> {target}")
    with tempfile.TemporaryDirectory(prefix=f".{model_id}.build-", dir=out_dir) as work:
        work_dir = Path(work)
        with _stage("codegen", timings, report):
            sources = generate_sources(model, work_dir / "src", codegen_params)
        library = work_dir / f"{model_id}.so"
        with _stage("compile", timings, report):
            build = build_shared_library(sources, library, flags, profile_rows=sample if profile_guided else None)
        if build.profile_rows:
            report(f"branch layout guided by a profile of {build.profile_rows} test-sample rows")
        with _stage("verify", timings, report):
            generated = threshold_rows(model)
            reference = xgb.Booster(model_file=str(model.path))
            verification = verify_library(library, reference, generated, sample)
        report(
            f"verified on {verification.rows} rows ({verification.test_rows} test, {verification.threshold_rows} "
            f"threshold), max |diff| {verification.max_abs_diff:.3g}"
        )
        trees = work_dir / f"{model_id}{TREES_SUFFIX}"
        with _stage("explain", timings, report):
            rows = generated if sample is None else np.concatenate([sample, generated])
            explainer = build_explainer(model.path, trees, reference, rows)
        if "unavailable" in explainer:
            report(f"no reason codes for this model: {explainer['unavailable']}")
        else:
            report(
                f"reason codes checked against XGBoost on {explainer['rows']} rows, max |diff| "
                f"{explainer['max_abs_diff']:.3g}"
            )
        digest = sha256_file(library)
        os.chmod(library, LIBRARY_MODE)  # gcc's mode follows the umask (0777 under umask 000)
        if "path" in explainer:
            explainer["path"] = str((out_dir / trees.name).resolve())
            os.replace(trees, out_dir / trees.name)
        os.replace(library, target)
    return CompileResult(
        model_id=model_id,
        path=target.resolve(),
        sha256=digest,
        num_features=model.num_features,
        num_trees=model.num_trees,
        compiler=build.compiler,
        flags=build.flags,
        versions=toolchain_versions(),
        verification=verification,
        timings=timings,
        compiled_at=datetime.now(UTC).isoformat(timespec="seconds"),
        translation_units=build.translation_units,
        codegen_params=codegen_params or {},
        profile_rows=build.profile_rows,
        artifact_sha256=artifact_sha256,
        explainer=explainer,
    )
