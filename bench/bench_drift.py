"""Hot-path cost of live drift tracking: at most 5 % added to a prediction in the serving core.

Two ServingCores serve the same compiled model (100 trees of depth 6, trained on demo alerts); one also
counts drift bins (8 features with 9 edges each, and the score). Each handles the same 2,000 serialized
Predict requests in-process through `ServingCore.handle` (no network, so the transport's noise does not
hide the difference), in interleaved best-of rounds; the budget is the ratio of the two, from the same run.
The prediction log ring is measured the same way and reported (its cost is the record copy and a CAS).
Run with `make bench` (or `.venv/bin/pytest bench/bench_drift.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import xgboost as xgb
from timing import Timed, interleaved_best, wall

from ml_pipeline.compiler import compile_model
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.monitoring.drift import DriftReference
from ml_pipeline.native.compiled_model import CompiledModel
from ml_pipeline.native.serving_core import ServingCore
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb

DRIFT_OVERHEAD_BUDGET = 1.05
REQUESTS = 2_000
MODEL_ID = "bench-drift"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompiledModel, DriftReference, list[bytes]]:
    """A compiled production-size model, its drift reference, and serialized requests of live-like rows."""
    folder = tmp_path_factory.mktemp("bench_drift")
    frame = generate_alerts(20_000, seed=4)
    X = frame[FEATURE_NAMES].to_numpy(dtype=np.float32)
    params = {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "nthread": 2, "seed": 1}
    booster = xgb.train(params, xgb.DMatrix(X, label=frame[LABEL], feature_names=FEATURE_NAMES), 100)
    booster.save_model(folder / "model.json")
    result = compile_model(folder / "model.json", folder / "compiled", MODEL_ID, profile_guided=False)
    model = CompiledModel(str(result.path), result.sha256, MODEL_ID)
    reference = DriftReference.fit(X, FEATURE_NAMES, booster.inplace_predict(X))
    live = generate_alerts(REQUESTS, seed=5)[FEATURE_NAMES].to_numpy(dtype=np.float32)
    requests = [
        pb.PredictionRequest(features=row.tolist(), request_id=f"call-{i:08d}").SerializeToString()
        for i, row in enumerate(live)
    ]
    return model, reference, requests


def _core(model: CompiledModel, reference: DriftReference | None = None, log: bool = False) -> ServingCore:
    core = ServingCore()
    core.set_champion(model, MODEL_ID, 0.7)
    if reference is not None:
        core.set_drift([reference.features[n].edges for n in FEATURE_NAMES], reference.score.edges)
    if log:
        core.enable_log(1 << 12)  # more than one round's requests: drained between rounds, never full
    return core


def _handle_all(core: ServingCore, requests: list[bytes]) -> Callable[[], object]:
    handle = core.handle

    def run() -> None:
        for request in requests:
            handle(request)

    return run


def _drained_then_timed(core: ServingCore, requests: list[bytes]) -> Timed:
    timed = wall(_handle_all(core, requests))

    def run() -> float:
        while core.drain_log(4096):
            pass
        return timed()

    return run


def test_drift_tracking_costs_at_most_5_percent(served, bench_report) -> None:  # noqa: ANN001
    """Best of interleaved rounds of each variant; fails when drift tracking adds more than the budget."""
    model, reference, requests = served
    plain, tracked, logged = _core(model), _core(model, reference), _core(model, reference, log=True)
    assert tracked.drift_counts() is not None and plain.drift_counts() is None
    candidates = {
        "plain": wall(_handle_all(plain, requests)),
        "drift": wall(_handle_all(tracked, requests)),
        "drift+log": _drained_then_timed(logged, requests),
    }
    for run in candidates.values():  # warm up caches and branch predictors
        run()
    best = interleaved_best(candidates, repeat=31)
    per_request_ns = {name: seconds / REQUESTS * 1e9 for name, seconds in best.items()}
    drift_ratio = best["drift"] / best["plain"]
    log_ratio = best["drift+log"] / best["plain"]
    line = (
        f"handle(): plain {per_request_ns['plain']:.0f} ns, with drift {per_request_ns['drift']:.0f} ns "
        f"(×{drift_ratio:.3f}, budget ×{DRIFT_OVERHEAD_BUDGET}), drift + prediction log "
        f"{per_request_ns['drift+log']:.0f} ns (×{log_ratio:.3f})"
    )
    bench_report("live drift", line)
    print(line)
    assert tracked.drift_counts()["rows"] > 0 and logged.log_dropped() == 0
    assert drift_ratio <= DRIFT_OVERHEAD_BUDGET, line
