"""Shared fixtures: the real PostgreSQL server (throwaway databases) and temporary work folders.

PostgreSQL tests use VOXGUARD_TEST_DSN (default: postgres on 127.0.0.1:5432, trust auth). Outside CI an
unreachable server skips them with the reason; in CI (CI=true) it fails them, so they never skip silently.

Every test carries exactly one kind marker (unit, integration or e2e, see pyproject.toml); collection stops
with a usage error naming the tests that carry none or several, or unit tests that ask for PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

ADMIN_DSN = os.environ.get("VOXGUARD_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
KINDS = ("unit", "integration", "e2e")
TESTS = Path(__file__).resolve().parent
DATABASE_FIXTURES = {"pg_admin_dsn", "pg_dsn"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test of tests/ without exactly one kind marker, and a unit test that needs PostgreSQL."""
    problems = []
    for item in items:
        if not item.path.is_relative_to(TESTS):
            continue
        kinds = sorted({mark.name for mark in item.iter_markers() if mark.name in KINDS})
        if len(kinds) != 1:
            problems.append(f"{item.nodeid}: kind markers {kinds or 'none'} (mark it with one of {', '.join(KINDS)})")
        elif kinds == ["unit"] and DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            problems.append(f"{item.nodeid}: a unit test cannot use PostgreSQL (mark it integration)")
    if problems:
        raise pytest.UsageError("tests without a clear kind:\n  " + "\n  ".join(problems))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    """DSN of a reachable PostgreSQL server with rights to create databases."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        message = f"PostgreSQL not reachable at {ADMIN_DSN}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run the PostgreSQL tests; see scripts/ensure_postgres.sh)")
        pytest.skip(message)
    return ADMIN_DSN


@pytest.fixture
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a fresh, empty database that is dropped after the test."""
    name = f"vg_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    base, _, _ = pg_admin_dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
