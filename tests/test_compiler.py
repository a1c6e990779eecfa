"""The compiler: branch-covering verification rows, refusal of mismatching libraries, clear errors, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from model_factory import SMALL, ModelSpec, built, synthetic_rows

from ml_pipeline.compiler import (
    VerificationFailed,
    compile_model,
    read_xgboost_model,
    threshold_rows,
    toolchain_versions,
    verify_library,
)
from ml_pipeline.compiler.build import DEFAULT_FLAGS
from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry.storage import sha256_file
from ml_pipeline.records import CompiledLibrary

pytestmark = pytest.mark.integration

COMPILED_RECORD_KEYS = {"path", "sha256", "compiler", "flags", "versions", "verification", "compiled_at"}


def _save(booster: xgb.Booster, path: Path) -> Path:
    booster.save_model(path)
    return path


@pytest.mark.parametrize("spec", [SMALL, ModelSpec("deep", trees=15, depth=10)], ids=lambda s: s.name)
def test_threshold_rows_reach_every_leaf_of_every_tree(spec: ModelSpec) -> None:
    model = built(spec)
    rows = threshold_rows(read_xgboost_model(model.model_json))
    reached = model.booster.predict(xgb.DMatrix(rows), pred_leaf=True).astype(int)
    for index, tree in enumerate(read_xgboost_model(model.model_json).trees):
        leaves = {node for node, left in enumerate(tree["left_children"]) if left == -1}
        assert set(reached[:, index]) == leaves, f"tree {index}"
    assert np.isnan(rows).any() and (np.abs(rows[np.isfinite(rows)]) > 1e37).any()


def test_compile_result_and_registry_record(tmp_path: Path) -> None:
    model = built(SMALL)
    sample = tmp_path / "test_sample.npz"
    rows, labels = synthetic_rows(300, seed=9)
    np.savez(sample, X=rows, y=labels, proba=model.booster.inplace_predict(rows))
    lines: list[str] = []
    result = compile_model(model.model_json, tmp_path / "out", "with_sample", 8, sample, progress=lines.append)
    assert result.path == (tmp_path / "out" / "with_sample.so").resolve() and result.path.is_file()
    assert result.verification.test_rows == 300 and result.verification.threshold_rows > 0
    assert result.verification.max_abs_diff <= 1e-5
    assert [line.split(":")[0] for line in lines if line.endswith(" s")] == ["codegen", "compile", "verify", "explain"]
    assert (tmp_path / "out" / "with_sample.trees").is_file() and result.explainer["max_abs_diff"] <= 1e-4
    assert "branch layout guided by a profile of 300 test-sample rows" in lines
    library = result.registry_record()
    assert isinstance(library, CompiledLibrary) and library.artifact_sha256 == sha256_file(model.model_json)
    assert CompiledLibrary.from_dict(library.to_dict()) == library
    record = library.to_dict()
    assert set(record) >= COMPILED_RECORD_KEYS
    assert record["versions"] == toolchain_versions() and record["profile_rows"] == 300
    assert record["flags"] == [*DEFAULT_FLAGS, "-fprofile-use", "-fprofile-partial-training"]
    assert record["compiler"].startswith("gcc")
    assert json.loads(json.dumps(record)) == record
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["with_sample.so", "with_sample.trees"]


def test_without_test_sample_there_is_no_profile() -> None:
    result = built(SMALL).result
    assert result.profile_rows == 0 and result.flags == list(DEFAULT_FLAGS)


def test_treelite_version_warning_is_logged_not_printed(tmp_path: Path, capfd, caplog) -> None:
    caplog.set_level("INFO", logger="ml_pipeline.compiler")
    compile_model(built(SMALL).model_json, tmp_path, "quiet")
    assert "Treelite" not in capfd.readouterr().err
    assert any("verified against XGBoost" in r.getMessage() for r in caplog.records)


def test_verification_refuses_a_library_that_disagrees(tmp_path: Path) -> None:
    model = built(SMALL)
    other = xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(*synthetic_rows(500, seed=4)), 5)
    rows = threshold_rows(read_xgboost_model(model.model_json))
    expected = r"disagrees with XGBoost by .* on threshold rows row \d+.*features \["
    with pytest.raises(VerificationFailed, match=expected):
        verify_library(model.library, other, rows)


def test_miscompiled_library_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sloppy_sigmoid = tmp_path / "sloppy.h"
    sloppy_sigmoid.write_text("#include <math.h>\n#define expf(x) expf((x) * 1.01f)\n")
    with pytest.raises(VerificationFailed, match="the artifact was refused"):
        compile_model(built(SMALL).model_json, out, "sloppy", flags=(*DEFAULT_FLAGS, "-include", str(sloppy_sigmoid)))
    assert list(out.iterdir()) == []


def test_refuses_objectives_other_than_binary_logistic(tmp_path: Path) -> None:
    x, y = synthetic_rows(300)
    regression = _save(xgb.train({"objective": "reg:squarederror"}, xgb.DMatrix(x, y), 2), tmp_path / "reg.json")
    with pytest.raises(UsageError, match="objective 'reg:squarederror'; only binary classification"):
        compile_model(regression, tmp_path, "reg")
    three = xgb.DMatrix(x, (y + (x[:, 0] > 1)).astype(int))
    multi = _save(xgb.train({"objective": "multi:softprob", "num_class": 3}, three, 2), tmp_path / "multi.json")
    with pytest.raises(UsageError, match="objective 'multi:softprob'"):
        compile_model(multi, tmp_path, "multi")
    assert not list(tmp_path.glob("*.so"))


def test_feature_count_must_match_metadata(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="has 8 features but its metadata lists 9"):
        compile_model(built(SMALL).model_json, tmp_path, "small", expected_features=9)
    sample = tmp_path / "narrow.npz"
    np.savez(sample, X=np.zeros((3, 7), dtype=np.float32))
    with pytest.raises(UsageError, match=r"test sample X has shape \(3, 7\); the model expects 8 features"):
        compile_model(built(SMALL).model_json, tmp_path, "small", test_sample=sample)


def test_unreadable_models_give_one_line_errors(tmp_path: Path) -> None:
    not_json = tmp_path / "model.json"
    not_json.write_text("{ this is not json")
    with pytest.raises(UsageError, match="not a readable XGBoost JSON model"):
        compile_model(not_json, tmp_path, "broken")
    document = json.loads(built(SMALL).model_json.read_text())
    del document["learner"]["gradient_booster"]["model"]["trees"][0]["split_conditions"]
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(json.dumps(document))
    with pytest.raises(UsageError, match="Treelite cannot read this model") as caught:
        compile_model(corrupt, tmp_path / "out", "corrupt")
    assert "\n" not in str(caught.value)
    assert not list((tmp_path / "out").glob("*"))
