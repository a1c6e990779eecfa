"""Shadow scoring's cost: server CPU per Predict with a shadow model scoring every request, against none, one run.

One native-transport server on 127.0.0.1 serves a production-size champion (100 trees of depth 6, trained on demo
alerts, compiled as the product compiles a registered model: verified and profile-guided with its test sample).
Between measurements the registry adds or clears a shadow (the same trees and sample under another id, so both
scores cost the same, scoring every request) and a SIGHUP makes the server apply it; each measurement starts once
the server's ml_registry_generation shows the change. Both states are thus measured in the same process: two
identical servers measured here differed by up to 10 %, more than the shadow costs. The C++ client
(bench/native_client.cc) sends the same demo-like rows sequentially, in interleaved rounds, each state first in half
of them. Budget: server CPU per Predict with the shadow <= 1.10x without, as the median of the rounds' ratios.
Run: `make bench` or `.venv/bin/pytest bench/bench_shadow.py -s --benchmark-enable`.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bench_native_transport import _requests_file, _sequential, programs  # noqa: F401 (fixture)
from bench_reasons import _predict_requests, _registry
from bench_server import _free_port, _start_inference_server, _wait_ready
from prometheus_client.parser import text_string_to_metric_families
from timing import median_ratio, turns

from ml_pipeline.ab_testing.evidence import ScrapedMetrics
from ml_pipeline.compiler.registered import compile_registered
from ml_pipeline.data.features import FEATURE_NAMES
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry
from ml_pipeline.records import TEST_SAMPLE_FILE

SHADOW_CPU_VS_PLAIN = 1.10
ROUNDS = 16  # even: each state goes first in half of them
CALLS = 6000  # per round: about 0.7 s of server CPU, against a shadow score of a few µs a call
STATES = ("plain", "shadow")
SHADOW_ID = "shadow_v1"
APPLY_TIMEOUT_S = 30.0


class ShadowSwitch:
    """Adds or clears the shadow in the registry and waits until the server serves the new generation."""

    def __init__(self, registry: ModelRegistry, pid: int, metrics_url: str) -> None:
        self.registry, self.pid, self.metrics_url = registry, pid, metrics_url
        self.state = "plain"

    def serve(self, state: str) -> None:
        """Put the server in `state` ("plain" or "shadow"); nothing to do when it is there already."""
        if state == self.state:
            return
        if state == "shadow":
            rollout = {"mode": "shadow", "shadow_sample": 1.0}
            self.registry.set_challenger(SHADOW_ID, 0.0, rollout=rollout, actor="bench")
        else:
            self.registry.clear_challenger(actor="bench")
        wanted = self.registry.generation()
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while self._served_generation() != wanted:
            assert time.monotonic() < deadline, f"the server did not apply generation {wanted} in {APPLY_TIMEOUT_S} s"
            time.sleep(0.05)
        self.state = state

    def _served_generation(self) -> float | None:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "ml_registry_generation":
                return family.samples[0].value
        return None

    def shadow_scored(self) -> float:
        """Requests the shadow has scored so far."""
        return ScrapedMetrics([self.metrics_url]).totals().count("shadow_requests", SHADOW_ID)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The server started and answering with its champion alone, its switch, and the request file."""
    folder = tmp_path_factory.mktemp("shadow_bench")
    registry, live, _ = _registry(folder)
    metadata = ModelMetadata(
        model_id=SHADOW_ID,
        version="1",
        created_at=datetime.now(UTC).isoformat(),
        features=list(FEATURE_NAMES),
        threshold=0.5,
    )
    sample = {TEST_SAMPLE_FILE: registry.attachment_path("reasons_v1", TEST_SAMPLE_FILE)}
    registry.register_model(registry.artifact_path("reasons_v1"), metadata, attachments=sample)
    registry.approve_model(SHADOW_ID, actor="bench")
    compile_registered(registry, SHADOW_ID, folder / "compiled")
    port, metrics_port = _free_port(), _free_port()
    process = _start_inference_server(registry.root, port, "native", metrics_port)
    try:
        _wait_ready(f"127.0.0.1:{port}")
        yield {
            "target": (f"127.0.0.1:{port}", process.pid),
            "switch": ShadowSwitch(registry, process.pid, f"http://127.0.0.1:{metrics_port}/metrics"),
            "requests": _requests_file(folder / "predict.bin", _predict_requests(live)),
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_shadow_cpu_budget(
    programs: dict[str, Path],  # noqa: F811 (the fixture imported above)
    setup: dict[str, object],
    bench_report: Callable[[str, str], None],
) -> None:
    """Interleaved rounds in both states of one server; CPU per Predict with the shadow within budget."""
    client = programs["client"]
    target: tuple[str, int] = setup["target"]  # type: ignore[assignment]
    switch: ShadowSwitch = setup["switch"]  # type: ignore[assignment]
    requests: Path = setup["requests"]  # type: ignore[assignment]
    runs: dict[str, list[tuple[float, float]]] = {state: [] for state in STATES}
    scored: dict[str, float] = dict.fromkeys(STATES, 0.0)
    for round_index in range(ROUNDS):
        for state in turns(STATES, round_index):
            switch.serve(state)
            before = switch.shadow_scored()
            runs[state].append(_sequential(client, *target, requests, CALLS))
            scored[state] += switch.shadow_scored() - before
    p50 = {state: statistics.median(r[0] for r in rounds) for state, rounds in runs.items()}
    cpu = {state: statistics.median(r[1] for r in rounds) for state, rounds in runs.items()}
    section = f"shadow scoring (native transport, one server, C++ client, medians of {ROUNDS} rounds)"
    for state, label in (("plain", "Predict, champion only"), ("shadow", "Predict, shadow on every request")):
        bench_report(section, f"{label:<34} p50 {p50[state]:6.0f} µs, CPU {cpu[state]:5.0f} µs/call")
    bench_report(section, f"requests the shadow scored: {scored['shadow']:,.0f} shadowed, {scored['plain']:,.0f} plain")
    assert scored["shadow"] >= ROUNDS * CALLS, "the shadow did not score every request"
    assert scored["plain"] == 0, "the shadow scored requests after it was cleared"
    ratio = median_ratio(runs["shadow"], runs["plain"], 1)
    bench_report(
        section, f"CPU/call shadow/plain (median of the rounds' ratios): {ratio:.3f} (budget <= {SHADOW_CPU_VS_PLAIN})"
    )
    assert ratio <= SHADOW_CPU_VS_PLAIN, f"CPU/call shadow/plain = {ratio:.3f} > {SHADOW_CPU_VS_PLAIN}"
