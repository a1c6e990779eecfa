"""`ml-pipeline compile MODEL_ID|--default`: turn a registered model into a verified native library."""

from __future__ import annotations

from pathlib import Path

import click

from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.cli.registry_cmds import open_registry, registry_option
from ml_pipeline.compiler import CompileResult, compile_model
from ml_pipeline.compiler.pipeline import Progress
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


@click.command("compile")
@click.argument("model_id", required=False)
@click.option("--default", "use_default", is_flag=True, help="Compile the champion, else the newest approved model.")
@registry_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT_DIR,
    show_default=True,
    help="Folder of the compiled libraries (<model_id>.so).",
)
@click.option("--force", is_flag=True, help="Also compile a model that is not approved (candidate, archived).")
@json_option
def compile_command(
    model_id: str | None, use_default: bool, registry_path: Path | None, out_dir: Path, force: bool, as_json: bool
) -> None:
    """Compile MODEL_ID (or --default) into OUT/<model_id>.so, verified against XGBoost, recorded in the registry."""
    if (model_id is None) == (not use_default):
        raise UsageError("give either a MODEL_ID or --default (the champion, else the newest approved model)")
    registry = open_registry(registry_path)
    chosen = model_id or default_model_id(registry)
    result = compile_registered(registry, chosen, out_dir, force, progress=lambda line: click.echo(line, err=True))
    emit(
        {
            "model_id": result.model_id,
            "path": str(result.path),
            "sha256": result.sha256,
            "trees": result.num_trees,
            "features": result.num_features,
            "profile_rows": result.profile_rows,
            "verified_rows": result.verification.rows,
            "max_abs_diff": f"{result.verification.max_abs_diff:.3g}",
            **{f"{stage}_s": round(seconds, 2) for stage, seconds in result.timings.items()},
        },
        as_json,
        title=f"compiled {result.model_id}",
    )


COMMANDS = [compile_command]
