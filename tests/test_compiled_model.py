"""CompiledModel: exact scores across model shapes, hash check before loading, bad inputs, threads, unloading."""

from __future__ import annotations

import array
import hashlib
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from model_factory import SMALL, ModelSpec, built, synthetic_rows

from ml_pipeline.native.compiled_model import CompiledModel, ModelIntegrityError, ModelLoadError
from ml_pipeline.native.serving_core import ServingCore

pytestmark = pytest.mark.integration

SHAPES = [
    ModelSpec("one_stump", trees=1, depth=1),
    ModelSpec("deep", trees=15, depth=10),
    ModelSpec("base_score", trees=30, depth=3, base_score=0.2),
    ModelSpec("scale_pos_weight", trees=30, depth=5, scale_pos_weight=6.0),
    ModelSpec("early_stopped", trees=200, depth=3, early_stopping=True),
    ModelSpec("five_features", trees=25, depth=4, features=5),
]


def mapped_model_inodes() -> set[str]:
    """Inodes of the memfd-backed model libraries mapped into this process."""
    return {line.split()[4] for line in Path("/proc/self/maps").read_text().splitlines() if "memfd:vg_model" in line}


@pytest.fixture(scope="module")
def small():
    """The small shared test model, loaded."""
    model = built(SMALL)
    with CompiledModel(model.library, sha256=model.result.sha256) as compiled:
        yield model, compiled


@pytest.mark.parametrize("spec", SHAPES, ids=lambda s: s.name)
def test_scores_equal_xgboost_across_shapes(spec: ModelSpec) -> None:
    model = built(spec)
    rows, _ = synthetic_rows(2000, spec.features, seed=7, nan_share=0.25)
    rows[0, :] = np.nan
    with CompiledModel(model.library, sha256=model.result.sha256) as compiled:
        assert compiled.num_features == spec.features
        ours = compiled.score_batch(rows)
        single = np.array([compiled.score(row) for row in rows[:200]], dtype=np.float32)
    theirs = model.booster.inplace_predict(rows)
    assert np.max(np.abs(ours - theirs)) <= 1e-5
    np.testing.assert_array_equal(single, ours[:200])
    if spec.early_stopping:
        assert model.result.num_trees < spec.trees


def test_thousand_trees_equal_xgboost() -> None:
    model = built(ModelSpec("thousand", trees=1000, depth=2))
    rows, _ = synthetic_rows(3000, 8, seed=3, nan_share=0.2)
    with CompiledModel(model.library) as compiled:
        ours = compiled.score_batch(rows, nthreads=2)
    assert model.result.translation_units > 1
    assert np.max(np.abs(ours - model.booster.inplace_predict(rows))) <= 1e-5


def test_properties(small) -> None:
    model, compiled = small
    assert compiled.model_id == "small"
    assert compiled.path == str(model.library)
    assert compiled.sha256 == hashlib.sha256(model.library.read_bytes()).hexdigest()
    assert compiled.num_features == 8
    assert "small" in repr(compiled)
    with CompiledModel(model.library, model_id="fraud_v7") as named:
        assert named.model_id == "fraud_v7"


def test_score_accepts_any_float_sequence(small) -> None:
    _, compiled = small
    row = np.array([0.3, np.nan, -1.2, 2.0, 0.0, np.nan, 5.5, -0.7], dtype=np.float32)
    expected = compiled.score(row)
    assert 0.0 < expected < 1.0
    for same in (
        row.tolist(),
        tuple(row.tolist()),
        row.astype(np.float64),
        array.array("f", row.tolist()),
        memoryview(row),
        np.repeat(row, 2)[::2],
    ):
        assert compiled.score(same) == expected
    assert compiled.score(np.full(8, np.nan, dtype=np.float32)) == compiled.score([float("nan")] * 8)


@pytest.mark.parametrize(
    ("row", "expected_text"),
    [
        (np.zeros(7, dtype=np.float32), "got 7 values"),
        ([0.0] * 9, "got 9 values"),
        (np.zeros((1, 8), dtype=np.float32), "shape (1, 8)"),
        ("eight...", "got str"),
        ({"a": 1.0}, "got dict"),
    ],
)
def test_score_rejects_bad_rows(small, row, expected_text: str) -> None:
    _, compiled = small
    with pytest.raises(ValueError, match="expected one row of 8 floats") as caught:
        compiled.score(row)
    assert expected_text in str(caught.value)


