"""`ml-pipeline compile MODEL_ID|--default`: turn a registered model into a verified native library."""

from __future__ import annotations

from pathlib import Path

import click

from ml_pipeline.cli.checks import writable_dir, writable_registry, writing
from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.cli.registry_cmds import open_registry, registry_option
from ml_pipeline.compiler.registered import DEFAULT_OUT_DIR, compile_registered, default_model_id, up_to_date_library
from ml_pipeline.errors import UsageError


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
@click.option(
    "--force",
    is_flag=True,
    help="Compile even a model that is not approved (candidate, archived), and rebuild a library that is up to date.",
)
@json_option
def compile_command(
    model_id: str | None, use_default: bool, registry_path: str | None, out_dir: Path, force: bool, as_json: bool
) -> None:
    """Compile MODEL_ID (or --default) into OUT/<model_id>.so, verified against XGBoost, recorded in the registry.

    A serving model's new library is published: servers swap to it within one poll interval."""
    if (model_id is None) == (not use_default):
        raise UsageError("give either a MODEL_ID or --default (the champion, else the newest approved model)")
    registry = open_registry(registry_path)
    chosen = model_id or default_model_id(registry)
    current = None if force else up_to_date_library(registry, chosen)
    if current is not None and Path(current["path"]).parent == out_dir.resolve():
        emit(
            {"model_id": chosen, "path": current["path"], "sha256": current["sha256"], "up_to_date": True},
            as_json,
            title=f"{chosen} is up to date (same artifact, compiler, flags, toolchain): not rebuilt (--force rebuilds)",
        )
        return
    # before gcc runs (seconds to minutes): the library and its record must have somewhere to go
    writable_dir(out_dir, "--out")
    writable_registry(registry_path)
    with writing(f"compile {chosen}"):
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
