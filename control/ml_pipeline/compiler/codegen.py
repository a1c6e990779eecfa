"""XGBoost JSON → Treelite → TL2cgen C sources, with the model checked first (binary objective, feature count).

TL2cgen 1.0.0 bundles Treelite 4.1.2, which prints a warning to the process's stderr when it is handed a model
serialised by a newer Treelite (4.8 here). The compiled scores are verified against XGBoost anyway, so that
message is captured and logged at INFO level instead of reaching the user's terminal as noise.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tl2cgen
import treelite

from ml_pipeline.errors import UsageError

log = logging.getLogger(__name__)

BINARY_OBJECTIVE = "binary:logistic"
TREES_PER_TRANSLATION_UNIT = 100


@dataclass(frozen=True)
class XGBoostModel:
    """What the compiler needs to know about an XGBoost JSON model, read from the file itself."""

    path: Path
    document: dict[str, Any]
    objective: str
    num_features: int
    num_trees: int
    best_iteration: int | None

    @property
    def trees(self) -> list[dict[str, Any]]:
        """The trees of the gradient booster, as stored in the JSON document."""
        trees: list[dict[str, Any]] = self.document["learner"]["gradient_booster"]["model"]["trees"]
        return trees


def read_xgboost_model(path: Path, expected_features: int | None = None) -> XGBoostModel:
    """Read and check an XGBoost JSON model: a binary:logistic tree booster with the expected feature count."""
    try:
        document = json.loads(Path(path).read_text())
        learner = document["learner"]
        objective = learner["objective"]["name"]
        booster = learner["gradient_booster"]
        num_features = int(learner["learner_model_param"]["num_feature"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a readable XGBoost JSON model ({exc.__class__.__name__}: {exc})") from None
    if booster.get("name") != "gbtree":
        raise UsageError(f"{path}: booster {booster.get('name')!r}; only tree boosters (gbtree) can be compiled")
    if objective != BINARY_OBJECTIVE:
        raise UsageError(
            f"{path}: objective {objective!r}; only binary classification with probabilities "
            f"({BINARY_OBJECTIVE}) is compiled and served"
        )
    if expected_features is not None and num_features != expected_features:
        raise UsageError(
            f"{path}: the model has {num_features} features but its metadata lists {expected_features}; "
            "register the model with the feature list it was trained on"
        )
    best = learner.get("attributes", {}).get("best_iteration")
    return XGBoostModel(
        path=Path(path),
        document=document,
        objective=objective,
        num_features=num_features,
        num_trees=len(booster["model"]["trees"]),
        best_iteration=int(best) if best is not None else None,
    )


@contextlib.contextmanager
def _native_output_logged(stage: str) -> Iterator[None]:
    """Capture what Treelite/TL2cgen print (C++ stderr, Python stdout, warnings) and log it instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        python_out = io.StringIO()
        os.dup2(captured.fileno(), 2)
        try:
            with contextlib.redirect_stdout(python_out):
                yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace") + python_out.getvalue()
            text += "".join(f"{w.message}\n" for w in caught)
            _log_native_output(stage, text)


def _log_native_output(stage: str, text: str) -> None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any("newer Treelite version" in line for line in lines):
        log.info(
            "TL2cgen %s reads this model with its bundled Treelite 4.1 although it was serialised by Treelite %s; "
            "the compiled scores are verified against XGBoost before the library is accepted",
            tl2cgen.__version__,
            treelite.__version__,
        )
    if lines:
        log.debug("%s said: %s", stage, " | ".join(lines))


def _first_line(exc: Exception) -> str:
    """The first line of a Treelite/TL2cgen error without its "[time] file.cc:line:" prefix."""
    lines = str(exc).strip().splitlines() or [exc.__class__.__name__]
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0])


def translation_units(num_trees: int) -> int:
    """How many C files to split the trees into so gcc can compile them in parallel (1 for small models)."""
    return max(1, num_trees // TREES_PER_TRANSLATION_UNIT)


def generate_sources(model: XGBoostModel, src_dir: Path, params: dict[str, Any] | None = None) -> list[Path]:
    """Write the TL2cgen C sources of `model` into `src_dir`; return the .c files (several with parallel_comp)."""
    try:
        with _native_output_logged("treelite load"):
            tl_model = treelite.frontend.load_xgboost_model(model.path)
    except treelite.TreeliteError as exc:
        raise UsageError(f"{model.path}: Treelite cannot read this model: {_first_line(exc)}") from None
    codegen_params: dict[str, Any] = {}
    units = translation_units(model.num_trees)
    if units > 1:
        codegen_params["parallel_comp"] = units
    codegen_params.update(params or {})
    try:
        with _native_output_logged("tl2cgen codegen"):
            tl2cgen.generate_c_code(tl_model, src_dir, params=codegen_params)
    except tl2cgen.TL2cgenError as exc:
        raise UsageError(f"{model.path}: TL2cgen cannot generate code for this model: {_first_line(exc)}") from None
    return sorted(Path(src_dir).glob("*.c"))
