"""The explainer artifact the compiler writes beside a library: `<model_id>.trees`, checked and hashed.

Its record (CompiledLibrary.explainer) is either {"path", "sha256", "rows", "max_abs_diff"} or, for a model the
explainer cannot explain exactly, {"unavailable": why}: such a model still serves, without reasons.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from ml_pipeline.explain.packing import UnexplainableModel, pack_trees
from ml_pipeline.explain.verify import check_contributions
from ml_pipeline.native.tree_explainer import TreeExplainer

TREES_SUFFIX = ".trees"
FILE_MODE = 0o644


def build_explainer(model_json: Path, target: Path, booster: xgb.Booster, rows: np.ndarray) -> dict[str, Any]:
    """Pack the model's trees into `target`, checked against `booster` on `rows`; the explainer record.

    ExplanationMismatch when the contributions differ from XGBoost's (a wrong reason is never recorded)."""
    try:
        packed = pack_trees(Path(model_json).read_bytes())
    except UnexplainableModel as exc:
        return {"unavailable": str(exc)}
    check = check_contributions(TreeExplainer(packed), booster, rows)
    target.write_bytes(packed)
    os.chmod(target, FILE_MODE)
    return {
        "path": str(target),
        "sha256": hashlib.sha256(packed).hexdigest(),
        "rows": check.rows,
        "max_abs_diff": check.max_abs_diff,
    }


def load_explainer(record: dict[str, Any], feature_names: Sequence[str] | None = None) -> TreeExplainer:
    """The TreeExplainer of an explainer record, naming the features `feature_names` (ExplainerLoadError when
    missing, unreadable or altered; UnexplainableModel when the compiler recorded why the model has none)."""
    if "unavailable" in record:
        raise UnexplainableModel(f"this model serves without reasons: {record['unavailable']}")
    if "path" not in record:
        raise UnexplainableModel("this model was compiled without an explainer: compile it again (--force)")
    return TreeExplainer.from_file(record["path"], record.get("sha256"), feature_names)
