"""Compile TL2cgen C sources into one shared library with gcc: one process per translation unit, then a link.

The flags are recorded with the artifact. They are the portable ones (no -march=native: a model compiled on one
machine must run on the servers) and keep IEEE float semantics (no -ffast-math), so scores stay exact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ml_pipeline.errors import JobFailed, UsageError

DEFAULT_FLAGS: tuple[str, ...] = ("-O3", "-fPIC", "-std=c99", "-fno-semantic-interposition")
COMPILER_ENV = "CC"


@dataclass(frozen=True)
class BuildResult:
    """The library written, the compiler that wrote it (`gcc --version` first line) and its flags."""

    library: Path
    compiler: str
    flags: list[str]
    translation_units: int


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


def build_shared_library(
    sources: list[Path], library: Path, flags: tuple[str, ...] = DEFAULT_FLAGS, jobs: int | None = None
) -> BuildResult:
    """Compile `sources` (in parallel, `jobs` gcc processes) and link them into `library`."""
    compiler = find_compiler()
    workers = max(1, min(len(sources), jobs or os.cpu_count() or 1))
    objects = [source.with_suffix(".o") for source in sources]
    include = f"-I{sources[0].parent}"
    with ThreadPoolExecutor(max_workers=workers) as pool:
        compiles = [
            pool.submit(_run, [compiler, *flags, include, "-c", str(src), "-o", str(obj)])
            for src, obj in zip(sources, objects, strict=True)
        ]
        for done in compiles:
            done.result()
    _run([compiler, *flags, "-shared", "-o", str(library), *map(str, objects), "-lm"])
    return BuildResult(
        library=library, compiler=compiler_version(compiler), flags=list(flags), translation_units=len(sources)
    )
