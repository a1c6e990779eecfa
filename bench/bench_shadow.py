"""Shadow scoring's cost: server CPU per Predict with a shadow model scoring every request, against none, one run.

Two native-transport servers on 127.0.0.1 serve the same production-size champion (100 trees of depth 6, trained
on demo alerts); the second also serves a shadow (the same trees under another id, so both scores cost the same)
on every request. The C++ client (bench/native_client.cc) sends the same demo-like rows, sequentially, to each in
interleaved rounds, each server first in half of them (two identical servers measured in a fixed order differed by
up to 10 % here). Budget: server CPU per Predict with the shadow <= 1.10x without, as the median of the rounds' ratios.
Run: `make bench` or `.venv/bin/pytest bench/bench_shadow.py -s --benchmark-enable`.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bench_native_transport import _requests_file, _sequential, programs  # noqa: F401 (fixture)
from bench_reasons import _predict_requests, _registry
from bench_server import _free_port, _start_inference_server, _wait_ready
from timing import turns

from ml_pipeline.ab_testing.evidence import ScrapedMetrics
from ml_pipeline.compiler import compile_model
from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.model_registry import ModelMetadata

SHADOW_CPU_VS_PLAIN = 1.10
ROUNDS = 6  # even: each server goes first in half of them
CALLS = 6000  # per round: the CPU clock ticks every 10 ms, a shadow score costs a few µs
SERVERS = ("plain", "shadow")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Both servers started and answering (the shadow one with its shadow loaded), and the request file."""
    registries = {}
    for name in SERVERS:
        folder = tmp_path_factory.mktemp(f"shadow_bench_{name}")
        registry, live, _ = _registry(folder)
        registries[name] = registry
    shadow = registries["shadow"]
    metadata = ModelMetadata(
        model_id="shadow_v1",
        version="1",
        created_at=datetime.now(UTC).isoformat(),
        features=list(FEATURE_NAMES),
        threshold=0.5,
    )
    shadow.register_model(shadow.artifact_path("reasons_v1"), metadata)
    shadow.approve_model("shadow_v1", actor="bench")
    result = compile_model(shadow.artifact_path("shadow_v1"), shadow.root.parent / "compiled", "shadow_v1")
    shadow.record_compiled("shadow_v1", result.registry_record().to_dict(), actor="bench")
    shadow.set_challenger("shadow_v1", 0.0, rollout={"mode": "shadow", "shadow_sample": 1.0}, actor="bench")
    ports = {name: _free_port() for name in SERVERS}
    metrics_ports = {name: _free_port() for name in SERVERS}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for name in SERVERS:
        processes[name] = _start_inference_server(registries[name].root, ports[name], "native", metrics_ports[name])
    try:
        for name in SERVERS:
            _wait_ready(f"127.0.0.1:{ports[name]}")
        folder = tmp_path_factory.mktemp("shadow_requests")
        yield {
            "targets": {n: (f"127.0.0.1:{ports[n]}", processes[n].pid) for n in SERVERS},
            "requests": _requests_file(folder / "predict.bin", _predict_requests(live)),
            "shadow_metrics": f"http://127.0.0.1:{metrics_ports['shadow']}/metrics",
        }
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=30)


def test_shadow_cpu_budget(
    programs: dict[str, Path],  # noqa: F811 (the fixture imported above)
    setup: dict[str, object],
    bench_report: Callable[[str, str], None],
) -> None:
    """Interleaved rounds against both servers; the shadow server's CPU per Predict within budget."""
    client = programs["client"]
    targets: dict[str, tuple[str, int]] = setup["targets"]  # type: ignore[assignment]
    requests: Path = setup["requests"]  # type: ignore[assignment]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in SERVERS}
    for round_index in range(ROUNDS):
        for name in turns(SERVERS, round_index):
            runs[name].append(_sequential(client, *targets[name], requests, CALLS))
    p50 = {name: statistics.median(r[0] for r in rounds) for name, rounds in runs.items()}
    cpu = {name: statistics.median(r[1] for r in rounds) for name, rounds in runs.items()}
    section = f"shadow scoring (native transport, C++ client, medians of {ROUNDS} rounds)"
    for name, label in (("plain", "Predict, champion only"), ("shadow", "Predict, shadow on every request")):
        bench_report(section, f"{label:<34} p50 {p50[name]:6.0f} µs, CPU {cpu[name]:5.0f} µs/call")
    shadowed = ScrapedMetrics([str(setup["shadow_metrics"])]).totals().count("shadow_requests", "shadow_v1")
    bench_report(section, f"requests the shadow scored: {shadowed:,.0f}")
    assert shadowed >= ROUNDS * CALLS, "the shadow did not score every request"
    ratio = statistics.median(s[1] / p[1] for s, p in zip(runs["shadow"], runs["plain"], strict=True))
    bench_report(
        section, f"CPU/call shadow/plain (median of the rounds' ratios): {ratio:.3f} (budget <= {SHADOW_CPU_VS_PLAIN})"
    )
    assert ratio <= SHADOW_CPU_VS_PLAIN, f"CPU/call shadow/plain = {ratio:.3f} > {SHADOW_CPU_VS_PLAIN}"
