"""A synchronous face on asyncpg for the database registry: a private event loop, a few pooled connections,
and one transaction per thread.

The registry API is synchronous (the CLI, the compiler, the server's executor threads call it), asyncpg is
not: every call runs its coroutine on a loop owned by this object, in a daemon thread. Connections come from
`ml_pipeline.data.database.connect` (the one way to reach PostgreSQL: password rule, timeout, one-line errors)
and are reused; a connection that broke is dropped, so the next call reconnects (a database that comes back is
used again without a restart). A process forked after use (multiprocessing) starts its own loop and
connections: the parent's are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg

from ml_pipeline.data import database
from ml_pipeline.errors import JobFailed
from ml_pipeline.model_registry.errors import RegistryUnavailable
from ml_pipeline.redaction import redact

T = TypeVar("T")
#: Seconds one statement may take before the call fails (a database that stopped answering must not hang a server).
COMMAND_TIMEOUT_S = 30.0
#: Times a transaction is restarted when its first statement meets a serialization failure or a deadlock.
FIRST_ATTEMPTS = 50
#: Idle connections kept for reuse.
MAX_IDLE = 4
#: Errors that mean the connection or the server is gone (the call fails; the next one reconnects).
CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,  # the connection's protocol is out of step (e.g. killed under a statement)
)


class DatabaseSession:
    """Run coroutines against one PostgreSQL/YugabyteDB database from synchronous code (thread-safe).

    `call(fn)` runs `fn(connection)` on a pooled connection, or on the calling thread's open transaction;
    `transaction()` opens one (re-entrant within a thread: nested blocks join the outer one)."""

    def __init__(self, dsn: str, password: Any = None, connect_timeout: float = database.CONNECT_TIMEOUT_S) -> None:
        self.dsn = dsn
        self.shown = redact(dsn)
        self._password = password
        self._connect_timeout = connect_timeout
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = -1
        self._idle: list[asyncpg.Connection] = []
        self._local = threading.local()

    # ---- the private loop ----

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._guard:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="registry-db", daemon=True).start()
                self._loop, self._pid, self._idle = loop, os.getpid(), []
                self._local = threading.local()
            return self._loop

    def run(self, coroutine: Awaitable[T]) -> T:
        """Run `coroutine` on the private loop and return its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop()).result()  # type: ignore[arg-type]

    # ---- connections ----

    async def connect(self) -> asyncpg.Connection:
        """A connection of the caller's own, outside the pool (to hold a session-level lock)."""
        try:
            return await database.connect(
                self.dsn, self._password, timeout=self._connect_timeout, what="the model registry database"
            )
        except JobFailed as exc:
            raise RegistryUnavailable(str(exc)) from None

    async def _acquire(self) -> asyncpg.Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
        try:
            return await database.connect(
                self.dsn, self._password, timeout=self._connect_timeout, what="the model registry database"
            )
        except JobFailed as exc:  # unreachable (a bad DSN is a UsageError and passes through)
            raise RegistryUnavailable(str(exc)) from None

    async def _release(self, conn: asyncpg.Connection, broken: bool) -> None:
        if broken or conn.is_closed() or conn.is_in_transaction() or len(self._idle) >= MAX_IDLE:
            with contextlib.suppress(Exception):
                conn.terminate()
            return
        self._idle.append(conn)

    def _failed(self, exc: BaseException) -> RegistryUnavailable:
        reason = redact(exc) or type(exc).__name__
        return RegistryUnavailable(f"the model registry database {self.shown} is unreachable: {reason}")

    def call(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`fn(connection)` on this thread's transaction, or on a pooled connection (autocommit); a lost
        connection or server is RegistryUnavailable naming the database (without its password)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                return self.run(_with_timeout(fn(conn)))
            except CONNECTION_ERRORS as exc:
                self._local.broken = True
                raise self._failed(exc) from None

        async def pooled() -> T:
            conn = await self._acquire()
            broken = True
            try:
                result = await asyncio.wait_for(fn(conn), COMMAND_TIMEOUT_S)
                broken = False
                return result
            except CONNECTION_ERRORS:
                raise  # AdminShutdownError is a PostgresError too, but its connection is gone
            except asyncpg.PostgresError:
                broken = False  # a refused statement leaves the connection usable
                raise
            finally:
                await self._release(conn, broken)

        try:
            return self.run(pooled())
        except CONNECTION_ERRORS as exc:
            raise self._failed(exc) from None

    @contextlib.contextmanager
    def transaction(
        self,
        first: Callable[[asyncpg.Connection], Awaitable[object]] | None = None,
        isolation: str = "read_committed",
    ) -> Iterator[asyncpg.Connection]:
        """One transaction for this thread's calls inside the block: committed when the block ends, rolled back
        when it raises (or when the process dies: the server aborts it). Nested blocks join the outer one.

        `first(conn)` runs before the block; a serialization failure or deadlock in it (YSQL in snapshot
        isolation, where a row lock waited for reports a conflict instead of the newer row) restarts the
        transaction, up to FIRST_ATTEMPTS times: nothing of the block has run yet, so that is always safe."""
        if getattr(self._local, "conn", None) is not None:
            self._local.depth += 1
            try:
                yield self._local.conn
            finally:
                self._local.depth -= 1
            return
        conn, tx = self._begin(first, isolation)
        self._local.conn, self._local.depth, self._local.broken = conn, 1, False
        try:
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    if not self._local.broken:
                        self.run(tx.rollback())
                raise
            try:
                self.run(tx.commit())
            except CONNECTION_ERRORS as exc:
                self._local.broken = True
                raise self._failed(exc) from None
        finally:
            broken = bool(self._local.broken)
            self._local.conn = None
            self.run(self._release(conn, broken))

    def _begin(
        self, first: Callable[[asyncpg.Connection], Awaitable[object]] | None, isolation: str
    ) -> tuple[asyncpg.Connection, Any]:
        """A connection with a started transaction in which `first` succeeded (see `transaction`)."""
        for attempt in range(FIRST_ATTEMPTS):
            try:
                conn = self.run(self._acquire())
            except CONNECTION_ERRORS as exc:
                raise self._failed(exc) from None
            tx = conn.transaction(isolation=isolation)
            try:
                self.run(tx.start())
                if first is not None:
                    self.run(_with_timeout(first(conn)))
                return conn, tx
            except CONNECTION_ERRORS as exc:
                self.run(self._release(conn, True))
                raise self._failed(exc) from None
            except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError):
                with contextlib.suppress(Exception):
                    self.run(tx.rollback())
                self.run(self._release(conn, False))
                if attempt == FIRST_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # writers that collided spread out
            except BaseException:
                with contextlib.suppress(Exception):
                    self.run(tx.rollback())
                self.run(self._release(conn, False))
                raise
        raise AssertionError("unreachable")

    def in_transaction(self) -> bool:
        """Whether the calling thread is inside `transaction()`."""
        return getattr(self._local, "conn", None) is not None

    def close(self) -> None:
        """Close the pooled connections and stop the private loop."""
        with self._guard:
            loop, idle = self._loop, self._idle
            self._loop, self._idle = None, []
        if loop is None or self._pid != os.getpid():
            return

        async def close_all() -> None:
            for conn in idle:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)


async def _with_timeout(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, COMMAND_TIMEOUT_S)
