"""Run records: one JSON file per retraining run (inputs, data window, rows, metrics, decision, durations).

A record is written atomically when the decision is made and again after the notification, so neither a
crash nor a failed webhook loses the run. `ml-pipeline runs list|show` reads them back.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry.storage import write_json_atomic


class RunStatus(StrEnum):
    """How a run ended: a candidate registered, a reasoned rejection, a failed gate, or a failure."""

    RUNNING = "running"
    REGISTERED = "registered"
    REJECTED = "rejected"
    GATE_FAILED = "gate_failed"
    FAILED = "failed"


SUCCESSFUL = {RunStatus.REGISTERED, RunStatus.REJECTED}


def new_run_id(now: datetime) -> str:
    """Sortable, unique run id: `run-YYYYMMDDTHHMMSSZ-xxxx` (UTC time plus four random hex digits)."""
    return f"run-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


@dataclass
class RunRecord:
    """Everything one retraining run did and decided; `exit_code` is 0 for registered or rejected, else 1."""

    run_id: str
    started_at: str
    trigger: str = "manual"
    slot: str | None = None
    status: str = RunStatus.RUNNING
    reason: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    data_window: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    champion: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    model_id: str | None = None
    registered: bool = False
    approval_command: str | None = None
    durations_s: dict[str, float] = field(default_factory=dict)
    finished_at: str | None = None
    notification: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        """What `ml-pipeline retrain` exits with: 0 when a candidate was registered or reasonably rejected."""
        return 0 if self.status in SUCCESSFUL else 1

    def summary(self) -> dict[str, Any]:
        """The short JSON summary sent to the webhook and the log."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "reason": self.reason,
            "model_id": self.model_id if self.registered else None,
            "approval_command": self.approval_command,
            "metrics": _headline(self.metrics),
            "champion": self.champion
            and {"model_id": self.champion["model_id"], **_headline(self.champion["metrics"])},
            "rows": self.rows,
            "data_window": self.data_window,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "trigger": self.trigger,
            "slot": self.slot,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Inverse of `to_dict()`; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _headline(metrics: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("auc_score", "precision", "recall", "f1_score")
    return {k: metrics[k] for k in keys if k in metrics} if metrics else {}


class RunStore:
    """The folder of run records, `<run_id>.json` each, written atomically."""

    def __init__(self, path: str | Path) -> None:
        self.root = Path(path)

    def save(self, record: RunRecord) -> Path:
        """Write (or replace) the record of one run atomically; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{record.run_id}.json"
        write_json_atomic(path, record.to_dict())
        return path

    def get(self, run_id: str) -> RunRecord:
        """The record of `run_id`; UsageError naming the command that lists them when unknown."""
        path = self.root / f"{run_id}.json"
        if "/" in run_id or not path.is_file():
            raise UsageError(f"no retraining run {run_id!r} in {self.root}: see `ml-pipeline runs list`")
        return RunRecord.from_dict(json.loads(path.read_text()))

    def list_runs(self, limit: int | None = None) -> list[RunRecord]:
        """Records, newest first (the first `limit` of them)."""
        if not self.root.is_dir():
            return []
        paths = sorted((p for p in self.root.glob("run-*.json")), reverse=True)
        return [RunRecord.from_dict(json.loads(p.read_text())) for p in paths[:limit]]
