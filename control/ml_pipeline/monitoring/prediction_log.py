"""The prediction log: every answered prediction (time, request_id, model_version, slot, score, decision, and the
reasons of an explained answer), written off the hot path in batches to JSON Lines files (rotated by size) or a
PostgreSQL table.

Records enter a bounded queue with `submit` (never blocks: when the queue is full the records are dropped and
counted) and a background thread writes them in batches; a batch that cannot be written (full disk,
unreachable database) is dropped and counted too, so the log never slows or fails Predict. In the server the
records come from the native core's ring buffer (`ServingCore.drain_log`), drained every ~100 ms by
`CoreLogPump`. Configured by ML_PREDICTION_LOG = `file:PATH` | `postgresql://...` (off when unset).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import asyncpg

from ml_pipeline.data import database
from ml_pipeline.data.database import is_dsn
from ml_pipeline.errors import PipelineError, UsageError
from ml_pipeline.redaction import redact

log = logging.getLogger(__name__)

LOG_TABLE = "prediction_log"
LOG_COLUMNS = ("time", "request_id", "model_version", "slot", "score", "decision")
SCHEMA = f"""CREATE TABLE IF NOT EXISTS {LOG_TABLE} (
    time          timestamptz NOT NULL,
    request_id    text NOT NULL,
    model_version text NOT NULL,
    slot          text NOT NULL,
    score         real NOT NULL,
    decision      boolean NOT NULL,
    reasons       jsonb,
    shadow_model_version text,
    shadow_score  real,
    shadow_decision boolean
);
ALTER TABLE {LOG_TABLE} ADD COLUMN IF NOT EXISTS reasons jsonb;
ALTER TABLE {LOG_TABLE} ADD COLUMN IF NOT EXISTS shadow_model_version text;
ALTER TABLE {LOG_TABLE} ADD COLUMN IF NOT EXISTS shadow_score real;
ALTER TABLE {LOG_TABLE} ADD COLUMN IF NOT EXISTS shadow_decision boolean;
CREATE INDEX IF NOT EXISTS {LOG_TABLE}_request_id_idx ON {LOG_TABLE} (request_id)"""
#: The reasons column: {feature: contribution} of an explained answer, largest first; NULL when not explained.
REASONS_COLUMN = "reasons"

#: The shadow columns: the shadow model's version, score and decision for a request it scored too (else NULL).
SHADOW_COLUMNS = ("shadow_model_version", "shadow_score", "shadow_decision")

#: One record: (unix time s, request_id, model_version, slot "champion"/"challenger", score, decision,
#: reasons as (feature, contribution) pairs, largest first, () when the answer was not explained; and the shadow
#: model's (model_version, score, decision) when it scored the request too, else None).
Record = tuple[float, str, str, str, float, bool, tuple[tuple[str, float], ...], tuple[str, float, bool] | None]


def reasons_object(reasons: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """The reasons of a record as the JSON object the log stores: {feature: contribution}, in their order."""
    return {feature: round(contribution, 7) for feature, contribution in reasons}


class Sink(Protocol):
    """Where batches go; `write` raises OSError/asyncpg errors when it cannot write (the batch is dropped)."""

    def write(self, batch: Sequence[Record]) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """Appends one JSON object per record to `path`; past `max_bytes` it rotates PATH → PATH.1 → ... PATH.N.

    Each batch is one O_APPEND write, so batches never interleave within a line. Several server processes
    (--workers N) may share the file, but each rotates on its own: prefer the PostgreSQL log for that case."""

    def __init__(self, path: str | Path, max_bytes: int = 64 << 20, backups: int = 5) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()

    def write(self, batch: Sequence[Record]) -> None:
        """Write the batch as JSON lines in one write; rotate first when the file is full."""
        if os.fstat(self._fd).st_size >= self.max_bytes:
            self._rotate()
        lines = [json.dumps(self._line(record), separators=(",", ":")) for record in batch]
        data = ("\n".join(lines) + "\n").encode()
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes): disk full?")

    @staticmethod
    def _line(record: Record) -> dict[str, object]:
        t, rid, model, slot, score, decision, reasons, shadow = record
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds"),
            "request_id": rid,
            "model_version": model,
            "slot": slot,
            "score": round(score, 7),
            "decision": decision,
        }
        if reasons:
            line["reasons"] = reasons_object(reasons)
        if shadow is not None:
            line["shadow_model_version"], line["shadow_score"], line["shadow_decision"] = (
                shadow[0],
                round(shadow[1], 7),
                shadow[2],
            )
        return line

    def close(self) -> None:
        """Close the current file."""
        os.close(self._fd)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _rotate(self) -> None:
        os.close(self._fd)
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._fd = self._open()


class PostgresSink:
    """COPYs batches into the prediction_log table (created when missing), reconnecting after a failure.

    Runs its own event loop in the writer thread; connection attempts time out after `connect_timeout` and
    are retried no more often than every `retry_seconds` (batches meanwhile are dropped and counted)."""

    def __init__(
        self, dsn: str, password: str | None = None, connect_timeout: float = 2.0, retry_seconds: float = 1.0
    ) -> None:
        self.dsn = dsn
        self.password = password
        self.connect_timeout = connect_timeout
        self.retry_seconds = retry_seconds
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection | None = None
        self._next_attempt = 0.0

    def write(self, batch: Sequence[Record]) -> None:
        """COPY the batch; raises ConnectionError (or JobFailed) while the database is unreachable."""
        self._loop.run_until_complete(self._write(batch))

    def close(self) -> None:
        """Close the connection and the loop."""
        if self._conn is not None:
            self._loop.run_until_complete(self._conn.close(timeout=self.connect_timeout))
        self._loop.close()

    async def _write(self, batch: Sequence[Record]) -> None:
        conn = await self._connection()
        rows = [
            (
                datetime.fromtimestamp(r[0], UTC),
                *r[1:6],
                json.dumps(reasons_object(r[6])) if r[6] else None,
                *(r[7] if r[7] is not None else (None, None, None)),
            )
            for r in batch
        ]
        columns = [*LOG_COLUMNS, REASONS_COLUMN, *SHADOW_COLUMNS]
        try:
            await conn.copy_records_to_table(LOG_TABLE, records=rows, columns=columns)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self._drop_connection()
            raise

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if time.monotonic() < self._next_attempt:
            raise ConnectionError(f"{redact(self.dsn)} unreachable; retrying shortly")
        self._next_attempt = time.monotonic() + self.retry_seconds
        conn = await database.connect(
            self.dsn, self.password, self.connect_timeout, what="the prediction log database (ML_PREDICTION_LOG)"
        )
        await conn.execute(SCHEMA)
        self._conn = conn
        return conn

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None


class PredictionLog:
    """Bounded queue plus one writer thread in front of a Sink; `submit` never blocks.

    `counts` holds "written", "dropped_queue_full" and "dropped_write_failed" (records), read by the metrics.
    """

    def __init__(self, sink: Sink, capacity: int = 100_000, batch_size: int = 2_000, flush_seconds: float = 0.1):
        self.sink = sink
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.counts: Counter[str] = Counter()
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=capacity)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._last_error = 0.0

    def start(self) -> PredictionLog:
        """Start the writer thread; returns self."""
        self._thread.start()
        return self

    def submit(self, records: Iterable[Record]) -> int:
        """Queue records for writing; those that do not fit are dropped and counted. Returns how many fit."""
        queued = dropped = 0
        for record in records:
            try:
                self._queue.put_nowait(record)
                queued += 1
            except queue.Full:
                dropped += 1
        if dropped:
            self.counts["dropped_queue_full"] += dropped
        return queued

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within `timeout` seconds), stop the thread and close the sink."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            try:
                self.sink.close()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("prediction log: closing the sink failed: %s", exc)

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._next_batch()
            if batch:
                self._write(batch)

    def _next_batch(self) -> list[Record]:
        batch: list[Record] = []
        deadline = time.monotonic() + self.flush_seconds
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[Record]) -> None:
        try:
            self.sink.write(batch)
            self.counts["written"] += len(batch)
        except (
            OSError,
            ConnectionError,
            TimeoutError,
            PipelineError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            self.counts["dropped_write_failed"] += len(batch)
            if time.monotonic() - self._last_error > 10:  # one line per 10 s, not one per batch
                log.error("prediction log: %d records dropped, cannot write: %s", len(batch), redact(exc))
                self._last_error = time.monotonic()


class CoreLogPump:
    """Moves records from the native core's ring buffer into a PredictionLog every `interval` seconds.

    `drain(max)` is `ServingCore.drain_log`: it returns up to `max` records and never blocks the core."""

    def __init__(
        self, drain: Callable[[int], list[Record]], prediction_log: PredictionLog, interval: float = 0.1
    ) -> None:
        self.drain = drain
        self.prediction_log = prediction_log
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log-pump", daemon=True)

    def start(self) -> CoreLogPump:
        """Start draining; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Drain once more, then stop."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval)
            while records := self.drain(self.prediction_log.batch_size):
                self.prediction_log.submit(records)
            if stopping:
                return


def check_target(target: str) -> None:
    """UsageError naming ML_PREDICTION_LOG unless `target` is file:PATH or a usable postgresql:// DSN."""
    if target.startswith("file:") and len(target) > 5 and not target.startswith("file://"):
        return
    if is_dsn(target):
        database.check_dsn(target, "ML_PREDICTION_LOG")
        return
    scheme = database.url_scheme(target)
    problem = f"unsupported scheme {scheme}://" if scheme else "neither file:PATH nor a DSN"
    raise UsageError(
        f"ML_PREDICTION_LOG={redact(target)} is not valid ({problem}): use file:PATH or {database.SUPPORTED} "
        "such as postgresql://user@host/db"
    )


def open_sink(target: str, password: str | None = None) -> Sink:
    """The sink for ML_PREDICTION_LOG: `file:PATH` (JSON Lines) or a postgresql:// DSN (UsageError otherwise).

    `password` (YUGABYTE_PASSWORD) is used only when the DSN carries none (database.password_for)."""
    check_target(target)
    if is_dsn(target):
        return PostgresSink(target, password)
    return JsonLinesSink(target[5:])
