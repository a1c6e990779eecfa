"""Compile approved XGBoost models into verified native shared libraries (Treelite → TL2cgen → gcc).

`compile_model(model_json, out_dir, model_id, ...)` returns a CompileResult; the library scores exactly as
XGBoost does (checked on the test sample and on rows that take every branch) or nothing is written.
"""

from ml_pipeline.compiler.codegen import XGBoostModel, read_xgboost_model
from ml_pipeline.compiler.pipeline import CompileResult, compile_model, toolchain_versions
from ml_pipeline.compiler.verify import Verification, VerificationFailed, threshold_rows, verify_library

__all__ = [
    "CompileResult",
    "Verification",
    "VerificationFailed",
    "XGBoostModel",
    "compile_model",
    "read_xgboost_model",
    "threshold_rows",
    "toolchain_versions",
    "verify_library",
]
