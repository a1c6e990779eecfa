"""Champion/challenger traffic routing by request-key hash, and a gradual rollout of the challenger's share.

Routing (the routing hash, shared bit for bit with the native core in native/src/route.h): h = fmix32(crc32(key)),
the request goes to model B (the challenger) when h < cut, with cut = min(2**32, round(share_b * 2**32)).
The same key always lands on the same model, and raising share_b from s1 to s2 moves exactly the keys
with cut(s1) <= h < cut(s2) from A to B, nothing else.
"""

from __future__ import annotations

import itertools
import random
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry.records import SHARE_TOLERANCE

HASH_SPACE = 1 << 32
_crc32 = zlib.crc32


def route_hash(key: str | bytes) -> int:
    """32-bit routing hash of a request key: CRC-32 (zlib) finished with murmur3's fmix32."""
    h = _crc32(key.encode("utf-8") if isinstance(key, str) else key)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def _checked_share(name: str, share: object) -> float:
    """`share` as a float when it is a number from 0 to 1; UsageError naming it otherwise."""
    if not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise UsageError(f"{name}={share!r} must be a number from 0 to 1")
    return float(share)


def challenger_cut(share: float) -> int:
    """Integer threshold for a challenger share: keys whose route_hash is below it go to the challenger."""
    return min(HASH_SPACE, round(_checked_share("challenger_share", share) * HASH_SPACE))


def _checked_split(model_a_traffic: float, model_b_traffic: float) -> tuple[float, float, int]:
    a = _checked_share("model_a_traffic", model_a_traffic)
    b = _checked_share("model_b_traffic", model_b_traffic)
    if abs(a + b - 1.0) > SHARE_TOLERANCE:
        raise UsageError(f"traffic shares {a:g} + {b:g} must sum to 1")
    return a, b, challenger_cut(b)


def _count_value(counter: itertools.count[int]) -> int:
    """Next value of an itertools.count without advancing it (its repr is the only read-only view)."""
    return int(repr(counter)[len("count(") : -1])


class TrafficSplitter:
    """Decide per request whether model B (challenger) or model A (champion) serves it, and count the decisions.

    Counting uses itertools.count, whose next() is atomic under the GIL: thread-safe without a lock on the path.
    """

    def __init__(
        self, model_a_traffic: float = 0.9, model_b_traffic: float = 0.1, rng: Callable[[], float] | None = None
    ) -> None:
        self._model_a_traffic, self._model_b_traffic, self._cut = _checked_split(model_a_traffic, model_b_traffic)
        self._random = rng or random.random
        self._lock = threading.Lock()
        self._a_requests = itertools.count()
        self._b_requests = itertools.count()

    @property
    def model_a_traffic(self) -> float:
        """Share of requests routed to model A (the champion)."""
        return self._model_a_traffic

    @property
    def model_b_traffic(self) -> float:
        """Share of requests routed to model B (the challenger)."""
        return self._model_b_traffic

    @property
    def challenger_cut(self) -> int:
        """The integer cut handed to the native core: route_hash(key) < cut means model B."""
        return self._cut

    def should_use_model_b(self, key: str | bytes | None = None) -> bool:
        """True when this request goes to model B: by key hash when a key is given (deterministic), else random."""
        use_b = self._random() < self._model_b_traffic if key is None else route_hash(key) < self._cut
        next(self._b_requests if use_b else self._a_requests)
        return use_b

    def update_traffic_split(self, model_a_traffic: float, model_b_traffic: float) -> None:
        """Change the split; keys move only from A to B when B grows (and back when it shrinks)."""
        a, b, cut = _checked_split(model_a_traffic, model_b_traffic)
        with self._lock:
            self._model_a_traffic, self._model_b_traffic, self._cut = a, b, cut

    def get_statistics(self) -> dict[str, Any]:
        """Requests routed to each model since creation (or the last reset), and the observed share of B."""
        a, b = _count_value(self._a_requests), _count_value(self._b_requests)
        total = a + b
        return {
            "model_a_requests": a,
            "model_b_requests": b,
            "total_requests": total,
            "model_b_observed_share": b / total if total else 0.0,
            "model_a_traffic": self._model_a_traffic,
            "model_b_traffic": self._model_b_traffic,
        }

    def reset_statistics(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._a_requests = itertools.count()
            self._b_requests = itertools.count()


@dataclass
class GradualRollout:
    """Raise the challenger's share step by step up to a maximum; its state is saved in the registry's split."""

    initial_traffic: float = 0.1
    step_percentage: float = 0.1
    max_traffic: float = 1.0
    current_traffic: float | None = None
    started_at: str | None = None
    rolled_back: bool = False

    def __post_init__(self) -> None:
        for name in ("initial_traffic", "max_traffic", "step_percentage"):
            _checked_share(name, getattr(self, name))
        if self.step_percentage <= 0:
            raise UsageError("step_percentage must be above 0")
        if self.initial_traffic > self.max_traffic:
            raise UsageError(f"initial_traffic {self.initial_traffic:g} exceeds max_traffic {self.max_traffic:g}")
        if self.current_traffic is None:
            self.current_traffic = float(self.initial_traffic)
        if self.started_at is None:
            self.started_at = datetime.now(UTC).isoformat(timespec="seconds")

    def increase_traffic(self) -> float:
        """Raise the challenger's share by one step (never past max_traffic) and return it (0.1 -> 0.2);
        `get_current_split()` gives the (champion, challenger) pair."""
        if self.rolled_back:
            raise UsageError("the rollout was rolled back: start a new one")
        self.current_traffic = round(min(self.max_traffic, self._share() + self.step_percentage), 9)
        return self.current_traffic

    def get_current_split(self) -> tuple[float, float]:
        """(champion share, challenger share) now."""
        share = self._share()
        return round(1.0 - share, 9), share

    def is_complete(self) -> bool:
        """True once the challenger's share has reached max_traffic."""
        return not self.rolled_back and self._share() >= self.max_traffic

    def _share(self) -> float:
        """The challenger's share now: current_traffic, which __post_init__ sets (None there means initial_traffic)."""
        return float(self.initial_traffic) if self.current_traffic is None else self.current_traffic

    def rollback(self) -> tuple[float, float]:
        """Send all traffic back to the champion; returns (1.0, 0.0)."""
        self.rolled_back = True
        self.current_traffic = 0.0
        return self.get_current_split()

    def splitter(self) -> TrafficSplitter:
        """A TrafficSplitter set to the current split."""
        return TrafficSplitter(*self.get_current_split())

    def to_dict(self) -> dict[str, Any]:
        """State to save in the registry (`set_traffic_split(..., rollout=...)`)."""
        return {
            "initial_traffic": self.initial_traffic,
            "step_percentage": self.step_percentage,
            "max_traffic": self.max_traffic,
            "current_traffic": self.current_traffic,
            "started_at": self.started_at,
            "rolled_back": self.rolled_back,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradualRollout:
        """Restore from `to_dict()` output, e.g. `registry.serving_state().rollout`."""
        keys = ("initial_traffic", "step_percentage", "max_traffic", "current_traffic", "started_at", "rolled_back")
        return cls(**{k: data[k] for k in keys if k in data})
