"""Hash routing (as the native core): known vectors, determinism, share accuracy, minimal movement; GradualRollout."""

from __future__ import annotations

import random
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from model_factory import training_output

from ml_pipeline.ab_testing.traffic_splitter import (
    HASH_SPACE,
    GradualRollout,
    TrafficSplitter,
    challenger_cut,
    route_hash,
)
from ml_pipeline.errors import UsageError
from ml_pipeline.model_registry import ModelMetadata, ModelRegistry

# (key, route_hash) pairs the native core (native/src/route.h) must reproduce bit for bit.
KNOWN_VECTORS = [
    ("a", 3320656311),
    ("req-1", 3708133765),
    ("request-42", 4068605574),
    ("call:+2348012345678", 1528694196),
    ("550e8400-e29b-41d4-a716-446655440000", 20754485),
    ("réseau-☎", 3408858257),
    ("", 0),
]
KEYS = [f"req-{i}" for i in range(100_000)]
ROUTE_HEADER = Path(__file__).resolve().parents[1] / "native" / "src" / "route.h"


@pytest.mark.unit
@pytest.mark.parametrize(("key", "expected"), KNOWN_VECTORS)
def test_route_hash_known_vectors(key, expected):
    assert route_hash(key) == expected
    assert route_hash(key.encode("utf-8")) == expected


@pytest.mark.integration
@pytest.mark.skipif(not ROUTE_HEADER.exists() or shutil.which("gcc") is None, reason="native/src/route.h or gcc absent")
def test_native_route_hash_agrees_bit_for_bit(tmp_path):
    """Compile the native core's hash with gcc and compare it with route_hash on random binary and text keys."""
    program = tmp_path / "route.c"
    program.write_text(
        f'#include "{ROUTE_HEADER}"\n#include <stdio.h>\n#include <stdlib.h>\n'
        "int main(void) { char line[512]; unsigned char key[256];\n"
        "  while (fgets(line, sizeof line, stdin)) { size_t n = 0; for (char *p = line; p[0] && p[1] && p[0] != '\\n';"
        ' p += 2) { unsigned v; sscanf(p, "%2x", &v); key[n++] = (unsigned char)v; }\n'
        '    printf("%u\\n", vg_route_hash(key, n)); } return 0; }\n'
    )
    subprocess.run(["gcc", "-O2", str(program), "-lz", "-o", str(tmp_path / "route")], check=True)
    rng = random.Random(7)
    keys = [rng.randbytes(rng.randrange(1, 100)) for _ in range(2000)] + [k.encode() for k, _ in KNOWN_VECTORS if k]
    out = subprocess.run(
        [str(tmp_path / "route")], input="\n".join(k.hex() for k in keys) + "\n", capture_output=True, text=True
    )
    assert [int(v) for v in out.stdout.split()] == [route_hash(k) for k in keys]


@pytest.mark.unit
def test_challenger_cut_bounds():
    assert (challenger_cut(0.0), challenger_cut(0.5), challenger_cut(1.0)) == (0, 1 << 31, HASH_SPACE)
    assert challenger_cut(0.1) == round(0.1 * HASH_SPACE)
    for bad in (-0.01, 1.01):
        with pytest.raises(UsageError, match="from 0 to 1"):
            challenger_cut(bad)
    everything, nothing = TrafficSplitter(0.0, 1.0), TrafficSplitter(1.0, 0.0)
    assert all(everything.should_use_model_b(k) for k, _ in KNOWN_VECTORS)
    assert not any(nothing.should_use_model_b(k) for k, _ in KNOWN_VECTORS)


@pytest.mark.unit
def test_routing_is_deterministic_and_follows_the_cut():
    first, second = TrafficSplitter(0.7, 0.3), TrafficSplitter(0.7, 0.3)
    assert first.challenger_cut == challenger_cut(0.3)
    for key in KEYS[:5000]:
        assert (
            first.should_use_model_b(key) == second.should_use_model_b(key) == (route_hash(key) < first.challenger_cut)
        )
        assert first.should_use_model_b(key.encode()) == first.should_use_model_b(key)


