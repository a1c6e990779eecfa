"""`ml-pipeline compile`: approved models compile into a verified .so recorded in a real registry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from model_factory import training_output

from ml_pipeline.cli import main
from ml_pipeline.compiler.registered import default_model_id
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.native.compiled_model import CompiledModel

pytestmark = pytest.mark.integration


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def register(registry: ModelRegistry, folder: Path, model_id: str, seed: int, approve: bool = True) -> None:
    """Register a freshly trained training output folder (and approve it)."""
    output = training_output(folder / model_id, model_id, seed=seed)
    registry.register_model(
        output / "model.json",
        ModelMetadata.from_training_output(output),
        attachments={"test_sample.npz": output / "test_sample.npz"},
    )
    if approve:
        registry.approve_model(model_id)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """A registry with an approved model and a candidate."""
    registry = ModelRegistry(tmp_path / "registry")
    register(registry, tmp_path / "train", "xgboost_v1", seed=1)
    register(registry, tmp_path / "train", "xgboost_v2", seed=2, approve=False)
    return registry


def test_compile_approved_model_records_it_in_the_registry(registry: ModelRegistry, tmp_path: Path, capsys) -> None:
    out = tmp_path / "compiled"
    args = ["compile", "xgboost_v1", "--registry", str(registry.root), "--out", str(out), "--json"]
    code, stdout, stderr = run(capsys, *args)
    assert code == 0, stderr
    shown = json.loads(stdout)
    library = out / "xgboost_v1.so"
    assert shown["path"] == str(library.resolve())
    for stage in ("codegen", "compile", "verify"):
        assert f"{stage}: " in stderr
    compiled = registry.get_model("xgboost_v1").compiled
    assert compiled["sha256"] == hashlib.sha256(library.read_bytes()).hexdigest() == shown["sha256"]
    assert compiled["path"] == str(library.resolve())
    assert compiled["verification"]["test_rows"] == 60 and compiled["verification"]["max_abs_diff"] <= 1e-5
    assert compiled["profile_rows"] == 60 and "-fprofile-use" in compiled["flags"]
    assert {"compiler", "flags", "versions", "compiled_at"} <= set(compiled)
    with CompiledModel(compiled["path"], sha256=compiled["sha256"]) as model:
        assert model.model_id == "xgboost_v1" and model.num_features == 8


def test_candidates_need_force(registry: ModelRegistry, tmp_path: Path, capsys) -> None:
    args = ["compile", "xgboost_v2", "--registry", str(registry.root), "--out", str(tmp_path / "c")]
    code, _, stderr = run(capsys, *args)
    assert code == 2
    assert "xgboost_v2 is candidate: only approved, champion or challenger models are compiled" in stderr
    assert registry.get_model("xgboost_v2").compiled is None
    code, stdout, stderr = run(capsys, *args, "--force")
    assert code == 0, stderr
    assert "compiled xgboost_v2" in stdout
    assert registry.get_model("xgboost_v2").compiled is not None


def test_default_is_champion_else_newest_approved(registry: ModelRegistry, tmp_path: Path, capsys) -> None:
    assert default_model_id(registry) == "xgboost_v1"
    register(registry, tmp_path / "train", "xgboost_v3", seed=3)
    assert default_model_id(registry) == "xgboost_v3"
    registry.promote_to_champion("xgboost_v1")
    assert default_model_id(registry) == "xgboost_v1"
    args = ["compile", "--default", "--registry", str(registry.root), "--out", str(tmp_path / "c")]
    code, _, stderr = run(capsys, *args)
    assert code == 0, stderr
    assert (tmp_path / "c" / "xgboost_v1.so").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give either a MODEL_ID or --default"),
        (["xgboost_v1", "--default"], "give either a MODEL_ID or --default"),
        (["nope"], "unknown model 'nope'"),
    ],
)
def test_usage_errors(registry: ModelRegistry, capsys, args: list[str], message: str) -> None:
    code, _, stderr = run(capsys, "compile", *args, "--registry", str(registry.root))
    assert code == 2
    assert message in stderr and "Traceback" not in stderr


def test_default_on_a_registry_without_approved_models(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty" / "models").mkdir(parents=True)
    code, _, stderr = run(capsys, "compile", "--default", "--registry", str(tmp_path / "empty"))
    assert code == 2
    assert "no champion and no approved model to compile" in stderr


def test_a_missing_registry_is_named(tmp_path: Path, capsys) -> None:
    code, _, stderr = run(capsys, "compile", "--default", "--registry", str(tmp_path / "typo"))
    assert code == 2
    assert "typo (--registry) does not exist" in stderr and "Traceback" not in stderr
