"""`ml-pipeline registry ...`: list, inspect, register, approve, promote, roll back, archive, delete, compare."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from ml_pipeline.cli.checks import existing_registry, updating_registry
from ml_pipeline.cli.output import emit, json_option
from ml_pipeline.data.database import check_dsn
from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry import (
    ModelMetadata,
    ModelRegistry,
    ModelStatus,
    ServingState,
    is_database_location,
)
from ml_pipeline.model_registry import open_registry as open_location
from ml_pipeline.model_registry.database import DatabaseRegistry
from ml_pipeline.records import TrainingOutput
from ml_pipeline.redaction import redact

registry_option = click.option(
    "--registry",
    "registry_path",
    type=str,
    default=None,
    help="Registry folder or postgresql:// DSN [default: $ML_MODEL_REGISTRY_PATH or models/registry].",
)
actor_option = click.option("--actor", default=None, help="Who makes the change [default: OS user name].")
reason_option = click.option("--reason", default=None, help="Why, recorded in the history.")


def open_registry(registry_path: str | None) -> ModelRegistry:
    """The registry at `registry_path`, or at the configured ML_MODEL_REGISTRY_PATH; UsageError when it does not exist.

    Commands that change the registry use `checks.updating_registry` instead (writability checked first)."""
    return existing_registry(registry_path)


def state_view(state: ServingState) -> dict[str, Any]:
    """The serving state as people read it (and as --json prints it)."""
    return {
        "champion": state.champion_id,
        "challenger": state.challenger_id,
        "champion_share": state.champion_share,
        "challenger_share": state.challenger_share,
        "generation": state.generation,
        "updated_at": state.updated_at,
        "updated_by": state.updated_by,
    }


def _model_row(meta: ModelMetadata, state: ServingState) -> dict[str, Any]:
    share = {state.champion_id: state.champion_share, state.challenger_id: state.challenger_share}
    return {
        "model_id": meta.model_id,
        "status": meta.status,
        "traffic": share.get(meta.model_id),
        "created_at": meta.created_at,
        "auc": meta.auc_score,
        "precision": meta.precision,
        "recall": meta.recall,
        "f1": meta.f1_score,
        "compiled": meta.compiled is not None,
        "approved_by": meta.approved_by,
    }


@click.group("registry")
def registry() -> None:
    """Model registry: versions, approval, champion/challenger, history."""


@registry.command("list")
@click.option("--status", type=click.Choice([s.value for s in ModelStatus]), help="Only models with this status.")
@registry_option
@json_option
def list_cmd(status: str | None, registry_path: str | None, as_json: bool) -> None:
    """List registered models, oldest first, with their status and traffic share."""
    reg = open_registry(registry_path)
    state = reg.serving_state()
    emit([_model_row(m, state) for m in reg.list_models(status)], as_json)


@registry.command("show")
@click.argument("model_id")
@registry_option
@json_option
def show_cmd(model_id: str, registry_path: str | None, as_json: bool) -> None:
    """Show every recorded field of one model."""
    reg = open_registry(registry_path)
    data = reg.get_model(model_id).to_dict()
    data["path"] = reg.model_location(model_id)
    if not as_json:  # one level of nesting flattened, so people see every value
        if data.get("features"):  # the order `ml-pipeline predict --features` takes
            data["features"] = ", ".join(data["features"])
        data = {
            f"{key}.{k}" if isinstance(value, dict) else key: v
            for key, value in data.items()
            for k, v in (value.items() if isinstance(value, dict) else [(key, value)])
        }
    emit(data, as_json, title=model_id)


@registry.command("history")
@click.argument("model_id", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the last N entries.")
@registry_option
@json_option
def history_cmd(model_id: str | None, limit: int | None, registry_path: str | None, as_json: bool) -> None:
    """Show the recorded transitions (of one model, or all), oldest first."""
    entries = open_registry(registry_path).history(model_id, limit)
    rows = [asdict(e) for e in entries]
    if not as_json:
        rows = [{k: v for k, v in row.items() if k != "generation"} for row in rows]
    emit(rows, as_json)


@registry.command("register")
@click.argument("training_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@registry_option
@actor_option
@reason_option
@json_option
def register_cmd(
    training_dir: Path, registry_path: str | None, actor: str | None, reason: str | None, as_json: bool
) -> None:
    """Register the output folder of `ml-pipeline train` as a candidate (model.json + test_sample.npz)."""
    metadata = ModelMetadata.from_training_output(training_dir)
    with updating_registry(registry_path, create=True) as reg:
        meta = reg.register_model(
            TrainingOutput.model_file(training_dir),
            metadata,
            attachments=TrainingOutput.attachments(training_dir),
            actor=actor,
            reason=reason,
        )
    emit({"model_id": meta.model_id, "status": meta.status, "artifact_sha256": meta.artifact_sha256}, as_json)


@registry.command("approve")
@click.argument("model_id")
@registry_option
@actor_option
@reason_option
@json_option
def approve_cmd(model_id: str, registry_path: str | None, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Approve a candidate for production (needed before promotion)."""
    with updating_registry(registry_path) as reg:
        meta = reg.approve_model(model_id, actor=actor, reason=reason)
    emit({"model_id": meta.model_id, "status": meta.status, "approved_by": meta.approved_by}, as_json)


