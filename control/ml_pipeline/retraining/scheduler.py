"""The retraining scheduler: fire a job on a cron schedule in a time zone, once per slot across processes.

- Slots come from croniter, evaluated in the configured time zone (02:00 WAT = 01:00 UTC by default).
- Each slot has a lock file and a done marker under the state folder: a scheduler fires a slot only if it
  takes the slot's lock without waiting and finds no marker, so two schedulers never train the same slot.
- Missed runs: on start, the latest slot that passed since the last handled one runs once (not once per
  missed slot). On a first start nothing is caught up.
- SIGTERM/SIGINT stop the wait at once; a run in progress finishes (its record is written) before exit.
- The clock is injectable, so tests drive the schedule without waiting.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from croniter import croniter
from filelock import FileLock, Timeout

from ml_pipeline.model_registry.storage import write_json_atomic

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Where the scheduler gets the time and how it waits (a fake one in tests)."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    def sleep_until(self, when: datetime, stop: threading.Event) -> None:
        """Return at `when`, or earlier as soon as `stop` is set."""
        ...


class SystemClock:
    """The real clock; waits in steps of at most a minute so a changed system time is noticed."""

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)

    def sleep_until(self, when: datetime, stop: threading.Event) -> None:
        """Wait until `when` or until `stop` is set."""
        while not stop.is_set():
            remaining = (when - self.now()).total_seconds()
            if remaining <= 0:
                return
            stop.wait(min(remaining, 60.0))


def slot_key(slot: datetime) -> str:
    """File-name form of a slot, in UTC: `20261129T0100Z`."""
    return slot.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


class RetrainScheduler:
    """Run `job(slot)` at every slot of `schedule` (cron) in `timezone`; state and locks live in `state_dir`."""

    def __init__(
        self,
        job: Callable[[datetime], Any],
        schedule: str,
        timezone: str,
        state_dir: str | Path,
        *,
        catch_up: bool = True,
        clock: Clock | None = None,
    ) -> None:
        self.job = job
        self.schedule = schedule
        self.tz = ZoneInfo(timezone)
        self.state_dir = Path(state_dir)
        self.slots_dir = self.state_dir / "slots"
        self.state_file = self.state_dir / "state.json"
        self.catch_up_enabled = catch_up
        self.clock = clock or SystemClock()
        self._stop = threading.Event()

    def next_slot(self, after: datetime) -> datetime:
        """The first slot strictly after `after`, in the schedule's time zone."""
        return croniter(self.schedule, after.astimezone(self.tz)).get_next(datetime)

    def last_slot(self, at: datetime) -> datetime:
        """The latest slot at or before `at`."""
        return croniter(self.schedule, at.astimezone(self.tz)).get_prev(datetime)

    def stop(self) -> None:
        """Ask the scheduler to stop: the wait ends now, a running job finishes first."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (call from the main thread)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def run(self, max_slots: int | None = None) -> int:
        """Catch up once if a slot was missed, then fire each slot on time until stopped (or `max_slots`
        slots were handled, whoever ran them). Returns how many slots this scheduler ran itself."""
        handled = ran = 0
        caught_up = self.catch_up()
        if caught_up is not None:
            handled, ran = 1, int(caught_up)
        while not self._stop.is_set() and (max_slots is None or handled < max_slots):
            slot = self.next_slot(self.clock.now())
            log.info("next retraining at %s (%s UTC)", slot.isoformat(), slot.astimezone(UTC).isoformat())
            self.clock.sleep_until(slot, self._stop)
            if self._stop.is_set():
                break
            ran += int(self.fire(slot))
            handled += 1
        log.info("scheduler stopped after running %d slot(s)", ran)
        return ran

    def catch_up(self) -> bool | None:
        """Missed-run policy: if the latest past slot came after the last handled one, fire it once.

        Returns None when nothing was missed (or on a first start, which only records the current slot),
        else whether this scheduler ran the missed slot.
        """
        latest = self.last_slot(self.clock.now())
        handled = self._last_handled()
        if handled is None or not self.catch_up_enabled:
            log.info(
                "no catch-up (%s); slots up to %s count as handled",
                "first start" if handled is None else "disabled",
                latest.isoformat(),
            )
            self._record_handled(latest)
            return None
        if handled >= latest:
            return None
        log.info("slot %s was missed while no scheduler ran: running it once now", latest.isoformat())
        return self.fire(latest)

    def fire(self, slot: datetime) -> bool:
        """Run the job for `slot` unless another scheduler holds or has done it; True if this one ran it."""
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        key = slot_key(slot)
        lock = FileLock(self.slots_dir / f"{key}.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            log.info("slot %s is being run by another scheduler: skipped here", slot.isoformat())
            return False
        try:
            marker = self.slots_dir / f"{key}.done"
            if marker.exists():
                log.info("slot %s was already run (%s): skipped here", slot.isoformat(), marker)
                return False
            log.info("retraining for slot %s", slot.isoformat())
            try:
                outcome = self.job(slot)
                summary = {"run_id": getattr(outcome, "run_id", None), "status": getattr(outcome, "status", None)}
            except Exception as exc:  # the scheduler outlives a failed run; the run records its own failure
                log.exception("retraining for slot %s failed", slot.isoformat())
                summary = {"error": f"{type(exc).__name__}: {exc}"}
            finished = datetime.now(UTC).isoformat(timespec="seconds")
            write_json_atomic(marker, {"slot": slot.isoformat(), "finished_at": finished, **summary})
            self._record_handled(slot)
            return True
        finally:
            lock.release()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("received %s: stopping after the current run, if any", signal.Signals(signum).name)
        self.stop()

    def _last_handled(self) -> datetime | None:
        try:
            return datetime.fromisoformat(json.loads(self.state_file.read_text())["last_slot"])
        except FileNotFoundError:
            return None

    def _record_handled(self, slot: datetime) -> None:
        previous = self._last_handled()
        if previous is not None and previous >= slot:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_file, {"last_slot": slot.isoformat()})
