"""Shared benchmark machinery: every collected bench test asserts a budget; figures without one are reports.

- `bench_report` (fixture) is `report(section, line)` of bench/reporting.py: add a line to the figures printed
  after the run (`make bench` output), e.g. the measurements behind a budget.
- Functions marked `@figures` (bench/reporting.py) only measure and report. They run once after the bench tests
  of their module ran (not with --collect-only, not after an interrupt), each with an empty temporary folder; one
  that raises makes the run fail, with its traceback printed.

tests/ is put on sys.path, for tests/native_support.py (where the native transport must exist).
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
sys.path.append(str(BENCH.parent / "tests"))

from reporting import FIGURES, LINES, Report, report  # noqa: E402 (bench/ is on sys.path: pytest's rootdir-relative import)

_RAN: dict[str, None] = {}  # modules that ran a test, in order
_FAILED: list[str] = []


@pytest.fixture(scope="session")
def bench_report() -> Report:
    """`report(section, line)`: add a line to the figures printed after the run (`make bench` output)."""
    return report


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember which bench modules ran a test: their figures run at the end."""
    module = getattr(item, "module", None)
    if module is not None:
        _RAN.setdefault(module.__name__, None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Run the figures of the modules whose tests ran; a figures function that raises fails the run."""
    if session.config.option.collectonly or exitstatus == pytest.ExitCode.INTERRUPTED:
        return
    for module in _RAN:
        for fn in FIGURES.get(module, []):
            with tempfile.TemporaryDirectory(prefix=f"vg-{fn.__name__}-") as folder:
                try:
                    fn(report, Path(folder))
                except Exception:
                    _FAILED.append(f"{module}.{fn.__name__} raised:\n{traceback.format_exc()}")
    if _FAILED and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the collected figures, grouped by section, and any figures function that raised."""
    if LINES:
        terminalreporter.section("benchmark figures")
        for section in dict.fromkeys(s for s, _ in LINES):
            terminalreporter.write_line(f"{section}:")
            for _, line in (entry for entry in LINES if entry[0] == section):
                terminalreporter.write_line(f"  {line}")
    if _FAILED:
        terminalreporter.section("benchmark figures that failed", red=True)
        for failure in _FAILED:
            terminalreporter.write_line(failure)
