"""ModelRegistry: a directory registry, the one source of truth for which model serves and how traffic splits.

Layout under the root: `models/<model_id>/{metadata.json, model.json, attachments...}`, `serving.json`
(champion, challenger, shares, generation, rollout), `history.jsonl` (append-only transitions) and `.lock`.
Writers from any number of processes are serialised by the file lock; every write is atomic, and
serving.json is the commit point of a transition: a model's stored status is only a cache of it, so a
writer killed between two files still leaves a consistent registry. The history entries of a transition are
written into serving.json with it (`pending_history`) before they are appended to history.jsonl: history()
shows the ones a writer killed after its commit point did not append, and the next writer appends them, each
once (they carry an `entry_id`). Folders and files get explicit modes (storage.DIR_MODE, storage.FILE_MODE),
whatever the umask: never group- or world-writable.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ml_pipeline.errors import JobFailed, PipelineError
from ml_pipeline.model_registry import storage
from ml_pipeline.model_registry.errors import IntegrityError, RegistryError
from ml_pipeline.model_registry.metadata import HEADLINE_METRICS, ModelMetadata, ModelStatus
from ml_pipeline.model_registry.records import SHARE_TOLERANCE, HistoryEntry, MetricComparison, ServingState

MODEL_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RESERVED_FILES = {"metadata.json"}
EXTRA_COMPARED_METRICS = ("specificity", "fpr", "fnr")
#: Key of a compiled record under which the compiler notes what the library was built from (artifact, toolchain).
BUILD_KEY = "build_key"
#: Key of serving.json holding the history entries committed with the state (see the module docstring).
PENDING_HISTORY = "pending_history"


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

    def __init__(
        self,
        path: str | os.PathLike[str],
        lock_timeout: float = 60.0,
        compiled_models_dir: str | os.PathLike[str] = "compiled_models",
    ) -> None:
        self.root = Path(path)
        #: Where a model that must serve but has no verified library is compiled to (promote, set_challenger).
        self.compiled_models_dir = Path(compiled_models_dir)
        self.models_root = self.root / "models"
        self.serving_file = self.root / "serving.json"
        self.history_file = self.root / "history.jsonl"
        self._staging = self.root / ".staging"
        self._lock = FileLock(self.root / ".lock", timeout=lock_timeout, mode=storage.FILE_MODE)
        #: Where the registry is, as people read it (a folder here, a DSN without its password in a database).
        self.location = str(self.root)

    #: Whether compiled libraries are stored in the registry itself (servers then load them from memory).
    libraries_in_store = False

    def close(self) -> None:
        """Release what the registry holds open (nothing for a directory)."""

    @contextlib.contextmanager
    def controller_lock(self, name: str) -> Iterator[None]:
        """Held by the one controller that drives `name` (the automatic rollout) of this registry; a second one
        gets a RegistryError at once. Released when the block ends or the process dies (even by kill -9)."""
        lock = FileLock(self.root / f".{name}.controller.lock", timeout=0, mode=storage.FILE_MODE)
        try:
            lock.acquire()
        except Timeout:
            raise RegistryError(
                f"another controller drives the {name} of {self.location}; stop it first, or let it finish"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def generation(self) -> int:
        """The serving state's generation alone: what a server polls to know whether anything changed."""
        return self.serving_state().generation

    def model_location(self, model_id: str) -> str:
        """Where a registered model's files are, as people read it; RegistryError when the id is unknown."""
        return str(self.model_dir(model_id))

    def library_bytes(self, model_id: str, sha256: str) -> bytes:
        """The bytes of a model's compiled library stored in the registry (see `libraries_in_store`); a directory
        registry records a path instead, so this is a RegistryError here."""
        raise RegistryError(f"{self.location} records compiled libraries by path, not their bytes ({model_id})")

    # ---- reading (no lock: every file is replaced atomically) ----

    def serving_state(self) -> ServingState:
        """The current serving state, read from serving.json (an empty state when nothing was promoted yet)."""
        return self._read_serving()[0]

    def _read_serving(self) -> tuple[ServingState, list[dict[str, Any]]]:
        """The serving state and the history entries committed with it (serving.json's `pending_history`)."""
        try:
            raw = self.serving_file.read_bytes()
        except FileNotFoundError:
            return ServingState(), []
        except OSError as exc:
            raise IntegrityError(f"cannot read registry file {self.serving_file}: {exc}") from None
        try:
            data = json.loads(raw)
            state = ServingState.from_dict(data)
            pending = data.get(PENDING_HISTORY) or []
            if not isinstance(pending, list):
                raise ValueError(f"{PENDING_HISTORY} is not a list")
            for entry in pending:
                if not isinstance(entry, dict) or not isinstance(entry.get("entry_id"), str):
                    raise ValueError(f"{PENDING_HISTORY} holds {entry!r}, not a history entry with an entry_id")
                HistoryEntry.from_dict(entry)
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            raise IntegrityError(f"corrupt registry file {self.serving_file}: {exc}") from None
        return state, pending

    def model_dir(self, model_id: str) -> Path:
        """Folder of a registered model; RegistryError when the id is unknown."""
        folder = self.models_root / self._valid_id(model_id)
        if not folder.is_dir():
            raise RegistryError(
                f"unknown model {model_id!r}: see registry.list_models()",
                cli=f"unknown model {model_id!r}: see `ml-pipeline registry list`",
            )
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

    def verified_library(self, model_id: str) -> dict[str, Any] | None:
        """The model's compiled record when its library is on disk, matches its recorded sha256 and was built from
        the model's current artifact; else None (the model must be compiled before it can serve)."""
        meta = self.get_model(model_id)
        compiled = meta.compiled or {}
        path, sha = compiled.get("path"), compiled.get("sha256")
        if not path or not sha or not Path(path).is_file():
            return None
        key = compiled.get(BUILD_KEY)
        if key is not None and key.get("artifact_sha256") != meta.artifact_sha256:
            return None  # built from another artifact (a record without a key predates keys: its hash still counts)
        try:
            return compiled if storage.sha256_file(Path(path)) == sha else None
        except OSError:
            return None

    def history(self, model_id: str | None = None, limit: int | None = None) -> list[HistoryEntry]:
        """Recorded transitions, oldest first (the last `limit` ones), optionally of one model only.

        Includes the entries committed with the serving state that are not in history.jsonl yet (a writer killed
        right after its commit point; the next writer appends them)."""
        try:
            pending = self._read_serving()[1]  # read first: entries appended meanwhile are then in the file
        except IntegrityError:
            pending = []  # a corrupt serving.json: its own readers say so; the history stays readable
        try:
            text = self.history_file.read_text()
        except FileNotFoundError:
            text = ""
        lines = text.split("\n")
        records: list[dict[str, Any]] = []
        for number, line in enumerate(lines[:-1], start=1):  # the last piece is "" or a torn, unfinished line
            try:
                record = json.loads(line)
                HistoryEntry.from_dict(record)
            except (ValueError, TypeError, AttributeError) as exc:
                raise IntegrityError(f"corrupt registry file {self.history_file}, line {number}: {exc}") from None
            records.append(record)
        logged = {record.get("entry_id") for record in records}
        records += [entry for entry in pending if entry["entry_id"] not in logged]
        entries = [HistoryEntry.from_dict(record) for record in records]
        entries = [entry for entry in entries if model_id is None or entry.model_id == model_id]
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
        """The most recently demoted champion that is still archived: the target of a rollback.

        That is the serving state's `previous_champion_id` (committed with the current champion) when it is still
        archived; else (a registry older than that field, or that model deleted or serving again as challenger)
        the most recent demotion in the history whose model is still archived."""
        previous = self.serving_state().previous_champion_id
        if previous is not None:
            with contextlib.suppress(RegistryError):
                if self.get_model(previous).status == ModelStatus.ARCHIVED:
                    return previous
        for entry in reversed(self.history()):
            demoted = entry.from_status == ModelStatus.CHAMPION and entry.to_status == ModelStatus.ARCHIVED
            if demoted and entry.model_id is not None:
                with contextlib.suppress(RegistryError):
                    if self.get_model(entry.model_id).status == ModelStatus.ARCHIVED:
                        return entry.model_id
        return None

    # ---- writing (under the lock) ----

    def register_model(
        self,
        model_path: str | os.PathLike[str],
        metadata: ModelMetadata,
        attachments: Mapping[str, str | os.PathLike[str]] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ModelMetadata:
        """Copy the artifact (and attachments) into a new model folder as a candidate, recording sha256s.

        What lies beside the model file is attached too (`ml_pipeline.records.ModelAttachments.beside`): the test
        sample of a training output folder or of `ModelTrainer.save_model`, and its drift reference when the
        metadata carries none; `attachments` adds files or replaces one of the same name. A corrupt or mismatched
        test sample or drift reference is refused (RegistryError naming the file) before anything is written.
        """
        # imported here: ml_pipeline.records imports this package
        from ml_pipeline.records import TEST_SAMPLE_FILE, ModelAttachments, TestSample, checked_drift_reference

        model_id = self._valid_id(metadata.model_id)
        source = Path(model_path)
        artifact_name = "model" + (source.suffix or ".json")
        given = {self._valid_attachment(n, artifact_name): Path(p) for n, p in (attachments or {}).items()}
        files = {artifact_name: source, **given}
        for name, path in files.items():
            if not path.is_file() or not os.access(path, os.R_OK):
                raise RegistryError(f"{path} (for {name}) is missing or unreadable: check the path")
        num_features = len(metadata.features) or None
        beside = ModelAttachments.beside(source, num_features)
        for name, path in beside.files.items():
            files.setdefault(self._valid_attachment(name, artifact_name), path)
        if TEST_SAMPLE_FILE in given:
            TestSample.read(given[TEST_SAMPLE_FILE], num_features)
        drift_reference = metadata.drift_reference if metadata.drift_reference is not None else beside.drift_reference
        if drift_reference is not None:
            checked_drift_reference(drift_reference, f"the metadata of {model_id}")
        return self._store_new_model(model_id, source, artifact_name, files, metadata, drift_reference, actor, reason)

    def _store_new_model(
        self,
        model_id: str,
        source: Path,
        artifact_name: str,
        files: dict[str, Path],
        metadata: ModelMetadata,
        drift_reference: dict[str, Any] | None,
        actor: str | None,
        reason: str | None,
    ) -> ModelMetadata:
        """Copy the validated files of a new candidate into its model folder, published in one step."""
        with self._writing():
            folder = self.models_root / model_id
            if folder.exists():
                raise RegistryError(f"model {model_id!r} is already registered: train a new version")
            staging = self._staging / f"{model_id}.{uuid.uuid4().hex}"
            staging.mkdir(parents=True)
            try:
                hashes = {name: storage.copy_durable(path, staging / name) for name, path in files.items()}
                sha = hashes.pop(artifact_name)
                meta = self._candidate(metadata, source, sha, artifact_name, hashes, drift_reference)
                storage.write_json_atomic(staging / "metadata.json", meta.to_dict())
                storage.publish_dir(staging, folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._log(actor, "register", model_id, None, ModelStatus.CANDIDATE, reason, detail=f"sha256 {sha[:12]}")
        return meta

    @staticmethod
    def _candidate(
        metadata: ModelMetadata,
        source: Path,
        sha: str,
        artifact_name: str,
        hashes: dict[str, str],
        drift_reference: dict[str, Any] | None,
    ) -> ModelMetadata:
        """The stored metadata of a new candidate; RegistryError when its artifact changed since `metadata`."""
        if metadata.artifact_sha256 and metadata.artifact_sha256 != sha:
            raise RegistryError(f"{source} changed since its metadata was built (sha256 differs): rebuild it")
        return replace(
            metadata,
            status=ModelStatus.CANDIDATE.value,
            artifact_sha256=sha,
            artifact_name=artifact_name,
            attachments=hashes,
            drift_reference=drift_reference,
            approved_at=None,
            approved_by=None,
        )

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
        self,
        model_id: str,
        force: bool = False,
        actor: str | None = None,
        reason: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> ServingState:
        """Make a model the champion; the previous one is archived (promote it again to roll back).

        A model without a verified compiled library is compiled first (`progress` gets the compiler's lines):
        what the registry says serves is always something every server can load. If it cannot be compiled,
        the registry is left unchanged."""
        self._check_promotable(self.get_model(model_id), force)
        self._ensure_servable(model_id, progress)
        with self._writing():
            meta = self.get_model(model_id)
            self._check_promotable(meta, force)
            self._ensure_servable(model_id, progress)
            action = "promote" if self._was_approved(meta) else "force-promote"
            return self._promote(meta, action, actor, reason)

    def _check_promotable(self, meta: ModelMetadata, force: bool) -> None:
        model_id = meta.model_id
        if meta.status == ModelStatus.CHAMPION:
            raise RegistryError(f"{model_id} is already the champion")
        if not (self._was_approved(meta) or force):
            raise RegistryError(
                f"{model_id} is {meta.status} and was never approved: call registry.approve_model({model_id!r}) "
                f"first, or promote_to_champion({model_id!r}, force=True)",
                cli=f"{model_id} is {meta.status} and was never approved: "
                f"run `ml-pipeline registry approve {model_id}` first, or promote with --force",
            )

    def rollback(
        self, model_id: str | None = None, actor: str | None = None, reason: str | None = None
    ) -> ServingState:
        """Restore a former champion (by default the most recently replaced one) without re-approval."""
        with self._writing():
            target = model_id if model_id is not None else self.former_champion()
            if target is None:
                raise RegistryError(
                    "no archived former champion to roll back to: see registry.history()",
                    cli="no archived former champion to roll back to: see `ml-pipeline registry history`",
                )
            meta = self.get_model(target)
            served = target == self.serving_state().previous_champion_id or any(
                e.to_status == ModelStatus.CHAMPION for e in self.history(target)
            )
            if meta.status != ModelStatus.ARCHIVED or not served:
                raise RegistryError(
                    f"{target} is {meta.status} and not a former champion: "
                    f"call registry.promote_to_champion({target!r}) instead",
                    cli=f"{target} is {meta.status} and not a former champion: "
                    f"use `ml-pipeline registry promote {target}` instead",
                )
            self._ensure_servable(target, None)
            return self._promote(meta, "rollback", actor, reason)

    def set_challenger(
        self,
        model_id: str,
        traffic: float,
        rollout: dict[str, Any] | None = None,
        actor: str | None = None,
        reason: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> ServingState:
        """Serve an approved model as challenger on `traffic` (a share 0–1); a previous challenger is released.

        Like promote_to_champion, a model without a verified compiled library is compiled first."""
        traffic = _check_share("traffic", traffic)
        if self._was_approved(self.get_model(model_id)):
            self._ensure_servable(model_id, progress)
        with self._writing():
            state = self.serving_state()
            meta = self.get_model(model_id)
            if state.champion_id is None:
                raise RegistryError("there is no champion yet: promote one before adding a challenger")
            if meta.status == ModelStatus.CHAMPION:
                raise RegistryError(f"{model_id} is the champion and cannot also be the challenger")
            if not self._was_approved(meta):
                raise RegistryError(
                    f"{model_id} is {meta.status}: call registry.approve_model({model_id!r}) first",
                    cli=f"{model_id} is {meta.status}: run `ml-pipeline registry approve {model_id}` first",
                )
            self.artifact_path(model_id, verify=True)
            self._ensure_servable(model_id, progress)
            previous = state.challenger_id
            released = previous is not None and previous != model_id
            entries = []
            if released:
                cleared = (ModelStatus.CHALLENGER, ModelStatus.APPROVED)
                entries.append(self._entry(actor, "clear-challenger", previous, *cleared, reason))
            detail = f"challenger share {state.challenger_share:g} -> {traffic:g}"
            entries.append(
                self._entry(actor, "set-challenger", model_id, meta.status, ModelStatus.CHALLENGER, reason, detail)
            )
            new = self._commit(
                state,
                actor,
                entries,
                challenger_id=model_id,
                champion_share=round(1.0 - traffic, 12),
                challenger_share=traffic,
                rollout=rollout,
            )
            if released and previous is not None:
                self._set_status(previous, ModelStatus.APPROVED)
            self._set_status(model_id, ModelStatus.CHALLENGER)
            return new

    def clear_challenger(self, actor: str | None = None, reason: str | None = None) -> ServingState:
        """Stop serving the challenger: all traffic back to the champion; the model returns to approved."""
        with self._writing():
            state = self.serving_state()
            if state.challenger_id is None:
                raise RegistryError("there is no challenger to clear")
            entry = self._entry(
                actor, "clear-challenger", state.challenger_id, ModelStatus.CHALLENGER, ModelStatus.APPROVED, reason
            )
            new = self._commit(
                state, actor, [entry], challenger_id=None, champion_share=1.0, challenger_share=0.0, rollout=None
            )
            self._set_status(state.challenger_id, ModelStatus.APPROVED)
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
                raise RegistryError(
                    "there is no challenger: set one with registry.set_challenger(model_id, traffic)",
                    cli="there is no challenger: set one with `ml-pipeline rollout start ID`",
                )
            if expected_generation is not None and state.generation != expected_generation:
                changed = (
                    f"the serving state changed meanwhile (generation {state.generation}, "
                    f"expected {expected_generation})"
                )
                raise RegistryError(
                    f"{changed}: read registry.serving_state() and retry",
                    cli=f"{changed}: check `ml-pipeline rollout status` and retry",
                )
            detail = f"challenger share {state.challenger_share:g} -> {challenger_share:g}"
            entry = self._entry(actor, "split", state.challenger_id, None, None, reason, detail)
            return self._commit(
                state, actor, [entry], champion_share=champion_share, challenger_share=challenger_share, rollout=rollout
            )

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
        """Store the compiled library's info (path, sha256, compiler, flags, versions, verification, compiled_at).

        When the model is serving (champion or challenger), the serving state moves to a new generation in the
        same step, so every server loads the new library within one poll interval."""
        missing = [k for k in ("path", "sha256") if k not in compiled]
        if missing:
            raise RegistryError(f"compiled info for {model_id} lacks {missing}")
        record = dict(compiled)
        with self._writing():
            meta = self._update_field(
                model_id, lambda meta: replace(meta, compiled=record), actor, "compile", str(compiled["path"])
            )
            state = self.serving_state()
            if model_id in (state.champion_id, state.challenger_id):
                detail = f"sha256 {str(compiled['sha256'])[:12]}"
                self._commit(state, actor, [self._entry(actor, "publish-library", model_id, None, None, None, detail)])
            return meta

    def record_drift_reference(
        self, model_id: str, reference: dict[str, Any], actor: str | None = None
    ) -> ModelMetadata:
        """Store the reference distributions drift monitoring compares live traffic against."""
        record = dict(reference)
        return self._update_field(
            model_id, lambda meta: replace(meta, drift_reference=record), actor, "drift-reference", None
        )

    # ---- internals ----

    def _ensure_servable(self, model_id: str, progress: Callable[[str], None] | None) -> None:
        """Compile `model_id` into compiled_models_dir unless it has a verified library built from its artifact.

        The compiler records its result through record_compiled (which takes this registry's lock again: the
        lock is re-entrant within a process). JobFailed, and no serving change, when it cannot be compiled."""
        self.artifact_path(model_id, verify=True)  # a tampered artifact is an integrity error, not a compile one
        if self.verified_library(model_id) is not None:
            return
        from ml_pipeline.compiler.registered import ensure_compiled  # imported only to compile (heavy, and a cycle)

        try:
            ensure_compiled(self, model_id, self.compiled_models_dir, progress)
        except PipelineError as exc:
            raise JobFailed(
                f"{model_id} cannot serve: it has no verified compiled library and compiling it failed "
                f"({exc}); the serving state is unchanged",
                cli=f"{model_id} cannot serve: it has no verified compiled library and compiling it failed "
                f"({exc.cli_message}); the serving state is unchanged",
            ) from None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the registry's file lock; clear what writers killed earlier left behind (never visible state) and
        append the history entries a writer killed after its commit point did not append."""
        storage.make_dirs(self.models_root)
        storage.make_dirs(self._staging, storage.PRIVATE_DIR_MODE)
        try:
            self._lock.acquire()
        except Timeout:
            raise JobFailed(f"registry {self.root} stayed locked by another writer: retry later") from None
        try:
            if self._lock.lock_counter == 1:
                self._remove_leftovers()
                self._reconcile_history()
            yield
        finally:
            self._lock.release()

    def _remove_leftovers(self) -> None:
        for leftover in self._staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        for pattern in (".*.tmp", "models/*/.*.tmp"):
            for tmp in self.root.glob(pattern):
                tmp.unlink(missing_ok=True)

    def _reconcile_history(self) -> None:
        """Append to history.jsonl the entries committed with the serving state that are not there yet (a writer
        killed after its commit point); idempotent: an entry is recognised by its entry_id. A torn last line
        (a writer killed mid-append) is cut off first, so that appends start on a line of their own."""
        storage.drop_torn_tail(self.history_file)
        try:
            state, pending = self._read_serving()
        except IntegrityError:
            return  # a corrupt serving.json: the writes that read the state refuse with that error
        if not pending:
            return
        logged = self._logged_entry_ids(state.generation)
        missing = [entry for entry in pending if entry["entry_id"] not in logged]
        if missing:
            storage.append_lines(self.history_file, [json.dumps(entry) for entry in missing])

    def _logged_entry_ids(self, generation: int) -> set[str]:
        """entry_ids of history.jsonl's entries from its end back to the first one of a generation before
        `generation` (every entry of `generation` comes after those: transitions are serialised)."""
        ids: set[str] = set()
        for line in storage.lines_from_end(self.history_file):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # history() names a corrupt line; here it is only not one of ours
            if not isinstance(record, dict):
                continue
            logged = record.get("generation")
            if isinstance(logged, int) and logged < generation:
                break
            if isinstance(record.get("entry_id"), str):
                ids.add(record["entry_id"])
        return ids

    def _promote(self, meta: ModelMetadata, action: str, actor: str | None, reason: str | None) -> ServingState:
        self.artifact_path(meta.model_id, verify=True)  # a tampered artifact never starts serving
        state = self.serving_state()
        changes: dict[str, Any] = {"champion_id": meta.model_id}
        if state.challenger_id == meta.model_id:
            changes.update(challenger_id=None, champion_share=1.0, challenger_share=0.0, rollout=None)
        entries = []
        if state.champion_id is not None:
            changes["previous_champion_id"] = state.champion_id
            entries.append(
                self._entry(actor, action, state.champion_id, ModelStatus.CHAMPION, ModelStatus.ARCHIVED, reason)
            )
        entries.append(self._entry(actor, action, meta.model_id, meta.status, ModelStatus.CHAMPION, reason))
        new = self._commit(state, actor, entries, **changes)
        if state.champion_id is not None:
            self._set_status(state.champion_id, ModelStatus.ARCHIVED)
        self._set_status(meta.model_id, ModelStatus.CHAMPION)
        return new

    def _commit(
        self, state: ServingState, actor: str | None, entries: list[dict[str, Any]], **changes: Any
    ) -> ServingState:
        """Write the next serving state (generation + 1) and the transition's history entries (`_entry`): the
        atomic commit point of every serving transition.

        The entries are written into serving.json with the state (PENDING_HISTORY), then appended to
        history.jsonl; should a crash come in between, history() still shows them and the next writer appends
        them (_reconcile_history): the history is as durable as the serving state."""
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
        journal = [{**entry, "generation": new.generation} for entry in entries]
        storage.write_json_atomic(self.serving_file, {**new.to_dict(), PENDING_HISTORY: journal})
        storage.pause_point(storage.AFTER_COMMIT)
        storage.append_lines(self.history_file, [json.dumps(entry) for entry in journal])
        return new

    def _update_field(
        self,
        model_id: str,
        update: Callable[[ModelMetadata], ModelMetadata],
        actor: str | None,
        action: str,
        detail: str | None,
    ) -> ModelMetadata:
        """Save `update(metadata)` of `model_id` (under the lock) and log `action`; returns the new metadata."""
        with self._writing():
            meta = update(self._read_metadata(self.model_dir(model_id)))
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
                f"cannot {verb} {meta.model_id}: it is the challenger (registry.clear_challenger() first)",
                cli=f"cannot {verb} {meta.model_id}: it is the challenger (`ml-pipeline rollout abort` first)",
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

    @staticmethod
    def _entry(
        actor: str | None,
        action: str,
        model_id: str | None,
        from_status: str | None,
        to_status: str | None,
        reason: str | None,
        detail: str | None = None,
    ) -> dict[str, Any]:
        """One history line (its generation None: `_commit` sets it for the entries of a serving transition)."""
        return {
            "time": _now(),
            "actor": actor or default_actor(),
            "action": action,
            "model_id": model_id,
            "from_status": None if from_status is None else str(from_status),
            "to_status": None if to_status is None else str(to_status),
            "reason": reason,
            "detail": detail,
            "generation": None,
            "entry_id": uuid.uuid4().hex,
        }

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
        """Append the entry of a change that is not a serving transition (those are logged by `_commit`)."""
        entry = self._entry(actor, action, model_id, from_status, to_status, reason, detail)
        entry["generation"] = None if state is None else state.generation
        storage.append_line(self.history_file, json.dumps(entry))
