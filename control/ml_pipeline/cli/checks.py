"""Checks the commands run before any long work: the registry exists, output folders can be written.

- `writable_dir(path, what)` / `writable_file(path, what)`: UsageError (exit 2) naming the option unless the
  folder (or the file's folder) exists and takes a new file, or can be created. Works as root too (root
  ignores permission bits): a probe file is created and removed, so read-only mounts and /proc are caught.
- `existing_registry(path)`: the registry at --registry / ML_MODEL_REGISTRY_PATH (a folder or a
  postgresql:// DSN), UsageError naming the path when a folder does not exist (a mistyped path is not an
  empty registry). `writable_registry(path)` also checks
  that it can be written (`create=True`: it may not exist yet, for `registry register`).
- `writing(what)`: a context in which PermissionError and other OSError (a registry file that cannot be
  replaced, a full disk) become one line: UsageError (exit 2) for permissions, JobFailed (exit 1) otherwise.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ml_pipeline.config import MLPipelineConfig
from ml_pipeline.data.database import check_dsn, check_scheme
from ml_pipeline.errors import JobFailed, PipelineError, UsageError
from ml_pipeline.model_registry import ModelRegistry, is_database_location, open_registry


def os_error(exc: OSError, what: str | None = None) -> PipelineError:
    """One-line error for an OSError: UsageError for permissions (fix them), JobFailed for the rest."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    text = f"{what}: " if what else ""
    if isinstance(exc, PermissionError):
        return UsageError(f"{text}{reason}{where}; fix the permissions or choose another path")
    return JobFailed(f"{text}{reason}{where}")


def _nearest_existing(path: Path) -> Path:
    current = path
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    return current


def writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """`path` as a Path when it is a writable folder or can be created as one; UsageError naming `what` otherwise."""
    folder = Path(path)
    existing = _nearest_existing(folder.absolute())
    if not existing.is_dir():
        blocker = "is not a folder" if existing == folder.absolute() else f"cannot be created: {existing} is a file"
        raise UsageError(f"{what} {folder} {blocker}; choose another path")
    problem = None
    if not os.access(existing, os.W_OK | os.X_OK):
        problem = "permission denied"
    else:
        try:
            with tempfile.TemporaryFile(dir=existing, prefix=".write-check-"):
                pass
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem is not None:
        state = "is not writable" if existing == folder.absolute() else f"cannot be created in {existing}"
        raise UsageError(f"{what} {folder} {state}: {problem}; choose another path or fix the permissions")
    return folder


def writable_file(path: str | os.PathLike[str], what: str) -> Path:
    """`path` when the file can be written (its folder writable, or creatable); UsageError naming `what` otherwise."""
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"{what} {file} is a folder: give a file name")
    writable_dir(file.parent, f"{what} {file}: its folder")
    if file.exists() and not os.access(file, os.W_OK):
        raise UsageError(f"{what} {file} is not writable: permission denied; choose another path")
    return file


def registry_location(path: str | os.PathLike[str] | None) -> tuple[str, str]:
    """Where the registry is (a folder or a postgresql:// DSN) and where that came from (--registry or
    ML_MODEL_REGISTRY_PATH)."""
    if path is not None:
        return os.fspath(path), "--registry"
    return MLPipelineConfig.from_env().model.model_registry_path, "ML_MODEL_REGISTRY_PATH"


def registry_root(path: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The registry folder and where it came from (--registry or ML_MODEL_REGISTRY_PATH)."""
    location, origin = registry_location(path)
    return Path(location), origin


def _database_registry(location: str, origin: str) -> ModelRegistry | None:
    """The database registry `location` names (its DSN checked, not yet connected), None for a folder."""
    if not is_database_location(location):
        check_scheme(location, f"registry ({origin})", alternatives="a folder")
        return None
    check_dsn(location, origin)
    return open_registry(location)


def existing_registry(path: str | os.PathLike[str] | None) -> ModelRegistry:
    """The registry at `path` (default ML_MODEL_REGISTRY_PATH); UsageError naming the path when a folder does not
    exist. A postgresql:// DSN opens the database registry (its tables are created on first use)."""
    location, origin = registry_location(path)
    database = _database_registry(location, origin)
    if database is not None:
        return database
    root = Path(location)
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        raise UsageError(
            f"registry {root} ({origin}) {state}: check the path; `ml-pipeline registry register` creates a registry"
        )
    return ModelRegistry(root)


def writable_registry(path: str | os.PathLike[str] | None, create: bool = False) -> ModelRegistry:
    """Like existing_registry (or any creatable folder when `create`), and writable; UsageError otherwise."""
    location, origin = registry_location(path)
    database = _database_registry(location, origin)
    if database is not None:
        return database
    root = Path(location)
    registry = ModelRegistry(root) if create else existing_registry(path)
    writable_dir(root, f"registry ({origin})")
    return registry


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn an OSError raised inside into one line naming `what` (see os_error)."""
    try:
        yield
    except OSError as exc:
        raise os_error(exc, what) from None


@contextlib.contextmanager
def updating_registry(path: str | os.PathLike[str] | None, create: bool = False) -> Iterator[ModelRegistry]:
    """writable_registry(path, create), with the registry's own failed writes (OSError) as one line."""
    registry = writable_registry(path, create)
    with writing(f"registry {registry.location}"):
        yield registry
