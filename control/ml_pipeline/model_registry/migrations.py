"""The database registry's schema, as numbered migrations applied once each and recorded in a version table.

Every statement is plain SQL that PostgreSQL and YugabyteDB's YSQL both run: tables, primary keys, foreign
keys, a CHECK, bytea, jsonb, a bigint identity sequence. A migration is recorded in `registry_schema_version`
in the same transaction that applies it, and its statements are idempotent (IF NOT EXISTS), so concurrent
first users, a rerun, or a database where DDL is not transactional all end with the same schema.
"""

from __future__ import annotations

import asyncpg

from ml_pipeline.errors import JobFailed

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS registry_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

#: (version, statements): the schema is the result of applying them in order.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            # content-addressed files: model JSON, test sample, drift reference, compiled libraries
            """CREATE TABLE IF NOT EXISTS registry_blobs (
                sha256 text PRIMARY KEY,
                size bigint NOT NULL,
                data bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE IF NOT EXISTS registry_models (
                model_id text PRIMARY KEY,
                created_at text NOT NULL,
                status text NOT NULL,
                metadata jsonb NOT NULL
            )""",
            # a model's files by name: its artifact, attachments and (name '.library') its compiled library
            """CREATE TABLE IF NOT EXISTS registry_model_files (
                model_id text NOT NULL REFERENCES registry_models (model_id) ON DELETE CASCADE,
                name text NOT NULL,
                sha256 text NOT NULL REFERENCES registry_blobs (sha256),
                PRIMARY KEY (model_id, name)
            )""",
            # the single serving-state row every transition locks (SELECT ... FOR UPDATE) and servers poll
            """CREATE TABLE IF NOT EXISTS registry_serving (
                id integer PRIMARY KEY CHECK (id = 1),
                generation bigint NOT NULL,
                state jsonb NOT NULL
            )""",
            "INSERT INTO registry_serving (id, generation, state) VALUES (1, 0, '{}') ON CONFLICT (id) DO NOTHING",
            """CREATE TABLE IF NOT EXISTS registry_history (
                seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                entry_id text NOT NULL UNIQUE,
                model_id text,
                generation bigint,
                entry jsonb NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS registry_history_model ON registry_history (model_id, seq)",
        ],
    ),
]
LATEST = MIGRATIONS[-1][0]


async def current_version(conn: asyncpg.Connection) -> int:
    """The highest applied migration, 0 for a database without the registry's tables."""
    exists = await conn.fetchval("SELECT to_regclass('registry_schema_version') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT max(version) FROM registry_schema_version")
    return int(version or 0)


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply every migration not applied yet, each in its own transaction; returns the schema version.

    JobFailed when the database holds a newer schema than this version of the pipeline knows."""
    version = await current_version(conn)
    if version > LATEST:
        raise JobFailed(
            f"the registry database has schema version {version}, newer than this pipeline's {LATEST}: upgrade it"
        )
    if version == LATEST:
        return version
    for attempt in range(5):  # two first users at once: one of them loses the race on the catalog, retries
        try:
            await conn.execute(VERSION_TABLE)
            break
        except (asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
            if attempt == 4:
                raise
    for number, statements in MIGRATIONS:
        async with conn.transaction():
            # the version row is taken first: a concurrent migrator waits on it, then finds it applied
            claimed = await conn.fetchval(
                "INSERT INTO registry_schema_version (version) VALUES ($1) ON CONFLICT (version) DO NOTHING "
                "RETURNING version",
                number,
            )
            if claimed is None:
                continue
            for statement in statements:
                await conn.execute(statement)
    return LATEST
