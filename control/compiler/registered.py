"""Compile a model of the registry and record the result there: what `ml-pipeline compile` and the demo run."""

from __future__ import annotations

from pathlib import Path

from ml_pipeline.compiler.pipeline import CompileResult, Progress, compile_model
from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry import ModelRegistry, ModelStatus

COMPILABLE = frozenset({ModelStatus.APPROVED, ModelStatus.CHAMPION, ModelStatus.CHALLENGER})
TEST_SAMPLE = "test_sample.npz"
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


def compile_registered(
    registry: ModelRegistry, model_id: str, out_dir: Path, force: bool = False, progress: Progress | None = None
) -> CompileResult:
    """Compile a registered model (its verified artifact and test sample) and record the result in the registry."""
    meta = registry.get_model(model_id)
    if meta.status not in COMPILABLE and not force:
        raise UsageError(
            f"{model_id} is {meta.status}: only approved, champion or challenger models are compiled "
            f"(approve it with `ml-pipeline registry approve {model_id}`, or pass --force)"
        )
    result = compile_model(
        registry.artifact_path(model_id),
        out_dir,
        model_id,
        expected_features=len(meta.features) or None,
        test_sample=registry.attachment_path(model_id, TEST_SAMPLE),
        progress=progress,
    )
    registry.record_compiled(model_id, result.registry_record())
    return result
