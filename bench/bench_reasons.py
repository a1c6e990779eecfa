"""Reason codes over the native transport: what an explained answer costs, as ratios measured in one run.

Two native-transport servers on 127.0.0.1, started anew every round (two identical servers differed by up to 11 %
here, so a ratio is judged over many pairs of processes, not one), serve the same production-size model (100 trees
of depth 6, trained on demo alerts, registered with a held-out test sample and compiled as the product compiles a
registered model: verified against XGBoost, profile-guided, with its explainer): one with ML_EXPLAIN=request, one
with ML_EXPLAIN=flagged. The C++ client (bench/native_client.cc) sends demo-like rows in turn, sequentially, in
interleaved rounds. Budgets, each the median of the rounds' ratios: Predict with explain_top_k=3 p50 <= 1.5x a
plain Predict's p50 (same server); with ML_EXPLAIN=flagged, at the demo's fraud rate, server CPU per plain Predict
<= 1.10x the request policy's.
Run: `make bench` or `.venv/bin/pytest bench/bench_reasons.py -s --benchmark-enable`.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from bench_native_transport import _requests_file, _sequential, programs  # noqa: F401 (fixture)
from bench_server import _free_port, _start_inference_server, _wait_ready
from timing import median_ratio, turns

from ml_pipeline.compiler.registered import compile_registered
from ml_pipeline.data.features import FEATURE_NAMES, LABEL
from ml_pipeline.data.generator import generate_alerts
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.proto_gen import fraud_detection_pb2 as pb
from ml_pipeline.records import ModelAttachments, TestSample

EXPLAINED_P50_VS_PLAIN = 1.5
FLAGGED_CPU_VS_REQUEST = 1.10
ROUNDS = 16  # one round's CPU figure varies by about 10 % on this machine; a ratio is the median of the rounds'
ROUNDS_PER_SERVERS = 1  # then both servers are started again
CALLS = 6000
LIVE_ROWS = 500
SAMPLE_ROWS = 5000  # the held-out rows registered as the test sample: the compiler verifies and profiles with them
POLICIES = ("request", "flagged")


def _registry(folder: Path) -> tuple[ModelRegistry, np.ndarray, float]:
    """A registry whose champion is a demo-trained model with its explainer; live rows and their fraud rate."""
    frame = generate_alerts(20_000, seed=21)
    x = frame[FEATURE_NAMES].to_numpy(np.float32)
    params = {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "nthread": 2, "seed": 1}
    booster = xgb.train(params, xgb.DMatrix(x, label=frame[LABEL], feature_names=FEATURE_NAMES), 100)
    model_json = folder / "model.json"
    booster.save_model(model_json)
    held_out = generate_alerts(SAMPLE_ROWS, seed=23)
    sample_x = held_out[FEATURE_NAMES].to_numpy(np.float32)
    TestSample(X=sample_x, y=held_out[LABEL].to_numpy(), proba=booster.inplace_predict(sample_x)).write(
        ModelAttachments.test_sample_path(model_json)
    )
    registry = ModelRegistry(folder / "registry")
    created = datetime.now(UTC).isoformat()
    metadata = ModelMetadata(
        model_id="reasons_v1", version="1", created_at=created, features=list(FEATURE_NAMES), threshold=0.5
    )
    registry.register_model(model_json, metadata)
    registry.approve_model("reasons_v1", actor="bench")
    result = compile_registered(registry, "reasons_v1", folder / "compiled")
    assert "path" in result.explainer, result.explainer
    registry.promote_to_champion("reasons_v1", actor="bench")
    live = generate_alerts(LIVE_ROWS, seed=22)[FEATURE_NAMES].to_numpy(np.float32)
    fraud_rate = float(np.mean(booster.inplace_predict(live) >= 0.5))
    return registry, live, fraud_rate


def _predict_requests(rows: np.ndarray, top_k: int = 0) -> list[bytes]:
    """Each row as a PredictionRequest asking for `top_k` reasons, request ids call-0, call-1, ..."""
    return [
        pb.PredictionRequest(features=row.tolist(), request_id=f"call-{i}", explain_top_k=top_k).SerializeToString()
        for i, row in enumerate(rows)
    ]


@contextmanager
def _servers(registry_root: Path) -> Iterator[dict[str, tuple[str, int]]]:
    """One server per policy, started and answering: policy -> (target, pid); stopped on leaving."""
    ports = {policy: _free_port() for policy in POLICIES}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for policy in POLICIES:
        processes[policy] = _start_inference_server(registry_root, ports[policy], "native", ML_EXPLAIN=policy)
    try:
        for policy in POLICIES:
            _wait_ready(f"127.0.0.1:{ports[policy]}")
        yield {policy: (f"127.0.0.1:{ports[policy]}", processes[policy].pid) for policy in POLICIES}
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The registry's root, the two request files and the live fraud rate."""
    folder = tmp_path_factory.mktemp("reasons_bench")
    registry, live, fraud_rate = _registry(folder)
    return {
        "registry_root": registry.root,
        "plain": _requests_file(folder / "plain.bin", _predict_requests(live)),
        "explained": _requests_file(folder / "explained.bin", _predict_requests(live, 3)),
        "fraud_rate": fraud_rate,
    }


def test_reason_code_budgets(
    programs: dict[str, Path],  # noqa: F811 (the fixture imported above)
    setup: dict[str, object],
    bench_report: Callable[[str, str], None],
) -> None:
    """Interleaved rounds: plain and explained calls to the request server, plain calls to the flagged one; new
    servers every ROUNDS_PER_SERVERS rounds."""
    client = programs["client"]
    plain, explained = setup["plain"], setup["explained"]
    cases = {"plain": ("request", plain), "explained": ("request", explained), "flagged": ("flagged", plain)}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for first_round in range(0, ROUNDS, ROUNDS_PER_SERVERS):
        with _servers(setup["registry_root"]) as targets:  # type: ignore[arg-type]
            for round_index in range(first_round, first_round + ROUNDS_PER_SERVERS):
                for name in turns(cases, round_index):
                    server, requests = cases[name]
                    runs[name].append(_sequential(client, *targets[server], requests, CALLS))  # type: ignore[arg-type]
    p50 = {name: statistics.median(r[0] for r in rounds) for name, rounds in runs.items()}
    cpu = {name: statistics.median(r[1] for r in rounds) for name, rounds in runs.items()}
    section = f"reason codes (native transport, C++ client, medians of {ROUNDS} rounds)"
    for name, label in (
        ("plain", "Predict, ML_EXPLAIN=request"),
        ("explained", "Predict explain_top_k=3"),
        ("flagged", f"Predict, ML_EXPLAIN=flagged ({setup['fraud_rate']:.1%} flagged)"),
    ):
        bench_report(section, f"{label:<48} p50 {p50[name]:6.0f} µs, CPU {cpu[name]:5.0f} µs/call")
    checks = [
        ("p50 explained/plain", median_ratio(runs["explained"], runs["plain"], 0), EXPLAINED_P50_VS_PLAIN),
        ("CPU/call flagged/request", median_ratio(runs["flagged"], runs["plain"], 1), FLAGGED_CPU_VS_REQUEST),
    ]
    for name, ratio, budget in checks:
        bench_report(section, f"{name} (median of the rounds' ratios): {ratio:.3f} (budget <= {budget})")
    failures = [f"{name} = {ratio:.3f} > {budget}" for name, ratio, budget in checks if ratio > budget]
    assert not failures, "; ".join(failures)
