"""Compile a model of the registry and record the result there: what `ml-pipeline compile`, promotion and the demo
run. A library that is already built from the same artifact with the same toolchain and flags is reused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml_pipeline.compiler.build import DEFAULT_FLAGS, compiler_version, find_compiler
from ml_pipeline.compiler.pipeline import CompileResult, Progress, compile_model, toolchain_versions
from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry import ModelRegistry, ModelStatus
from ml_pipeline.model_registry.registry import BUILD_KEY
from ml_pipeline.records import TEST_SAMPLE_FILE

COMPILABLE = frozenset({ModelStatus.APPROVED, ModelStatus.CHAMPION, ModelStatus.CHALLENGER})
TEST_SAMPLE = TEST_SAMPLE_FILE  # the attachment the compiler verifies against and profiles with
DEFAULT_OUT_DIR = Path("compiled_models")


def default_model_id(registry: ModelRegistry) -> str:
    """The champion, else the newest approved model; UsageError when there is neither."""
    champion = registry.serving_state().champion_id
    if champion is not None:
        return champion
    approved = registry.list_models(status=ModelStatus.APPROVED.value)
    if not approved:
        raise UsageError("no champion and no approved model to compile: approve one (`ml-pipeline registry approve`)")
    return approved[-1].model_id


def build_key(registry: ModelRegistry, model_id: str) -> dict[str, Any]:
    """What decides the library's bytes: the artifact's sha256, the C compiler, the flags and the toolchain."""
    return {
        "artifact_sha256": registry.get_model(model_id).artifact_sha256,
        "compiler": compiler_version(find_compiler()),
        "flags": list(DEFAULT_FLAGS),
        "versions": toolchain_versions(),
    }


def verified_library(registry: ModelRegistry, model_id: str) -> dict[str, Any] | None:
    """The model's compiled record when its library is verified (see ModelRegistry.verified_library), else None."""
    return registry.verified_library(model_id)


def up_to_date_library(registry: ModelRegistry, model_id: str) -> dict[str, Any] | None:
    """The compiled record when compiling again would build the same library (same build key), else None."""
    compiled = verified_library(registry, model_id)
    if compiled is None or compiled.get(BUILD_KEY) != build_key(registry, model_id):
        return None
    return compiled


def compile_registered(
    registry: ModelRegistry, model_id: str, out_dir: Path, force: bool = False, progress: Progress | None = None
) -> CompileResult:
    """Compile a registered model (its verified artifact and test sample) and record the result in the registry.

    Recording a new library of a serving model publishes it: servers swap to it within one poll interval."""
    meta = registry.get_model(model_id)
    if meta.status not in COMPILABLE and not force:
        raise UsageError(
            f"{model_id} is {meta.status}: only approved, champion or challenger models are compiled "
            f"(approve it with `ml-pipeline registry approve {model_id}`, or pass --force)"
        )
    key = build_key(registry, model_id)
    result = compile_model(
        registry.artifact_path(model_id),
        out_dir,
        model_id,
        expected_features=len(meta.features) or None,
        test_sample=registry.attachment_path(model_id, TEST_SAMPLE),
        progress=progress,
    )
    registry.record_compiled(model_id, {**result.registry_record().to_dict(), BUILD_KEY: key})
    return result


def ensure_compiled(
    registry: ModelRegistry, model_id: str, out_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """The model's verified compiled record, compiling it first when it has none (whatever its status)."""
    compiled = registry.verified_library(model_id)
    if compiled is not None:
        return compiled
    (progress or (lambda _line: None))(f"{model_id} has no verified compiled library: compiling it")
    compile_registered(registry, model_id, out_dir, force=True, progress=progress)
    compiled = registry.verified_library(model_id)
    if compiled is None:  # recorded just now; only a concurrent writer could have changed it
        raise UsageError(f"{model_id}: its compiled library changed while it was being recorded; retry")
    return compiled
