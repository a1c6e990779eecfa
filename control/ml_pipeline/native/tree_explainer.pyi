"""Types of the tree_explainer extension (tree_explainer.pyx)."""

from collections.abc import Sequence
from os import PathLike

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

from ml_pipeline.errors import JobFailed

class ExplainerLoadError(JobFailed): ...

@disjoint_base
class TreeExplainer:
    sha256: str
    feature_names: tuple[str, ...]
    def __init__(self, data: bytes, sha256: str | None = None, feature_names: Sequence[str] | None = None) -> None: ...
    @classmethod
    def from_file(
        cls, path: str | PathLike[str], sha256: str | None = None, feature_names: Sequence[str] | None = None
    ) -> TreeExplainer: ...
    @property
    def num_features(self) -> int: ...
    @property
    def num_trees(self) -> int: ...
    @property
    def bias(self) -> float: ...
    def contributions(self, rows: npt.ArrayLike) -> npt.NDArray[np.float64]: ...
    def margins(self, rows: npt.ArrayLike) -> npt.NDArray[np.float64]: ...
