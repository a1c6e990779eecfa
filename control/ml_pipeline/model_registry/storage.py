"""Crash-safe file primitives of the registry: atomic replace, atomic folder publish, durable append, sha256.

A crash (even SIGKILL or power loss after fsync) at any point leaves either the old or the new content
visible, never a partial file. Setting ML_REGISTRY_PAUSE_AT="<point>:<marker path>" makes a writer create
the marker and stop at that point: a destination's name (e.g. `serving.json`, `metadata.json`, a model id)
stops it just before renaming that destination into place, `history.jsonl` just before appending to the
history, and `serving.json.committed` (AFTER_COMMIT) just after serving.json was renamed into place, before
the history is appended; the crash tests use it to kill a writer at exactly that point.

Modes are explicit, whatever the process umask: folders DIR_MODE (PRIVATE_DIR_MODE for the staging folder),
files FILE_MODE, compiled libraries at most LIBRARY_MODE; nothing is ever group- or world-writable, so no other
local user can rewrite a model's metadata (and with it the library and the sha256 a server loads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ml_pipeline.model_registry.errors import IntegrityError

PAUSE_ENV = "ML_REGISTRY_PAUSE_AT"
#: Pause point just after the commit point of a serving transition, before its history is appended.
AFTER_COMMIT = "serving.json.committed"

DIR_MODE = 0o755  # the registry root, models/, each model folder, the compiled-models folder
PRIVATE_DIR_MODE = 0o700  # .staging: no other user can reach into a model folder before it is published
FILE_MODE = 0o644  # metadata.json, artifacts and attachments, serving.json, history.jsonl, .lock
LIBRARY_MODE = 0o755  # a compiled model library


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pause_point(name: str) -> None:
    """Test hook (see module docstring): stop forever at the point called `name` when PAUSE_ENV names it."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    point, _, marker = spec.partition(":")
    if point == name and marker:
        Path(marker).write_text(str(os.getpid()))
        while True:
            time.sleep(60)


def _pause_before_rename(dest: Path) -> None:
    pause_point(dest.name)


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """Create folder `path` and its missing parents, each with exactly `mode` (whatever the umask); a folder that
    already exists is left as it is. FileExistsError when `path` exists and is not a folder."""
    missing: list[Path] = []
    current = Path(path)
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)  # the umask only removes bits: never more open than `mode`, even briefly
        except FileExistsError:
            continue  # created meanwhile by another writer, with the same mode
        os.chmod(folder, mode)
    if not Path(path).is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")


def _create(path: Path, flags: int, mode: int) -> int:
    """Open a new file (O_CREAT | O_EXCL | flags) with exactly `mode`, whatever the umask."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | flags, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` (file mode `mode`): temp file in the same folder, fsync, rename, fsync of the
    folder."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = _create(tmp, os.O_WRONLY, mode)
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
    append_lines(path, [line])


def append_lines(path: Path, lines: list[str]) -> None:
    """Append lines with a single write (O_APPEND) and fsync them; a new file gets FILE_MODE."""
    data = "".join(line.rstrip("\n") + "\n" for line in lines).encode()
    if not data:
        return
    pause_point(path.name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            fd = _create(path, os.O_WRONLY | os.O_APPEND, FILE_MODE)
        except FileExistsError:  # created meanwhile
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        fsync_dir(path.parent)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_torn_tail(path: Path) -> None:
    """Cut an unfinished last line (a writer killed mid-append, or power loss) off a line file, so that the next
    append starts on a line of its own instead of extending the torn one into a corrupt line."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        end, block = size, 1 << 16
        while end > 0:
            start = max(0, end - block)
            newline = os.pread(fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                os.ftruncate(fd, start + newline + 1)
                break
            end = start
        else:
            os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def lines_from_end(path: Path, block: int = 1 << 16) -> Iterator[bytes]:
    """The complete, non-empty lines of a line file, last first, read backwards in blocks (an unfinished last
    line is skipped); nothing when the file does not exist."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, the generator may stop early
    except FileNotFoundError:
        return
    with f:
        end = os.fstat(f.fileno()).st_size
        left, at_end = b"", True  # left: the start of a line whose beginning is in the block before
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            pieces = (f.read(end - start) + left).split(b"\n")
            end = start
            if at_end:
                if len(pieces) == 1:
                    continue  # no newline yet: all of it belongs to the unfinished last line
                pieces[-1], at_end = b"", False
            left = pieces[0]
            yield from (line for line in reversed(pieces[1:]) if line)
        if left and not at_end:
            yield left


def copy_durable(src: Path, dest: Path, mode: int = FILE_MODE) -> str:
    """Copy `src` to a new file `dest` (file mode `mode`), fsync it, and return the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, os.fdopen(_create(dest, os.O_WRONLY, mode), "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def publish_dir(staging: Path, dest: Path) -> None:
    """Rename a fully written staging folder to `dest` in one step (fails if `dest` exists) and make it durable;
    the published folder gets DIR_MODE, whatever mode the umask gave it."""
    os.chmod(staging, DIR_MODE)
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