@pytest.mark.parametrize(
    ("rows", "expected_text"),
    [
        (np.zeros((4, 8), dtype=np.float64), "got dtype float64"),
        (np.zeros((4, 16), dtype=np.float32)[:, ::2], "non-contiguous"),
        (np.zeros((4, 7), dtype=np.float32), "got shape (4, 7)"),
        (np.zeros(8, dtype=np.float32), "got a 1-D array"),
        ([[0.0] * 8], "got list"),
        (np.zeros((4, 8), dtype=">f4"), "got dtype >f4"),
    ],
)
def test_score_batch_rejects_bad_arrays(small, rows, expected_text: str) -> None:
    _, compiled = small
    with pytest.raises(ValueError, match=r"expects a 2-D float32 C-contiguous numpy array of shape \(n, 8\)") as caught:
        compiled.score_batch(rows)
    assert expected_text in str(caught.value)


def test_score_batch_threads_and_edge_sizes(small) -> None:
    _, compiled = small
    rows, _ = synthetic_rows(1001, seed=11)
    sequential = compiled.score_batch(rows)
    for nthreads in (2, 3, 8, 5000):
        np.testing.assert_array_equal(compiled.score_batch(rows, nthreads=nthreads), sequential)
    assert compiled.score_batch(np.empty((0, 8), dtype=np.float32), nthreads=4).shape == (0,)
    np.testing.assert_array_equal(compiled.score_batch(rows[:1], nthreads=4), sequential[:1])
    with pytest.raises(ValueError, match="nthreads must be at least 1"):
        compiled.score_batch(rows, nthreads=0)
    assert compiled.c_loop_seconds(rows) > 0


def test_concurrent_callers_get_sequential_answers(small) -> None:
    _, compiled = small
    rows, _ = synthetic_rows(400, seed=5, nan_share=0.3)
    expected = compiled.score_batch(rows)
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        start.wait()
        if index % 2:
            results[index] = np.array([compiled.score(row) for row in rows], dtype=np.float32)
        else:
            results[index] = np.concatenate([compiled.score_batch(rows, nthreads=2) for _ in range(20)])[-len(rows) :]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == list(range(8))
    for scores in results.values():
        np.testing.assert_array_equal(scores, expected)


def test_tampered_library_is_refused_before_loading(tmp_path: Path) -> None:
    model = built(SMALL)
    tampered = tmp_path / "small.so"
    data = bytearray(model.library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    before = mapped_model_inodes()
    with pytest.raises(ModelIntegrityError, match="sha256 is .* expected .* not loaded"):
        CompiledModel(tampered, sha256=model.result.sha256)
    assert mapped_model_inodes() == before


def test_files_that_are_not_compiled_models_are_refused(tmp_path: Path) -> None:
    not_elf = tmp_path / "garbage.so"
    not_elf.write_bytes(b"\x7fELF but not really")
    with pytest.raises(ModelLoadError, match="cannot load .*garbage.so"):
        CompiledModel(not_elf)
    import ml_pipeline.native.compiled_model as extension

    other_library = tmp_path / "extension.so"
    shutil.copy(extension.__file__, other_library)
    with pytest.raises(ModelLoadError, match="symbol get_num_feature not found"):
        CompiledModel(other_library)
    with pytest.raises(ModelLoadError, match="cannot read compiled model"):
        CompiledModel(tmp_path / "missing.so")


def test_recompiled_file_at_same_path_loads_the_new_code(tmp_path: Path) -> None:
    first, second = built(SMALL), built(ModelSpec("five_features", trees=25, depth=4, features=5))
    path = tmp_path / "model.so"
    shutil.copy(first.library, path)
    with CompiledModel(path) as old:
        shutil.copy(second.library, tmp_path / "next.so")
        (tmp_path / "next.so").replace(path)
        with CompiledModel(path) as new:
            assert (old.num_features, new.num_features) == (8, 5)


def test_serving_core_keeps_library_loaded_until_released() -> None:
    model = built(SMALL)
    before = mapped_model_inodes()
    compiled = CompiledModel(model.library)
    loaded = mapped_model_inodes() - before
    assert len(loaded) == 1
    core = ServingCore()
    core.set_champion(compiled, "small", 0.5)
    compiled.close()
    assert compiled.closed
    with pytest.raises(ValueError, match="closed"):
        compiled.score([0.0] * 8)
    with pytest.raises(ValueError, match="closed"):
        core.set_champion(compiled, "small", 0.5)
    assert loaded <= mapped_model_inodes()
    del core
    assert not loaded & mapped_model_inodes()
