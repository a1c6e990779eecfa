"""The reasons of an answer: the features with the largest contributions, with their values and signs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reason:
    """One feature's part in an answer: its value and its contribution to the margin (log-odds of fraud);
    positive pushes towards fraud."""

    feature: str
    value: float
    contribution: float

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"feature": self.feature, "value": self.value, "contribution": self.contribution}


def top_reasons(
    names: Sequence[str], row: Sequence[float] | np.ndarray, contributions: np.ndarray, k: int | None = None
) -> list[Reason]:
    """The `k` features (all when None; more than there are is clamped) with the largest |contribution|, largest
    first. `contributions` is one row of TreeExplainer.contributions: a value per feature, then the bias."""
    per_feature = np.asarray(contributions, dtype=np.float64)[: len(names)]
    order = sorted(range(len(names)), key=lambda i: (-abs(per_feature[i]), i))
    count = len(names) if k is None else max(0, min(k, len(names)))
    return [Reason(names[i], float(row[i]), float(per_feature[i])) for i in order[:count]]
