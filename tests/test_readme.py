"""The README stays current: every environment variable the configuration reads is documented there."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_pipeline.config import ENV_VARS

pytestmark = pytest.mark.unit

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_environment_variable_is_in_the_readme_table() -> None:
    missing = [spec.name for spec in ENV_VARS if f"| `{spec.name}` |" not in README]
    assert missing == []


def test_the_readme_gives_the_two_commands() -> None:
    assert "make demo" in README and "make test" in README
