"""Compile TL2cgen C sources into one shared library with gcc: one process per translation unit, then a link.

The flags are recorded with the artifact. They are the portable ones (no -march=native: a model compiled on one
machine must run on the servers) and keep IEEE float semantics (no -ffast-math), so scores stay exact.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_pipeline.errors import JobFailed, UsageError
from ml_pipeline.native.compiled_model import CompiledModel

log = logging.getLogger(__name__)

DEFAULT_FLAGS: tuple[str, ...] = ("-O3", "-fPIC", "-std=c99", "-fno-semantic-interposition")
COMPILER_ENV = "CC"


@dataclass(frozen=True)
class BuildResult:
    """The library written, the compiler that wrote it (`gcc --version` first line), its flags, and how many rows
    guided the branch layout (0: no profile-guided optimisation)."""

    library: Path
    compiler: str
    flags: list[str]
    translation_units: int
    profile_rows: int = 0


def find_compiler() -> str:
    """The C compiler to use: $CC if set, else gcc on PATH; UsageError when there is none."""
    compiler = os.environ.get(COMPILER_ENV) or "gcc"
    resolved = shutil.which(compiler)
    if resolved is None:
        raise UsageError(f"C compiler {compiler!r} not found; install gcc or set {COMPILER_ENV}")
    return resolved


def compiler_version(compiler: str) -> str:
    """First line of `<compiler> --version`, recorded with every artifact."""
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False)
    return (result.stdout.splitlines() or [compiler])[0].strip()


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-20:])
        raise JobFailed(f"{' '.join(command[:2])} ... failed with exit code {result.returncode}:\n{tail}")


def _compile_and_link(compiler: str, sources: list[Path], library: Path, flags: tuple[str, ...], jobs: int) -> None:
    objects = [source.with_suffix(".o") for source in sources]
    include = f"-I{sources[0].parent}"
    with ThreadPoolExecutor(max_workers=max(1, min(len(sources), jobs))) as pool:
        compiles = [
            pool.submit(_run, [compiler, *flags, include, "-c", str(src), "-o", str(obj)])
            for src, obj in zip(sources, objects, strict=True)
        ]
        for done in compiles:
            done.result()
    _run([compiler, *flags, "-shared", "-o", str(library), *map(str, objects), "-lm"])


def _record_profile(instrumented: Path, rows: np.ndarray, profile_dir: Path) -> bool:
    """Score `rows` with the instrumented library; its counters are written to `profile_dir` when it unloads."""
    with CompiledModel(instrumented) as model:
        model.score_batch(rows, nthreads=1)
    return any(profile_dir.rglob("*.gcda"))


def build_shared_library(
    sources: list[Path],
    library: Path,
    flags: tuple[str, ...] = DEFAULT_FLAGS,
    jobs: int | None = None,
    profile_rows: np.ndarray | None = None,
) -> BuildResult:
    """Compile `sources` (in parallel, `jobs` gcc processes) and link them into `library`.

    With `profile_rows` (rows like the production traffic, e.g. the model's test sample) the build is
    profile-guided: an instrumented library scores those rows first, and gcc lays out the branches of the final
    one by how often each was taken. Scores do not change (verification checks it); speed does.
    """
    compiler = find_compiler()
    jobs = jobs or os.cpu_count() or 1
    final_flags = tuple(flags)
    if profile_rows is not None and len(profile_rows):
        profile_dir = library.parent / "profile"
        instrumented = library.with_name(f"{library.stem}.instrumented.so")
        record = (f"-fprofile-dir={profile_dir}", "-fprofile-update=single")
        _compile_and_link(compiler, sources, instrumented, (*flags, "-fprofile-generate", *record), jobs)
        if _record_profile(instrumented, profile_rows, profile_dir):
            final_flags = (*flags, "-fprofile-use", "-fprofile-partial-training", f"-fprofile-dir={profile_dir}")
        else:
            log.warning("no profile was recorded from %s; building without profile guidance", instrumented.name)
    _compile_and_link(compiler, sources, library, final_flags, jobs)
    recorded = [f for f in final_flags if not f.startswith("-fprofile-dir=")]
    return BuildResult(
        library=library,
        compiler=compiler_version(compiler),
        flags=recorded,
        translation_units=len(sources),
        profile_rows=len(profile_rows) if profile_rows is not None and "-fprofile-use" in final_flags else 0,
    )