@registry.command("promote")
@click.argument("model_id")
@click.option("--force", is_flag=True, help="Promote even though the model was never approved.")
@registry_option
@actor_option
@reason_option
@json_option
def promote_cmd(
    model_id: str, force: bool, registry_path: str | None, actor: str | None, reason: str | None, as_json: bool
) -> None:
    """Make a model the champion; the previous champion is archived."""
    with updating_registry(registry_path) as reg:
        state = reg.promote_to_champion(
            model_id, force=force, actor=actor, reason=reason, progress=lambda line: click.echo(line, err=True)
        )
    emit(state_view(state), as_json)


@registry.command("rollback")
@click.argument("model_id", required=False)
@registry_option
@actor_option
@reason_option
@json_option
def rollback_cmd(
    model_id: str | None, registry_path: str | None, actor: str | None, reason: str | None, as_json: bool
) -> None:
    """Restore the most recently replaced champion (or the named former champion)."""
    with updating_registry(registry_path) as reg:
        state = reg.rollback(model_id, actor=actor, reason=reason)
    emit(state_view(state), as_json)


@registry.command("archive")
@click.argument("model_id")
@registry_option
@actor_option
@reason_option
@json_option
def archive_cmd(model_id: str, registry_path: str | None, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Archive a model that is not serving."""
    with updating_registry(registry_path) as reg:
        meta = reg.archive_model(model_id, actor=actor, reason=reason)
    emit({"model_id": meta.model_id, "status": meta.status}, as_json)


@registry.command("delete")
@click.argument("model_id")
@registry_option
@actor_option
@reason_option
@json_option
def delete_cmd(model_id: str, registry_path: str | None, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Delete a model that is not serving (its files; the history keeps its trace)."""
    with updating_registry(registry_path) as reg:
        reg.delete_model(model_id, actor=actor, reason=reason)
    emit({"model_id": model_id, "deleted": True}, as_json)


@registry.command("compare")
@click.argument("model_a")
@click.argument("model_b")
@registry_option
@json_option
def compare_cmd(model_a: str, model_b: str, registry_path: str | None, as_json: bool) -> None:
    """Compare two models metric by metric (delta = B − A)."""
    rows = open_registry(registry_path).compare_models(model_a, model_b)
    emit([{"metric": r.metric, model_a: r.a, model_b: r.b, "delta": r.delta} for r in rows], as_json)


@registry.command("migrate")
@click.option(
    "--from", "source", required=True, type=click.Path(file_okay=False, path_type=Path), help="Registry folder to copy."
)
@click.option("--to", "target", required=True, help="postgresql:// DSN of the database registry to copy it into.")
@json_option
def migrate_cmd(source: Path, target: str, as_json: bool) -> None:
    """Copy a registry folder (models, files, libraries, serving state, history) into a database, verified;
    safe to rerun."""
    from ml_pipeline.model_registry.migrate import migrate_directory  # asyncpg only when a database is used

    if not is_database_location(target):
        raise UsageError(f"--to {redact(target)} is not a postgresql:// DSN: give the database registry's DSN")
    check_dsn(target, "--to")
    folder = existing_registry(source)
    database = open_location(target)
    assert isinstance(database, DatabaseRegistry)
    try:
        report = migrate_directory(folder, database)
    finally:
        database.close()
    emit(asdict(report), as_json)


COMMANDS = [registry]
