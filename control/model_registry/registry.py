"""ModelRegistry: a directory registry, the one source of truth for which model serves and how traffic splits.

Layout under the root: `models/<model_id>/{metadata.json, model.json, attachments...}`, `serving.json`
(champion, challenger, shares, generation, rollout), `history.jsonl` (append-only transitions) and `.lock`.
Writers from any number of processes are serialised by the file lock; every write is atomic, and
serving.json is the commit point of a transition: a model's stored status is only a cache of it, so a
writer killed between two files still leaves a consistent registry.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ml_pipeline.errors import JobFailed
from ml_pipeline.model_registry import storage
from ml_pipeline.model_registry.errors import IntegrityError, RegistryError
from ml_pipeline.model_registry.metadata import HEADLINE_METRICS, ModelMetadata, ModelStatus
from ml_pipeline.model_registry.records import SHARE_TOLERANCE, HistoryEntry, MetricComparison, ServingState

MODEL_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RESERVED_FILES = {"metadata.json"}
EXTRA_COMPARED_METRICS = ("specificity", "fpr", "fnr")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def default_actor() -> str:
    """The OS user name, recorded as actor when none is given."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _check_share(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise RegistryError(f"{name}={value!r} must be a number from 0 to 1")
    return float(value)


class ModelRegistry:
    """Register, approve, promote, split traffic between and retire models stored under one directory."""

    def __init__(self, path: str | os.PathLike[str], lock_timeout: float = 60.0) -> None:
        self.root = Path(path)
        self.models_root = self.root / "models"
        self.serving_file = self.root / "serving.json"
        self.history_file = self.root / "history.jsonl"
        self._staging = self.root / ".staging"
        self._lock = FileLock(self.root / ".lock", timeout=lock_timeout)

    # ---- reading (no lock: every file is replaced atomically) ----

    def serving_state(self) -> ServingState:
        """The current serving state, read from serving.json (an empty state when nothing was promoted yet)."""
        try:
            raw = self.serving_file.read_bytes()
        except FileNotFoundError:
            return ServingState()
        except OSError as exc:
            raise IntegrityError(f"cannot read registry file {self.serving_file}: {exc}") from None
        try:
            return ServingState.from_dict(json.loads(raw))
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            raise IntegrityError(f"corrupt registry file {self.serving_file}: {exc}") from None

    def model_dir(self, model_id: str) -> Path:
        """Folder of a registered model; RegistryError when the id is unknown."""
        folder = self.models_root / self._valid_id(model_id)
        if not folder.is_dir():
            raise RegistryError(f"unknown model {model_id!r}: see `ml-pipeline registry list`")
        return folder

    def get_model(self, model_id: str) -> ModelMetadata:
        """Metadata of one model, with its status as the serving state says."""
        return self._with_status(self._read_metadata(self.model_dir(model_id)), self.serving_state())

    def list_models(self, status: str | None = None) -> list[ModelMetadata]:
        """All models (oldest first), or those with the given status."""
        if status is not None and status not in set(ModelStatus):
            raise RegistryError(f"unknown status {status!r}: use one of {', '.join(ModelStatus)}")
        if not self.models_root.is_dir():
            return []
        state = self.serving_state()
        models = [
            self._with_status(meta, state)
            for folder in self.models_root.iterdir()
            if not folder.name.startswith(".") and (meta := self._read_unless_deleted(folder)) is not None
        ]
        models.sort(key=lambda m: (m.created_at, m.model_id))
        return [m for m in models if status is None or m.status == status]

    def artifact_path(self, model_id: str, verify: bool = True) -> Path:
        """Path of the model's artifact; with `verify`, IntegrityError unless it matches the recorded sha256."""
        meta = self.get_model(model_id)
        return self._verified(self.model_dir(model_id) / meta.artifact_name, meta.artifact_sha256, verify)

    def attachment_path(self, model_id: str, name: str, verify: bool = True) -> Path | None:
        """Path of an attached file (e.g. test_sample.npz), None if the model has none of that name."""
        meta = self.get_model(model_id)
        if name not in meta.attachments:
            return None
        return self._verified(self.model_dir(model_id) / name, meta.attachments[name], verify)

    def get_champion(self) -> tuple[str, Path] | None:
        """(model_id, verified artifact path) of the champion, or None when there is none."""
        champion = self.serving_state().champion_id
        return None if champion is None else (champion, self.artifact_path(champion))

    def get_challenger(self) -> tuple[str, Path] | None:
        """(model_id, verified artifact path) of the challenger, or None when there is none."""
        challenger = self.serving_state().challenger_id
        return None if challenger is None else (challenger, self.artifact_path(challenger))

    def history(self, model_id: str | None = None, limit: int | None = None) -> list[HistoryEntry]:
        """Recorded transitions, oldest first (the last `limit` ones), optionally of one model only."""
        try:
            text = self.history_file.read_text()
        except FileNotFoundError:
            return []
        lines = text.split("\n")
        entries: list[HistoryEntry] = []
        for number, line in enumerate(lines[:-1], start=1):  # the last piece is "" or a torn, unfinished line
            try:
                entry = HistoryEntry.from_dict(json.loads(line))
            except (ValueError, TypeError) as exc:
                raise IntegrityError(f"corrupt registry file {self.history_file}, line {number}: {exc}") from None
            if model_id is None or entry.model_id == model_id:
                entries.append(entry)
        return entries if limit is None else entries[-limit:] if limit > 0 else []

    def compare_models(self, model_a: str, model_b: str) -> list[MetricComparison]:
        """Metric by metric comparison of two models, delta = b − a."""
        a, b = self.get_model(model_a), self.get_model(model_b)
        rows = [self._compare(name, getattr(a, name), getattr(b, name)) for name in HEADLINE_METRICS]
        rows += [
            self._compare(name, a.metrics.get(name), b.metrics.get(name))
            for name in EXTRA_COMPARED_METRICS
            if name in a.metrics or name in b.metrics
        ]
        rows.append(self._compare("threshold", a.threshold, b.threshold))
        rows.append(self._compare("training_samples", a.training_samples, b.training_samples))
        return rows

    def former_champion(self) -> str | None:
        """The most recently demoted champion that is still archived: the target of a rollback."""
        for entry in reversed(self.history()):
            if entry.from_status == ModelStatus.CHAMPION and entry.to_status == ModelStatus.ARCHIVED:
                with contextlib.suppress(RegistryError):
                    if self.get_model(entry.model_id).status == ModelStatus.ARCHIVED:
                        return entry.model_id
        return None

    # ---- writing (under the lock) ----

    def register_model(
        self,
        model_path: str | os.PathLike[str],
        metadata: ModelMetadata,
        attachments: dict[str, str | os.PathLike[str]] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ModelMetadata:
        """Copy the artifact (and attachments) into a new model folder as a candidate, recording sha256s."""
        model_id = self._valid_id(metadata.model_id)
        source = Path(model_path)
        artifact_name = "model" + (source.suffix or ".json")
        files = {
            artifact_name: source,
            **{self._valid_attachment(n, artifact_name): Path(p) for n, p in (attachments or {}).items()},
        }
        for name, path in files.items():
            if not path.is_file() or not os.access(path, os.R_OK):
                raise RegistryError(f"{path} (for {name}) is missing or unreadable: check the path")
        with self._writing():
            folder = self.models_root / model_id
            if folder.exists():
                raise RegistryError(f"model {model_id!r} is already registered: train a new version")
            staging = self._staging / f"{model_id}.{uuid.uuid4().hex}"
            staging.mkdir(parents=True)
            try:
                hashes = {name: storage.copy_durable(path, staging / name) for name, path in files.items()}
                sha = hashes.pop(artifact_name)
                if metadata.artifact_sha256 and metadata.artifact_sha256 != sha:
                    raise RegistryError(f"{source} changed since its metadata was built (sha256 differs): rebuild it")
                meta = replace(
                    metadata,
                    status=ModelStatus.CANDIDATE.value,
                    artifact_sha256=sha,
                    artifact_name=artifact_name,
                    attachments=hashes,
                    approved_at=None,
                    approved_by=None,
                )
                storage.write_json_atomic(staging / "metadata.json", meta.to_dict())
                storage.publish_dir(staging, folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._log(actor, "register", model_id, None, ModelStatus.CANDIDATE, reason, detail=f"sha256 {sha[:12]}")
        return meta

    def approve_model(self, model_id: str, actor: str | None = None, reason: str | None = None) -> ModelMetadata:
        """Record the manual approval of a candidate, which makes it eligible for production."""
        with self._writing():
            meta = self.get_model(model_id)
            if meta.status != ModelStatus.CANDIDATE:
                raise RegistryError(f"{model_id} is {meta.status}: only a candidate can be approved")
            actor = actor or default_actor()
            meta = replace(meta, status=ModelStatus.APPROVED.value, approved_at=_now(), approved_by=actor)
            self._save_metadata(meta)
            self._log(actor, "approve", model_id, ModelStatus.CANDIDATE, ModelStatus.APPROVED, reason)
        return meta

    def promote_to_champion(
        self, model_id: str, force: bool = False, actor: str | None = None, reason: str | None = None
    ) -> ServingState:
        """Make a model the champion; the previous one is archived (promote it again to roll back)."""
        with self._writing():
            meta = self.get_model(model_id)
            if meta.status == ModelStatus.CHAMPION:
                raise RegistryError(f"{model_id} is already the champion")
            if not (self._was_approved(meta) or force):
                raise RegistryError(
                    f"{model_id} is {meta.status} and was never approved: "
                    f"run `ml-pipeline registry approve {model_id}` first, or promote with --force"
                )
            action = "promote" if self._was_approved(meta) else "force-promote"
            return self._promote(meta, action, actor, reason)

    def rollback(
        self, model_id: str | None = None, actor: str | None = None, reason: str | None = None
    ) -> ServingState:
        """Restore a former champion (by default the most recently replaced one) without re-approval."""
        with self._writing():
            target = model_id if model_id is not None else self.former_champion()
            if target is None:
                raise RegistryError("no archived former champion to roll back to: see `ml-pipeline registry history`")
            meta = self.get_model(target)
            served = any(e.to_status == ModelStatus.CHAMPION for e in self.history(target))
            if meta.status != ModelStatus.ARCHIVED or not served:
                raise RegistryError(
                    f"{target} is {meta.status} and not a former champion: "
                    f"use `ml-pipeline registry promote {target}` instead"
                )
            return self._promote(meta, "rollback", actor, reason)

    def set_challenger(
        self,
        model_id: str,
        traffic: float,
        rollout: dict[str, Any] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ServingState:
        """Serve an approved model as challenger on `traffic` (a share 0–1); a previous challenger is released."""
        traffic = _check_share("traffic", traffic)
        with self._writing():
            state = self.serving_state()
            meta = self.get_model(model_id)
            if state.champion_id is None:
                raise RegistryError("there is no champion yet: promote one before adding a challenger")
            if meta.status == ModelStatus.CHAMPION:
                raise RegistryError(f"{model_id} is the champion and cannot also be the challenger")
            if not self._was_approved(meta):
                raise RegistryError(f"{model_id} is {meta.status}: run `ml-pipeline registry approve {model_id}` first")
            self.artifact_path(model_id, verify=True)
            previous = state.challenger_id
            new = self._commit(
                state,
                actor,
                challenger_id=model_id,
                champion_share=round(1.0 - traffic, 12),
                challenger_share=traffic,
                rollout=rollout,
            )
            if previous is not None and previous != model_id:
                self._set_status(previous, ModelStatus.APPROVED)
                self._log(
                    actor, "clear-challenger", previous, ModelStatus.CHALLENGER, ModelStatus.APPROVED, reason, new
                )
            self._set_status(model_id, ModelStatus.CHALLENGER)
            detail = f"challenger share {state.challenger_share:g} -> {traffic:g}"
            self._log(actor, "set-challenger", model_id, meta.status, ModelStatus.CHALLENGER, reason, new, detail)
            return new

    def clear_challenger(self, actor: str | None = None, reason: str | None = None) -> ServingState:
        """Stop serving the challenger: all traffic back to the champion; the model returns to approved."""
        with self._writing():
            state = self.serving_state()
            if state.challenger_id is None:
                raise RegistryError("there is no challenger to clear")
            new = self._commit(state, actor, challenger_id=None, champion_share=1.0, challenger_share=0.0, rollout=None)
            self._set_status(state.challenger_id, ModelStatus.APPROVED)
            self._log(
                actor,
                "clear-challenger",
                state.challenger_id,
                ModelStatus.CHALLENGER,
                ModelStatus.APPROVED,
                reason,
                new,
            )
            return new

    def set_traffic_split(
        self,
        champion_share: float,
        challenger_share: float,
        rollout: dict[str, Any] | None = None,
        actor: str | None = None,
        reason: str | None = None,
        expected_generation: int | None = None,
    ) -> ServingState:
        """Change the champion/challenger split (and the saved rollout state) of the current challenger.

        With `expected_generation`, refuse if the serving state changed since the caller read it.
        """
        champion_share = _check_share("champion_share", champion_share)
        challenger_share = _check_share("challenger_share", challenger_share)
        if abs(champion_share + challenger_share - 1.0) > SHARE_TOLERANCE:
            raise RegistryError(f"shares {champion_share:g} + {challenger_share:g} must sum to 1")
        with self._writing():
            state = self.serving_state()
            if state.challenger_id is None:
                raise RegistryError("there is no challenger: set one with `ml-pipeline rollout start ID`")
            if expected_generation is not None and state.generation != expected_generation:
                raise RegistryError(
                    f"the serving state changed meanwhile (generation {state.generation}, "
                    f"expected {expected_generation}): check `ml-pipeline rollout status` and retry"
                )
            new = self._commit(
                state, actor, champion_share=champion_share, challenger_share=challenger_share, rollout=rollout
            )
            detail = f"challenger share {state.challenger_share:g} -> {challenger_share:g}"
            self._log(actor, "split", state.challenger_id, None, None, reason, new, detail)
            return new

    def archive_model(self, model_id: str, actor: str | None = None, reason: str | None = None) -> ModelMetadata:
        """Retire a model that is not serving (it stays on disk and can be promoted again)."""
        with self._writing():
            meta = self.get_model(model_id)
            self._refuse_if_serving(meta, "archive")
            if meta.status == ModelStatus.ARCHIVED:
                raise RegistryError(f"{model_id} is already archived")
            self._set_status(model_id, ModelStatus.ARCHIVED)
            self._log(actor, "archive", model_id, meta.status, ModelStatus.ARCHIVED, reason)
            return self.get_model(model_id)

    def delete_model(self, model_id: str, actor: str | None = None, reason: str | None = None) -> None:
        """Remove a model that is not serving, its folder disappearing in one step; history keeps its trace."""
        with self._writing():
            meta = self.get_model(model_id)
            self._refuse_if_serving(meta, "delete")
            storage.remove_dir(self.model_dir(model_id), self._staging)
            self._log(actor, "delete", model_id, meta.status, None, reason)

    def record_compiled(self, model_id: str, compiled: dict[str, Any], actor: str | None = None) -> ModelMetadata:
        """Store the compiled library's info (path, sha256, compiler, flags, versions, verification, compiled_at)."""
        missing = [k for k in ("path", "sha256") if k not in compiled]
        if missing:
            raise RegistryError(f"compiled info for {model_id} lacks {missing}")
        return self._update_field(model_id, "compiled", dict(compiled), actor, "compile", str(compiled["path"]))

    def record_drift_reference(
        self, model_id: str, reference: dict[str, Any], actor: str | None = None
    ) -> ModelMetadata:
        """Store the reference distributions drift monitoring compares live traffic against."""
        return self._update_field(model_id, "drift_reference", dict(reference), actor, "drift-reference", None)

    # ---- internals ----

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the registry's file lock; clear what writers killed earlier left behind (never visible state)."""
        self.models_root.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise JobFailed(f"registry {self.root} stayed locked by another writer: retry later") from None
        try:
            if self._lock.lock_counter == 1:
                self._remove_leftovers()
            yield
        finally:
            self._lock.release()

    def _remove_leftovers(self) -> None:
        for leftover in self._staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        for pattern in (".*.tmp", "models/*/.*.tmp"):
            for tmp in self.root.glob(pattern):
                tmp.unlink(missing_ok=True)

    def _promote(self, meta: ModelMetadata, action: str, actor: str | None, reason: str | None) -> ServingState:
        self.artifact_path(meta.model_id, verify=True)  # a tampered artifact never starts serving
        state = self.serving_state()
        changes: dict[str, Any] = {"champion_id": meta.model_id}
        if state.challenger_id == meta.model_id:
            changes.update(challenger_id=None, champion_share=1.0, challenger_share=0.0, rollout=None)
        new = self._commit(state, actor, **changes)
        if state.champion_id is not None:
            self._set_status(state.champion_id, ModelStatus.ARCHIVED)
            self._log(actor, action, state.champion_id, ModelStatus.CHAMPION, ModelStatus.ARCHIVED, reason, new)
        self._set_status(meta.model_id, ModelStatus.CHAMPION)
        self._log(actor, action, meta.model_id, meta.status, ModelStatus.CHAMPION, reason, new)
        return new

    def _commit(self, state: ServingState, actor: str | None, **changes: Any) -> ServingState:
        """Write the next serving state (generation + 1): the atomic commit point of every serving transition."""
        try:
            new = replace(
                state,
                **changes,
                generation=state.generation + 1,
                updated_at=_now(),
                updated_by=actor or default_actor(),
            )
        except ValueError as exc:
            raise RegistryError(f"refused: {exc}") from None
        storage.write_json_atomic(self.serving_file, new.to_dict())
        return new

    def _update_field(
        self, model_id: str, name: str, value: dict[str, Any], actor: str | None, action: str, detail: str | None
    ) -> ModelMetadata:
        with self._writing():
            meta = replace(self._read_metadata(self.model_dir(model_id)), **{name: value})
            self._save_metadata(meta)
            self._log(actor, action, model_id, None, None, None, detail=detail)
            return self.get_model(model_id)

    def _set_status(self, model_id: str, status: ModelStatus) -> None:
        self._save_metadata(replace(self._read_metadata(self.model_dir(model_id)), status=status.value))

    def _save_metadata(self, meta: ModelMetadata) -> None:
        storage.write_json_atomic(self.model_dir(meta.model_id) / "metadata.json", meta.to_dict())

    def _read_unless_deleted(self, folder: Path) -> ModelMetadata | None:
        """Metadata of a listed folder, or None if a concurrent delete removed it meanwhile."""
        try:
            return self._read_metadata(folder)
        except IntegrityError:
            if folder.is_dir():
                raise
            return None

    def _read_metadata(self, folder: Path) -> ModelMetadata:
        path = folder / "metadata.json"
        data = storage.read_json(path)
        try:
            meta = ModelMetadata.from_dict(data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"corrupt registry file {path}: {exc}") from None
        if meta.model_id != folder.name:
            raise IntegrityError(f"corrupt registry file {path}: model_id {meta.model_id!r} != folder {folder.name!r}")
        return meta

    @staticmethod
    def _with_status(meta: ModelMetadata, state: ServingState) -> ModelMetadata:
        """The status the serving state implies; a stored champion/challenger status it contradicts is stale."""
        if meta.model_id == state.champion_id:
            status = ModelStatus.CHAMPION
        elif meta.model_id == state.challenger_id:
            status = ModelStatus.CHALLENGER
        elif meta.status == ModelStatus.CHAMPION:
            status = ModelStatus.ARCHIVED
        elif meta.status == ModelStatus.CHALLENGER:
            status = ModelStatus.APPROVED
        else:
            return meta
        return replace(meta, status=status.value)

    @staticmethod
    def _was_approved(meta: ModelMetadata) -> bool:
        return meta.approved_at is not None or meta.status in (ModelStatus.APPROVED, ModelStatus.CHALLENGER)

    @staticmethod
    def _refuse_if_serving(meta: ModelMetadata, verb: str) -> None:
        if meta.status == ModelStatus.CHAMPION:
            raise RegistryError(f"cannot {verb} {meta.model_id}: it is the champion (promote another model first)")
        if meta.status == ModelStatus.CHALLENGER:
            raise RegistryError(
                f"cannot {verb} {meta.model_id}: it is the challenger (`ml-pipeline rollout abort` first)"
            )

    @staticmethod
    def _verified(path: Path, expected: str, verify: bool) -> Path:
        if not path.is_file():
            raise IntegrityError(f"{path} is missing from the registry")
        if verify and storage.sha256_file(path) != expected:
            raise IntegrityError(f"{path} does not match its recorded sha256: tampered or corrupted, not served")
        return path

    @staticmethod
    def _valid_id(model_id: str) -> str:
        if not isinstance(model_id, str) or not MODEL_ID_PATTERN.fullmatch(model_id):
            raise RegistryError(f"invalid model id {model_id!r}: use letters, digits, '.', '_' and '-'")
        return model_id

    @staticmethod
    def _valid_attachment(name: str, artifact_name: str) -> str:
        if not MODEL_ID_PATTERN.fullmatch(name) or name in RESERVED_FILES or name == artifact_name:
            raise RegistryError(f"invalid attachment name {name!r}: a plain file name other than {artifact_name}")
        return name

    @staticmethod
    def _compare(metric: str, a: Any, b: Any) -> MetricComparison:
        numeric = isinstance(a, (int, float)) and isinstance(b, (int, float))
        return MetricComparison(metric, a, b, (b - a) if numeric else None)

    def _log(
        self,
        actor: str | None,
        action: str,
        model_id: str | None,
        from_status: str | None,
        to_status: str | None,
        reason: str | None,
        state: ServingState | None = None,
        detail: str | None = None,
    ) -> None:
        entry = {
            "time": _now(),
            "actor": actor or default_actor(),
            "action": action,
            "model_id": model_id,
            "from_status": None if from_status is None else str(from_status),
            "to_status": None if to_status is None else str(to_status),
            "reason": reason,
            "detail": detail,
            "generation": None if state is None else state.generation,
        }
        storage.append_line(self.history_file, json.dumps(entry))
