"""Shared benchmark fixtures: `bench_report`, figures measured without a budget, printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

_REPORT: list[tuple[str, str]] = []


@pytest.fixture(scope="session")
def bench_report() -> Callable[[str, str], None]:
    """`report(section, line)`: add a line to the figures printed after the run (`make bench` output)."""

    def report(section: str, line: str) -> None:
        _REPORT.append((section, line))

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the collected figures, grouped by section."""
    if not _REPORT:
        return
    terminalreporter.section("benchmark figures")
    for section in dict.fromkeys(s for s, _ in _REPORT):
        terminalreporter.write_line(f"{section}:")
        for _, line in (entry for entry in _REPORT if entry[0] == section):
            terminalreporter.write_line(f"  {line}")
