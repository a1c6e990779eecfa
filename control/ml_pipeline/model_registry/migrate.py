"""Copy a directory registry into a database registry, with its history, in one transaction, then verify the copy.

Safe to rerun: models already copied are updated in place (their artifact must be the same), history entries are
added once each (by entry_id; entries written before entry_ids existed get one derived from their line), and the
serving state is copied with its generation. A database registry that moved on since (a newer generation than
the folder's, or the same generation with another state) is refused rather than overwritten.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_pipeline.errors import JobFailed
from ml_pipeline.model_registry.database import LIBRARY_FILE, DatabaseRegistry, sha256_bytes
from ml_pipeline.model_registry.metadata import ModelMetadata
from ml_pipeline.model_registry.records import ServingState
from ml_pipeline.model_registry.registry import ModelRegistry


@dataclass
class MigrationReport:
    """What a migration copied and verified (the CLI prints it)."""

    source: str
    target: str
    models: int = 0
    files: int = 0
    libraries: int = 0
    libraries_missing: list[str] = field(default_factory=list)
    history_entries: int = 0
    history_added: int = 0
    generation: int = 0
    champion: str | None = None
    challenger: str | None = None
    verified: bool = False


def history_records(source: ModelRegistry) -> list[dict[str, Any]]:
    """Every history entry of a directory registry as stored (oldest first), each with an entry_id, including
    those committed with the serving state that history.jsonl does not hold yet."""
    records: list[dict[str, Any]] = []
    try:
        text = source.history_file.read_text()
    except FileNotFoundError:
        text = ""
    for line in text.split("\n")[:-1]:
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record.get("entry_id"), str):
            record["entry_id"] = "line-" + hashlib.sha256(line.encode()).hexdigest()[:32]
        records.append(record)
    seen = {record["entry_id"] for record in records}
    pending = source._read_serving()[1]
    records += [entry for entry in pending if entry["entry_id"] not in seen]
    return records


def _model_files(source: ModelRegistry, meta: ModelMetadata, report: MigrationReport) -> dict[str, tuple[str, bytes]]:
    """A model's files (artifact, attachments, compiled library when present and intact) read and verified."""
    files: dict[str, tuple[str, bytes]] = {}
    artifact = source.artifact_path(meta.model_id, verify=True).read_bytes()
    files[meta.artifact_name] = (meta.artifact_sha256, artifact)
    for name, sha in meta.attachments.items():
        path = source.attachment_path(meta.model_id, name, verify=True)
        assert path is not None  # listed in attachments
        files[name] = (sha, path.read_bytes())
    compiled = meta.compiled or {}
    library_path, library_sha = compiled.get("path"), compiled.get("sha256")
    if library_path and library_sha:
        try:
            data = Path(library_path).read_bytes()
        except OSError:
            data = b""
        if data and sha256_bytes(data) == library_sha:
            files[LIBRARY_FILE] = (str(library_sha), data)
            report.libraries += 1
        else:
            report.libraries_missing.append(meta.model_id)
    return files


def _check_target_state(target_state: ServingState, source_state: ServingState, target: DatabaseRegistry) -> None:
    newer = target_state.generation > source_state.generation
    diverged = target_state.generation == source_state.generation and target_state != source_state
    if target_state.generation > 0 and (newer or diverged):
        raise JobFailed(
            f"the registry {target.location} changed since it was migrated (generation {target_state.generation}, "
            f"the folder's is {source_state.generation}): not overwritten"
        )


def migrate_directory(source: ModelRegistry, target: DatabaseRegistry) -> MigrationReport:
    """Copy `source` (a directory registry) into `target` in one transaction, then verify every model's files,
    the serving state and the history in the database; JobFailed when anything differs."""
    report = MigrationReport(source=source.location, target=target.location)
    state = source.serving_state()
    models = source.list_models()
    files = {meta.model_id: _model_files(source, meta, report) for meta in models}
    records = history_records(source)
    with target._writing():
        _check_target_state(target.serving_state(), state, target)
        logged_before = len(target.history())
        for meta in models:
            _copy_model(target, meta, files[meta.model_id])
        target._insert_history(records)
        if target.serving_state() != state:
            target._write_serving(state)
        report.history_added = len(target.history()) - logged_before
    report.models, report.files = len(models), sum(len(f) for f in files.values())
    report.history_entries, report.generation = len(records), state.generation
    report.champion, report.challenger = state.champion_id, state.challenger_id
    verify_copy(source, target, models, records)
    report.verified = True
    return report


def _copy_model(target: DatabaseRegistry, meta: ModelMetadata, files: dict[str, tuple[str, bytes]]) -> None:
    exists = target._call(lambda c: c.fetchval("SELECT 1 FROM registry_models WHERE model_id = $1", meta.model_id))
    if not exists:
        target._insert_model(meta, files)
        return
    copied = target._fetch_metadata(meta.model_id)
    if copied.artifact_sha256 != meta.artifact_sha256:
        raise JobFailed(
            f"{meta.model_id} in {target.location} has another artifact (sha256 {copied.artifact_sha256[:12]}, "
            f"the folder's is {meta.artifact_sha256[:12]}): not overwritten"
        )
    target._save_metadata(meta)

    async def files_in(c: Any) -> None:
        await c.executemany(
            "INSERT INTO registry_blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
            [(sha, len(data), data) for sha, data in files.values()],
        )
        await c.executemany(
            "INSERT INTO registry_model_files (model_id, name, sha256) VALUES ($1, $2, $3) "
            "ON CONFLICT (model_id, name) DO UPDATE SET sha256 = EXCLUDED.sha256",
            [(meta.model_id, name, sha) for name, (sha, _) in files.items()],
        )

    target._call(files_in)


def verify_copy(
    source: ModelRegistry, target: DatabaseRegistry, models: list[ModelMetadata], records: list[dict[str, Any]]
) -> None:
    """JobFailed naming the first difference between the folder and the database registry after a migration."""

    def differs(what: str) -> JobFailed:
        return JobFailed(f"migration to {target.location} not verified: {what} differs; rerun it")

    if target.serving_state() != source.serving_state():
        raise differs("the serving state")
    for meta in models:
        copied = target.get_model(meta.model_id)
        if copied.to_dict() != meta.to_dict():
            raise differs(f"the metadata of {meta.model_id}")
        target.artifact_path(meta.model_id, verify=True)
        for name in meta.attachments:
            target.attachment_path(meta.model_id, name, verify=True)
        if (source.verified_library(meta.model_id) is None) != (target.verified_library(meta.model_id) is None):
            raise differs(f"the compiled library of {meta.model_id}")
    ids = {
        json.loads(row["entry"])["entry_id"]
        for row in target._call(lambda c: c.fetch("SELECT entry FROM registry_history"))
    }
    missing = [record["entry_id"] for record in records if record["entry_id"] not in ids]
    if missing:
        raise differs(f"the history ({len(missing)} entries missing)")
