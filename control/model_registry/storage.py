"""Crash-safe file primitives of the registry: atomic replace, atomic folder publish, durable append, sha256.

A crash (even SIGKILL or power loss after fsync) at any point leaves either the old or the new content
visible, never a partial file. Setting ML_REGISTRY_PAUSE_AT="<destination name>:<marker path>" makes a
writer create the marker and stop just before renaming that destination into place; the crash tests use it
to kill a writer at exactly that point.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from ml_pipeline.model_registry.errors import IntegrityError

PAUSE_ENV = "ML_REGISTRY_PAUSE_AT"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pause_before_rename(dest: Path) -> None:
    """Test hook (see module docstring): stop forever before `dest` is renamed into place."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    name, _, marker = spec.partition(":")
    if name == dest.name and marker:
        Path(marker).write_text(str(os.getpid()))
        while True:
            time.sleep(60)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file in the same folder, fsync, rename, fsync of the folder."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _pause_before_rename(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Atomically replace `path` with `payload` as indented JSON."""
    write_atomic(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> Any:
    """Parse a registry JSON file; IntegrityError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"corrupt registry file {path}: {exc}") from None


def append_line(path: Path, line: str) -> None:
    """Append one line with a single write (O_APPEND) and fsync it, so entries never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_durable(src: Path, dest: Path) -> str:
    """Copy `src` to `dest`, fsync it, and return the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def publish_dir(staging: Path, dest: Path) -> None:
    """Rename a fully written staging folder to `dest` in one step (fails if `dest` exists) and make it durable."""
    fsync_dir(staging)
    _pause_before_rename(dest)
    os.rename(staging, dest)
    fsync_dir(dest.parent)


def remove_dir(path: Path, trash_root: Path) -> None:
    """Remove a folder so that it disappears in one step: rename it into `trash_root`, then delete it."""
    trash = trash_root / f"{path.name}.{uuid.uuid4().hex}"
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