@pytest.mark.unit
@pytest.mark.parametrize("share", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_share_accuracy_over_100k_keys(share):
    splitter = TrafficSplitter(1 - share, share)
    observed = sum(map(splitter.should_use_model_b, KEYS)) / len(KEYS)
    tolerance = 5 * (share * (1 - share) / len(KEYS)) ** 0.5  # five binomial standard deviations
    assert abs(observed - share) < tolerance


@pytest.mark.unit
def test_raising_the_share_moves_only_the_keys_between_the_cuts():
    splitter = TrafficSplitter(0.9, 0.1)
    before = [splitter.should_use_model_b(k) for k in KEYS]
    splitter.update_traffic_split(0.7, 0.3)
    after = [splitter.should_use_model_b(k) for k in KEYS]
    low, high = challenger_cut(0.1), challenger_cut(0.3)
    moved = [k for k, b0, b1 in zip(KEYS, before, after, strict=True) if b0 != b1]
    assert all(not b0 or b1 for b0, b1 in zip(before, after, strict=True))  # nobody leaves the challenger
    assert moved == [k for k in KEYS if low <= route_hash(k) < high]
    assert abs(len(moved) / len(KEYS) - 0.2) < 0.01
    splitter.update_traffic_split(0.9, 0.1)
    assert [splitter.should_use_model_b(k) for k in KEYS] == before


@pytest.mark.unit
def test_split_validation():
    for a, b in ((0.5, 0.6), (1.2, -0.2), (0.9, "0.1")):
        with pytest.raises(UsageError):
            TrafficSplitter(a, b)
    splitter = TrafficSplitter()
    assert (splitter.model_a_traffic, splitter.model_b_traffic) == (0.9, 0.1)
    with pytest.raises(UsageError, match="sum to 1"):
        splitter.update_traffic_split(0.5, 0.4)
    assert splitter.model_b_traffic == 0.1


@pytest.mark.unit
def test_without_a_key_routing_is_random_at_the_share():
    rng = random.Random(3)
    splitter = TrafficSplitter(0.75, 0.25, rng=rng.random)
    observed = sum(splitter.should_use_model_b() for _ in range(20_000)) / 20_000
    assert abs(observed - 0.25) < 5 * (0.25 * 0.75 / 20_000) ** 0.5


@pytest.mark.unit
def test_statistics_are_exact_under_threads():
    splitter = TrafficSplitter(0.5, 0.5)
    expected_b = sum(route_hash(k) < splitter.challenger_cut for k in KEYS[:20_000])

    def route() -> None:
        for key in KEYS[:20_000]:
            splitter.should_use_model_b(key)

    threads = [threading.Thread(target=route) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = splitter.get_statistics()
    assert (stats["model_b_requests"], stats["total_requests"]) == (4 * expected_b, 80_000)
    assert stats["model_a_requests"] == 80_000 - 4 * expected_b
    splitter.reset_statistics()
    assert splitter.get_statistics()["total_requests"] == 0


@pytest.mark.unit
def test_gradual_rollout_steps_up_to_max_and_rolls_back():
    rollout = GradualRollout(initial_traffic=0.1, step_percentage=0.2, max_traffic=0.5)
    assert rollout.get_current_split() == (0.9, 0.1) and not rollout.is_complete()
    assert rollout.increase_traffic() == 0.3 and rollout.get_current_split() == (0.7, 0.3)
    assert rollout.increase_traffic() == 0.5 and rollout.is_complete()
    assert rollout.increase_traffic() == 0.5 and rollout.get_current_split() == (0.5, 0.5)
    assert rollout.splitter().model_b_traffic == 0.5
    assert rollout.rollback() == (1.0, 0.0) and not rollout.is_complete()
    with pytest.raises(UsageError, match="rolled back"):
        rollout.increase_traffic()
    full = GradualRollout()
    shares = [full.increase_traffic() for _ in range(12)]
    assert shares[:9] == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0] and shares[-1] == 1.0 and full.is_complete()


@pytest.mark.unit
def test_gradual_rollout_validation():
    with pytest.raises(UsageError, match="exceeds max_traffic"):
        GradualRollout(initial_traffic=0.6, max_traffic=0.5)
    with pytest.raises(UsageError, match="above 0"):
        GradualRollout(step_percentage=0.0)
    with pytest.raises(UsageError, match="from 0 to 1"):
        GradualRollout(max_traffic=1.5)


@pytest.mark.integration
def test_gradual_rollout_state_round_trips_through_the_registry(tmp_path):
    registry = ModelRegistry(tmp_path / "registry", compiled_models_dir=tmp_path / "compiled")
    for i in (1, 2):
        out = training_output(tmp_path / f"m{i}", f"xgboost_v{i}", seed=i, rounds=2)
        registry.register_model(out / "model.json", ModelMetadata.from_training_output(out))
        registry.approve_model(f"xgboost_v{i}")
    registry.promote_to_champion("xgboost_v1")
    rollout = GradualRollout(initial_traffic=0.1, step_percentage=0.1, max_traffic=0.3)
    registry.set_challenger("xgboost_v2", rollout.current_traffic, rollout=rollout.to_dict())
    restored = GradualRollout.from_dict(registry.serving_state().rollout)
    assert restored == rollout
    restored.increase_traffic()
    registry.set_traffic_split(*restored.get_current_split(), rollout=restored.to_dict())
    state = registry.serving_state()
    assert (state.champion_share, state.challenger_share) == (0.8, 0.2)
    assert GradualRollout.from_dict(state.rollout).current_traffic == 0.2
