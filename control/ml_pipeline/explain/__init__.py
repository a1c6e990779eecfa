"""Reason codes: which features made an answer, as exact TreeSHAP contributions from the native core.

`pack_trees(model_json)` packs a registered XGBoost model's trees for the explainer (packing.py);
`ml_pipeline.native.tree_explainer.TreeExplainer` computes the contributions; `top_reasons` orders them
(reasons.py); `check_contributions` compares them with XGBoost's own (verify.py).
"""

from ml_pipeline.explain.packing import UnexplainableModel, pack_trees
from ml_pipeline.explain.reasons import Reason, top_reasons

__all__ = ["Reason", "UnexplainableModel", "pack_trees", "top_reasons"]
