"""Small immutable records the registry returns: the serving state, a history entry, a metric comparison."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

SHARE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ServingState:
    """Which models serve and how traffic is split; `generation` increases on every change of any of them.

    `previous_champion_id` is the champion the last change of champion replaced: the default target of a
    rollback, written in the same atomic step as the new champion (None in a serving.json older than it)."""

    champion_id: str | None = None
    challenger_id: str | None = None
    champion_share: float = 1.0
    challenger_share: float = 0.0
    generation: int = 0
    rollout: dict[str, Any] | None = None
    updated_at: str | None = None
    updated_by: str | None = None
    previous_champion_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("champion_share", "challenger_share"):
            share = getattr(self, name)
            if not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
                raise ValueError(f"{name}={share!r} is not a number in [0, 1]")
        if abs(self.champion_share + self.challenger_share - 1.0) > SHARE_TOLERANCE:
            raise ValueError(f"shares {self.champion_share} + {self.challenger_share} do not sum to 1")
        if self.challenger_id is None and self.challenger_share > 0:
            raise ValueError("a challenger share without a challenger")
        if self.challenger_id is not None and self.challenger_id == self.champion_id:
            raise ValueError("the champion cannot also be the challenger")
        if not isinstance(self.generation, int) or self.generation < 0:
            raise ValueError(f"generation={self.generation!r} is not a non-negative integer")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the content of serving.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingState:
        """Validate and build from serving.json content; ValueError when it is not a valid state."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class HistoryEntry:
    """One line of history.jsonl: who did what to which model, when and why."""

    time: str
    actor: str
    action: str
    model_id: str | None
    from_status: str | None = None
    to_status: str | None = None
    reason: str | None = None
    detail: str | None = None
    generation: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistoryEntry:
        """Build from one parsed history line, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class MetricComparison:
    """One metric of two models side by side; `delta` = b − a (None when either is missing)."""

    metric: str
    a: float | None
    b: float | None
    delta: float | None
