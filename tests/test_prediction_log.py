"""The prediction log writer: JSON Lines with rotation, PostgreSQL COPY, and dropping (counted) instead of blocking."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from ml_pipeline.errors import UsageError
from ml_pipeline.monitoring.ab_report import load_predictions
from ml_pipeline.monitoring.prediction_log import (
    JsonLinesSink,
    PostgresSink,
    PredictionLog,
    Record,
    open_sink,
)


def records(n: int, start: int = 0) -> list[Record]:
    """n distinct records, alternating champion and challenger."""
    now = time.time()
    return [
        (
            now + i,
            f"ALR-{i:06d}",
            "m-a" if i % 2 else "m-b",
            "champion" if i % 2 else "challenger",
            i / (n + start),
            i % 3 == 0,
        )
        for i in range(start, start + n)
    ]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until `condition` holds (fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_json_lines_round_trip_through_the_ab_reader(tmp_path: Path) -> None:
    path = tmp_path / "log" / "predictions.jsonl"
    plog = PredictionLog(JsonLinesSink(path), batch_size=50).start()
    assert plog.submit(records(120)) == 120
    plog.close()
    assert plog.counts["written"] == 120 and plog.counts["dropped_queue_full"] == 0
    frame = load_predictions(str(path))
    assert len(frame) == 120 and set(frame["slot"]) == {"champion", "challenger"}
    first = json.loads(path.read_text().splitlines()[0])
    assert first["request_id"] == "ALR-000000" and first["time"].endswith("+00:00") and first["decision"] is True


def test_json_lines_rotate_by_size_and_keep_the_backups(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    sink = JsonLinesSink(path, max_bytes=2_000, backups=2)
    for start in range(0, 400, 20):
        sink.write(records(20, start))
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "p.jsonl.1", "p.jsonl.2"]
    assert all(p.stat().st_size < 2_000 + 20 * 200 for p in tmp_path.iterdir())
    ids = load_predictions(str(path))["request_id"].tolist()
    assert ids == sorted(ids) and ids[-1] == "ALR-000399"  # oldest rotated file first, newest rows last


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    plog = PredictionLog(JsonLinesSink(tmp_path / "p.jsonl"), capacity=10)  # writer not started: nothing drains
    assert plog.submit(records(25)) == 10
    assert plog.counts["dropped_queue_full"] == 15


def test_a_full_disk_drops_and_counts(tmp_path: Path) -> None:
    plog = PredictionLog(JsonLinesSink("/dev/full"), batch_size=10).start()  # every write fails with ENOSPC
    assert plog.submit(records(30)) == 30
    wait_for(lambda: plog.counts["dropped_write_failed"] == 30)
    plog.close()
    assert plog.counts["written"] == 0


def test_open_sink_refuses_an_unknown_target() -> None:
    with pytest.raises(UsageError, match="file:PATH"):
        open_sink("s3://bucket/log")


async def _rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT request_id, slot, decision FROM prediction_log ORDER BY request_id")
    finally:
        await conn.close()


def test_postgres_sink_copies_batches(pg_dsn: str) -> None:
    plog = PredictionLog(open_sink(pg_dsn), batch_size=40).start()
    plog.submit(records(100))
    plog.close()
    rows = asyncio.run(_rows(pg_dsn))
    assert len(rows) == 100 and rows[0]["request_id"] == "ALR-000000" and rows[0]["decision"] is True
    assert len(load_predictions(pg_dsn)) == 100


def test_an_unreachable_database_drops_and_counts() -> None:
    sink = PostgresSink("postgresql://postgres@127.0.0.1:1/none", connect_timeout=0.5, retry_seconds=0.2)
    plog = PredictionLog(sink, batch_size=10).start()
    plog.submit(records(50))
    wait_for(lambda: plog.counts["dropped_write_failed"] == 50)
    plog.close()


async def _lock_table(dsn: str, locked: asyncio.Event, release: asyncio.Event) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE prediction_log IN ACCESS EXCLUSIVE MODE")
            locked.set()
            await release.wait()
    finally:
        await conn.close()


def test_a_stalled_database_fills_the_queue_then_catches_up(pg_dsn: str) -> None:
    plog = PredictionLog(open_sink(pg_dsn), capacity=50, batch_size=10).start()
    plog.submit(records(10))
    wait_for(lambda: plog.counts["written"] == 10)  # the table exists now

    async def stall_and_submit() -> int:
        locked, release = asyncio.Event(), asyncio.Event()
        holder = asyncio.create_task(_lock_table(pg_dsn, locked, release))
        await locked.wait()
        accepted = 0
        for start in range(1000, 1300, 10):  # the writer is stuck in COPY: the queue fills, then drops
            accepted += plog.submit(records(10, start))
            await asyncio.sleep(0.005)
        release.set()
        await holder
        return accepted

    accepted = asyncio.run(stall_and_submit())
    assert plog.counts["dropped_queue_full"] == 300 - accepted > 0
    wait_for(lambda: plog.counts["written"] == 10 + accepted)
    plog.close()
    assert len(asyncio.run(_rows(pg_dsn))) == 10 + accepted
