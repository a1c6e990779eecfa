"""Figures measured without a budget: `report(section, line)` collects lines printed after the run, and
`@figures` registers a plain function `fn(report, folder)` that only measures and reports (a target, compile
times...). Such a function is not a test, since no number it measures can fail it: bench/conftest.py runs it
once after the bench tests of its module ran, with an empty temporary folder, and prints its lines with the
others."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Report = Callable[[str, str], None]
Figures = Callable[[Report, Path], None]

LINES: list[tuple[str, str]] = []
FIGURES: dict[str, list[Figures]] = {}


def report(section: str, line: str) -> None:
    """Add `line` to the figures printed after the run, under `section`."""
    LINES.append((section, line))


def figures(fn: Figures) -> Figures:
    """Register `fn(report, folder)` to run once after the bench tests of its module."""
    FIGURES.setdefault(fn.__module__, []).append(fn)
    return fn
