"""The retraining scheduler with a fake clock: firing on time in Africa/Lagos, the missed-run policy, the lock
between two schedulers, and a real `ml-pipeline scheduler` process stopping on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ml_pipeline.retraining.scheduler import RetrainScheduler

LAGOS = ZoneInfo("Africa/Lagos")


class FakeClock:
    """A clock that jumps straight to the time the scheduler waits for."""

    def __init__(self, start: datetime) -> None:
        self.time = start
        self.waits: list[datetime] = []

    def now(self) -> datetime:
        return self.time

    def sleep_until(self, when: datetime, stop: threading.Event) -> None:
        self.waits.append(when)
        if not stop.is_set():
            self.time = max(self.time, when)


def scheduler(tmp_path: Path, clock: FakeClock, job: Callable[[datetime], object], **kwargs: bool) -> RetrainScheduler:
    return RetrainScheduler(job, "0 2 * * *", "Africa/Lagos", tmp_path / "state", clock=clock, **kwargs)


@pytest.mark.unit
def test_fires_at_two_in_lagos_and_logs_the_next_time(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(datetime(2026, 11, 29, 0, 30, tzinfo=UTC))  # 01:30 WAT
    fired: list[datetime] = []
    caplog.set_level("INFO", logger="ml_pipeline.retraining.scheduler")

    ran = scheduler(tmp_path, clock, fired.append).run(max_slots=2)

    assert ran == 2
    assert fired == [datetime(2026, 11, 29, 2, 0, tzinfo=LAGOS), datetime(2026, 11, 30, 2, 0, tzinfo=LAGOS)]
    assert fired[0].astimezone(UTC) == datetime(2026, 11, 29, 1, 0, tzinfo=UTC)
    assert "next retraining at 2026-11-29T02:00:00+01:00 (2026-11-29T01:00:00+00:00 UTC)" in caplog.text
    assert (tmp_path / "state" / "slots" / "20261129T0100Z.done").is_file()


@pytest.mark.unit
def test_a_first_start_catches_nothing_up(tmp_path: Path) -> None:
    fired: list[datetime] = []
    s = scheduler(tmp_path, FakeClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC)), fired.append)
    assert s.catch_up() is None and fired == []


@pytest.mark.unit
def test_missed_slots_run_once_on_start(tmp_path: Path) -> None:
    fired: list[datetime] = []
    clock = FakeClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    scheduler(tmp_path, clock, fired.append).catch_up()  # first start: records the 25th as handled
    clock.time = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)  # down for four slots (26th..29th)

    ran = scheduler(tmp_path, clock, fired.append).run(max_slots=1)

    assert ran == 1 and fired == [datetime(2026, 11, 29, 2, 0, tzinfo=LAGOS)]  # once, the latest
    assert scheduler(tmp_path, clock, fired.append).catch_up() is None  # and not again on the next start


@pytest.mark.unit
def test_catch_up_can_be_disabled(tmp_path: Path) -> None:
    fired: list[datetime] = []
    clock = FakeClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    scheduler(tmp_path, clock, fired.append).catch_up()
    clock.time += timedelta(days=3)
    assert scheduler(tmp_path, clock, fired.append, catch_up=False).catch_up() is None and fired == []


@pytest.mark.unit
def test_two_schedulers_never_run_the_same_slot(tmp_path: Path) -> None:
    slot = datetime(2026, 11, 29, 2, 0, tzinfo=LAGOS)
    clock = FakeClock(slot)
    started, release = threading.Event(), threading.Event()
    first_runs: list[datetime] = []
    second_runs: list[datetime] = []

    def slow_job(s: datetime) -> None:
        first_runs.append(s)
        started.set()
        release.wait(10)

    first = scheduler(tmp_path, clock, slow_job)
    second = scheduler(tmp_path, clock, second_runs.append)
    outcome: list[bool] = []
    worker = threading.Thread(target=lambda: outcome.append(first.fire(slot)))
    worker.start()
    assert started.wait(10)
    assert second.fire(slot) is False  # the slot's lock is held by the first scheduler
    release.set()
    worker.join(10)
    assert outcome == [True]
    assert second.fire(slot) is False  # done by the first one: not run again
    assert first_runs == [slot] and second_runs == []


@pytest.mark.unit
def test_a_failing_job_does_not_stop_the_scheduler(tmp_path: Path) -> None:
    calls: list[datetime] = []

    def failing(slot: datetime) -> None:
        calls.append(slot)
        raise RuntimeError("database on fire")

    clock = FakeClock(datetime(2026, 11, 29, 0, 30, tzinfo=UTC))
    assert scheduler(tmp_path, clock, failing).run(max_slots=2) == 2 and len(calls) == 2
    assert "database on fire" in (tmp_path / "state" / "slots" / "20261129T0100Z.done").read_text()


@pytest.mark.integration
def test_the_scheduler_process_stops_on_sigterm(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ML_TRAINING_SCHEDULE": "0 2 * * *",
        "ML_RETRAIN_RUNS_PATH": str(tmp_path / "runs"),
        "ML_MODEL_REGISTRY_PATH": str(tmp_path / "registry"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ml_pipeline.cli import main; main(['scheduler'])"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "next retraining at" in line or not line:
                break
        assert any("next retraining at" in line and "T02:00:00+01:00" in line for line in lines), lines
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "received SIGTERM" in rest and "scheduler stopped after running 0 slot(s)" in rest
