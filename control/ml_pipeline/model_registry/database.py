"""DatabaseRegistry: the model registry kept in PostgreSQL/YugabyteDB, for registries that span machines.

The same API and semantics as the directory registry (ModelRegistry, whose transition rules it inherits):
only where things are kept differs. Models and their metadata are rows of `registry_models`; every file (model
JSON, test sample, drift reference, compiled library) is a `registry_blobs` row keyed by its sha256 (bytea);
the serving state and its generation are the single row of `registry_serving`; the history is the append-only
`registry_history`. Every write is one transaction that first locks the serving-state row
(`SELECT ... FOR UPDATE`), so writers on any number of machines are serialised like the directory's file lock,
and a writer killed anywhere leaves either all of its change or none of it. Statements use bound parameters
only. Files a caller needs as paths (the compiler's model JSON, the test sample) are written to a local cache
folder, verified against their sha256 first; servers load compiled libraries from memory (`library_bytes`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg

from ml_pipeline.data.database import check_dsn
from ml_pipeline.errors import JobFailed
from ml_pipeline.model_registry import storage
from ml_pipeline.model_registry.db_session import DatabaseSession
from ml_pipeline.model_registry.errors import IntegrityError, RegistryError
from ml_pipeline.model_registry.metadata import ModelMetadata, ModelStatus
from ml_pipeline.model_registry.migrations import migrate
from ml_pipeline.model_registry.records import HistoryEntry, ServingState
from ml_pipeline.model_registry.registry import ModelRegistry, _now, default_actor
from ml_pipeline.redaction import redact

#: Name of a model's compiled library among its files (a name no attachment can have: it starts with a dot).
LIBRARY_FILE = ".library"
POLL_QUERY = "SELECT generation FROM registry_serving WHERE id = 1"
LOCK_QUERY = "SELECT generation FROM registry_serving WHERE id = 1 FOR UPDATE"
TOUCH_QUERY = "UPDATE registry_serving SET generation = generation WHERE id = 1"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def _default_cache(location: str) -> Path:
    tag = sha256_bytes(location.encode())[:16]
    return Path(tempfile.gettempdir()) / f"voxguard-registry-{os.getuid()}" / tag


class DatabaseRegistry(ModelRegistry):
    """The model registry in a PostgreSQL/YugabyteDB database named by a postgresql:// DSN (see module docstring).

    `password` is used when the DSN carries none (ml_pipeline.data.database.password_for); `cache_dir` is the
    local folder of files materialised for callers that need paths (default: a private folder in the temp dir);
    `isolation` that of the write transactions (both levels serialise writers through the row lock).
    The schema is created or upgraded on first use (migrations.migrate)."""

    libraries_in_store = True

    def __init__(
        self,
        dsn: str,
        lock_timeout: float = 60.0,
        compiled_models_dir: str | os.PathLike[str] = "compiled_models",
        password: Any = None,
        cache_dir: str | os.PathLike[str] | None = None,
        connect_timeout: float = 10.0,
        isolation: str = "read_committed",
    ) -> None:
        check_dsn(dsn, "the model registry")
        #: Isolation of write transactions: read_committed, or repeatable_read (YSQL's default snapshot isolation,
        #: where a writer that waited for the row lock restarts its transaction: db_session.transaction).
        self.isolation = isolation
        self.dsn = dsn
        self.location = redact(dsn)
        self.lock_timeout = lock_timeout
        self.compiled_models_dir = Path(compiled_models_dir)
        #: The local cache of materialised files (the directory registry's root is its folder; here, this).
        self.root = Path(cache_dir) if cache_dir is not None else _default_cache(self.location)
        self.session = DatabaseSession(dsn, password if password is not None else _env_password(), connect_timeout)
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"DatabaseRegistry({self.location!r})"

    def close(self) -> None:
        """Close this registry's connections and its private event loop."""
        self.session.close()

    @contextlib.contextmanager
    def controller_lock(self, name: str) -> Iterator[None]:
        """Held by the one controller that drives `name` (the automatic rollout) of this registry: a session-level
        advisory lock on a connection of its own, so the database releases it when the controller's connection
        ends, even when the process is killed; a second controller gets a RegistryError at once."""
        conn = self.session.run(self.session.connect())
        try:
            key = f"voxguard-registry-{name}"
            try:
                held = self.session.run(conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key))
            except asyncpg.PostgresError as exc:
                raise RegistryError(
                    f"{self.location} cannot hold the {name} controller's lock (advisory locks: {exc}); "
                    "drive the rollout by hand with `ml-pipeline rollout step`"
                ) from None
            if not held:
                raise RegistryError(
                    f"another controller drives the {name} of {self.location}; stop it first, or let it finish"
                )
            yield
        finally:
            self.session.run(conn.close())

    # ---- queries ----

    def _call(self, fn: Callable[[asyncpg.Connection], Any]) -> Any:
        if not self._schema_ready:
            self.session.call(migrate)
            self._schema_ready = True
        return self.session.call(fn)

    def ensure_schema(self) -> int:
        """Create or upgrade the registry's tables (idempotent); returns the schema version."""
        version: int = self.session.call(migrate)
        self._schema_ready = True
        return version

    # ---- reading ----

    def generation(self) -> int:
        """The serving state's generation: one primary-key read, what servers poll."""
        return int(self._call(lambda c: c.fetchval(POLL_QUERY)))

    def _read_serving(self) -> tuple[ServingState, list[dict[str, Any]]]:
        row = self._call(lambda c: c.fetchrow("SELECT generation, state FROM registry_serving WHERE id = 1"))
        try:
            data = json.loads(row["state"])
            data["generation"] = int(row["generation"])
            return ServingState.from_dict(data), []
        except (ValueError, TypeError) as exc:
            raise IntegrityError(f"corrupt serving state in {self.location}: {exc}") from None

    def _fetch_metadata(self, model_id: str) -> ModelMetadata:
        self._valid_id(model_id)
        text = self._call(lambda c: c.fetchval("SELECT metadata FROM registry_models WHERE model_id = $1", model_id))
        if text is None:
            raise RegistryError(
                f"unknown model {model_id!r}: see registry.list_models()",
                cli=f"unknown model {model_id!r}: see `ml-pipeline registry list`",
            )
        return self._parse_metadata(model_id, text)

    def _parse_metadata(self, model_id: str, text: str) -> ModelMetadata:
        try:
            meta = ModelMetadata.from_dict(json.loads(text))
        except (ValueError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"corrupt metadata of {model_id} in {self.location}: {exc}") from None
        if meta.model_id != model_id:
            raise IntegrityError(f"corrupt metadata of {model_id} in {self.location}: model_id {meta.model_id!r}")
        return meta

    def model_dir(self, model_id: str) -> Path:
        """The local cache folder of a registered model's materialised files; RegistryError when unknown."""
        self._fetch_metadata(model_id)
        return self.root / model_id

    def model_location(self, model_id: str) -> str:
        """The model's place in the database, as people read it."""
        self._fetch_metadata(model_id)
        return f"{self.location} (model {model_id})"

    def get_model(self, model_id: str) -> ModelMetadata:
        """Metadata of one model, with its status as the serving state says."""
        return self._with_status(self._fetch_metadata(model_id), self.serving_state())

    def list_models(self, status: str | None = None) -> list[ModelMetadata]:
        """All models (oldest first), or those with the given status."""
        if status is not None and status not in set(ModelStatus):
            raise RegistryError(f"unknown status {status!r}: use one of {', '.join(ModelStatus)}")
        rows = self._call(lambda c: c.fetch("SELECT model_id, metadata FROM registry_models"))
        state = self.serving_state()
        models = [self._with_status(self._parse_metadata(r["model_id"], r["metadata"]), state) for r in rows]
        models.sort(key=lambda m: (m.created_at, m.model_id))
        return [m for m in models if status is None or m.status == status]

    def artifact_path(self, model_id: str, verify: bool = True) -> Path:
        """A local copy of the model's artifact, verified against its recorded sha256 (IntegrityError otherwise)."""
        meta = self.get_model(model_id)
        return self._materialise(model_id, meta.artifact_name, meta.artifact_sha256, verify)

    def attachment_path(self, model_id: str, name: str, verify: bool = True) -> Path | None:
        """A local copy of an attached file (e.g. test_sample.npz), None if the model has none of that name."""
        meta = self.get_model(model_id)
        if name not in meta.attachments:
            return None
        return self._materialise(model_id, name, meta.attachments[name], verify)

    def _file_bytes(self, model_id: str, name: str) -> bytes | None:
        return self._call(  # type: ignore[no-any-return]
            lambda c: c.fetchval(
                "SELECT b.data FROM registry_model_files f JOIN registry_blobs b ON b.sha256 = f.sha256 "
                "WHERE f.model_id = $1 AND f.name = $2",
                model_id,
                name,
            )
        )

    def _materialise(self, model_id: str, name: str, expected: str, verify: bool) -> Path:
        """The cached copy of a model file, fetched and checked against `expected` when absent or not matching."""
        path = self.root / model_id / name
        if path.is_file() and (not verify or storage.sha256_file(path) == expected):
            return path
        data = self._file_bytes(model_id, name)
        if data is None:
            raise IntegrityError(f"{name} of {model_id} is missing from the registry {self.location}")
        if sha256_bytes(data) != expected:
            raise IntegrityError(
                f"{name} of {model_id} in {self.location} does not match its recorded sha256: "
                "tampered or corrupted, not served"
            )
        storage.make_dirs(self.root.parent, storage.PRIVATE_DIR_MODE)
        storage.make_dirs(self.root, storage.PRIVATE_DIR_MODE)
        storage.make_dirs(path.parent, storage.PRIVATE_DIR_MODE)
        storage.write_atomic(path, data)
        return path

    def verified_library(self, model_id: str) -> dict[str, Any] | None:
        """The model's compiled record when the registry stores its library under the recorded sha256 and it was
        built from the model's current artifact; else None (the model must be compiled before it can serve)."""
        meta = self.get_model(model_id)
        compiled = meta.compiled or {}
        sha = compiled.get("sha256")
        if not sha:
            return None
        key = compiled.get("build_key")
        if key is not None and key.get("artifact_sha256") != meta.artifact_sha256:
            return None
        stored = self._call(
            lambda c: c.fetchval(
                "SELECT sha256 FROM registry_model_files WHERE model_id = $1 AND name = $2", model_id, LIBRARY_FILE
            )
        )
        return compiled if stored == sha else None

    def library_bytes(self, model_id: str, sha256: str) -> bytes:
        """The compiled library stored for `model_id`, checked against `sha256`; IntegrityError when it is missing
        or its bytes do not hash to `sha256` (nothing unverified is ever handed to the loader)."""
        data = self._file_bytes(model_id, LIBRARY_FILE)
        if data is None:
            raise IntegrityError(f"the compiled library of {model_id} is missing from {self.location}")
        if sha256_bytes(data) != sha256:
            raise IntegrityError(
                f"the compiled library of {model_id} in {self.location} does not match sha256 {sha256[:12]}: not loaded"
            )
        return data

    def history(self, model_id: str | None = None, limit: int | None = None) -> list[HistoryEntry]:
        """Recorded transitions, oldest first (the last `limit` ones), optionally of one model only."""
        if limit is not None and limit <= 0:
            return []
        rows = self._call(
            lambda c: c.fetch(
                "SELECT entry FROM registry_history WHERE ($1::text IS NULL OR model_id = $1) "
                "ORDER BY seq DESC LIMIT $2",
                model_id,
                limit,
            )
        )
        entries = []
        for row in reversed(rows):
            try:
                entries.append(HistoryEntry.from_dict(json.loads(row["entry"])))
            except (ValueError, TypeError) as exc:
                raise IntegrityError(f"corrupt history entry in {self.location}: {exc}") from None
        return entries

    # ---- writing: one transaction, the serving-state row locked first ----

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction whose first statement locks the serving-state row, so every writer, on any machine,
        waits for the one before it (at most `lock_timeout` seconds); nested blocks join the outer one."""
        if not self._schema_ready:
            self.ensure_schema()
        timeout_ms = str(max(1, int(self.lock_timeout * 1000)))

        snapshot = self.isolation != "read_committed"

        async def lock(c: asyncpg.Connection) -> None:
            await c.execute("SELECT set_config('lock_timeout', $1, true)", timeout_ms)
            await c.fetchval(LOCK_QUERY)
            if snapshot:  # the row is rewritten, so a writer that waited for it conflicts and restarts on a fresh
                await c.execute(TOUCH_QUERY)  # snapshot, instead of reading what it cannot see (e.g. a new blob)

        try:
            with self.session.transaction(first=lock, isolation=self.isolation):
                yield
        except asyncpg.LockNotAvailableError:
            raise JobFailed(f"registry {self.location} stayed locked by another writer: retry later") from None

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
        """Store a new candidate's files as blobs and its metadata as a row, in one transaction."""
        contents = {name: path.read_bytes() for name, path in files.items()}
        hashes = {name: sha256_bytes(data) for name, data in contents.items()}
        sha = hashes.pop(artifact_name)
        meta = self._candidate(metadata, source, sha, artifact_name, hashes, drift_reference)
        with self._writing():
            exists = self._call(lambda c: c.fetchval("SELECT 1 FROM registry_models WHERE model_id = $1", model_id))
            if exists:
                raise RegistryError(f"model {model_id!r} is already registered: train a new version")
            self._insert_model(meta, {name: (sha256_bytes(data), data) for name, data in contents.items()})
            self._log(actor, "register", model_id, None, ModelStatus.CANDIDATE, reason, detail=f"sha256 {sha[:12]}")
        return meta

    def _insert_model(self, meta: ModelMetadata, files: dict[str, tuple[str, bytes]]) -> None:
        """Insert a model's row, its files' blobs (shared by sha256) and its file rows; inside a transaction."""

        async def insert(c: asyncpg.Connection) -> None:
            await c.executemany(
                "INSERT INTO registry_blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
                [(sha, len(data), data) for sha, data in files.values()],
            )
            await c.execute(
                "INSERT INTO registry_models (model_id, created_at, status, metadata) VALUES ($1, $2, $3, $4::jsonb)",
                meta.model_id,
                meta.created_at,
                meta.status,
                json.dumps(meta.to_dict()),
            )
            await c.executemany(
                "INSERT INTO registry_model_files (model_id, name, sha256) VALUES ($1, $2, $3)",
                [(meta.model_id, name, sha) for name, (sha, _) in files.items()],
            )

        self._call(insert)

    def _store_library(self, model_id: str, sha: str, data: bytes) -> None:
        """Store a compiled library's bytes and make it the model's library; inside a transaction."""

        async def store(c: asyncpg.Connection) -> None:
            await c.execute(
                "INSERT INTO registry_blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
                sha,
                len(data),
                data,
            )
            await c.execute(
                "INSERT INTO registry_model_files (model_id, name, sha256) VALUES ($1, $2, $3) "
                "ON CONFLICT (model_id, name) DO UPDATE SET sha256 = EXCLUDED.sha256",
                model_id,
                LIBRARY_FILE,
                sha,
            )
            await self._drop_unused_blobs(c)

        self._call(store)

    @staticmethod
    async def _drop_unused_blobs(c: asyncpg.Connection) -> None:
        await c.execute(
            "DELETE FROM registry_blobs b WHERE NOT EXISTS "
            "(SELECT 1 FROM registry_model_files f WHERE f.sha256 = b.sha256)"
        )

    def record_compiled(self, model_id: str, compiled: dict[str, Any], actor: str | None = None) -> ModelMetadata:
        """Store the compiled library's bytes (read from compiled['path'] and checked against compiled['sha256'])
        and its record; a serving model moves the serving state to a new generation in the same transaction."""
        missing = [k for k in ("path", "sha256") if k not in compiled]
        if missing:
            raise RegistryError(f"compiled info for {model_id} lacks {missing}")
        self._fetch_metadata(model_id)  # an unknown model is refused before its library is read
        try:
            data = Path(compiled["path"]).read_bytes()
        except OSError as exc:
            raise RegistryError(f"cannot read the compiled library {compiled['path']}: {exc.strerror}") from None
        sha = str(compiled["sha256"])
        if sha256_bytes(data) != sha:
            raise IntegrityError(f"{compiled['path']} does not match sha256 {sha[:12]}: recompile it")
        with self._writing():
            self._fetch_metadata(model_id)
            self._store_library(model_id, sha, data)
            return super().record_compiled(model_id, compiled, actor)

    def delete_model(self, model_id: str, actor: str | None = None, reason: str | None = None) -> None:
        """Remove a model that is not serving, with its files (blobs no other model uses); history keeps its trace."""
        with self._writing():
            meta = self.get_model(model_id)
            self._refuse_if_serving(meta, "delete")

            async def delete(c: asyncpg.Connection) -> None:
                await c.execute("DELETE FROM registry_models WHERE model_id = $1", model_id)
                await self._drop_unused_blobs(c)

            self._call(delete)
            self._log(actor, "delete", model_id, meta.status, None, reason)
        shutil.rmtree(self.root / model_id, ignore_errors=True)

    def _update_field(
        self,
        model_id: str,
        update: Callable[[ModelMetadata], ModelMetadata],
        actor: str | None,
        action: str,
        detail: str | None,
    ) -> ModelMetadata:
        with self._writing():
            self._save_metadata(update(self._fetch_metadata(model_id)))
            self._log(actor, action, model_id, None, None, None, detail=detail)
            return self.get_model(model_id)

    def _set_status(self, model_id: str, status: ModelStatus) -> None:
        self._save_metadata(replace(self._fetch_metadata(model_id), status=status.value))

    def _save_metadata(self, meta: ModelMetadata) -> None:
        done = self._call(
            lambda c: c.execute(
                "UPDATE registry_models SET metadata = $2::jsonb, status = $3 WHERE model_id = $1",
                meta.model_id,
                json.dumps(meta.to_dict()),
                meta.status,
            )
        )
        if done != "UPDATE 1":
            raise RegistryError(f"unknown model {meta.model_id!r}: see registry.list_models()")

    def _commit(
        self, state: ServingState, actor: str | None, entries: list[dict[str, Any]], **changes: Any
    ) -> ServingState:
        """Write the next serving state (generation + 1) and the transition's history entries, in the transaction
        that holds the serving-state row: both become visible together at commit, or neither."""
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
        self._write_serving(new)
        self._insert_history([{**entry, "generation": new.generation} for entry in entries])
        return new

    def _write_serving(self, state: ServingState) -> None:
        data = state.to_dict()
        generation = data.pop("generation")
        self._call(
            lambda c: c.execute(
                "UPDATE registry_serving SET generation = $1, state = $2::jsonb WHERE id = 1",
                generation,
                json.dumps(data),
            )
        )

    def _insert_history(self, entries: list[dict[str, Any]]) -> None:
        """Append history entries (an entry already there, by entry_id, is skipped: reruns add nothing)."""
        if not entries:
            return
        rows = [(e["entry_id"], e.get("model_id"), e.get("generation"), json.dumps(e)) for e in entries]
        self._call(
            lambda c: c.executemany(
                "INSERT INTO registry_history (entry_id, model_id, generation, entry) VALUES ($1, $2, $3, $4::jsonb) "
                "ON CONFLICT (entry_id) DO NOTHING",
                rows,
            )
        )

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
        entry = self._entry(actor, action, model_id, from_status, to_status, reason, detail)
        entry["generation"] = None if state is None else state.generation
        self._insert_history([entry])


def _env_password() -> str | None:
    """YUGABYTE_PASSWORD, handed to the driver only when the DSN carries no password of its own."""
    return os.environ.get("YUGABYTE_PASSWORD") or None
