"""Pack an XGBoost model's trees into the array form the native explainer reads (voxguard/vg_explain.h).

Only what exact TreeSHAP needs is kept: per node the children, the split (feature, float32 threshold, default
direction for missing values), the leaf's margin and the cover (sum of hessians). Nodes are renumbered in
depth-first order from the root, so every child comes after its parent and pruned nodes are dropped. Models
the explainer cannot explain exactly are refused with UnexplainableModel, never packed wrongly.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from ml_pipeline.errors import UsageError

MAGIC = b"VGTREES1"
NODE = np.dtype(
    [
        ("left", "<i4"),
        ("right", "<i4"),
        ("feature", "<i4"),
        ("default_left", "<u4"),
        ("threshold", "<f4"),
        ("zero", "<u4"),
        ("value", "<f8"),
        ("cover", "<f8"),
    ]
)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _identity(p: float) -> float:
    return p


#: Objectives whose margin the explainer explains, and how their base_score becomes a margin.
BASE_MARGIN: dict[str, Callable[[float], float]] = {
    "binary:logistic": _logit,
    "reg:logistic": _logit,
    "binary:logitraw": _identity,
}
MAX_DEPTH = 32  # VG_FOREST_MAX_DEPTH


class UnexplainableModel(UsageError):
    """The model's trees cannot be explained exactly by the native explainer (the message says why)."""


def _base_score(text: str) -> float:
    """XGBoost writes base_score as "5E-1" or, since 3.0, as a one-element list "[5E-1]"."""
    values = json.loads(text) if text.strip().startswith("[") else [float(text)]
    if len(values) != 1:
        raise UnexplainableModel(f"the model has {len(values)} base scores; the explainer explains one output")
    return float(values[0])


def _tree_nodes(tree: dict[str, Any], number: int, num_features: int) -> np.ndarray:
    """One tree's nodes in depth-first order from the root (children after parents)."""
    if any(int(kind) != 0 for kind in tree.get("split_type", [])):
        raise UnexplainableModel(f"tree {number} has categorical splits; the explainer explains numerical ones")
    if int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
        raise UnexplainableModel(f"tree {number} has vector leaves; the explainer explains one output")
    left, right = tree["left_children"], tree["right_children"]
    features, conditions = tree["split_indices"], tree["split_conditions"]
    default_left, cover = tree["default_left"], tree["sum_hessian"]
    order: list[int] = []
    depth_of = {0: 0}
    stack = [0]
    while stack:
        index = stack.pop()
        order.append(index)
        if left[index] != -1:
            if depth_of[index] >= MAX_DEPTH:
                raise UnexplainableModel(f"tree {number} is deeper than {MAX_DEPTH}")
            depth_of[left[index]] = depth_of[right[index]] = depth_of[index] + 1
            stack += [right[index], left[index]]
    position = {old: new for new, old in enumerate(order)}
    nodes = np.zeros(len(order), dtype=NODE)
    for new, old in enumerate(order):
        leaf = left[old] == -1
        if not leaf and not 0 <= features[old] < num_features:
            raise UnexplainableModel(f"tree {number} splits on feature {features[old]} of {num_features}")
        nodes[new] = (
            -1 if leaf else position[left[old]],
            -1 if leaf else position[right[old]],
            -1 if leaf else features[old],
            0 if leaf else int(bool(default_left[old])),
            0.0 if leaf else np.float32(conditions[old]),
            0,
            float(conditions[old]) if leaf else 0.0,
            float(cover[old]),
        )
    if not (nodes["cover"] > 0).all():
        raise UnexplainableModel(f"tree {number} has a node without cover (sum_hessian); the explainer needs it")
    return nodes


def pack_trees(model_json: bytes | bytearray | str | dict[str, Any]) -> bytes:
    """The packed trees of an XGBoost model (its JSON: bytes, text or parsed); UnexplainableModel when the
    explainer cannot explain it exactly (not gbtree, several outputs, categorical splits, another objective)."""
    model = json.loads(model_json) if isinstance(model_json, (bytes, bytearray, str)) else model_json
    try:
        learner = model["learner"]
        objective = learner["objective"]["name"]
        booster = learner["gradient_booster"]
        params = learner["learner_model_param"]
        if booster["name"] != "gbtree":
            raise UnexplainableModel(f"the booster is {booster['name']}; the explainer explains gbtree models")
        if int(params.get("num_class", "0")) > 1 or int(params.get("num_target", "1")) > 1:
            raise UnexplainableModel("the model has several outputs; the explainer explains one")
        if objective not in BASE_MARGIN:
            raise UnexplainableModel(f"objective {objective}; the explainer explains {', '.join(BASE_MARGIN)}")
        num_features = int(params["num_feature"])
        base_margin = BASE_MARGIN[objective](_base_score(params["base_score"]))
        trees = [_tree_nodes(tree, i, num_features) for i, tree in enumerate(booster["model"]["trees"])]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, UnexplainableModel):
            raise
        raise UnexplainableModel(f"not an XGBoost JSON model the explainer can read: {exc!r}") from None
    if not trees:
        raise UnexplainableModel("the model has no trees")
    counts = np.array([len(t) for t in trees], dtype="<u4")
    if len(counts) % 2:
        counts = np.append(counts, np.zeros(1, dtype="<u4"))  # padding to 8 bytes
    header = MAGIC + struct.pack("<4I d", num_features, len(trees), 0, 0, base_margin)
    return header + counts.tobytes() + b"".join(t.tobytes() for t in trees)
